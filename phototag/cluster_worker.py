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
  locks. The driver alone writes the index, from the reports.

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
from phototag.imaging import ImageError, is_raw_path, load_rgb, resize_for_model
from phototag.metadata import ExifToolSession
from phototag.photo_write import WriteJob, WriteReport, write_photos, writer_name
from phototag.stages import photo_failure


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
        return {"host": socket.gethostname(), "pid": os.getpid(), "processes": self.session.processes}

    def decode(self, requests: Sequence[DecodeRequest], spec: DecodeSpec) -> tuple[np.ndarray, Decoded]:
        """The decodable photos' pixels (N x S x S x 3 uint8, in request order), and which could not be
        decoded and why (a Ray method with two returns: the driver takes only the second)."""
        pixels: list[np.ndarray] = []
        failed: dict[int, tuple[str, bool]] = {}
        for number, request in enumerate(requests):
            path = Path(request.path)
            try:
                info = os.stat(path)
                if (info.st_size, info.st_mtime_ns) != (request.size, request.mtime_ns):
                    failed[number] = (
                        f"the file on {socket.gethostname()} is not the one planned (changed since, or the library "
                        "is not mounted at the same path on every node)",
                        True,
                    )
                    continue
                preview = self.session.preview(path) if is_raw_path(path) else None
                image = load_rgb(path, min_side=spec.input_size, draft=spec.draft, preview=preview)
                pixels.append(resize_for_model(image, spec.input_size, spec.resample))
            except FileNotFoundError:
                failed[number] = (f"file not found on {socket.gethostname()} (is the library mounted there?)", True)
            except (ImageError, MetadataError, OSError) as exc:  # the photo's trouble, as on the driver
                failed[number] = photo_failure(exc)
        shape = (0, spec.input_size, spec.input_size, 3)
        stacked = np.stack(pixels) if pixels else np.zeros(shape, dtype=np.uint8)
        return stacked, Decoded(failed, writer_name())

    def write(self, jobs: Sequence[WriteJob], retried: bool = False) -> list[WriteReport]:
        return write_photos(self.session, jobs, retried=retried)

    def close(self) -> None:
        self.session.close()
