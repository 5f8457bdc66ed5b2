"""Caption text -> keywords: content words, lower-case, no stop words, nouns in the singular.

Pure functions; the same ``words`` tokenizer as search, so a keyword is always findable.
"""

from __future__ import annotations

import re

from phototag.query import STOP_WORDS, words

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

_IRREGULAR = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "dice": "die",
    "wolves": "wolf", "leaves": "leaf", "knives": "knife", "wives": "wife", "shelves": "shelf",
    "calves": "calf", "loaves": "loaf", "halves": "half", "scarves": "scarf", "hooves": "hoof",
    "thieves": "thief", "elves": "elf", "lives": "life", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "buses": "bus", "gases": "gas", "lenses": "lens", "canvases": "canvas", "circuses": "circus",
    "walruses": "walrus", "octopuses": "octopus", "octopi": "octopus", "cactuses": "cactus",
    "cacti": "cactus", "fungi": "fungus", "viruses": "virus", "campuses": "campus", "irises": "iris",
    "axes": "axe", "taxis": "taxi", "bikinis": "bikini", "martinis": "martini", "zucchinis": "zucchini",
    "emus": "emu", "gnus": "gnu", "menus": "menu", "gurus": "guru", "tutus": "tutu", "haikus": "haiku",
}  # fmt: skip
# Words ending in "s" that are already singular (or only plural).
_KEEP_S = frozenset(
    """glasses sunglasses eyeglasses jeans pants shorts trousers tights leggings pajamas pyjamas overalls
    scissors pliers tongs clothes news species series stairs binoculars goggles headphones earphones lens
    tennis chess physics gymnastics athletics billiards gas atlas canvas bias alias christmas texas
    chaos cosmos kudos thermos rhinoceros asbestos ethos pathos iris""".split()
)
# Singular nouns ending in "ie", "oe" or "che" (their plurals must not lose more than the "s").
_IE_OE_CHE = frozenset(
    """cookie movie zombie selfie brownie hoodie smoothie pixie calorie goalie rookie veggie birdie
    prairie magpie collie beanie sweetie genie hippie newbie foodie auntie freebie pie tie lie
    shoe canoe toe hoe oboe floe sloe doe horseshoe snowshoe tiptoe
    mustache moustache headache niche cache avalanche quiche cliche""".split()
)


def singular(word: str) -> str:
    """A light English singulariser, good enough for caption nouns (no dictionary needed).

    Regular plurals lose their "s" ("bananas", "photos", "skis"), "-ies" becomes "-y" ("puppies"),
    "-es" after s/ch/sh/x/z/o is dropped ("benches", "tomatoes"), with word lists for the exceptions
    ("cookies", "shoes", "mustaches", "buses", "glasses", "tennis").
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _KEEP_S or len(word) <= 3 or not word.endswith("s"):
        return word
    if word[:-1] in _IE_OE_CHE:
        return word[:-1]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zzes")):
        return word[:-2]
    if word.endswith("oes") and len(word) > 4:
        return word[:-2]
    if word.endswith(("ss", "us")):
        return word  # grass, dress, cactus, bus
    if word.endswith("is") and word.endswith(("sis", "xis", "vis", "nis", "ris", "tis", "lis")):
        return word  # analysis, axis, pelvis, tennis, iris, metropolis
    return word[:-1]


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
