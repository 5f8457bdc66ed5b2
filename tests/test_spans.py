"""The folder and day spans (phototag.migrations) that bound a filtered keyword search stay right as the
library changes: counts exact, bounds never narrower than the photos they cover, so a search with
``in:``, ``after:`` or ``before:`` finds exactly the photos a full check of every photo finds."""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import select

from phototag import search as search_module
from phototag.index import DONE, FAILED, Photo, PhotoIndex
from phototag.migrations import rebuild_spans
from phototag.query import parse_query
from phototag.search import Finder, connect
from tests.conftest import run_cli, write_config

FOLDERS = ["/lib/2019/", "/lib/2019/trip/", "/lib/2020/", "/lib/phone/", "/elsewhere/"]
DAYS = ["2019-03-01", "2019-07-15", "2020-01-01", "2020-12-31", None]
WORDS = ["dog", "boat", "tree", "car"]
QUERIES = [
    "dog in:/lib/2019",
    "boat in:/lib/2019/trip",
    "tree in:/lib/2020 in:/lib/phone",
    "car after:2019-07-15",
    "dog before:2020",
    "boat after:2019-07-01 before:2020-12-31",
    "tree in:/lib after:2020",
    "car -in:/lib/2019",
    "dog in:/nowhere",
    "tag:boat in:/lib/phone before:2021",
    "car tree in:/lib/2020",
]


def spans(conn: sqlite3.Connection, table: str) -> dict[str, tuple[int, int, int]]:
    return {key: (photos, low, high) for key, photos, low, high in conn.execute(f"SELECT * FROM {table}") if photos}


def assert_spans_cover(db: Path, *, exact: bool) -> None:
    """Every folder's and day's count is its photos' count; its bounds hold all their ids (and are
    their lowest and highest ids when ``exact``)."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT id, path, substr(taken_at, 1, 10) FROM photos").fetchall()
        for table, of in (("folder_spans", lambda r: r[1].rsplit("/", 1)[0] + "/"), ("day_spans", lambda r: r[2])):
            truth: dict[str, list[int]] = {}
            for row in rows:
                if of(row) is not None:
                    truth.setdefault(of(row), []).append(row[0])
            kept = spans(conn, table)
            assert {key: photos for key, (photos, _, _) in kept.items()} == {k: len(v) for k, v in truth.items()}
            for key, ids in truth.items():
                _, low, high = kept[key]
                assert low <= min(ids) and max(ids) <= high, (table, key)
                if exact:
                    assert (low, high) == (min(ids), max(ids)), (table, key)
    finally:
        conn.close()


def expected(db: Path, text: str) -> set[str]:
    """The done photos matching ``text``, by checking every photo in Python."""
    query = parse_query(text)
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT path, caption, keywords, taken_at, status FROM photos").fetchall()
    conn.close()
    found = set()
    for path, caption, keywords, taken_at, status in rows:
        words = set(caption.split())
        if status != DONE or (query.terms and not any(term in words for term in query.terms)):
            continue
        if query.tags and not all(tag in keywords.split() for tag in query.tags):
            continue
        if query.folders and not any(path.startswith(folder) for folder in query.folders):
            continue
        if any(path.startswith(folder) for folder in query.excluded_folders):
            continue
        if query.after and not (taken_at and taken_at >= query.after):
            continue
        if query.before and not (taken_at and taken_at < query.before):
            continue
        found.add(path)
    return found


def found(db: Path, text: str) -> set[str]:
    conn = connect(db)
    try:
        return {hit.path for hit in Finder(conn).search(parse_query(text), limit=1000)}
    finally:
        conn.close()


def new_photo(rng: random.Random, n: int) -> Photo:
    caption = " ".join(rng.sample(WORDS, rng.randint(1, 2)))
    day = rng.choice(DAYS)
    return Photo(
        path=f"{rng.choice(FOLDERS)}img{n}.jpg",
        size=1,
        mtime_ns=1,
        status=rng.choice([DONE] * 5 + [FAILED]),
        caption=caption,
        keywords=caption,
        taken_at=None if day is None else f"{day}T1{n % 10}:00:00",
    )


@pytest.mark.parametrize("few_kept", [search_module.FEW_KEPT, 8])
def test_filtered_search_matches_a_full_check_as_photos_move_are_redated_and_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few_kept: int
) -> None:
    # few_kept=8: most filters count as keeping "many", the per-match check inside the bounds
    monkeypatch.setattr(search_module, "FEW_KEPT", few_kept)
    rng = random.Random(few_kept)
    db = tmp_path / "index.sqlite3"
    index = PhotoIndex(db)
    with index.transaction() as session:
        session.add_all(new_photo(rng, n) for n in range(150))
    serial = 150
    for round_ in range(4):
        with index.transaction() as session:
            photos = list(session.scalars(select(Photo)))
            for photo in rng.sample(photos, 25):  # moved to another folder (or renamed in its own)
                photo.path = f"{rng.choice(FOLDERS)}moved{serial}.jpg"
                serial += 1
            for photo in rng.sample(photos, 15):  # its date corrected, or learnt, or lost
                day = rng.choice(DAYS)
                photo.taken_at = None if day is None else f"{day}T08:00:00"
            for photo in rng.sample(photos, 10):
                session.delete(photo)
            session.add_all(new_photo(rng, serial + n) for n in range(20))
            serial += 20
        assert_spans_cover(db, exact=False)
        for text in QUERIES:
            assert found(db, text) == expected(db, text), (round_, text)
    index.close()
    conn = sqlite3.connect(db)
    with conn:
        rebuild_spans(conn)
    conn.close()
    assert_spans_cover(db, exact=True)
    for text in QUERIES:
        assert found(db, text) == expected(db, text), text


def test_spans_bound_the_fts_walk_to_the_filtered_photos(tmp_path: Path) -> None:
    """What makes a filtered search fast at a million photos: the walk starts and ends at the filter's
    id range (never a count of the photos it keeps), and a filter that keeps nothing walks nothing."""
    index = PhotoIndex(tmp_path / "index.sqlite3")
    with index.transaction() as session:
        for n in range(60):
            folder = "/lib/old/" if n < 20 else "/lib/new/"
            day = "2015-05-05" if n < 40 else "2023-03-03"
            session.add(
                Photo(path=f"{folder}{n}.jpg", size=1, mtime_ns=1, status=DONE, caption="a dog", keywords="dog",
                      taken_at=f"{day}T10:00:00")
            )  # fmt: skip
    index.close()
    conn = connect(tmp_path / "index.sqlite3")
    finder = Finder(conn)
    restrict, _, _ = finder._restriction(parse_query("dog in:/lib/old"))
    assert " AND rowid BETWEEN 1 AND 20 " in restrict + " "
    restrict, _, _ = finder._restriction(parse_query("dog in:/lib/new after:2020"))
    assert " AND rowid BETWEEN 41 AND 60 " in restrict + " "  # both filters' bounds, intersected
    assert finder._restriction(parse_query("dog in:/lib/old after:2020"))[0] == " AND 0"  # no id in both
    assert finder._restriction(parse_query("dog in:/nowhere"))[0] == " AND 0"
    assert [h.path for h in finder.search(parse_query("dog in:/lib/old after:2020"))] == []
    assert len(finder.search(parse_query("dog in:/lib/new after:2020"), limit=100)) == 20
    conn.close()


def test_reindex_search_index_narrows_the_spans_of_a_keyword_only_index(tmp_path: Path, tiny_model: Path) -> None:
    """A library without caption vectors has only the spans to rebuild: done, and no error."""
    db = tmp_path / "index.sqlite3"
    index = PhotoIndex(db)
    with index.transaction() as session:
        session.add_all(
            Photo(path=f"/lib/{n}.jpg", size=1, mtime_ns=1, status=DONE, caption="a dog", keywords="dog",
                  taken_at="2020-01-01T10:00:00")
            for n in range(3)
        )  # fmt: skip
    index.close()
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE folder_spans SET low = -7, high = high + 50")  # as many moves leave them
    result = run_cli(write_config(tmp_path, tiny_model, db=db), "reindex", "--search-index")
    assert result.exit_code == 0, result.output
    assert "folders and days of 3 photos counted" in result.output and "no vector index to rebuild" in result.output
    assert_spans_cover(db, exact=True)
