from __future__ import annotations

import sqlite3

import pytest

from phototag.keywords import keywords_from_caption, singular
from phototag.search import QueryError, parse_query, words


def test_stop_words_do_not_hide_results() -> None:
    query = parse_query("dog on the beach")
    assert query.terms == ("dog", "beach")
    assert query.all_words() == '"dog" AND "beach"'


def test_only_stop_words_are_kept() -> None:
    assert parse_query("the").terms == ("the",)


@pytest.mark.parametrize("text", ['"', "*", "AND", "OR NOT", "-", "--", "'", "dog's", "a AND (b", "NEAR(a b)",
                                  "^x", "col:", ":", "\\", "%_", "🐶 🏖", "海 犬", "12:30", "http://x.y",
                                  'dog -"', '"" beach', "tag:", "-dog"])
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
    with pytest.raises(QueryError, match="unknown field 'colour:'.*tag:"):
        parse_query("colour:red")


def test_words_lowercase_unicode() -> None:
    assert words("Dog's BEACH, café 海") == ["dogs", "beach", "café", "海"]


@pytest.mark.parametrize(("plural", "one"), [("dogs", "dog"), ("puppies", "puppy"), ("boxes", "box"),
                                             ("children", "child"), ("glasses", "glasses"), ("bus", "bus"),
                                             ("grass", "grass"), ("benches", "bench"), ("tomatoes", "tomato")])
def test_singular(plural: str, one: str) -> None:
    assert singular(plural) == one


def test_keywords_from_caption() -> None:
    assert keywords_from_caption("there are two dogs running on the beach") == ("dog", "running", "beach")
    assert keywords_from_caption("arafed man sitting on a bench") == ("man", "bench")
    assert keywords_from_caption("") == ()
    assert keywords_from_caption("the of a") == ()
