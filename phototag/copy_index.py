"""Copy a whole index into another database: ``phototag reindex --copy-to postgresql://...``.

Every row of ``photos`` (statuses, captions, undo data, dates, failures) and of ``photo_embeddings``
(the caption vectors) goes across as it is, ids and ``seq`` kept, so the copy is the same index: a
backfill against it captions nothing twice and ``phototag restore`` can still undo what phototag wrote.
The target's schema is made by :class:`~phototag.index.PhotoIndex` (its own search column and indexes
follow from the rows). The copy is one transaction on the target: interrupted, it leaves the target as
it was. A target that already holds photos is refused unless the caller says to replace them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, text

from phototag.index import Base, Photo, PhotoEmbedding, PhotoIndex

BATCH = 2000


class TargetNotEmpty(Exception):
    """The target index already holds photos; the message says how many and how to replace them."""


@dataclass
class Copied:
    photos: int = 0
    vectors: int = 0


def copy_index(
    source: PhotoIndex,
    target: PhotoIndex,
    *,
    replace: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> Copied:
    """Copy every photo row and vector of ``source`` into ``target``; ``on_batch(rows)`` after each batch."""
    photos, vectors = Base.metadata.tables["photos"], Base.metadata.tables["photo_embeddings"]
    copied = Copied()
    with target.engine.begin() as out:
        present = out.scalar(select(func.count()).select_from(photos)) or 0
        if present and not replace:
            raise TargetNotEmpty(f"the index {target.location} already holds {present} photos")
        out.execute(delete(vectors))
        out.execute(delete(photos))
        for table, key in ((photos, photos.c.id), (vectors, vectors.c.seq)):
            last = None
            while True:
                stmt = select(table).order_by(key).limit(BATCH)
                if last is not None:
                    stmt = stmt.where(key > last)
                with source.engine.connect() as src:
                    rows = [dict(row._mapping) for row in src.execute(stmt)]
                if not rows:
                    break
                out.execute(insert(table), rows)
                last = rows[-1][key.name]
                if table is photos:
                    copied.photos += len(rows)
                else:
                    copied.vectors += len(rows)
                if on_batch is not None:
                    on_batch(len(rows))
        if out.dialect.name == "postgresql":  # rows came with their ids: new ones continue after them
            for table_name, column in (("photos", "id"), ("photo_embeddings", "seq")):
                out.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table_name}', '{column}'), "
                        f"coalesce((SELECT max({column}) FROM {table_name}), 0) + 1, false)"
                    )
                )
    return copied


def row_count(index: PhotoIndex) -> int:
    """Photos and vectors in ``index`` (the progress total of a copy)."""
    with index.engine.connect() as conn:
        photos = conn.scalar(select(func.count()).select_from(Photo.__table__)) or 0
        vectors = conn.scalar(select(func.count()).select_from(PhotoEmbedding.__table__)) or 0
    return int(photos) + int(vectors)
