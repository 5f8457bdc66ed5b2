"""The SQLite index: one row per photo, FTS5 over captions, and the queries the CLI needs.

The index is also the persistent work queue: a photo is ``pending`` until its metadata write has
succeeded, then ``done`` (or ``failed`` with a one-line reason). A ``pending`` row that already
carries a caption is a write that was planned but may not have happened; the pipeline checks the file
before trusting it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Float,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
)
from sqlalchemy import (
    Index as SqlIndex,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from phototag.search import Query, parse_query

PENDING = "pending"
DONE = "done"
FAILED = "failed"

SOURCE_MODEL = "model"
SOURCE_HUMAN = "human"

SCHEMA_VERSION = 1


class Base(DeclarativeBase):
    pass


class Photo(Base):
    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str | None] = mapped_column(String, nullable=True)
    status: Mapped[str] = mapped_column(String, default=PENDING)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
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

    __table_args__ = (
        SqlIndex("ix_photos_status", "status"),
        SqlIndex("ix_photos_hash", "content_hash"),
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
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "content_hash": self.content_hash,
            "original_metadata": self.original(),
            "captioned_at": self.captioned_at,
            "updated_at": self.updated_at,
        }


# FTS5 over the caption and keywords, an external-content table kept in sync by triggers.
_FTS_DDL = [
    """CREATE VIRTUAL TABLE IF NOT EXISTS photos_fts USING fts5(
        caption, keywords, content='photos', content_rowid='id', tokenize='porter unicode61')""",
    """CREATE TRIGGER IF NOT EXISTS photos_ai AFTER INSERT ON photos BEGIN
        INSERT INTO photos_fts(rowid, caption, keywords) VALUES (new.id, new.caption, new.keywords);
    END""",
    """CREATE TRIGGER IF NOT EXISTS photos_ad AFTER DELETE ON photos BEGIN
        INSERT INTO photos_fts(photos_fts, rowid, caption, keywords)
        VALUES ('delete', old.id, old.caption, old.keywords);
    END""",
    """CREATE TRIGGER IF NOT EXISTS photos_au AFTER UPDATE OF caption, keywords ON photos BEGIN
        INSERT INTO photos_fts(photos_fts, rowid, caption, keywords)
        VALUES ('delete', old.id, old.caption, old.keywords);
        INSERT INTO photos_fts(rowid, caption, keywords) VALUES (new.id, new.caption, new.keywords);
    END""",
]


def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


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


@dataclass(frozen=True)
class SearchHit:
    path: str
    caption: str
    score: float
    caption_source: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "caption": self.caption, "score": self.score, "source": self.caption_source}


class PhotoIndex:
    """Owns the engine; hands out short sessions. Safe to share across threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(f"sqlite:///{self.path}", future=True)
        event.listen(self.engine, "connect", _set_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        Base.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            for ddl in _FTS_DDL:
                conn.execute(text(ddl))
            conn.execute(text(f"PRAGMA user_version={SCHEMA_VERSION}"))

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

    def counts(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(select(Photo.status, func.count()).group_by(Photo.status)).all()
        counts = {PENDING: 0, DONE: 0, FAILED: 0}
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

    # -- search ----------------------------------------------------------------------------------

    def search(self, query: str | Query, limit: int = 20) -> list[SearchHit]:
        """Best-first hits: every content word matched first, then photos matching some of them."""
        parsed = parse_query(query) if isinstance(query, str) else query
        hits: list[SearchHit] = []
        seen: set[str] = set()
        with self.session() as session:
            for expression in (parsed.all_words(), parsed.any_words()):
                if expression is None or len(hits) >= limit:
                    continue
                rows = session.execute(
                    text(
                        "SELECT p.path, p.caption, bm25(photos_fts) AS rank, p.caption_source "
                        "FROM photos_fts JOIN photos p ON p.id = photos_fts.rowid "
                        "WHERE photos_fts MATCH :expr AND p.status = :done "
                        "ORDER BY rank LIMIT :limit"
                    ),
                    {"expr": expression, "done": DONE, "limit": limit + len(hits)},
                ).all()
                for path, caption, rank, source in rows:
                    if path in seen or len(hits) >= limit:
                        continue
                    seen.add(path)
                    hits.append(SearchHit(path, caption or "", -float(rank), source))
        return hits


def _under(folder: Path) -> Any:
    """SQL condition: the row's path lies under ``folder``."""
    prefix = str(folder).rstrip(os.sep) + os.sep
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return Photo.path.like(escaped + "%", escape="\\")


def photos_under(session: Session, folders: Sequence[Path]) -> Iterator[Photo]:
    """Rows whose path lies under any of ``folders``."""
    for folder in folders:
        yield from session.scalars(select(Photo).where(_under(folder)))


def remove_missing(index: PhotoIndex, folders: Sequence[Path]) -> list[str]:
    """Sweep: delete rows under ``folders`` whose file is gone. Returns the removed paths.

    Streams ids and paths instead of loading every row as an object, so the sweep at the end of a
    backfill takes the same memory for a million photos as for a thousand.
    """
    missing: list[tuple[int, str]] = []
    with index.session() as session:
        for folder in folders:
            query = select(Photo.id, Photo.path).where(_under(folder)).execution_options(yield_per=2000)
            missing.extend((row_id, path) for row_id, path in session.execute(query) if not os.path.exists(path))
    removed: list[str] = []
    with index.transaction() as session:
        for row_id, path in missing:
            if os.path.exists(path):  # back meanwhile
                continue
            # id and path: a row moved meanwhile (its path updated by another thread) is not touched
            if session.execute(delete(Photo).where(Photo.id == row_id, Photo.path == path)).rowcount:
                removed.append(path)
    return removed
