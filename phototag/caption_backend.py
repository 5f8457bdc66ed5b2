"""What the pipeline's caption stage needs from whatever runs the model.

Three backends fit: :class:`phototag.captioner.Captioner` (the model in this process),
:class:`phototag.model_process.ProcessCaptioner` (in a child process of its own, ``[model] process``)
and :class:`phototag.cluster.RayCaptioner` (in Ray actors, ``--ray ADDRESS``). The decode threads call
``preprocess`` on each photo; the caption thread hands ``caption`` a batch of what it returned, and
``close`` when the run is over.
With ``--ray-io`` the Ray backend decodes on the cluster (:class:`ClusterDecoding`): the pipeline hands
it decode requests (a path and the planned size and mtime) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

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


@runtime_checkable
class ClusterDecoding(Protocol):
    """A backend that may decode photos itself (``--ray-io``: on the Ray cluster's nodes). While
    ``decodes_on_cluster``, the pipeline queues ``decode_request(...)`` for ``caption`` instead of
    decoding the photo here."""

    @property
    def decodes_on_cluster(self) -> bool: ...

    def decode_request(self, path: Path, size: int, mtime_ns: int) -> Any: ...
