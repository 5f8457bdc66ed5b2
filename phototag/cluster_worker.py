"""The files' side of ``--ray-io``: a Ray actor on each cluster node that decodes photos and writes
their metadata there, for libraries mounted at the same path on every node.

The driver (:mod:`phototag.cluster_io`) sends it paths, never pixels or files:

- :meth:`PhotoIO.decode`: a chunk of :class:`DecodeRequest` -> uint8 pixels at the model's input size
  (the same :func:`~phototag.imaging.load_rgb` and resize as the driver's decode with ``--ray``), kept
  in the node's object store for the model actor, plus the photos that could not be decoded and why
  (the same ImageError text as on the driver). A file whose size or mtime is not the planned one
  (changed since, or another file at that path on this node) is not decoded.
- :meth:`PhotoIO.write`: a chunk of :class:`~phototag.photo_write.WriteJob` -> one
  :class:`~phototag.photo_write.WriteReport` each, through :func:`~phototag.photo_write.write_photo`:
  the very safe write the driver's write stage runs, with this process's own exiftool pool and file
  locks, as many photos at once as it has exiftool processes. A file this node does not see as the
  plan saw it (missing, another size or mtime) is not written. The driver alone writes the index, from
  the reports.

It imports neither Ray nor torch: it runs in a Ray worker process, but is plain Python.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phototag.config import MetadataSettings
from phototag.exiftool import MetadataError
from phototag.failures import photo_failure
from phototag.imaging import ImageError, is_raw_path, load_rgb, resize_for_model
from phototag.metadata import ExifToolSession
from phototag.photo_write import WriteJob, WriteReport, write_photo, writer_name


@dataclass(frozen=True)
class DecodeRequest:
    """One photo to decode on a node: its path and the size and mtime the plan saw."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class DecodeSpec:
    """How the model wants its pixels: the input size, PIL's resample filter, draft decoding allowed."""

    input_size: int
    resample: int
    draft: bool


@dataclass(frozen=True)
class Decoded:
    """What the driver hears of a decoded chunk (the pixels go to the model actor, not to it): the
    photos that could not be decoded, by position, as (reason, transient?), and who decoded."""

    failed: dict[int, tuple[str, bool]]
    decoder: str


class PhotoIO:
    """Decodes photos and writes their metadata on one node (see the module docstring)."""

    def __init__(self, metadata: MetadataSettings, processes: int = 2) -> None:
        self.session = ExifToolSession.from_settings(metadata, processes=max(1, processes))

    def describe(self) -> dict[str, Any]:
        """Where this actor runs, and how many exiftool processes it writes with."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "processes": self.session.processes}

    def decode(self, requests: Sequence[DecodeRequest], spec: DecodeSpec) -> tuple[np.ndarray, Decoded]:
        """The decodable photos' pixels (N x S x S x 3 uint8, in request order), and which could not be
        decoded and why (a Ray method with two returns: the driver takes only the second). The chunk is
        decoded on as many threads as the node has cores (Pillow decodes without the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(len(requests), os.cpu_count() or 1))) as pool:
            results = list(pool.map(lambda request: self._decode_one(request, spec), requests))
        pixels = [result for result in results if isinstance(result, np.ndarray)]
        failed = {number: result for number, result in enumerate(results) if isinstance(result, tuple)}
        shape = (0, spec.input_size, spec.input_size, 3)
        stacked = np.stack(pixels) if pixels else np.zeros(shape, dtype=np.uint8)
        return stacked, Decoded(failed, writer_name())

    def _decode_one(self, request: DecodeRequest, spec: DecodeSpec) -> np.ndarray | tuple[str, bool]:
        path = Path(request.path)
        try:
            problem = _not_as_planned(path, request.size, request.mtime_ns)
            if problem:
                return problem
            preview = self.session.preview(path) if is_raw_path(path) else None
            image = load_rgb(path, min_side=spec.input_size, draft=spec.draft, preview=preview)
            return resize_for_model(image, spec.input_size, spec.resample)
        except (ImageError, MetadataError, OSError) as exc:  # the photo's trouble, as on the driver
            return photo_failure(exc)

    def write(self, jobs: Sequence[WriteJob], retried: bool = False) -> list[WriteReport]:
        """One report per job, in order. A file this node does not see as planned (missing: the library
        not mounted here; another size or mtime: changed since, or another file at that path) is not
        written: a transient failure, which the next run retries. (A retried write skips the check: its
        lost first try may have changed the file, which :func:`~phototag.photo_write.write_photo` sorts out.)"""
        reports: dict[int, WriteReport] = {}
        todo: list[tuple[int, WriteJob]] = []
        for number, job in enumerate(jobs):
            planned = job.snapshot.stamps[0] if job.snapshot is not None else None
            problem = None
            if not retried and planned is not None:
                problem = _not_as_planned(Path(job.path), planned[1], planned[2])
            if problem:
                reports[number] = WriteReport(False, reason=problem[0], transient=True, writer=writer_name())
            else:
                todo.append((number, job))
        from concurrent.futures import ThreadPoolExecutor

        # as many at once as this node has exiftool processes (its file locks keep one photo to one write)
        with ThreadPoolExecutor(max_workers=max(1, min(self.session.processes, len(todo)))) as pool:
            written = list(pool.map(lambda item: write_photo(self.session, item[1], retried=retried), todo))
        for (number, _), report in zip(todo, written, strict=True):
            reports[number] = report
        return [reports[number] for number in range(len(jobs))]

    def close(self) -> None:
        """Stop this node's exiftool processes."""
        self.session.close()


def _not_as_planned(path: Path, size: int, mtime_ns: int) -> tuple[str, bool] | None:
    """Why this node must not touch ``path`` (as a transient failure), or None: the file is missing here,
    or its size or mtime is not what the driver's plan saw."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return f"{path}: not found on {socket.gethostname()} (is the library mounted there at the same path?)", True
    if (info.st_size, info.st_mtime_ns) != (size, mtime_ns):
        return (
            f"{path}: the file on {socket.gethostname()} is not the one planned (changed since, or the library "
            "is not mounted at the same path on every node)",
            True,
        )
    return None
