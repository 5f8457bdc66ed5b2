"""Search on a PostgreSQL index answers as on SQLite: the same captions in both, the same queries, the
same photos found (keywords through the tsvector column and websearch_to_tsquery, meaning through the
vectors stored in the database, both fused), whatever text a person types.

Real components: a PostgreSQL server (tests.postgres), real SQLite files, the real MiniLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from phototag.database import IndexLocation
from phototag.embeddings import embed_missing, load_embedder
from phototag.index import DONE, PENDING, Photo, PhotoIndex
from phototag.keywords import keywords_from_caption
from phototag.pg_search import PgFinder, vector_store
from phototag.pg_search import connect as pg_connect
from phototag.query import parse_query
from phototag.search import HYBRID, KEYWORD, SEMANTIC, Finder
from phototag.search import connect as sqlite_connect
from phototag.vectors import VectorStore
from tests.conftest import REPO
from tests.postgres import pg_rows

CAPTIONS = [
    ("/lib/2023/dog.jpg", "a dog running on the beach", "2023-05-01T10:00:00"),
    ("/lib/2024/dog2.jpg", "two dogs sleeping on a sofa", "2024-07-01T10:00:00"),
    ("/lib/2024x/dog3.jpg", "a brown dog sleeping in the snow", "2024-08-01T10:00:00"),
    ("/lib/2024/beach.jpg", "a beach at sunset with waves", "2024-06-01T10:00:00"),
    ("/lib/2024/city.jpg", "a red car on a city street at night", "2024-03-01T10:00:00"),
    ("/lib/2022/cats.jpg", "cats playing with a ball of yarn", "2022-01-01T10:00:00"),
    ("/lib/2022/mountain.jpg", "snow covered mountains under a blue sky", "2022-02-01T10:00:00"),
    ("/lib/undated.jpg", "a dog and a child in a garden", None),
    ("/lib/2024/pending.jpg", "a dog on a beach being written", "2024-01-01T10:00:00"),  # pending: never found
    ("/lib/odd_100%/emoji.jpg", "a birthday cake with candles", "2024-02-02T10:00:00"),
]

QUERIES = [
    "dog",
    "dogs",  # stemming: finds "dog" and "dogs"
    "dog on the beach",  # stop words ignored
    "sleeping dog",
    "running",
    "beach -dog",
    '"dog sleeping"',
    '"sleeping dog"',
    "tag:dog",
    "tag:dog -tag:beach",
    "dog in:/lib/2024",
    "in:/lib/2024",
    "dog after:2024-06-15",
    "dog before:2024-06-15",
    "dog after:2024 before:2024-07 in:/lib/2024",
    "-tag:dog",
    "in:/lib/odd_100%",
    "snow",
    "cat",
    "zebra",
    "the dog",
]

HOSTILE = [
    '"',
    "'",
    "-",
    "*",
    "OR",
    "dog OR",
    "OR dog",
    "dog AND",
    "a OR b NOT c",
    "(dog",
    "dog)",
    "((dog) beach",
    "dog's",
    "🐶 dog",
    "🐶",
    "NEAR(",
    "dog & !beach | <->",
    "dog :*",
    "\\",
    "%",
    "tag:",
    '"unclosed phrase',
    "city -city",
    "-dog -",
    "dog !beach",
]


@pytest.fixture(scope="module")
def indexes(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The same photos in a SQLite file and in PostgreSQL, with real MiniLM vectors in both."""
    pg_rows(pg_database, "DROP SCHEMA public CASCADE")
    pg_rows(pg_database, "CREATE SCHEMA public")
    db = tmp_path_factory.mktemp("pg-search") / "index.sqlite3"
    lite, pg = PhotoIndex(db), PhotoIndex(IndexLocation(db.with_name("unused"), pg_database))
    embedder = load_embedder(os.environ["PHOTOTAG_EMBEDDING_MODEL"])
    for index in (lite, pg):
        with index.transaction() as session:
            for path, caption, taken in CAPTIONS:
                session.add(
                    Photo(
                        path=path,
                        size=1,
                        mtime_ns=1_700_000_000_000_000_000,  # 64 bits on PostgreSQL too
                        status=PENDING if "pending" in path else DONE,
                        caption=caption,
                        caption_source="model",
                        keywords=" ".join(keywords_from_caption(caption)),
                        taken_at=taken,
                    )
                )
        with index.engine.begin() as conn:  # the pending photo has its vector too: never shown anyway
            conn.exec_driver_sql("UPDATE photos SET status = 'done'")
        embed_missing(index, embedder)
        with index.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE photos SET status = 'pending' WHERE path LIKE '%%pending%%'")
        index.close()
    yield db, pg_database


def lite_search(db: Path, text: str, tmp_path: Path, **kwargs: object) -> list[str]:
    conn = sqlite_connect(db)
    try:
        store = VectorStore.for_sqlite(
            conn, db, load_embedder(os.environ["PHOTOTAG_EMBEDDING_MODEL"]).name, tmp_path / "v"
        )
        store.sync()
        embed = load_embedder(os.environ["PHOTOTAG_EMBEDDING_MODEL"])
        hits = Finder(conn).search(
            parse_query(text),
            store=store,
            embed=lambda t: embed.encode([t])[0],
            **kwargs,  # type: ignore[arg-type]
        )
        return [hit.path for hit in hits]
    finally:
        conn.close()


def pg_search(url: str, text: str, tmp_path: Path, **kwargs: object) -> list[str]:
    location = IndexLocation(tmp_path / "unused", url)
    conn = pg_connect(location)
    try:
        embedder = load_embedder(os.environ["PHOTOTAG_EMBEDDING_MODEL"])
        store = vector_store(conn, location, embedder.name)
        store.sync()
        hits = PgFinder(conn).search(
            parse_query(text),
            store=store,
            embed=lambda t: embedder.encode([t])[0],
            **kwargs,  # type: ignore[arg-type]
        )
        return [hit.path for hit in hits]
    finally:
        conn.close()


@pytest.mark.parametrize("text", QUERIES)
def test_keyword_search_finds_what_sqlite_finds(text: str, indexes: tuple[Path, str], tmp_path: Path) -> None:
    db, url = indexes
    on_sqlite = lite_search(db, text, tmp_path, mode=KEYWORD, limit=50)
    on_pg = pg_search(url, text, tmp_path, mode=KEYWORD, limit=50)
    assert sorted(on_pg) == sorted(on_sqlite)
    assert "/lib/2024/pending.jpg" not in on_pg


def test_keyword_answers(indexes: tuple[Path, str], tmp_path: Path) -> None:
    """What the comparison above means, spelled out on PostgreSQL."""
    _, url = indexes
    assert set(pg_search(url, "dogs", tmp_path)) == {
        "/lib/2023/dog.jpg",
        "/lib/2024/dog2.jpg",
        "/lib/2024x/dog3.jpg",
        "/lib/undated.jpg",
    }
    # every word first, then some of them (ranking like SQLite's)
    assert pg_search(url, "dog on the beach", tmp_path)[0] == "/lib/2023/dog.jpg"
    assert set(pg_search(url, "dog on the beach", tmp_path)[1:]) == {
        "/lib/2024/dog2.jpg",
        "/lib/2024x/dog3.jpg",
        "/lib/undated.jpg",
        "/lib/2024/beach.jpg",
    }
    assert pg_search(url, "dog in:/lib/2024", tmp_path) == ["/lib/2024/dog2.jpg"]  # a folder, not a prefix
    assert sorted(pg_search(url, '"dog sleeping"', tmp_path)) == ["/lib/2024/dog2.jpg", "/lib/2024x/dog3.jpg"]
    assert pg_search(url, '"sleeping dog"', tmp_path) == []  # words together, in this order
    assert pg_search(url, "in:/lib/odd_100%", tmp_path) == ["/lib/odd_100%/emoji.jpg"]  # % and _ are literal
    assert pg_search(url, "tag:dog -in:/lib/2024 -in:/lib/2024x -tag:beach", tmp_path) == ["/lib/undated.jpg"]


@pytest.mark.parametrize("text", HOSTILE)
def test_any_text_is_a_valid_query(text: str, indexes: tuple[Path, str], tmp_path: Path) -> None:
    db, url = indexes
    on_pg = pg_search(url, text, tmp_path, mode=KEYWORD, limit=50)  # raises nothing
    assert sorted(on_pg) == sorted(lite_search(db, text, tmp_path, mode=KEYWORD, limit=50))


def test_search_by_meaning_and_hybrid_as_on_sqlite(indexes: tuple[Path, str], tmp_path: Path) -> None:
    db, url = indexes
    for mode in (SEMANTIC, HYBRID):
        for text in ("puppy at the seaside", "kitten", "vehicle downtown after dark", "dog in:/lib/2024"):
            on_pg = pg_search(url, text, tmp_path, mode=mode, limit=3, min_similarity=0.2)
            assert on_pg == lite_search(db, text, tmp_path, mode=mode, limit=3, min_similarity=0.2), (mode, text)
    assert pg_search(url, "puppy at the seaside", tmp_path, mode=SEMANTIC, limit=1) == ["/lib/2023/dog.jpg"]
    assert pg_search(url, "kitten", tmp_path, mode=SEMANTIC, limit=1) == ["/lib/2022/cats.jpg"]
    assert "/lib/2024/pending.jpg" not in pg_search(url, "dog on a beach", tmp_path, mode=SEMANTIC, limit=20)


def test_the_vector_copy_follows_the_database(indexes: tuple[Path, str], tmp_path: Path) -> None:
    """A caption changed in the database drops its vector: the local copy never shows the old meaning;
    a new vector is copied on the next search."""
    _, url = indexes
    location = IndexLocation(tmp_path / "unused", url)
    index = PhotoIndex(location)
    try:
        assert pg_search(url, "kitten", tmp_path, mode=SEMANTIC, limit=1) == ["/lib/2022/cats.jpg"]
        with index.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE photos SET caption = 'an old tractor' WHERE path = '/lib/2022/cats.jpg'")
        assert "/lib/2022/cats.jpg" not in pg_search(
            url, "kitten", tmp_path, mode=SEMANTIC, limit=5, min_similarity=0.3
        )
        embed_missing(index, load_embedder(os.environ["PHOTOTAG_EMBEDDING_MODEL"]))
        assert pg_search(url, "farm machine", tmp_path, mode=SEMANTIC, limit=1) == ["/lib/2022/cats.jpg"]
    finally:
        with index.engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE photos SET caption = 'cats playing with a ball of yarn' WHERE path = '/lib/2022/cats.jpg'"
            )
        embed_missing(index, load_embedder(os.environ["PHOTOTAG_EMBEDDING_MODEL"]))
        index.close()


def test_keyword_search_on_postgres_imports_nothing_heavy(indexes: tuple[Path, str], tmp_path: Path) -> None:
    _, url = indexes
    code = (
        "import sys\n"
        "from phototag.cli import main\n"
        "try:\n"
        f"    main.main(['--db', {url!r}, 'search', 'dog', '--mode', 'keyword', '--format', 'json'])\n"
        "except SystemExit as exc:\n"
        "    heavy = [m for m in ('sqlalchemy', 'torch', 'numpy', 'transformers') if m in sys.modules]\n"
        "    print('exit', exc.code, heavy, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.stderr.strip().splitlines()[-1] == "exit 0 []", done.stderr
    # a shared index lists photos this machine does not see (they live on the NAS)
    found = {json.loads(line)["path"] for line in done.stdout.splitlines()}
    assert found == {"/lib/2023/dog.jpg", "/lib/2024/dog2.jpg", "/lib/2024x/dog3.jpg", "/lib/undated.jpg"}
