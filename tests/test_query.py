from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from phototag.keywords import keywords_from_caption
from phototag.query import QueryError, parse_query, with_filters
from phototag.text import singular, words


def test_stop_words_do_not_hide_results() -> None:
    query = parse_query("dog on the beach")
    assert query.terms == ("dog", "beach")
    assert query.all_words() == '"dog" AND "beach"'


def test_only_stop_words_are_kept() -> None:
    assert parse_query("the").terms == ("the",)


@pytest.mark.parametrize(
    "text",
    [
        '"',
        "*",
        "AND",
        "OR NOT",
        "-",
        "--",
        "'",
        "dog's",
        "a AND (b",
        "NEAR(a b)",
        "^x",
        "col:",
        ":",
        "\\",
        "%_",
        "🐶 🏖",
        "海 犬",
        "12:30",
        "http://x.y",
        'dog -"',
        '"" beach',
        "tag:",
        "-dog",
    ],
)
def test_hostile_text_is_valid_fts(text: str) -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(caption, keywords, tokenize='porter unicode61')")
    db.execute("INSERT INTO t VALUES ('a dog on the beach', 'dog beach')")
    query = parse_query(text)
    for expression in (query.all_words(), query.any_words()):
        if expression is not None:
            db.execute("SELECT * FROM t WHERE t MATCH ?", (expression,)).fetchall()


def test_phrase_exclusion_and_tag() -> None:
    query = parse_query('"red car" street -night tag:City')
    assert query.phrases == (("red", "car"),)
    assert query.excluded == ("night",)
    assert query.tags == ("city",)
    assert query.terms == ("street",)
    assert query.all_words() == '("red car" AND keywords : "city" AND "street") NOT ("night")'


def test_unknown_field_is_a_clear_error() -> None:
    with pytest.raises(QueryError, match="unknown field 'colour:'; known fields: tag:, in:, after:, before:"):
        parse_query("colour:red")


def test_filters_in_the_query_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    query = parse_query(
        'puppy at the "sea side" in:~/Pictures/2024 -in:/tmp/x/ after:2024-06 before:2025 '
        "after:2024-07-02 -tag:Cat -wet tag:dog"
    )
    assert query.text == "puppy at the sea side"
    assert query.terms == ("puppy",) and query.phrases == (("sea", "side"),)
    assert query.folders == (str(tmp_path / "Pictures" / "2024") + os.sep,)
    assert query.excluded_folders == ("/tmp/x/",)
    assert (query.after, query.before) == ("2024-07-02", "2025-01-01")  # the later after:, the earlier before:
    assert query.tags == ("dog",) and query.excluded_tags == ("cat",) and query.excluded == ("wet",)
    assert query.required_expression() == '"sea side" AND keywords : "dog"'
    assert query.excluded_expression() == '"wet" OR keywords : "cat"'
    assert query.all_words() == '("sea side" AND keywords : "dog" AND "puppy") NOT ("wet" OR keywords : "cat")'


def test_filters_only_and_flags() -> None:
    query = parse_query("after:2020")
    assert query.is_empty and query.has_filters and query.text == ""
    merged = with_filters(
        parse_query("dog before:2024-03-01"),
        folders=("/p/a/",),
        after="2021-02",
        before="2024-05-01",
        tags=("Beach Day",),
    )
    assert merged.folders == ("/p/a/",) and merged.after == "2021-02-01" and merged.before == "2024-03-01"
    assert merged.tags == ("beach", "day")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("after:2024-13-01", "no such date"),
        ("before:yesterday", "not a date"),
        ("-after:2020", "use before:"),
        ("after:2024-02-30", "no such date"),
    ],
)
def test_bad_filters_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(text)


@pytest.mark.parametrize("text", ["in:", "after:", "tag:", '"', "-", 'in:""', "-in:", 'after:""'])
def test_empty_filters_mean_nothing(text: str) -> None:
    query = parse_query(text)
    assert not query.folders and not query.after and not query.tags


def test_words_lowercase_unicode() -> None:
    assert words("Dog's BEACH, café 海") == ["dogs", "beach", "café", "海"]


@pytest.mark.parametrize(
    ("plural", "one"),
    [
        ("dogs", "dog"),
        ("puppies", "puppy"),
        ("boxes", "box"),
        ("children", "child"),
        ("glasses", "glasses"),
        ("bus", "bus"),
        ("grass", "grass"),
        ("benches", "bench"),
        ("tomatoes", "tomato"),
    ],
)
def test_singular(plural: str, one: str) -> None:
    assert singular(plural) == one


def test_keywords_from_caption() -> None:
    assert keywords_from_caption("there are two dogs running on the beach") == ("dog", "running", "beach")
    assert keywords_from_caption("arafed man sitting on a bench") == ("man", "bench")
    assert keywords_from_caption("") == ()
    assert keywords_from_caption("the of a") == ()
