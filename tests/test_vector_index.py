"""The fast vector index (phototag.vectors) against the exact scan, on a real index file.

The library is small, so the index's sizes are shrunk (monkeypatch) to send every search down the
approximate path (sign bits, asymmetric estimate, int8 re-scoring) that a million photos take. Each
result is compared with an exact ranking computed here from the ``photo_embeddings`` table itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phototag import search as search_module
from phototag import vectors as vectors_module
from phototag.embeddings import store_vectors
from phototag.index import DONE, MISSING, Photo, PhotoIndex
from phototag.query import parse_query
from phototag.search import Finder, connect
from phototag.vectors import VectorStore

MODEL = "test-model"
DIM = 384
ROWS = 600
THRESHOLD = 0.6  # the search's min_similarity: between the random photos and the cluster


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@pytest.fixture(autouse=True)
def approximate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes that make a 600-photo library take the million-photo path."""
    monkeypatch.setattr(vectors_module, "EXACT_ROWS", 16)
    monkeypatch.setattr(vectors_module, "FIRST_STAGE", 200)
    monkeypatch.setattr(vectors_module, "RESCORED", 60)


class Library:
    """ROWS photos over three years and two folders; photo i's caption is "photo i" plus a word for
    its group, and its vector is random (cosine to the query under 0.5), except a cluster of 86 photos
    near ``self.query`` (cosine over 0.7): the matches, as a search's similarity threshold sees them."""

    def __init__(self, path: Path) -> None:
        self.index = PhotoIndex(path)
        rng = np.random.default_rng(5)
        self.query = unit(rng.standard_normal(DIM))
        self.ids: list[int] = []
        captions, vectors = [], []
        with self.index.transaction() as session:
            for i in range(ROWS):
                year = 2022 + i % 3
                caption = f"photo {i} {'dog' if i % 2 else 'cat'} {'beach' if i % 5 == 0 else 'park'}"
                row = Photo(
                    path=f"/lib/{'a' if i % 4 else 'b'}/{year}/p{i:04d}.jpg",
                    size=1,
                    mtime_ns=1,
                    status=DONE,
                    caption=caption,
                    caption_source="model",
                    keywords=" ".join(caption.split()[2:]),
                    taken_at=f"{year}-06-01T12:00:00",
                )
                session.add(row)
                session.flush()
                self.ids.append(row.id)
                captions.append(caption)
                noise = rng.standard_normal(DIM)
                if i % 7:
                    vectors.append(unit(noise))
                else:  # 86 photos close to the query, spread over years, folders and words, each closer
                    # than the next by a clear step (cosine 0.95 down to 0.7)
                    cosine = 0.95 - 0.25 * i / ROWS
                    away = unit(noise - (noise @ self.query) * self.query)
                    vectors.append(unit(cosine * self.query + np.sqrt(1 - cosine**2) * away))
        items = list(zip(self.ids, captions, strict=True))
        assert store_vectors(self.index, MODEL, items, np.stack(vectors)) == ROWS
        self.cache = path.parent / "cache"
        self.conn = connect(path)

    def store(self) -> VectorStore:
        store = VectorStore.for_sqlite(self.conn, self.index.path, MODEL, self.cache)
        store.sync()
        return store

    def fast(self, text: str, store: VectorStore | None = None, want: int = 10) -> list[tuple[int, float]]:
        store = store or self.store()
        return Finder(self.conn).semantic_ranking(parse_query(text), store, self.query, want, THRESHOLD)

    def exact(self, text: str, want: int = 10) -> list[tuple[int, float]]:
        """The reference: every current vector of a done photo passing the filters, scored in full."""
        query = parse_query(text)
        conditions, args = Finder(self.conn)._filter_conditions(query)
        rows = self.conn.execute(
            f"SELECT e.photo_id, e.vector FROM photo_embeddings e JOIN photos p ON p.id = e.photo_id "
            f"WHERE e.model = ? AND {conditions}",
            [MODEL, *args],
        ).fetchall()
        scored = [(pid, float(np.frombuffer(blob, dtype="<f4") @ self.query)) for pid, blob in rows]
        return sorted([item for item in scored if item[1] >= THRESHOLD], key=lambda item: -item[1])[:want]

    def assert_same(self, text: str, store: VectorStore | None = None) -> list[int]:
        fast, exact = self.fast(text, store), self.exact(text)
        assert [pid for pid, _ in fast] == [pid for pid, _ in exact], text
        assert [score for _, score in fast] == pytest.approx([score for _, score in exact], abs=1e-5)
        return [pid for pid, _ in fast]


@pytest.fixture
def library(tmp_path: Path) -> Library:
    return Library(tmp_path / "index.sqlite3")


def no_full_scan(store: VectorStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(vector: np.ndarray) -> np.ndarray:
        raise AssertionError("the exact scan of every row ran")

    monkeypatch.setattr(store, "scores", refuse)


def test_the_fast_path_finds_what_the_exact_scan_finds(library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    store = library.store()
    no_full_scan(store, monkeypatch)
    found = library.assert_same("anything", store)
    assert len(found) == 10 and all((library.ids.index(pid) % 7) == 0 for pid in found)


def test_changes_keep_the_fast_index_consistent_without_a_rebuild(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = library.store()
    generation = json.loads((store.dir / "meta.json").read_text())["generation"]
    before = library.assert_same("x")
    moved, recaptioned, swept, pruned = before[:4]
    with library.index.transaction() as session:
        session.get(Photo, moved).path = "/elsewhere/moved.jpg"  # a move keeps the row and its vector
        session.get(Photo, recaptioned).caption = "a different caption"  # the trigger drops its vector
        session.get(Photo, swept).status = MISSING  # a sweep: the row and vector stay, the photo is gone
        session.delete(session.get(Photo, pruned))  # prune: row and vector deleted
    store = library.store()
    after = library.assert_same("x", store)
    assert moved in after and not {recaptioned, swept, pruned} & set(after)
    hits = Finder(library.conn).hits([(moved, 1.0)])
    assert hits[0].path == "/elsewhere/moved.jpg"
    # the re-captioned photo's new vector (near the query) is appended, and found again
    store_vectors(library.index, MODEL, [(recaptioned, "a different caption")], unit(library.query)[None, :])
    store = library.store()
    assert store.rows == ROWS + 1  # appended, not rebuilt
    assert json.loads((store.dir / "meta.json").read_text())["generation"] == generation
    no_full_scan(store, monkeypatch)
    assert library.assert_same("x", store)[0] == recaptioned
    # the swept photo comes back
    with library.index.transaction() as session:
        session.get(Photo, swept).status = DONE
    assert swept in library.assert_same("x", library.store())


@pytest.mark.parametrize(
    "text",
    [
        "x in:/lib/b",  # a quarter of the photos
        "x in:/lib/b/2023",  # a twelfth
        "x after:2023",  # two thirds
        "x before:2023",
        "x after:2023 before:2024 in:/lib/a",
        "x tag:beach",
        "x -beach",
        "x tag:dog -in:/lib/b",
    ],
)
def test_filters_give_what_the_exact_path_gives(library: Library, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = library.store()
    no_full_scan(store, monkeypatch)
    library.assert_same(text, store)
    monkeypatch.setattr(search_module, "FEW_KEPT_SEMANTIC", 10)  # every filter now "keeps many"
    library.assert_same(text, store)


def test_a_filter_that_keeps_few_photos_ranks_only_their_rows(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = library.store()
    no_full_scan(store, monkeypatch)

    def refuse(query: np.ndarray) -> np.ndarray:
        raise AssertionError("every row's sign bits were scanned")

    monkeypatch.setattr(store, "_hamming", refuse)
    assert library.assert_same("x in:/lib/b/2023 tag:beach", store)  # 10 photos: scored exactly


def test_a_filter_that_keeps_many_checks_candidates_a_window_at_a_time(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_module, "FEW_KEPT_SEMANTIC", 10)
    store = library.store()
    statements: list[str] = []
    library.conn.set_trace_callback(statements.append)
    found = library.fast("x after:2023 -beach", store, want=30)
    library.conn.set_trace_callback(None)
    assert len(found) == 30
    ours = [sql for sql in statements if not sql.startswith(("--", "PRAGMA"))]  # not SQLite's own (FTS5's)
    assert len(ours) <= 4, ours  # a count, and one check per window (never one per photo)
    exact = library.exact("x after:2023 -beach", want=30)
    assert [pid for pid, _ in found] == [pid for pid, _ in exact]


def files_of(store: VectorStore) -> dict[str, Path]:
    return {path.name: path for path in store.files()}


@pytest.mark.parametrize(
    "damage",
    ["meta", "folder", "ids zeroed", "vectors garbage", "int8 truncated", "bits flipped", "meta lies"],
)
def test_a_missing_or_damaged_index_is_rebuilt(library: Library, damage: str) -> None:
    store = library.store()
    generation = json.loads((store.dir / "meta.json").read_text())["generation"]
    files = files_of(store)
    if damage == "meta":
        (store.dir / "meta.json").unlink()
    elif damage == "folder":
        for path in files.values():
            path.unlink()
    elif damage == "ids zeroed":
        files["ids.i64"].write_bytes(bytes(files["ids.i64"].stat().st_size))
    elif damage == "vectors garbage":
        size = files["vectors.f32"].stat().st_size
        files["vectors.f32"].write_bytes(np.random.default_rng(1).bytes(size))
    elif damage == "int8 truncated":
        with open(files["vectors.i8"], "r+b") as handle:
            handle.truncate(100)
    elif damage == "bits flipped":
        for name, path in files.items():
            if name.startswith("bits."):
                path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))
    else:
        meta = json.loads((store.dir / "meta.json").read_text())
        meta["identity"] = "another index"
        (store.dir / "meta.json").write_text(json.dumps(meta))
    store = library.store()
    assert json.loads((store.dir / "meta.json").read_text())["generation"] != generation
    assert store.rows == ROWS
    library.assert_same("x", store)


def test_a_damaged_row_never_shows_a_wrong_photo(library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row the spot checks miss names the wrong photo: the hit still comes from the table."""
    monkeypatch.setattr(vectors_module, "SPOT_CHECKS", 0)
    store = library.store()
    best = library.exact("x")[0][0]
    ids = np.memmap(files_of(store)["ids.i64"], dtype="<i8", mode="r+", shape=(ROWS, 2))
    row = int(np.flatnonzero(ids[:, 1] == best)[0])
    ids[row, 1] = library.ids[0]  # a photo far from the query
    ids.flush()
    del ids
    assert library.fast("x", library.store())[0][0] == best


def test_another_model_gets_its_own_index(library: Library) -> None:
    store = library.store()
    other = VectorStore.for_sqlite(library.conn, library.index.path, "another-model", library.cache)
    assert other.dir != store.dir
    assert other.sync() == 0  # no vectors from that model
    assert list(other.ranked(library.query)) == []
    assert library.store().rows == ROWS  # the first model's index is untouched


def test_a_crash_mid_append_leaves_the_old_rows_searchable(library: Library) -> None:
    store = library.store()
    for path in files_of(store).values():  # a crash wrote part of a row beyond what the meta vouches for
        with open(path, "ab") as handle:
            handle.write(b"\x01" * 7)
    store_vectors(library.index, MODEL, [(library.ids[3], "photo 3 dog park")], unit(library.query)[None, :])
    store = library.store()
    assert store.rows == ROWS + 1
    assert library.assert_same("x", store)[0] == library.ids[3]


def test_rebuild_from_scratch(library: Library) -> None:
    store = library.store()
    generation = json.loads((store.dir / "meta.json").read_text())["generation"]
    assert store.sync(rebuild=True) == ROWS
    assert json.loads((store.dir / "meta.json").read_text())["generation"] != generation
    assert [p.name for p in store.dir.iterdir() if p.is_dir()] == [store.files()[0].parent.name]  # old one gone
    library.assert_same("x", store)


def test_the_store_reads_any_source_of_rows(tmp_path: Path) -> None:
    """Another database (issue 12's PostgreSQL) supplies rows through the same small protocol."""

    class Rows:
        model, origin = "m", "postgresql://example/photos"

        def __init__(self) -> None:
            rng = np.random.default_rng(2)
            self.table = {seq: (seq * 10, unit(rng.standard_normal(DIM)).tobytes()) for seq in range(1, 301)}

        def identity(self) -> str:
            return "cluster-1"

        def max_seq(self) -> int:
            return max(self.table)

        def count(self) -> int:
            return len(self.table)

        def rows(self, after: int, up_to: int):  # type: ignore[no-untyped-def]
            yield [(seq, *self.table[seq]) for seq in sorted(self.table) if after < seq <= up_to]

        def lookup(self, seqs: list[int]) -> dict[int, tuple[int, bytes]]:
            return {seq: self.table[seq] for seq in seqs if seq in self.table}

    source = Rows()
    store = VectorStore(source, tmp_path)
    assert store.sync() == 300
    query = np.frombuffer(source.table[123][1], dtype="<f4")
    first = next(store.ranked(query))
    assert first[0][:2] == (123, 1230) and first[0][2] == pytest.approx(1.0)
