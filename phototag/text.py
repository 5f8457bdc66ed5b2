"""Words: how phototag splits text into words, which words carry no meaning, and their singulars.

Shared by captions (:mod:`phototag.keywords`) and queries (:mod:`phototag.query`): the same tokenizer
on both sides is why a keyword is always findable. Pure functions, standard library only.
"""

from __future__ import annotations

import re

STOP_WORDS = frozenset(
    """a an and are as at be but by for from has have he her his i in into is it its me my of on onto or
    our she that the their them there these they this those to up was we were what when where which who
    with you your""".split()
)

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (apostrophes inside a word are dropped: "dog's" -> "dogs")."""
    return [re.sub(r"['’]", "", w).lower() for w in _WORD.findall(text)]


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
