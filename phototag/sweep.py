"""The one sweep: rows of photos no longer on disk are marked missing, never deleted; and pruning them.

Backfill (at the end of a walk) and the watch daemon (after a rescan, and for delete events) call
:func:`sweep`. A missing row keeps its caption, source, keywords and original metadata, so a photo that
comes back (a share mounted again, a folder moved back) gets its row back without inference, and
``phototag restore`` can still undo phototag's write. Only :func:`prune` (``phototag prune``) forgets
missing rows, and with them their undo data.

A root that is missing, or holds no photo at all, is never swept: that is what an unmounted share or a
drive that is not plugged in looks like, not a library whose photos were all deleted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from phototag.index import MISSING, RESTORED, SOURCE_MODEL, Photo, PhotoIndex, _path_filter, _under
from phototag.scan import walk_photos

# Rows a sweep leaves as they are when their file is gone: missing ones already are; a restored one
# keeps saying so (a missing row that comes back is planned again, which would caption it again).
_NOT_SWEPT = (MISSING, RESTORED)

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    missing: list[str] = field(default_factory=list)  # paths newly marked missing
    # missing or empty roots with rows under them in the index, left untouched
    skipped_roots: list[Path] = field(default_factory=list)


def sweepable(root: Path) -> bool:
    """A root may be swept when it is a folder holding at least one photo (walking stops at the first)."""
    if not root.is_dir():
        return False
    return next(iter(walk_photos([root])), None) is not None


def _root_of(path: Path, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        if path == root or root in path.parents:
            return root
    return None


def sweep(
    index: PhotoIndex,
    roots: Sequence[Path],
    paths: Sequence[Path] | None = None,
    *,
    exists: Callable[[str], bool] = os.path.exists,
) -> SweepResult:
    """Mark missing the rows under ``roots`` whose file is gone; with ``paths`` (delete events: a photo,
    or a folder) only the rows of those paths, each under one of ``roots``.

    Rows under a root that is missing or holds no photo are left as they are (see the module docstring).
    Streams ids and paths, so a million rows take the memory of a thousand.
    """
    result = SweepResult()
    usable: dict[Path, bool] = {}

    def usable_root(root: Path, session: Session) -> bool:
        if root not in usable:
            usable[root] = sweepable(root)
            indexed = session.scalar(select(Photo.id).where(_under(root)).limit(1)) is not None
            if not usable[root] and indexed:
                result.skipped_roots.append(root)
                log.info("%s is missing or holds no photos (an unmounted share?): no rows swept", root)
        return usable[root]

    if paths is None:
        targets = [(root, root) for root in roots]
    else:
        targets = [(root, path) for path in paths if (root := _root_of(path, roots)) is not None]
    gone: list[tuple[int, str]] = []
    with index.session() as session:
        for root, target in targets:
            if not usable_root(root, session):
                continue
            where = _under(target) if target == root else _path_filter([target])
            query = (
                select(Photo.id, Photo.path)
                .where(where, Photo.status.not_in(_NOT_SWEPT))
                .execution_options(yield_per=2000)
            )
            gone.extend((row_id, path) for row_id, path in session.execute(query) if not exists(path))
    now = time.time()
    with index.transaction() as session:
        for row_id, path in gone:
            if exists(path):  # back meanwhile
                continue
            # id and path: a row moved meanwhile (its path updated by another thread) is not touched
            marked = session.execute(
                update(Photo)
                .where(Photo.id == row_id, Photo.path == path, Photo.status.not_in(_NOT_SWEPT))
                .values(status=MISSING, missing_since=now)
            )
            if cast(CursorResult, marked).rowcount:
                result.missing.append(path)
    return result


def mark_missing(index: PhotoIndex, row_id: int) -> None:
    """Mark one row missing (e.g. ``restore`` met a photo that is not on disk: its undo data stays)."""
    with index.transaction() as session:
        session.execute(
            update(Photo)
            .where(Photo.id == row_id, Photo.status != MISSING)
            .values(status=MISSING, missing_since=time.time())
        )


def has_undo_data(row: Photo) -> bool:
    """Whether ``phototag restore`` would put something back for this row: phototag wrote its caption
    and kept what the photo said before."""
    return row.caption_source == SOURCE_MODEL and bool(row.original_metadata)


def missing_rows(
    index: PhotoIndex, *, older_than_s: float | None = None, paths: Sequence[Path] | None = None
) -> list[Photo]:
    """Missing rows (missing for longer than ``older_than_s``; under ``paths``), by path."""
    stmt = select(Photo).where(Photo.status == MISSING).order_by(Photo.path)
    if older_than_s is not None:
        stmt = stmt.where(Photo.missing_since <= time.time() - older_than_s)
    if paths:
        stmt = stmt.where(_path_filter(paths))
    with index.session() as session:
        return list(session.scalars(stmt))


def prune(index: PhotoIndex, rows: Sequence[Photo]) -> list[Photo]:
    """Forget ``rows`` that are still missing (a photo back meanwhile keeps its row). Returns the forgotten."""
    forgotten = []
    with index.transaction() as session:
        for row in rows:
            current = session.get(Photo, row.id)
            if current is not None and current.status == MISSING and not os.path.lexists(current.path):
                session.delete(current)
                forgotten.append(row)
    return forgotten
