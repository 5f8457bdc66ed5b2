"""The model's side of ``--ray``: a Ray actor that holds BLIP and captions batches of uint8 pixels.

It runs on a cluster node, not on the machine that holds the photos: the driver
(:mod:`phototag.cluster`) decodes and resizes each photo to the model's input size and sends uint8
pixels; the actor hands them to :class:`~phototag.captioner.Captioner` as decoded photos (its fast
input: rescaled and normalised as one batch on the actor's device) and sends captions back. The model
loads once per actor, from the same ``[model]`` settings as the driver's, so the model folder must
exist at that path on every node (or be a hub id the node has cached).

``CaptionModel`` is a class-based callable in the shape Ray Data's ``map_batches`` takes (a dict of
arrays in, a dict of arrays out), so it serves a Ray Data pipeline as well as the driver's actor pool.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np

from phototag.captioner import Captioner
from phototag.config import ModelSettings


class CaptionModel:
    """BLIP on one Ray worker: ``{"pixels": uint8 N x H x W x 3}`` -> ``{"caption": N strings}``."""

    def __init__(self, settings: ModelSettings, threads: int = 0) -> None:
        if threads > 0:
            # Ray sets OMP_NUM_THREADS to the actor's CPU reservation (1); a CPU actor may use its node
            import torch

            torch.set_num_threads(threads)
        self.captioner = Captioner(settings)
        self._resample = int(self.captioner.processor.image_processor.resample)

    def describe(self) -> dict[str, Any]:
        """What the driver needs to decode for this model, and where the actor runs."""
        c = self.captioner
        return {
            "input_size": c.input_size,
            "resample": self._resample,
            "draft_decode": c.draft_decode,
            "batch_size": c.batch_size,
            "device": c.device,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "node": _node_id(),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        # uint8 H x W x 3 photos already at the input size: the captioner only rescales and normalises them
        tensors = list(torch.from_numpy(np.ascontiguousarray(batch["pixels"], dtype=np.uint8)))
        return {"caption": np.asarray(self.captioner.caption(tensors), dtype=object)}

    def caption(self, pixels: np.ndarray) -> list[str]:
        """The actor method the driver calls: one caption per photo of ``pixels`` (with ``--ray-io`` an
        object reference the node's decoder made, resolved here by Ray; empty when it decoded none)."""
        if len(pixels) == 0:
            return []
        return [str(text) for text in self({"pixels": pixels})["caption"]]


def _node_id() -> str:
    """The Ray node this actor runs on (``--ray-io`` decodes a chunk on the model actor's own node)."""
    import ray

    return str(ray.get_runtime_context().get_node_id())
