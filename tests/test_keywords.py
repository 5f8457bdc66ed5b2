"""Caption -> keywords: what a photo library would want as tags (pure functions, no model)."""

from __future__ import annotations

import pytest

from phototag.keywords import FILLER, keywords_from_caption
from phototag.text import STOP_WORDS, singular


@pytest.mark.parametrize(
    ("plural", "one"),
    [
        ("bananas", "banana"), ("pandas", "panda"), ("umbrellas", "umbrella"), ("photos", "photo"),
        ("pianos", "piano"), ("kangaroos", "kangaroo"), ("skis", "ski"), ("kiwis", "kiwi"),
        ("taxis", "taxi"), ("buses", "bus"), ("lenses", "lens"), ("shoes", "shoe"), ("canoes", "canoe"),
        ("toes", "toe"), ("potatoes", "potato"), ("heroes", "hero"), ("cookies", "cookie"),
        ("movies", "movie"), ("puppies", "puppy"), ("berries", "berry"), ("pies", "pie"),
        ("mustaches", "mustache"), ("sandwiches", "sandwich"), ("dishes", "dish"), ("boxes", "box"),
        ("scarves", "scarf"), ("knives", "knife"), ("waves", "wave"), ("gloves", "glove"),
        ("houses", "house"), ("horses", "horse"), ("people", "person"), ("children", "child"),
        ("menus", "menu"), ("cacti", "cactus"),
        # already singular, or only plural
        ("bus", "bus"), ("grass", "grass"), ("dress", "dress"), ("cactus", "cactus"), ("tennis", "tennis"),
        ("iris", "iris"), ("analysis", "analysis"), ("canvas", "canvas"), ("lens", "lens"),
        ("glasses", "glasses"), ("jeans", "jeans"), ("scissors", "scissors"), ("series", "series"),
        ("sheep", "sheep"), ("dog", "dog"),
    ],
)  # fmt: skip
def test_singular(plural: str, one: str) -> None:
    assert singular(plural) == one


@pytest.mark.parametrize(
    ("caption", "keywords"),
    [
        ("there are two dogs running on the beach", ("dog", "running", "beach")),
        ("a dog sitting next to a cat near the window", ("dog", "cat", "window")),
        ("there is a man that is standing in front of a bus", ("man", "bus")),
        ("araffe woman laying on a bed with her dog and a pair of shoes", ("woman", "bed", "dog", "shoe")),
        ("arafed view of a city with a river and a bridge", ("city", "river", "bridge")),
        ("a close up of a plate of cookies and two bananas", ("plate", "cookie", "banana")),
        ("a black and white photo of a man in a suit", ("black", "white", "man", "suit")),
        ("a picture of pictures of photos", ()),
        ("Dogs, DOGS and a dog's ball", ("dog", "ball")),
        ("2 cats on 3 sofas", ("cat", "sofa")),
    ],
)
def test_keywords_are_singular_content_words(caption: str, keywords: tuple[str, ...]) -> None:
    assert keywords_from_caption(caption) == keywords


def test_keywords_are_lower_case_distinct_and_limited() -> None:
    caption = " ".join(f"word{chr(97 + i)}s" for i in range(20)) + " Beach beaches BEACH"
    found = keywords_from_caption(caption, limit=12)
    assert len(found) == 12 and len(set(found)) == 12
    assert all(k == k.lower() and k not in STOP_WORDS and k not in FILLER for k in found)
