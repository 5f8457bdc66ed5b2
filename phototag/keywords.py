"""Caption text -> keywords: content words, lower-case, no stop words, nouns in the singular.

Pure functions; words, stop words and singulars come from :mod:`phototag.text`, the tokenizer queries
use too, so a keyword is always findable.
"""

from __future__ import annotations

import re

from phototag.text import STOP_WORDS, singular, words

# Words a caption model says that describe nothing in the photo: framing, counting, postures,
# prepositions and helper verbs ("a dog sitting next to a cat" -> dog, cat).
FILLER = frozenset(
    """there here image picture photo photograph photography view close closeup front top side background
    foreground some very other one two three four five six seven eight nine ten several many few large
    small big little stands standing sits sitting sit stand laying lying lays lies posing poses looking
    looks holding holds wearing wears shown seen made taken having does doing did do done being been can
    could will would may might shall should must next near nearby behind beside besides under underneath
    over above below beneath through across along around against between among toward towards inside
    outside down out off about during while after before together each another both all any also just
    not no so than then too how why theres thats whats heres lot lots bunch pair kind type sort piece
    number shot always""".split()
)

_BLIP_ARTEFACT = re.compile(r"araf+\w*")  # "arafed", "araffe", "arafly": BLIP-large's stutter


def keywords_from_caption(caption: str, limit: int = 12) -> tuple[str, ...]:
    """Distinct keywords in caption order: ``"two dogs running on the beach"`` -> dog, running, beach."""
    found: dict[str, None] = {}
    for word in words(caption):
        if word in STOP_WORDS or word in FILLER or word.isdigit() or len(word) < 2:
            continue
        if _BLIP_ARTEFACT.fullmatch(word):
            continue
        one = singular(word)
        if one in FILLER or one in STOP_WORDS:  # "photos", "pictures"
            continue
        found.setdefault(one, None)
        if len(found) >= limit:
            break
    return tuple(found)
