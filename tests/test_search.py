"""Ranking and filters against a real index file (the real schema and triggers), without photos."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from phototag import search as search_module
from phototag.embeddings import store_vectors
from phototag.index import DONE, PENDING, Photo, PhotoIndex
from phototag.keywords import keywords_from_caption
from phototag.query import parse_query
from phototag.search import HYBRID, KEYWORD, SEMANTIC, Finder, connect
from phototag.vectors import VectorStore
from tests.conftest import drop_spans

MODEL = "test-model"


def add(
    index: PhotoIndex, path: str, caption: str, *, taken_at: str | None = "2024-01-01T12:00:00", status: str = DONE
) -> int:
    with index.transaction() as session:
        row = Photo(
            path=path,
            size=1,
            mtime_ns=1,
            status=status,
            caption=caption,
            caption_source="model",
            keywords=" ".join(keywords_from_caption(caption)),
            taken_at=taken_at,
        )
        session.add(row)
        session.flush()
        return row.id


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def index(tmp_path: Path) -> PhotoIndex:
    return PhotoIndex(tmp_path / "index.sqlite3")


def search(index: PhotoIndex, text: str, **kwargs: object) -> list[str]:
    conn = connect(index.path)
    try:
        return [hit.path for hit in Finder(conn).search(parse_query(text), **kwargs)]  # type: ignore[arg-type]
    finally:
        conn.close()


def test_keyword_all_words_first_pending_never(index: PhotoIndex) -> None:
    add(index, "/p/a.jpg", "a dog running on the beach")
    add(index, "/p/b.jpg", "a beach at sunset")
    add(index, "/p/c.jpg", "a dog on a beach being written", status=PENDING)
    add(index, "/p/d.jpg", "a cat on a sofa")
    assert search(index, "dog on the beach") == ["/p/a.jpg", "/p/b.jpg"]
    assert search(index, "cat dog") == ["/p/d.jpg", "/p/a.jpg"] or search(index, "cat dog") == ["/p/a.jpg", "/p/d.jpg"]
    assert search(index, "zebra") == []


def test_rank_cap_ranks_the_newest_matches(index: PhotoIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    add(index, "/p/best.jpg", "beach")  # the shortest caption: bm25's favourite, but the oldest row
    for i in range(40):
        add(index, f"/p/{i:02d}.jpg", f"a long caption about a beach and number {i} with some more words")
    assert search(index, "beach", limit=3)[0] == "/p/best.jpg"
    monkeypatch.setattr(search_module, "RANK_CAP", 5)
    capped = search(index, "beach", limit=3)
    assert len(capped) == 3 and "/p/best.jpg" not in capped  # ranked among the newest max(cap, 4 * limit)
    assert len(search(index, "beach", limit=30)) == 30  # a cap never cuts below what was asked for


def test_filters_combine(index: PhotoIndex) -> None:
    add(index, "/lib/2023/dog.jpg", "a dog running on the beach", taken_at="2023-07-01T10:00:00")
    add(index, "/lib/2024/dog2.jpg", "a dog sleeping on the sofa", taken_at="2024-06-15T10:00:00")
    add(index, "/lib/2024/beach.jpg", "a beach with a palm tree", taken_at="2024-08-20T10:00:00")
    add(index, "/lib/2024x/dog3.jpg", "a dog in the snow", taken_at="2024-09-01T10:00:00")
    add(index, "/lib/undated.jpg", "a dog without a date", taken_at=None)
    assert search(index, "dog in:/lib/2024") == ["/lib/2024/dog2.jpg"]  # a prefix is a folder, not a string
    assert sorted(search(index, "dog after:2024-06-15")) == ["/lib/2024/dog2.jpg", "/lib/2024x/dog3.jpg"]
    assert search(index, "dog before:2024-06-15") == ["/lib/2023/dog.jpg"]
    assert search(index, "dog after:2024 before:2024-07 in:/lib/2024") == ["/lib/2024/dog2.jpg"]
    assert sorted(search(index, "dog -beach -snow")) == ["/lib/2024/dog2.jpg", "/lib/undated.jpg"]
    assert search(index, "tag:dog -in:/lib/2024 -in:/lib/2024x -tag:beach") == ["/lib/undated.jpg"]
    assert search(index, '"dog sleeping"') == ["/lib/2024/dog2.jpg"]
    assert search(index, '"sleeping dog"') == []
    # only filters: everything that passes, most recently taken first, undated last
    assert search(index, "in:/lib/2024") == ["/lib/2024/beach.jpg", "/lib/2024/dog2.jpg"]
    assert search(index, "-tag:dog") == ["/lib/2024/beach.jpg"]


def vectors_index(index: PhotoIndex) -> dict[str, int]:
    ids = {
        "dog": add(index, "/lib/2023/dog.jpg", "a dog running on the beach", taken_at="2023-07-01T10:00:00"),
        "pasta": add(index, "/lib/2024/pasta.jpg", "a plate of pasta on a table", taken_at="2024-06-15T10:00:00"),
        "kids": add(index, "/lib/2024/kids.jpg", "two children riding bicycles", taken_at="2024-08-20T10:00:00"),
    }
    vectors = {"dog": unit(1, 0.1, 0), "pasta": unit(0, 1, 0.1), "kids": unit(0.1, 0, 1)}
    items = [
        (ids[k], c)
        for k, c in (
            ("dog", "a dog running on the beach"),
            ("pasta", "a plate of pasta on a table"),
            ("kids", "two children riding bicycles"),
        )
    ]
    assert store_vectors(index, MODEL, items, np.stack([vectors[k] for k in ("dog", "pasta", "kids")])) == 3
    return ids


def semantic(
    index: PhotoIndex, text: str, vector: np.ndarray, cache: Path, mode: str = SEMANTIC, **kwargs: object
) -> list[str]:
    conn = connect(index.path)
    try:
        store = VectorStore.for_sqlite(conn, index.path, MODEL, cache)
        store.sync()
        hits = Finder(conn).search(parse_query(text), mode=mode, store=store, embed=lambda _text: vector, **kwargs)  # type: ignore[arg-type]
        return [hit.path for hit in hits]
    finally:
        conn.close()


def test_semantic_ranking_filters_and_threshold(index: PhotoIndex, tmp_path: Path) -> None:
    vectors_index(index)
    cache = tmp_path / "cache"
    seaside = unit(0.9, 0.2, 0.1)
    assert semantic(index, "puppy at the seaside", seaside, cache) == [
        "/lib/2023/dog.jpg",
        "/lib/2024/pasta.jpg",
        "/lib/2024/kids.jpg",
    ]
    assert semantic(index, "puppy at the seaside", seaside, cache, min_similarity=0.5) == ["/lib/2023/dog.jpg"]
    assert semantic(index, "puppy at the seaside after:2024", seaside, cache) == [
        "/lib/2024/pasta.jpg",
        "/lib/2024/kids.jpg",
    ]
    assert semantic(index, "puppy at the seaside -pasta in:/lib/2024", seaside, cache) == ["/lib/2024/kids.jpg"]
    assert semantic(index, "puppy tag:bicycle", seaside, cache) == ["/lib/2024/kids.jpg"]
    assert semantic(index, "puppy in:/nowhere", seaside, cache) == []
    # keyword mode knows no puppies; hybrid fuses: "pasta" matches a word and is near the query vector
    assert semantic(index, "puppy at the seaside", seaside, cache, mode=KEYWORD) == []
    assert semantic(index, "pasta", unit(0, 1, 0.1), cache, mode=HYBRID)[0] == "/lib/2024/pasta.jpg"


def test_fusion_prefers_agreement() -> None:
    fused = Finder.fuse([(1, 9.0), (2, 5.0), (3, 1.0)], [(2, 0.9), (4, 0.8), (1, 0.1)])
    assert [photo_id for photo_id, _ in fused] == [2, 1, 4, 3]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_vector_copy_follows_the_index(index: PhotoIndex, tmp_path: Path) -> None:
    ids = vectors_index(index)
    cache = tmp_path / "cache"
    seaside = unit(0.9, 0.2, 0.1)
    conn = connect(index.path)
    store = VectorStore.for_sqlite(conn, index.path, MODEL, cache)
    assert store.sync() == 3
    # a changed caption drops its vector (trigger); the copy still has it, but it is never returned
    with index.transaction() as session:
        session.get(Photo, ids["dog"]).caption = "a cat on a sofa"
    assert conn.execute("SELECT count(*) FROM photo_embeddings").fetchone()[0] == 2
    assert "/lib/2023/dog.jpg" not in semantic(index, "puppy", seaside, cache)
    # a new vector is appended, not rebuilt
    store_vectors(index, MODEL, [(ids["dog"], "a cat on a sofa")], unit(0, 0, 1)[None, :])
    assert store.sync() == 4 and store.count() == 3
    assert semantic(index, "kitten", unit(0, 0, 1), cache)[0] in ("/lib/2023/dog.jpg", "/lib/2024/kids.jpg")
    # a deleted photo takes its vector along
    with index.transaction() as session:
        session.delete(session.get(Photo, ids["kids"]))
    assert semantic(index, "bikes", unit(0.1, 0, 1), cache) == ["/lib/2023/dog.jpg", "/lib/2024/pasta.jpg"]
    store.invalidate()
    assert store.sync() == 2
    # when appending finds most of the copy replaced, it starts afresh
    store_vectors(
        index,
        MODEL,
        [(ids["dog"], "a cat on a sofa"), (ids["pasta"], "a plate of pasta on a table")],
        np.stack([unit(0, 0, 1), unit(0, 1, 0)]),
    )
    assert store.sync() == 2 and store.rows == 2
    conn.close()


def test_a_replaced_index_rebuilds_the_copy(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = PhotoIndex(tmp_path / "index.sqlite3")
    vectors_index(first)
    assert semantic(first, "q", unit(1, 0, 0), cache)[0] == "/lib/2023/dog.jpg"
    first.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'index.sqlite3'}{suffix}").unlink(missing_ok=True)
    second = PhotoIndex(tmp_path / "index.sqlite3")
    photo = add(second, "/other/only.jpg", "a red car")
    store_vectors(second, MODEL, [(photo, "a red car")], unit(0, 1, 0)[None, :])
    assert semantic(second, "q", unit(1, 0, 0), cache) == ["/other/only.jpg"]


def test_old_index_is_upgraded_on_search(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    index = PhotoIndex(db)
    add(index, "/p/a.jpg", "a dog")
    index.close()
    raw = sqlite3.connect(db)  # make it look like a version 1 index: no taken_at, no vectors
    drop_spans(raw)
    raw.executescript(
        "DROP TRIGGER photo_embeddings_stale; DROP TRIGGER photo_embeddings_gone; "
        "DROP TABLE photo_embeddings; DROP INDEX ix_photos_taken_at; "
        "ALTER TABLE photos DROP COLUMN taken_at; PRAGMA user_version=1;"
    )
    raw.close()
    conn = connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 2
    assert [h.path for h in Finder(conn).search(parse_query("dog after:2000"))] == []
    assert [h.path for h in Finder(conn).search(parse_query("dog"))] == ["/p/a.jpg"]


def test_a_phrase_ranks_shortest_first_without_bm25(index: PhotoIndex) -> None:
    """bm25 would count the phrase in every photo first (its IDF) at the cost of a full scan; for one
    phrase every match shares that IDF, so the ranking is by caption length, done without bm25."""
    add(index, "/p/long.jpg", "a dog running on the beach with a red ball in its mouth at sunset")
    add(index, "/p/short.jpg", "a dog on the beach")
    add(index, "/p/middle.jpg", "two dogs playing on the beach near the water")
    add(index, "/p/other.jpg", "a beach on the coast")  # the words, not the phrase
    conn = connect(index.path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    hits = Finder(conn).search(parse_query('"on the beach"'))
    conn.close()
    assert [hit.path for hit in hits] == ["/p/short.jpg", "/p/middle.jpg", "/p/long.jpg"]
    assert hits[0].score > hits[1].score > hits[2].score
    assert not [sql for sql in statements if "bm25(" in sql]


def test_a_filter_keeping_few_photos_bounds_the_keyword_walk(index: PhotoIndex) -> None:
    """The FTS walk is bounded to the id range the kept photos span (FTS5 seeks there), and the
    results are those of the filter checked photo by photo."""
    old = [add(index, f"/lib/old/{i}.jpg", f"a beach number {i}", taken_at="2015-06-01T12:00:00") for i in range(30)]
    for i in range(60):
        add(index, f"/lib/new/{i}.jpg", f"a beach number {i}", taken_at="2024-06-01T12:00:00")
    conn = connect(index.path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    for text in ("beach in:/lib/old", "beach before:2016"):
        hits = Finder(conn).search(parse_query(text), limit=100)
        assert sorted(hit.photo_id for hit in hits) == old, text
    conn.close()
    assert len([sql for sql in statements if f"rowid BETWEEN {old[0]} AND {old[-1]}" in sql]) == 2
