"""Realistic synthetic BLIP-style captions for search benchmarks (deterministic for a seed).

Captions read like BLIP-large's ("arafed man sitting on a bench in a park", "there is a dog that is
running on the beach"). Word frequencies are controlled so the query classes mean something:
"beach" is in ~20% of captions, each rare word in ~0.01%.
"""

from __future__ import annotations

import random

PREFIXES = [
    ("", 50),
    ("arafed ", 10),
    ("there is ", 12),
    ("a close up of ", 5),
    ("a picture of ", 4),
    ("a blurry photo of ", 2),
    ("an image of ", 3),
]
SUBJECTS = [
    ("a man", 14),
    ("a woman", 14),
    ("a dog", 6),
    ("a cat", 5),
    ("a little girl", 3),
    ("a young boy", 3),
    ("two children", 3),
    ("a group of people", 6),
    ("a couple", 3),
    ("a bird", 3),
    ("a red car", 3),
    ("a white truck", 1),
    ("a boat", 2),
    ("a plate of food", 4),
    ("a bowl of soup", 1),
    ("a cake", 1),
    ("a tall building", 3),
    ("a tree", 2),
    ("a bunch of flowers", 2),
    ("a horse", 1),
    ("a bicycle", 1),
    ("a surfer", 1),
    ("an old church", 1),
    ("a train", 1),
    ("a cup of coffee", 2),
    ("a baby", 2),
]
ACTIONS = [
    ("", 20),
    ("standing", 10),
    ("sitting", 9),
    ("running", 5),
    ("walking", 8),
    ("riding a bike", 3),
    ("holding an umbrella", 2),
    ("eating", 2),
    ("playing with a ball", 2),
    ("looking at the camera", 3),
    ("posing for a picture", 3),
    ("smiling", 2),
    ("jumping", 1),
    ("sleeping", 1),
    ("flying a kite", 1),
    ("taking a selfie", 1),
    ("reading a book", 1),
    ("swimming", 1),
]
PLACES = [
    ("on the beach", 28),
    ("in a park", 10),
    ("on a city street", 10),
    ("in a kitchen", 5),
    ("on a table", 6),
    ("in a field", 5),
    ("in the forest", 4),
    ("on top of a mountain", 3),
    ("in the snow", 3),
    ("next to a lake", 3),
    ("in a garden", 4),
    ("in a living room", 5),
    ("in front of a building", 6),
    ("at a restaurant", 3),
    ("on a bench", 4),
    ("on a boat", 2),
    ("at the airport", 1),
    ("in a museum", 1),
    ("at a wedding", 2),
    ("on a bridge", 2),
]
EXTRAS = [
    ("", 45),
    ("at sunset", 8),
    ("with a blue sky", 8),
    ("in the rain", 3),
    ("at night", 5),
    ("with mountains in the background", 4),
    ("next to a red car", 2),
    ("with a palm tree", 3),
    ("and a dog", 2),
    ("with a cloudy sky", 4),
    ("in black and white", 2),
    ("with a lot of people", 3),
    ("in the background", 3),
    ("during the day", 2),
]
RARE = [
    "saxophone",
    "giraffe",
    "lighthouse",
    "accordion",
    "zeppelin",
    "tuba",
    "flamingo",
    "igloo",
    "harpsichord",
    "walrus",
    "origami",
    "kayak",
    "windmill",
    "telescope",
    "cactus",
]
RARE_RATE = 1e-4  # each rare word appears in about this share of captions


def _pick(rng: random.Random, table: list[tuple[str, int]]) -> str:
    return rng.choices([t for t, _ in table], weights=[w for _, w in table])[0]


def caption(rng: random.Random) -> str:
    parts = [_pick(rng, PREFIXES) + _pick(rng, SUBJECTS)]
    action = _pick(rng, ACTIONS)
    if action:
        parts.append(action)
    parts.append(_pick(rng, PLACES))
    extra = _pick(rng, EXTRAS)
    if extra:
        parts.append(extra)
    if rng.random() < RARE_RATE * len(RARE):
        parts.append(f"with a {rng.choice(RARE)}")
    return " ".join(parts)


def caption_pool(size: int, seed: int = 7) -> list[str]:
    """``size`` distinct captions (rows draw from this pool, so embeddings can be computed once each)."""
    rng = random.Random(seed)
    pool: dict[str, None] = {}
    while len(pool) < size:
        pool.setdefault(caption(rng), None)
    return list(pool)
