"""Caption text -> keywords: content words, lower-case, no stop words, nouns in the singular.

Pure functions; the same ``words`` tokenizer as search, so a keyword is always findable.
"""

from __future__ import annotations

from phototag.search import STOP_WORDS, words

# Words a caption model says that describe nothing in the photo.
FILLER = frozenset(
    """there here image picture photo photograph photography view close closeup front top side background
    foreground some very other one two three several many few large small big little arafed araffe arafe
    stands standing sits""".split()
)

_IRREGULAR = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
    "oxen": "ox",
    "wolves": "wolf",
    "leaves": "leaf",
    "knives": "knife",
    "wives": "wife",
    "shelves": "shelf",
    "calves": "calf",
    "loaves": "loaf",
    "sheep": "sheep",
    "fish": "fish",
    "deer": "deer",
}
_KEEP_S = frozenset(
    """glasses sunglasses jeans pants shorts trousers scissors clothes news species series
    stairs binoculars goggles headphones""".split()
)


def singular(word: str) -> str:
    """A light English singulariser, good enough for caption nouns (no dictionary needed)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _KEEP_S or len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zzes")):
        return word[:-2]
    if word.endswith("oes") and len(word) > 4:
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is", "as", "os")):
        return word[:-1]
    return word


def keywords_from_caption(caption: str, limit: int = 12) -> tuple[str, ...]:
    """Distinct keywords in caption order: ``"two dogs running on the beach"`` -> dog, running, beach."""
    found: dict[str, None] = {}
    for word in words(caption):
        if word in STOP_WORDS or word in FILLER or word.isdigit() or len(word) < 2:
            continue
        found.setdefault(singular(word), None)
        if len(found) >= limit:
            break
    return tuple(found)
