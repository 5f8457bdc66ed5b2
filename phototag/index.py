"""The index: one row per photo, FTS5 over captions, and the queries the CLI needs.

A SQLite file by default; a PostgreSQL database shared by several machines when the index is a URL
(:mod:`phototag.database`): the same models and queries, its schema made by :mod:`phototag.pg_schema`.

The index is also the persistent work queue: a photo is ``pending`` until its metadata write has
succeeded, then ``done`` (or ``failed`` with a one-line reason); ``restored`` once ``phototag restore``
put back what it said before phototag (kept, so that backfill and watch leave it alone while unchanged).
A ``pending`` row that already carries a caption is a write that was planned but may not have
happened; the pipeline checks the file before trusting it. A photo no longer on disk is ``missing``
(see :mod:`phototag.sweep`): its row keeps everything, for when the photo comes back.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy import (
    Index as SqlIndex,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from phototag.config import make_private_dir
from phototag.database import IndexLocation
from phototag.fingerprint import content_hash
from phototag.migrations import is_current, upgrade

# Status names and caption sources live in phototag.schema (plain sqlite3 readers need them too);
# they are re-exported here, where the rest of phototag imports them from.
from phototag.schema import BUSY_TIMEOUT_S, DONE, FAILED, MISSING, PENDING, RESTORED
from phototag.schema import SOURCE_HUMAN as SOURCE_HUMAN
from phototag.schema import SOURCE_MODEL as SOURCE_MODEL


class Base(DeclarativeBase):
    pass


# A 64-bit integer on PostgreSQL (file sizes, nanosecond times), SQLite's INTEGER (already 64 bits) there.
Int64 = Integer().with_variant(BigInteger(), "postgresql")


class Photo(Base):
    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)
    size: Mapped[int] = mapped_column(Int64)
    mtime_ns: Mapped[int] = mapped_column(Int64)
    content_hash: Mapped[str | None] = mapped_column(String, nullable=True)
    status: Mapped[str] = mapped_column(String, default=PENDING)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # "transient" (disk full, I/O error, exiftool died: retried by the next run) or "permanent"
    # (see phototag.failures), and how many tries in a row have failed.
    failure_kind: Mapped[str | None] = mapped_column(String, nullable=True)
    tries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    caption: Mapped[str | None] = mapped_column(Text, nullable=True)
    caption_source: Mapped[str | None] = mapped_column(String, nullable=True)
    keywords: Mapped[str] = mapped_column(Text, default="")
    model_name: Mapped[str | None] = mapped_column(String, nullable=True)
    prompt: Mapped[str | None] = mapped_column(String, nullable=True)
    written_to: Mapped[str | None] = mapped_column(String, nullable=True)
    original_metadata: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time, onupdate=time.time)
    captioned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When the photo was taken, local wall-clock time "YYYY-MM-DDTHH:MM:SS" (EXIF DateTimeOriginal,
    # else the file's mtime before phototag wrote to it); ISO text sorts and compares as dates.
    taken_at: Mapped[str | None] = mapped_column(String, nullable=True)
    # When a sweep found the photo gone (status ``missing``); None otherwise.
    missing_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The file's mtime when phototag first planned it, before any write of its own changed it: the
    # taken date of a photo without EXIF date (kept across rewrites and restores).
    mtime_before_write_ns: Mapped[int | None] = mapped_column(Int64, nullable=True)

    __table_args__ = (
        SqlIndex("ix_photos_status", "status"),
        SqlIndex("ix_photos_hash", "content_hash"),
        SqlIndex("ix_photos_taken_at", "taken_at"),
    )

    def original(self) -> dict[str, Any]:
        return json.loads(self.original_metadata) if self.original_metadata else {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "caption": self.caption,
            "caption_source": self.caption_source,
            "keywords": self.keywords.split() if self.keywords else [],
            "model": self.model_name,
            "prompt": self.prompt,
            "written_to": self.written_to,
            "failure_reason": self.failure_reason,
            "failure_kind": self.failure_kind,
            "tries": self.tries,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "content_hash": self.content_hash,
            "original_metadata": self.original(),
            "captioned_at": self.captioned_at,
            "updated_at": self.updated_at,
            "taken_at": self.taken_at,
            "missing_since": self.missing_since,
            "mtime_before_write_ns": self.mtime_before_write_ns,
        }


class PhotoEmbedding(Base):
    """A caption's sentence embedding (float32, unit length) and the model that made it.

    ``seq`` only grows (AUTOINCREMENT): a new or replaced vector always gets a higher one, which is
    how the search's memory-mapped copy of the vectors (:mod:`phototag.vectors`) catches up. A
    trigger drops the vector when its caption changes, so a vector always belongs to the caption.
    """

    __tablename__ = "photo_embeddings"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), unique=True)
    model: Mapped[str] = mapped_column(String)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (SqlIndex("ix_embeddings_model", "model"), {"sqlite_autoincrement": True})


def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    # Switching a new file to WAL needs a moment alone with it; a process opening the same new index
    # at that instant is told "locked" at once (no busy wait), so it tries again.
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_private(path: Path) -> None:
    """Create the index file owner-only (0600), in a folder created owner-only (0700), if missing.

    The index holds the captions and paths of private photos. SQLite gives the -wal and -shm files
    the database file's permissions, so they are owner-only too. An existing file or folder keeps
    the permissions its owner chose.
    """
    make_private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
    os.chmod(path, 0o600)


class PhotoIndex:
    """Owns the engine; hands out short sessions. Safe to share across threads.

    ``where`` is the SQLite file, or an :class:`~phototag.database.IndexLocation` (a file or a server
    such as PostgreSQL: :mod:`phototag.pg_schema` makes its schema)."""

    def __init__(self, where: Path | IndexLocation) -> None:
        self.location = where if isinstance(where, IndexLocation) else IndexLocation(Path(where))
        self.path = self.location.path  # for a server: the local name of its side files
        if self.location.is_server:
            self.engine: Engine = create_engine(self.location.engine_url(), future=True, pool_pre_ping=True)
        else:
            create_private(self.path)
            self.engine = create_engine(f"sqlite:///{self.path}", future=True)
            event.listen(self.engine, "connect", _set_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._ensure_schema()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _ensure_schema(self) -> None:
        """Create or upgrade the schema (:mod:`phototag.migrations`: the SQL that makes the tables these
        models map); a current index is opened without writing anything."""
        if self.location.is_server:
            from phototag.pg_schema import ensure_schema

            ensure_schema(self.engine, Base.metadata)
            return
        raw = self.engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert isinstance(conn, sqlite3.Connection)  # the engine is always sqlite:/// (pysqlite)
            if not is_current(conn):
                upgrade(conn)
        finally:
            raw.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # -- lookups ---------------------------------------------------------------------------------

    def get(self, path: str | Path) -> Photo | None:
        with self.session() as session:
            return session.scalar(select(Photo).where(Photo.path == str(path)))

    def get_many(self, paths: Sequence[str | Path]) -> dict[str, Photo]:
        """The rows of those of ``paths`` the index has, by path: one query (keep ``paths`` to a few
        hundred: each is a bound parameter)."""
        if not paths:
            return {}
        with self.session() as session:
            rows = session.scalars(select(Photo).where(Photo.path.in_([str(path) for path in paths])))
            return {row.path: row for row in rows}

    def counts(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(select(Photo.status, func.count()).group_by(Photo.status)).all()
        counts = {PENDING: 0, DONE: 0, FAILED: 0, MISSING: 0, RESTORED: 0}
        counts.update({status: n for status, n in rows})
        return counts

    def failures(self, limit: int | None = None) -> list[Photo]:
        with self.session() as session:
            stmt = select(Photo).where(Photo.status == FAILED).order_by(Photo.path)
            if limit:
                stmt = stmt.limit(limit)
            return list(session.scalars(stmt))

    def pending(self, limit: int | None = None) -> list[Photo]:
        with self.session() as session:
            stmt = select(Photo).where(Photo.status == PENDING).order_by(Photo.id)
            if limit:
                stmt = stmt.limit(limit)
            return list(session.scalars(stmt))


def _under(folder: Path) -> Any:
    """SQL condition: the row's path lies under ``folder``."""
    prefix = str(folder).rstrip(os.sep) + os.sep
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return Photo.path.like(escaped + "%", escape="\\")


def photos_under(session: Session, folders: Sequence[Path]) -> Iterator[Photo]:
    """Rows whose path lies under any of ``folders``."""
    for folder in folders:
        yield from session.scalars(select(Photo).where(_under(folder)))


# -- restore: the rows a restore walks, and forgetting them -------------------------------------------


def _path_filter(paths: Sequence[Path]) -> Any:
    """SQL condition: the row of a photo given by path, or any row under a folder given by path."""
    from sqlalchemy import or_

    conditions = []
    for path in paths:
        conditions.append(Photo.path == str(path))
        prefix = str(path).rstrip(os.sep) + os.sep
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(Photo.path.like(escaped + "%", escape="\\"))
    return or_(*conditions)


def count_rows(index: PhotoIndex, paths: Sequence[Path] | None = None) -> int:
    """How many rows :func:`iter_rows` will yield."""
    stmt = select(func.count()).select_from(Photo)
    if paths is not None:
        stmt = stmt.where(_path_filter(paths))
    with index.session() as session:
        return int(session.scalar(stmt) or 0)


def iter_rows(index: PhotoIndex, paths: Sequence[Path] | None = None, batch: int = 500) -> Iterator[Photo]:
    """Rows for ``paths`` (None: every row) in id order, a batch at a time (a million rows never sit in
    memory). Rows deleted while iterating are simply not seen again."""
    last = 0
    while True:
        stmt = select(Photo).where(Photo.id > last).order_by(Photo.id).limit(batch)
        if paths is not None:
            stmt = stmt.where(_path_filter(paths))
        with index.session() as session:
            rows = list(session.scalars(stmt))
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def forget(index: PhotoIndex, row_id: int) -> None:
    """Delete one row (a restored photo that is no longer on disk)."""
    with index.transaction() as session:
        row = session.get(Photo, row_id)
        if row is not None:
            session.delete(row)


def mark_restored(index: PhotoIndex, row_id: int, path: Path) -> None:
    """After a restore: the row keeps the photo (status ``restored``, its size, mtime and hash as
    restored) but no caption, so search no longer finds it and backfill and watch leave it alone until
    its content changes. What it said before phototag and when it was taken stay recorded."""
    try:
        stat = os.stat(path)
        digest = content_hash(path)
    except OSError:
        stat, digest = None, None
    with index.transaction() as session:
        row = session.get(Photo, row_id)
        if row is None:
            return
        row.status, row.failure_reason = RESTORED, None
        row.caption, row.caption_source, row.keywords = None, None, ""
        row.model_name, row.prompt, row.written_to, row.captioned_at = None, None, None, None
        if stat is not None:
            row.size, row.mtime_ns, row.content_hash = stat.st_size, stat.st_mtime_ns, digest
