"""Which failures are a photo's own, and which are passing trouble that a later run should retry.

A photo that cannot be decoded, or that exiftool refuses, fails the same way every time: it is
*permanent* and waits for ``backfill --retry-failed``. A full disk, an I/O error, an exiftool that died
or an index that was busy say nothing about the photo: such a failure is *transient*, and the next
backfill or daemon rescan tries the photo again, up to :data:`MAX_TRIES` times in a row.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

TRANSIENT = "transient"
PERMANENT = "permanent"

# Transient failures in a row after which a photo waits for --retry-failed like a permanent one.
MAX_TRIES = 3

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
TRANSIENT_ERRNOS = _DISK_FULL_ERRNOS | frozenset(
    {
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.ENOMEM,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ENFILE,
        errno.EMFILE,
    }
)
# Free space below which a failed write is put down to a full disk: the write needs a temp copy.
_SPARE_BYTES = 64 * 1024


def is_transient_os_error(exc: OSError) -> bool:
    return exc.errno in TRANSIENT_ERRNOS


def os_error_reason(exc: OSError) -> str:
    """One line for an OSError; a full disk reads "disk full (...)" whatever the call said."""
    message = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL_ERRNOS:
        return f"disk full ({message})"
    return message


def disk_full(folder: Path, needed: int = 0) -> bool:
    """True when ``folder``'s file system has no room for ``needed`` bytes more (plus a little)."""
    try:
        return shutil.disk_usage(folder).free < needed + _SPARE_BYTES
    except OSError:
        return False


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def photo_failure(exc: BaseException, doing: str = "cannot read file") -> tuple[str, bool]:
    """A per-photo error as (one-line reason, transient?)."""
    from phototag.exiftool import MetadataError  # the metadata rooms' one error (no import cycle here)

    if isinstance(exc, MetadataError):
        return str(exc), exc.transient
    if isinstance(exc, OSError):
        return f"{doing}: {os_error_reason(exc)}", is_transient_os_error(exc)
    return str(exc), False


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none: one line for a reason."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
