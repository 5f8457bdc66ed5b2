"""The index's SQL (phototag.migrations) makes exactly the tables the SQLAlchemy models map, and
brings an index made by an older phototag up to date, through the index or through a search."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from phototag import migrations
from phototag.index import Base, Photo, PhotoIndex
from phototag.query import parse_query
from phototag.search import Finder, connect
from tests.conftest import drop_spans


def _schema(db: Path) -> dict[str, str]:
    """name -> SQL (whitespace folded) of every table and index, FTS shadow tables left out."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    finally:
        conn.close()
    return {name: re.sub(r"\s+", " ", sql).replace("( ", "(").replace(" )", ")") for name, sql in rows}


def test_the_sql_makes_what_the_models_map(tmp_path: Path) -> None:
    from_models = tmp_path / "models.sqlite3"
    engine = create_engine(f"sqlite:///{from_models}")
    Base.metadata.create_all(engine)
    engine.dispose()
    from_sql = tmp_path / "sql.sqlite3"
    conn = sqlite3.connect(from_sql)
    migrations.upgrade(conn)
    conn.close()
    models, sql = _schema(from_models), _schema(from_sql)
    assert {"photos", "photo_embeddings", "ix_photos_taken_at"} <= set(models)
    assert {name: sql[name] for name in models} == models  # every table and index, column for column
    assert {"photos_fts", "photos_ai", "photo_embeddings_stale"} <= set(sql)  # plus FTS and triggers


def _make_old(db: Path, version: int) -> None:
    """An index as an older phototag left it, with one done photo taken in 2019: version 1 had no
    taken_at and no vectors, version 2 no missing_since, failure_kind, tries or mtime_before_write_ns,
    version 3 no folder and day spans."""
    index = PhotoIndex(db)
    with index.transaction() as session:
        session.add(
            Photo(
                path="/p/a.jpg",
                size=1,
                mtime_ns=1,
                status="done",
                caption="a dog",
                keywords="dog",
                taken_at="2019-05-04",
            )
        )
    index.close()
    raw = sqlite3.connect(db)
    drop_spans(raw)
    raw.execute(f"PRAGMA user_version={version}")
    raw.commit()
    if version == 3:
        raw.close()
        return
    raw.executescript(
        "ALTER TABLE photos DROP COLUMN missing_since; ALTER TABLE photos DROP COLUMN failure_kind; "
        "ALTER TABLE photos DROP COLUMN tries; ALTER TABLE photos DROP COLUMN mtime_before_write_ns;"
    )
    if version == 1:
        raw.executescript(
            "DROP TRIGGER photo_embeddings_stale; DROP TRIGGER photo_embeddings_gone; "
            "DROP TABLE photo_embeddings; DROP INDEX ix_photos_taken_at; "
            "ALTER TABLE photos DROP COLUMN taken_at;"
        )
    raw.execute(f"PRAGMA user_version={version}")
    raw.commit()
    raw.close()


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("opener", ["index", "search"])
def test_an_older_index_is_upgraded_and_keeps_its_rows(tmp_path: Path, version: int, opener: str) -> None:
    db = tmp_path / "old.sqlite3"
    _make_old(db, version)
    if opener == "index":
        PhotoIndex(db).close()
    conn = connect(db)  # the search engine's own connection: upgrades when it lacks what it reads
    try:
        # a version 2 or 3 index has all a search needs: a search does not write it (filters work
        # without the span tables, only slower)
        upgraded = opener == "index" or version == 1
        expected = migrations.SCHEMA_VERSION if upgraded else version
        assert conn.execute("PRAGMA user_version").fetchone()[0] == expected
        columns = {row[1] for row in conn.execute("PRAGMA table_info(photos)")}
        assert "taken_at" in columns
        assert all(
            (name in columns) == (upgraded or version == 3)
            for name in ("missing_since", "failure_kind", "tries", "mtime_before_write_ns")
        )
        has_spans = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'folder_spans'").fetchone() is not None
        assert has_spans == upgraded
        dated = version > 1  # version 1 had no taken_at: the photo lost its date
        for text, found in (("dog after:2000", dated), ("dog in:/p", True), ("dog before:2019-05-04", False)):
            assert [h.path for h in Finder(conn).search(parse_query(text))] == (["/p/a.jpg"] if found else []), text
        assert [h.path for h in Finder(conn).search(parse_query("dog in:/q"))] == []
        assert [h.path for h in Finder(conn).search(parse_query("dog"))] == ["/p/a.jpg"]
    finally:
        conn.close()
    index = PhotoIndex(db)  # the SQLAlchemy side upgrades whatever is left, and reads the rows
    row = index.get("/p/a.jpg")
    index.close()
    assert row is not None and row.caption == "a dog" and row.missing_since is None
    assert row.taken_at == ("2019-05-04" if version > 1 else None)
    assert row.tries == 0 and row.failure_kind is None and row.mtime_before_write_ns is None
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
    # the photos it had are counted in the span tables the upgrade made
    assert conn.execute("SELECT * FROM folder_spans").fetchall() == [("/p/", 1, row.id, row.id)]
    dated = [("2019-05-04", 1, row.id, row.id)] if version > 1 else []
    assert conn.execute("SELECT * FROM day_spans").fetchall() == dated
    conn.close()
