from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import select, text

from phototag.index import DONE, MISSING, Photo, PhotoIndex
from phototag.migrations import SCHEMA_VERSION
from phototag.query import parse_query
from phototag.search import Finder, SearchHit, connect
from phototag.sweep import sweep


def add(index: PhotoIndex, path: str, caption: str, status: str = DONE) -> None:
    with index.transaction() as session:
        session.add(Photo(path=path, size=1, mtime_ns=1, status=status, caption=caption, keywords=""))


def search(index: PhotoIndex, query: str, limit: int = 20) -> list[SearchHit]:
    """Keyword hits from the search engine, over the index's own file."""
    conn = connect(index.path)
    try:
        return Finder(conn).search(parse_query(query), limit=limit)
    finally:
        conn.close()


def test_pragmas(tmp_path: Path) -> None:
    index = PhotoIndex(tmp_path / "i.db")
    with index.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


def test_fts_follows_updates_and_deletes(tmp_path: Path) -> None:
    index = PhotoIndex(tmp_path / "i.db")
    add(index, "/p/a.jpg", "a dog on the beach")
    add(index, "/p/b.jpg", "a cat on a sofa")
    add(index, "/p/c.jpg", "a dog in the snow", status="pending")
    assert [h.path for h in search(index, "dog")] == ["/p/a.jpg"]  # pending rows are not results
    with index.transaction() as session:
        row = session.scalar(select(Photo).where(Photo.path == "/p/a.jpg"))
        row.caption = "a horse in a field"
    assert search(index, "dog") == []
    assert [h.path for h in search(index, "horses")] == ["/p/a.jpg"]
    with index.transaction() as session:
        session.delete(session.scalar(select(Photo).where(Photo.path == "/p/b.jpg")))
    assert search(index, "cat") == []


def test_all_words_rank_before_some_words(tmp_path: Path) -> None:
    index = PhotoIndex(tmp_path / "i.db")
    add(index, "/p/1.jpg", "a beach with umbrellas")
    add(index, "/p/2.jpg", "a dog running on the beach")
    add(index, "/p/3.jpg", "a dog sleeping")
    hits = [h.path for h in search(index, "dog on beach")]
    assert hits[0] == "/p/2.jpg" and set(hits) == {"/p/1.jpg", "/p/2.jpg", "/p/3.jpg"}
    assert [h.path for h in search(index, "dog on beach", limit=1)] == ["/p/2.jpg"]


def test_sweep_marks_missing_only_under_the_folder(tmp_path: Path) -> None:
    index = PhotoIndex(tmp_path / "i.db")
    kept = tmp_path / "lib" / "kept.jpg"
    kept.parent.mkdir()
    kept.write_bytes(b"x")
    add(index, str(kept), "x")
    add(index, str(tmp_path / "lib" / "gone.jpg"), "x")
    add(index, str(tmp_path / "lib_other" / "gone.jpg"), "x")  # a sibling folder sharing the prefix
    add(index, str(tmp_path / "l_b" / "gone.jpg"), "x")  # LIKE wildcards in the prefix are escaped
    assert sweep(index, [tmp_path / "lib"]).missing == [str(tmp_path / "lib" / "gone.jpg")]
    assert index.counts() == {"pending": 0, "done": 3, "failed": 0, MISSING: 1, "restored": 0}
    gone = index.get(tmp_path / "lib" / "gone.jpg")
    assert gone is not None and gone.caption == "x" and gone.missing_since is not None  # kept, not deleted
    assert sweep(index, [tmp_path / "lib"]).missing == []  # already missing: not marked again


def _open_at(path: str, barrier: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    PhotoIndex(Path(path)).close()


def test_processes_creating_one_new_index_at_once(tmp_path: Path) -> None:
    """A daemon starting while `phototag status` runs: both create the schema; neither may fail."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for round_ in range(4):
        path = str(tmp_path / f"new{round_}.db")
        barrier = context.Barrier(6)
        procs = [context.Process(target=_open_at, args=(path, barrier)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * 6


def test_a_current_index_opens_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "i.db"
    PhotoIndex(path).close()
    wal = tmp_path / "i.db-wal"
    size = wal.stat().st_size if wal.exists() else 0
    PhotoIndex(path).counts()
    assert (wal.stat().st_size if wal.exists() else 0) == size


def test_a_version_2_index_gains_the_pre_write_mtime_and_the_restored_count(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    index = PhotoIndex(path)
    with index.transaction() as session:
        session.add(Photo(path="/p/a.jpg", size=1, mtime_ns=1, status="done", caption="a dog"))
    index.close()
    raw = sqlite3.connect(path)  # as phototag 2 left it: no mtime_before_write_ns
    raw.executescript("ALTER TABLE photos DROP COLUMN mtime_before_write_ns; PRAGMA user_version=2;")
    raw.close()
    index = PhotoIndex(path)
    try:
        row = index.get("/p/a.jpg")
        assert row is not None and row.caption == "a dog" and row.mtime_before_write_ns is None
        assert index.counts() == {"pending": 0, "done": 1, "failed": 0, "missing": 0, "restored": 0}
    finally:
        index.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()
