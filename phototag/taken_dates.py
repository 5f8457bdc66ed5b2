"""Taken dates for an index that lacks them (``phototag reindex --dates``).

A photo's taken date is its EXIF DateTimeOriginal, else the file's modification time from before
phototag first wrote to it; never the time of phototag's own write. The work goes in batches of rows
by id, each batch committed, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from phototag.exiftool import MetadataError
from phototag.index import DONE, Photo, PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.mwg import local_time_iso

BATCH = 200

_MISSING = (Photo.status == DONE) & Photo.taken_at.is_(None)


def missing_dates(index: PhotoIndex) -> int:
    """How many captioned photos have no taken date yet."""
    with index.session() as session:
        return session.scalar(select(func.count()).select_from(Photo).where(_MISSING)) or 0


def record_taken_dates(
    index: PhotoIndex, exiftool: ExifToolSession, on_batch: Callable[[int], object] | None = None
) -> int:
    """Record the taken date of every captioned photo that lacks one and whose date can be known.
    ``on_batch(n)`` after each batch of ``n`` rows looked at. Returns how many dates were recorded."""
    recorded = last = 0
    while True:
        with index.session() as session:
            rows = session.scalars(select(Photo).where(_MISSING, Photo.id > last).order_by(Photo.id).limit(BATCH)).all()
        if not rows:
            return recorded
        last = rows[-1].id
        found: dict[int, str] = {}
        for row in rows:
            try:
                exif_date = exiftool.read(Path(row.path)).taken_at
                mtime_ns = pre_write_mtime_ns(row, os.stat(row.path).st_mtime_ns)
            except (MetadataError, OSError):
                continue  # gone or unreadable: the next backfill sweeps or retries it
            if exif_date or mtime_ns is not None:
                found[row.id] = exif_date or local_time_iso(mtime_ns or 0)
        with index.transaction() as session:
            for photo_id, taken_at in found.items():
                stored = session.get(Photo, photo_id)
                if stored is not None:
                    stored.taken_at = taken_at
        recorded += len(found)
        if on_batch is not None:
            on_batch(len(rows))


def pre_write_mtime_ns(row: Photo, mtime_now_ns: int) -> int | None:
    """The photo's modification time from before phototag wrote it: the one recorded when phototag
    first planned it; for a row from an older index, the current mtime only if it predates the row
    (phototag has not changed it since, or kept it). None when unknown: the current mtime may be the
    time of phototag's own write, which is not when the photo was taken."""
    if row.mtime_before_write_ns is not None:
        return row.mtime_before_write_ns
    if row.written_to is None or mtime_now_ns < (row.created_at or 0) * 1e9:
        return mtime_now_ns
    return None
