"""A photo's content fingerprint: how a photo that moved or was renamed is recognised as itself.

Reads a little of the file (never all of it: a RAW can be 100 MB) and never writes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def content_hash(path: Path, head: int = 1 << 20, tail: int = 1 << 16) -> str:
    """A cheap content fingerprint: size + first 1 MiB + last 64 KiB (finds moved files)."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(head))
        if size > head:
            handle.seek(max(head, size - tail))
            digest.update(handle.read(tail))
    return digest.hexdigest()
