"""BLIP-large's caption artifacts are cleaned from what slips through generation (real reported strings)."""

from __future__ import annotations

import pytest

from phototag.caption_text import tidy_caption


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        # captions users of blip-image-captioning-large report, as the model wrote them
        (
            "arafed man in a suit and tie standing in front of a building",
            "man in a suit and tie standing in front of a building",
        ),
        ("araffe woman sitting on a bench in a park", "woman sitting on a bench in a park"),
        ("arafe view of a city with a river and a bridge", "view of a city with a river and a bridge"),
        ("araf cat laying on a bed with a blanket", "cat laying on a bed with a blanket"),
        ("there is a dog that is sitting on the grass", "a dog that is sitting on the grass"),
        ("there are two cars parked in a parking lot", "two cars parked in a parking lot"),
        ("there is arafed man riding a horse on the beach", "man riding a horse on the beach"),
        ("a bowl of fruit fruit fruit fruit on a table", "a bowl of fruit on a table"),
        ("Arafed Man Standing", "Man Standing"),
        ("arafed", ""),  # nothing left: the pipeline fails the photo with a reason, never writes ""
    ],
)
def test_artifacts_are_removed(raw: str, clean: str) -> None:
    assert tidy_caption(raw) == clean


@pytest.mark.parametrize(
    "caption",
    [
        "a man and a woman walking on the beach",
        "the arab market at night",
        "a macaw ara sitting on a branch",
        "a poster of yasser arafat",
        "a dog dog and a cat",  # twice is a word the model may mean; three times is a stutter
        "where there is smoke there is fire",
    ],
)
def test_real_words_are_kept(caption: str) -> None:
    assert tidy_caption(caption) == caption
