"""Caption text straight from BLIP -> the caption phototag writes: BLIP-large's known artifacts removed.

BLIP-large (``Salesforce/blip-image-captioning-large``) is known to open captions with made-up words
("arafed", "araffe", ...: reported on the model's own hub discussion page, and counted in thousands of
captions by public projects), with "there is a ..." / "there are ...", and to repeat one word in a row.
Generation already suppresses the artifact words (``bad_words_ids``) and repeated n-grams
(``no_repeat_ngram_size``); :func:`tidy_caption` cleans up what slips through. Pure functions.
"""

from __future__ import annotations

import re

# The artifact words users report ("arafed", "araffe", "arafe", "araf"), and spellings of the same
# ("arrafed", "araffes"): "ar", "af", then one of the endings seen. Real words such as "arab", "arafat"
# or "ara" (the macaw) do not match.
ARTIFACT_WORDS = ("arafed", "araffe", "arafe", "araf", "araffed", "arafes", "araffes")
_ARTIFACT = re.compile(r"\b(?:a+r+a+f+(?:e|ed|es|fe|fed|fes)?)\b[\s,]*", re.IGNORECASE)
_THERE_IS = re.compile(r"^\s*there\s+(?:is|are|'s)\s+", re.IGNORECASE)
_TRIPLED = re.compile(r"\b(\w+)(?:\s+\1\b){2,}", re.IGNORECASE)  # one word three or more times in a row
_SPACES = re.compile(r"\s+")


def tidy_caption(text: str) -> str:
    """``"arafed man sitting on a bench bench bench"`` -> ``"man sitting on a bench"``: artifact words
    dropped, a leading "there is/are" dropped, a word said three times in a row said once, spaces
    normalised. A caption made only of artifacts becomes empty (the pipeline fails it with a reason)."""
    text = _ARTIFACT.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    text = _THERE_IS.sub("", text)
    text = _TRIPLED.sub(r"\1", text)
    return _SPACES.sub(" ", text).strip()
