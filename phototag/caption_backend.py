"""What the pipeline's caption stage needs from whatever runs the model.

Three backends fit: :class:`phototag.captioner.Captioner` (the model in this process),
:class:`phototag.model_process.ProcessCaptioner` (in a child process of its own, ``[model] process``)
and :class:`phototag.cluster.RayCaptioner` (in Ray actors, ``--ray ADDRESS``). The decode threads call
``preprocess`` on each photo; the caption thread hands ``caption`` a batch of what it returned, and
``close`` when the run is over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class CaptionFailure:
    """One photo of a batch that got no caption, and why (the rest of the batch keeps its captions).

    ``transient``: not the photo's fault (e.g. the cluster lost the node twice), so a later run retries it."""

    reason: str
    transient: bool = False


class CaptionBackend(Protocol):
    batch_size: int  # photos per ``caption`` call: queue depths follow it
    input_size: int  # the short side a photo is decoded to (at least)
    draft_decode: bool  # whether decoding may take JPEG draft shortcuts

    def preprocess(self, image: Image.Image) -> Any:
        """A decoded photo -> what ``caption`` takes (thread-safe)."""
        ...

    def caption(self, pixels: Sequence[Any]) -> Sequence[str | CaptionFailure]:
        """One caption (or failure) per photo, in order."""
        ...

    def close(self) -> None:
        """Stop what it started (a child process, Ray actors); idempotent."""
        ...
