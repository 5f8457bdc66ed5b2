"""Undoing phototag's writes (``phototag restore``): a photo gets back the description and keywords it
had before phototag's first write, from the undo data its index row keeps, and the row is marked
restored (or missing, when the photo is not on disk, keeping the undo data for later)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from phototag.exiftool import MetadataError
from phototag.index import RESTORED, SOURCE_MODEL, Photo, PhotoIndex, iter_rows, mark_restored
from phototag.metadata import ExifToolSession
from phototag.planning import FAILED_OUTCOME, Outcome
from phototag.sweep import mark_missing

UNCHANGED = "unchanged"  # nothing to put back: the photo already says what it said before
GONE = "gone"  # not on disk: kept as missing, undo data and all

__all__ = ["GONE", "RESTORED", "UNCHANGED", "restore_row", "restore_rows"]


def restore_rows(
    index: PhotoIndex, exiftool: ExifToolSession, paths: Sequence[Path] | None = None
) -> Iterator[tuple[Outcome, bool]]:
    """Restore every photo of the index under ``paths`` (all with None), one :func:`restore_row` each."""
    for row in iter_rows(index, paths):
        yield restore_row(exiftool, index, row)


def restore_row(exiftool: ExifToolSession, index: PhotoIndex, row: Photo) -> tuple[Outcome, bool]:
    """Restore one photo from its index row, then mark the row restored (a photo no longer on disk:
    marked missing, its undo data kept). Returns the outcome and whether a sidecar phototag created
    was removed. A failure keeps the row as it was (and says why)."""
    path = Path(row.path)
    if not os.path.lexists(path):
        # an unmounted share looks like this: keep the undo data (marked missing) for when it is back
        mark_missing(index, row.id)
        return Outcome(path, GONE), False
    original = row.original()
    if not original or row.caption_source != SOURCE_MODEL:
        # phototag never wrote to it (a person's description was kept, or it could not be read): any
        # difference from the recorded values is somebody else's edit, which stays
        mark_restored(index, row.id, path)
        return Outcome(path, UNCHANGED), False
    try:
        result = exiftool.restore(path, original)
    except MetadataError as exc:
        return Outcome(path, FAILED_OUTCOME, reason=str(exc)), False
    mark_restored(index, row.id, path)
    return Outcome(path, RESTORED if result.changed else UNCHANGED), result.sidecar == "removed"
