"""One process-wide lock around heavy imports (torch, transformers, sentence-transformers) and model loads.

The captioner and the embedding worker load their models lazily, each on its own thread, often at the
same moment (the first photo of a run). transformers' lazy module is not safe to import from two threads
at once: one of them may be told ``cannot import name 'BlipForConditionalGeneration'``. Loads are rare and
slow anyway, so they simply take turns. This module imports nothing heavy itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()  # re-entrant: a load may import more heavy modules inside it


@contextmanager
def heavy_loading() -> Iterator[None]:
    """Hold the process-wide lock while importing heavy modules or loading a model."""
    with _LOCK:
        yield
