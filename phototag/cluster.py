"""Captioning on a Ray cluster (``--ray ADDRESS``): connect, start the model's actors, send them batches.

Only this module, :mod:`phototag.cluster_io` and :mod:`phototag.cluster_model` import Ray, and only
when ``--ray`` (or ``[cluster] ray_address``) is given. Everything else stays where the photos are: the
pipeline plans, decodes, writes metadata and keeps the index on this machine (the driver; with
``--ray-io`` the nodes decode and write, see :mod:`phototag.cluster_io`), and
:class:`RayCaptioner` takes the place of the local :class:`~phototag.captioner.Captioner` as the
caption stage's backend. What crosses the network is a batch of decoded, resized uint8 pixels one way
and captions the other.

Actors: one per GPU (``num_gpus=1``) on a cluster with GPUs, else one CPU actor per node (using that
node's CPUs for torch). A batch is cut into chunks of the model's batch size, spread over the actors,
and gathered in order. A chunk whose actor or node is lost is sent again to a live actor; a chunk that
fails twice fails its photos with the reason (transient when the cluster, not the photo, was at fault).
The index stays the checkpoint: a photo is ``pending`` until its caption is written, so a killed run
resumes without captioning anything twice.
"""

from __future__ import annotations

import importlib
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from phototag.caption_backend import CaptionFailure
from phototag.captioner import ModelLoadError
from phototag.cluster_worker import DecodeRequest, DecodeSpec
from phototag.config import ModelSettings
from phototag.failures import first_line
from phototag.imaging import resize_for_model

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from phototag.cluster_io import RayIO

log = logging.getLogger(__name__)

INSTALL_HINT = "Ray is not installed: install phototag[ray] (pip install 'phototag[ray]')"
TOKEN_HINT = (
    "set RAY_AUTH_MODE=token and give the cluster's token as RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
    "~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
)
# Longest wait for the actors to load the model (a node importing torch on a busy machine is slow);
# a cluster without a free CPU or GPU for them fails after it with one line instead of hanging.
ACTOR_START_S = 300.0
# How long the address may take to answer before phototag says it cannot connect.
PROBE_TIMEOUT_S = 10.0
# A chunk is sent this many times in all before its photos fail.
ATTEMPTS = 2


class ClusterError(Exception):
    """The cluster cannot be used (Ray missing, address unreachable, token missing); ``str(e)`` is one line."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return ray


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (what ``ray.init(address=...)`` takes) as its driver."""
    ray = _import_ray()
    if ray.is_initialized():
        return
    _probe(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {first_line(exc)}") from None
    except ray.exceptions.AuthenticationError:
        raise ClusterError(f"the Ray cluster at {address} refused this machine's auth token: {TOKEN_HINT}") from None


def disconnect() -> None:
    ray = _import_ray()
    if ray.is_initialized():
        ray.shutdown()


def _probe(address: str) -> None:
    """Fail in seconds, with the reason, where ``ray.init`` would retry for minutes: nothing listens at
    HOST:PORT, or the cluster wants a token this machine lacks (Ray >= 2.52 heads start with token auth)."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return  # "auto" and ray:// (Ray Client) are resolved by ray.init itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address}: {reason} (is `ray start --head` running there?)"
        ) from None
    import ray

    # Ray's own GCS client (not public): the one call that reports a refused token at once
    gcs_client = getattr(importlib.import_module("ray._raylet"), "GcsClient", None)
    if gcs_client is None:
        return
    try:
        gcs_client(address=address).internal_kv_get(b"phototag-probe", None, timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.AuthenticationError:
        raise ClusterError(f"the Ray cluster at {address} needs an auth token: {TOKEN_HINT}") from None
    except (ray.exceptions.RayError, TypeError, OSError) as exc:  # left to ray.init, which says more
        log.debug("probing %s: %s", address, exc)


class RayCaptioner:
    """The caption stage's backend on a Ray cluster (see the module docstring)."""

    def __init__(
        self, settings: ModelSettings, *, start_timeout: float = ACTOR_START_S, io: RayIO | None = None
    ) -> None:
        self._ray = _import_ray()
        self.settings = settings
        self.io = io  # --ray-io: the nodes decode; the pipeline hands ``caption`` decode requests
        self._actors: list[Any] = []
        self._nodes: dict[Any, str] = {}  # model actor -> its node (its decoder is the one there)
        self._next = 0
        self._start_actors(start_timeout)
        if io is not None:
            io.start()

    # -- actors ------------------------------------------------------------------------------------

    def _start_actors(self, timeout: float) -> None:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from phototag.cluster_model import CaptionModel

        remote = ray.remote(CaptionModel)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = []
        if gpus and not self.settings.device.startswith("cpu"):
            actors = [remote.options(num_gpus=1, num_cpus=1).remote(self.settings) for _ in range(gpus)]
        else:
            for node in ray.nodes():
                cpus = int(node.get("Resources", {}).get("CPU", 0))
                if node.get("Alive") and cpus > 0:
                    strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)
                    actors.append(remote.options(num_cpus=1, scheduling_strategy=strategy).remote(self.settings, cpus))
        if not actors:
            raise ModelLoadError("the Ray cluster has no node with a CPU or GPU for the model")
        described = {actor.describe.remote(): actor for actor in actors}
        ready, waiting = ray.wait(list(described), num_returns=len(described), timeout=timeout)
        errors: list[str] = []
        infos: list[dict[str, Any]] = []
        for ref in ready:
            try:
                infos.append(ray.get(ref))
                self._actors.append(described[ref])
                self._nodes[described[ref]] = infos[-1].get("node", "")
            except ray.exceptions.RayError as exc:  # e.g. the model folder is missing on that node
                errors.append(_actor_error(exc))
                ray.kill(described[ref])
        for ref in waiting:  # no room on the cluster for it (yet): do without
            ray.kill(described[ref])
        if not self._actors:
            if errors:
                raise ModelLoadError(f"cannot load the model on the Ray cluster: {errors[0]}")
            raise ModelLoadError(
                f"no Ray actor loaded the model within {timeout:g} s: does the cluster have a free CPU or GPU?"
            )
        for error in dict.fromkeys(errors):
            log.warning("a Ray actor could not load the model: %s", error)
        info = infos[0]
        self.input_size = int(info["input_size"])
        self.draft_decode = bool(info["draft_decode"])
        self.per_actor_batch = max(1, int(info["batch_size"]))
        self._resample = int(info["resample"])
        self.decode_spec = DecodeSpec(self.input_size, self._resample, self.draft_decode)
        # one batch of the pipeline keeps every actor busy with one model call
        self.batch_size = self.per_actor_batch * len(self._actors)
        self.actor_hosts = [f"{i['host']}:{i['pid']} ({i['device']})" for i in infos]
        log.info("captioning on %d Ray actors: %s", len(self._actors), ", ".join(self.actor_hosts))

    def _drop(self, actor: Any) -> None:
        if actor in self._actors:
            self._actors.remove(actor)
            self._nodes.pop(actor, None)
            self._ray.kill(actor)

    def _actor(self, avoid: str | None = None) -> Any:
        """The next live actor (round robin), one off the node ``avoid`` if there is one (a chunk sent
        again leaves the node that lost it: its other actors are likely gone too, though not yet known
        to be); when the last is gone, start afresh on what is left."""
        if not self._actors:
            try:
                self._start_actors(ACTOR_START_S)
            except ModelLoadError as exc:
                raise _NoActors(str(exc)) from None
        self._next = (self._next + 1) % len(self._actors)
        for offset in range(len(self._actors) if avoid is not None else 0):
            actor = self._actors[(self._next + offset) % len(self._actors)]
            if self._nodes.get(actor) != avoid:
                return actor
        return self._actors[self._next]

    def close(self) -> None:
        for actor in list(self._actors):
            self._drop(actor)
        if self.io is not None:
            self.io.close()

    # -- the backend -------------------------------------------------------------------------------

    @property
    def decodes_on_cluster(self) -> bool:
        return self.io is not None

    def decode_request(self, path: Path, size: int, mtime_ns: int) -> DecodeRequest:
        """With ``--ray-io``: what the pipeline queues for the model instead of pixels."""
        return DecodeRequest(str(path), size, mtime_ns)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """A decoded photo -> uint8 pixels at the model's input size, resized as BLIP's processor does."""
        return resize_for_model(image, self.input_size, self._resample)

    def caption(self, pixels: Sequence[Any]) -> list[str | CaptionFailure]:
        """One caption (or failure) per photo; ``pixels`` are uint8 arrays, or with ``--ray-io`` the
        photos' :class:`DecodeRequest`, decoded on a node and handed to the model actor by reference."""
        ray = self._ray
        step = self.per_actor_batch
        chunks: list[Any] = [pixels[start : start + step] for start in range(0, len(pixels), step)]
        if self.io is None:
            chunks = [np.stack(chunk) for chunk in chunks]
        results: list[list[str | CaptionFailure] | None] = [None] * len(chunks)
        pending: dict[Any, tuple[int, Any, int, Any, Any]] = {}

        def send(number: int, attempt: int, last_error: str, avoid: str | None = None) -> None:
            try:
                actor = self._actor(avoid)
                io, failed = None, None
                if self.io is not None:
                    io = self.io.actor(self._nodes.get(actor))
                    chunk, failed = io.decode.options(num_returns=2).remote(chunks[number], self.decode_spec)
                else:
                    chunk = chunks[number]
            except (_NoActors, NoNodeActors) as exc:
                results[number] = [CaptionFailure(f"{last_error}; {exc}", transient=True)] * len(chunks[number])
                return
            pending[actor.caption.remote(chunk)] = (number, actor, attempt, io, failed)

        for number in range(len(chunks)):
            send(number, 1, "")
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            number, actor, attempt, io, failed = pending.pop(ref)
            node = self._nodes.get(actor)
            try:
                undecoded = {}
                if failed is not None:
                    decoded = ray.get(failed)
                    undecoded = decoded.failed
                    for request in chunks[number]:
                        log.debug("decoded %s on %s", request.path, decoded.decoder)
                results[number] = _merge(len(chunks[number]), undecoded, ray.get(ref))
                continue
            except ray.exceptions.RayActorError as exc:  # an actor, its worker or its node is gone
                if io is not None and self.io is not None and self.io.owns(io, exc.actor_id):
                    self.io.drop(io)  # the decoder was lost: the model actor is fine
                else:
                    self._drop(actor)
                reason, transient = f"Ray worker lost ({_actor_error(exc)})", True
            except ray.exceptions.ObjectLostError as exc:  # decoded pixels lost with their node
                reason, transient = f"Ray worker lost ({_actor_error(exc)})", True
            except ray.exceptions.RayError as exc:  # the model failed on this chunk (e.g. out of memory)
                reason, transient = f"model failed: {_actor_error(exc)}", False
            if attempt < ATTEMPTS:
                log.warning(
                    "a batch of %d failed on the Ray cluster (%s): sending it again", len(chunks[number]), reason
                )
                send(number, attempt + 1, reason, avoid=node)
            else:
                results[number] = [CaptionFailure(f"{reason}, twice", transient=transient)] * len(chunks[number])
        return [caption for chunk in results for caption in (chunk or [])]


def _merge(count: int, undecoded: dict[int, tuple[str, bool]], captions: Sequence[str]) -> list[str | CaptionFailure]:
    """A chunk's results in order: the photos a node could not decode fail with its reason, the others
    take the model's captions (which came for them alone, in order)."""
    texts = iter(captions)
    return [CaptionFailure(*undecoded[number]) if number in undecoded else next(texts) for number in range(count)]


class _NoActors(Exception):
    """Every actor is lost and none could be started again."""


class NoNodeActors(Exception):
    """No node of the cluster could start a decode/write actor (``--ray-io``)."""


def _actor_error(exc: BaseException) -> str:
    """The first line that says what went wrong inside an actor (Ray wraps it in a long traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(exc)):
        return f"{type(cause).__name__}: {first_line(cause)}"
    text = str(exc)
    for line in reversed(text.strip().splitlines()):
        if line.strip() and not line.startswith(" ") and ":" in line:
            return line.strip()
    return first_line(exc)
