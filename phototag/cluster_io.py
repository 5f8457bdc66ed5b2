"""``--ray-io``: decoding and metadata writes on the Ray cluster's nodes, seen from the driver.

With ``--ray`` alone the driver decodes every photo and writes every caption itself. With ``--ray-io``
(``[cluster] ray_io``) a :class:`~phototag.cluster_worker.PhotoIO` actor on each node does both, for a
library mounted at the same path on every node:

- decoding: :class:`~phototag.cluster.RayCaptioner` asks a node's actor (the model actor's own node
  when it has one) to decode a chunk of paths; the pixels stay in the cluster's object store and go to
  the model actor by reference, never through the driver;
- writing: :meth:`RayIO.write` is the write stage's ``write_files``: a chunk of write jobs goes to one
  actor, which runs the same safe write the driver would, and returns one report per photo. The driver
  commits the planned captions before sending them and records the reports itself: it stays the only
  index writer, and the index stays the checkpoint.

A chunk whose actor or node is lost is sent once more to a live actor, marked as retried: a write whose
first try renamed its copy before the report was lost finds its caption there and writes nothing
(:func:`~phototag.photo_write.write_photo`). A chunk that fails twice fails its photos, transiently.
Ray is imported only here, in :mod:`phototag.cluster`, and only with ``--ray``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from phototag.cluster import ATTEMPTS, ClusterError, NoNodeActors, _actor_error, _import_ray
from phototag.config import MetadataSettings
from phototag.photo_write import WriteJob, WriteReport

log = logging.getLogger(__name__)

# Longest wait for the node actors to start (an exiftool and a Python worker each: seconds, not minutes).
IO_START_S = 120.0
# How long a write waits, after its actor became unreachable, for Ray to tell whether it lives (a dead
# node is declared dead after its missed health checks: ~30 s by default).
UNREACHABLE_WAIT_S = 90.0


class RayIO:
    """One :class:`~phototag.cluster_worker.PhotoIO` actor per live node, started when first needed;
    thread-safe (the caption thread decodes while the write threads write)."""

    def __init__(self, metadata: MetadataSettings) -> None:
        self._ray = _import_ray()
        self.metadata = metadata
        self._lock = threading.Lock()
        self._actors: list[Any] = []
        self._nodes: dict[Any, str] = {}  # actor -> the node it runs on
        self._next = 0
        self.hosts: list[str] = []

    # -- actors ------------------------------------------------------------------------------------

    def _start(self) -> None:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from phototag.cluster_worker import PhotoIO

        remote = ray.remote(PhotoIO)
        started: dict[Any, tuple[Any, str]] = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            processes = max(2, int(node.get("Resources", {}).get("CPU", 0)))
            # no CPU reserved: it waits on files and exiftool, beside the model actor's reservation;
            # one per node, pinned there (a lost node takes its actor along, and nothing restarts it)
            actor = remote.options(
                num_cpus=0,
                max_concurrency=processes + 2,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote(self.metadata, processes)
            started[actor.describe.remote()] = (actor, node["NodeID"])
        ready, waiting = ray.wait(list(started), num_returns=len(started), timeout=IO_START_S) if started else ([], [])
        errors: list[str] = []
        for ref in ready:
            actor, node_id = started[ref]
            try:
                info = ray.get(ref)
            except ray.exceptions.RayError as exc:  # e.g. no exiftool on that node
                errors.append(_actor_error(exc))
                ray.kill(actor)
                continue
            self._actors.append(actor)
            self._nodes[actor] = node_id
            self.hosts.append(f"{info['host']}:{info['pid']}")
        for ref in waiting:
            ray.kill(started[ref][0])
        for error in dict.fromkeys(errors):
            log.warning("a Ray node cannot decode or write photos: %s", error)
        if not self._actors:
            reason = errors[0] if errors else f"none started within {IO_START_S:g} s"
            raise NoNodeActors(f"no Ray node can decode or write photos ({reason})")
        log.info("decoding and writing on %d Ray nodes: %s", len(self._actors), ", ".join(self.hosts))

    def start(self) -> None:
        """Start the node actors now (else the first decode or write does); ClusterError if none can."""
        try:
            with self._lock:
                if not self._actors:
                    self._start()
        except NoNodeActors as exc:
            raise ClusterError(str(exc)) from None

    def actor(self, node: str | None = None) -> Any:
        """A live node actor: the one on ``node`` if there is one, else the next (round robin). When the
        last is gone, start afresh on what is left of the cluster (NoNodeActors if nothing is)."""
        with self._lock:
            if not self._actors:
                self._start()
            for actor in self._actors:
                if node is not None and self._nodes.get(actor) == node:
                    return actor
            self._next = (self._next + 1) % len(self._actors)
            return self._actors[self._next]

    @property
    def actors(self) -> list[Any]:
        """The live node actors, in the order they are chosen."""
        with self._lock:
            return list(self._actors)

    def owns(self, actor: Any, actor_id: str | None) -> bool:
        return actor_id is not None and actor._actor_id.hex() == actor_id

    def drop(self, actor: Any) -> None:
        with self._lock:
            if actor in self._actors:
                self._actors.remove(actor)
                self._nodes.pop(actor, None)
                self._ray.kill(actor)

    def close(self) -> None:
        for actor in list(self._actors):
            self.drop(actor)

    # -- writes ------------------------------------------------------------------------------------

    def write(self, jobs: Sequence[WriteJob]) -> list[WriteReport]:
        """The write stage's ``write_files`` on the cluster: one report per job, in order.

        A chunk whose actor died is sent again, once, to another node. One whose actor Ray reports
        unreachable ("the task may or may not have been executed") may still be writing those photos:
        it is sent again only once Ray says which it is, to the same actor when it lives (its file locks
        keep one write per photo at a time) or to another when it died; while Ray cannot tell, the
        photos fail transiently instead (two nodes must never write one photo at once)."""
        ray = self._ray
        reason = ""
        actor: Any = None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                actor = actor or self.actor()
            except NoNodeActors as exc:
                reason = f"{reason}; {exc}" if reason else str(exc)
                return [WriteReport(False, reason=reason, transient=True) for _ in jobs]
            try:
                reports: list[WriteReport] = ray.get(actor.write.remote(list(jobs), attempt > 1))
            except ray.exceptions.ActorUnavailableError as exc:
                reason = f"Ray worker lost ({_actor_error(exc)})"
                alive = self._alive(actor)
                if alive is None:
                    reason = f"Ray worker unreachable ({_actor_error(exc)}); it may still be writing"
                    return [WriteReport(False, reason=reason, transient=True) for _ in jobs]
                if not alive:
                    self.drop(actor)
                    actor = None
                if attempt < ATTEMPTS:
                    log.warning("a write of %d photos was cut off on the Ray cluster (%s): sending it again",
                                len(jobs), reason)  # fmt: skip
                continue
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:  # actor or node died
                self.drop(actor)
                actor = None
                reason = f"Ray worker lost ({_actor_error(exc)})"
                if attempt < ATTEMPTS:
                    log.warning(
                        "a write of %d photos failed on the Ray cluster (%s): sending it again", len(jobs), reason
                    )
                continue
            for job, report in zip(jobs, reports, strict=True):
                done = " (already written by a lost try: nothing to do)" if report.already else ""
                log.debug("wrote %s on %s%s", job.path, report.writer, done)
            return reports
        return [WriteReport(False, reason=f"{reason}, twice", transient=True) for _ in jobs]

    def _alive(self, actor: Any) -> bool | None:
        """Whether an actor that was unreachable lives (True), died (False), or Ray cannot tell yet (None)."""
        import time

        ray = self._ray
        deadline = time.monotonic() + UNREACHABLE_WAIT_S
        while time.monotonic() < deadline:
            try:
                ray.get(actor.describe.remote(), timeout=5)
                return True
            except ray.exceptions.ActorDiedError:
                return False
            except ray.exceptions.GetTimeoutError:
                continue  # Ray has not decided yet: ask again
            except ray.exceptions.ActorUnavailableError:
                time.sleep(1.0)  # refused at once while Ray decides: ask again in a moment
        return None
