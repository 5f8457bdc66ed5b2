"""One photo's caption write, the same wherever it runs: the pipeline's write stage on this machine, or
a writer actor on a Ray node (``--ray-io``, :mod:`phototag.cluster_worker`).

:func:`write_photo` runs the session's safe write (temp copy, verify read, rename; the per-photo file
lock of the process it runs in) and returns a :class:`WriteReport`: everything the index writer needs
to record the photo (where the caption went, or why it failed; the file's size, mtime and fingerprint
after the write), so the machine that keeps the index never reads the photo again. A report is small
and picklable: on a cluster it is all that comes back to the driver.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from phototag.exiftool import MetadataError
from phototag.failures import photo_failure
from phototag.fingerprint import content_hash
from phototag.metadata import ExifToolSession, MetadataSnapshot
from phototag.mwg import existing_metadata, normalize_caption, normalize_keywords
from phototag.sidecars import is_raw


@dataclass(frozen=True)
class WriteJob:
    """What one photo's write needs: the caption, its keywords and the plan's metadata read."""

    path: Path
    caption: str
    keywords: tuple[str, ...] = ()
    snapshot: MetadataSnapshot | None = None


@dataclass(frozen=True)
class WriteReport:
    """The outcome of one write, for the index. ``written_to``: "embedded" or the sidecar's path when
    ``ok``; else ``reason`` (one line) and whether it was ``transient``. ``stat``: the file's size,
    mtime and fingerprint after the write (None: it could not be read). ``writer``: host and pid of the
    process that wrote (on a cluster, the node's writer). ``already``: a retried write found the
    caption already there (its first try renamed the copy, then its report was lost) and wrote nothing."""

    ok: bool
    written_to: str = ""
    reason: str = ""
    transient: bool = False
    stat: tuple[int, int, str] | None = None
    fallback_reason: str | None = None
    writer: str = ""
    already: bool = False


def writer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def write_photo(session: ExifToolSession, job: WriteJob, *, retried: bool = False) -> WriteReport:
    """Write ``job`` through ``session`` (see the module docstring); a photo's own trouble
    (MetadataError, OSError) is the report's reason, never raised.

    ``retried``: this write was sent before to a process that was lost before it answered. If the
    photo changed since the plan's read and now carries exactly this caption and keywords, that first
    try got as far as its rename: the write is done, and writing it again would only rewrite the file.
    """
    try:
        if retried and (done := _already_written(session, job)) is not None:
            return WriteReport(True, written_to=done, stat=_stat(job.path), writer=writer_name(), already=True)
        written = session.write(job.path, job.caption, job.keywords, snapshot=job.snapshot)
    except (MetadataError, OSError) as exc:
        reason, transient = photo_failure(exc, "cannot write file")
        return WriteReport(False, reason=reason, transient=transient, writer=writer_name())
    target = str(written.target) if written.kind == "sidecar" else "embedded"
    return WriteReport(
        True, written_to=target, stat=_stat(job.path), fallback_reason=written.fallback_reason, writer=writer_name()
    )


def write_photos(session: ExifToolSession, jobs: Sequence[WriteJob], *, retried: bool = False) -> list[WriteReport]:
    """:func:`write_photo` for each job, one after the other (the pipeline runs one such call per write
    thread, each with an exiftool process of its own)."""
    return [write_photo(session, job, retried=retried) for job in jobs]


def _already_written(session: ExifToolSession, job: WriteJob) -> str | None:
    """Where the caption is, if a lost first try of this write already put it there (else None).

    Where the caption belongs in the photo itself (modes embed and both, a file that is not RAW), only
    the photo's own tags count: in mode both the sidecar is written first, so a try lost between the
    two has the caption in the sidecar alone, and the photo still needs it. (A photo that cannot take it
    at all, read-only or refused, gets its sidecar written again: the same bytes.)"""
    snapshot = job.snapshot
    if snapshot is None or snapshot.current():
        return None  # unchanged since the plan read it: the first try never renamed anything
    now = session.snapshot(job.path)
    in_sidecar = session.mode == "sidecar" or is_raw(job.path)
    existing = now.existing if in_sidecar else existing_metadata(job.path, now.file_tags, now.sidecar, None)
    have = {keyword.casefold() for keyword in existing.keywords}
    wanted = normalize_keywords(job.keywords)
    if existing.description != normalize_caption(job.caption) or any(k.casefold() not in have for k in wanted):
        return None
    return str(now.sidecar) if in_sidecar else "embedded"


def _stat(path: Path) -> tuple[int, int, str] | None:
    """The file after our own write: its new size, mtime and fingerprint."""
    try:
        info = os.stat(path)
        return info.st_size, info.st_mtime_ns, content_hash(path)
    except OSError:
        return None
