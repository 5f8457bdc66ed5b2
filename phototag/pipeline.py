"""The one path every photo takes: plan -> record -> decode -> caption -> write -> index.

Sources (the backfill walker, the watch daemon) call :meth:`Pipeline.submit` with paths. This module
owns the threads, the queues between them and shutdown; the stages themselves live in
:mod:`phototag.planning` (what a photo needs) and :mod:`phototag.stages` (what changes on disk and
in the index). Threads:

- ``decode`` (one per core by default, ``[pipeline] decode_workers``): plan a photo (a
  :class:`~phototag.planning.Decision`), hand it to the record stage, and decode and preprocess the
  photos that need the model; a worker takes its share of the photos already waiting (up to
  ``READ_AHEAD``) and reads their metadata in one exiftool call;
- ``caption`` (one): holds the model (loaded when the first photo needs it), batches what is queued;
- ``write`` (one per exiftool process of the session, ``[pipeline] exiftool_processes``): the write
  stage, metadata through exiftool (safe write), side by side; a photo is in the pipeline once at a
  time (the in-flight set is per path), so two writes of one photo never overlap. With ``--ray-io``
  the files are written by the cluster's node actors (``write_files``) and the decode threads only
  plan: a node decodes each photo (:class:`~phototag.caption_backend.ClusterDecoding`);
- ``index`` (one): the only thread writing the index, committing in batches (:class:`IndexWriter`);
- ``embed`` (one, with ``[search] embeddings``): embeds indexed captions for search by meaning.

Queues into the model and the writer are bounded, so memory does not grow with the library. A
photo's row says ``done`` only after its metadata write succeeded. Before a write, the planned
caption is committed on the ``pending`` row, so after a crash the next run can tell its own
half-finished work from a person's description, and writes that caption without running the model
again. A dry run swaps the record and write stages for ones that only report, and has no index or
embedding thread. :meth:`Pipeline.stop` stops every thread: the batch in the model's hands and what
is already captioned are finished, queued photos stay ``pending``, queued embeddings are left for
``phototag reindex --embeddings``.

A photo's own trouble (ImageError, MetadataError, OSError) fails that photo, as transient or permanent
(:mod:`phototag.failures`), and the run goes on; an index error or a bug stops the run with one line
(:class:`RunError`), leaving the photos not yet done ``pending``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from phototag.caption_backend import CaptionBackend, CaptionFailure, ClusterDecoding
from phototag.captioner import ModelLoadError
from phototag.config import Settings, default_batch_size
from phototag.embeddings import EmbedWorker, save_vectors
from phototag.exiftool import MetadataError
from phototag.failures import first_line, os_error_reason, photo_failure
from phototag.imaging import ImageError, is_raw_path, load_rgb
from phototag.index import PhotoIndex
from phototag.keywords import keywords_from_caption
from phototag.metadata import ExifToolSession, MetadataSnapshot
from phototag.model_process import local_captioner
from phototag.planning import FAILED_OUTCOME, Outcome, Planner, Task
from phototag.stages import (
    IndexJob,
    IndexRecords,
    IndexWriter,
    MetadataWrites,
    RecordStage,
    ReportRecords,
    ReportWrites,
    WriteFiles,
    WriteStage,
    store_vectors_job,
)

log = logging.getLogger(__name__)

_STOP = object()
# Longest wait for a batch to fill while photos are still being decoded (the first batch of a run, or
# a GPU that outpaces decoding); a lone photo (the watch daemon) never waits.
BATCH_FILL_WAIT_S = 1.0
# Tasks a write thread takes at once: enough to index them in one go, few enough that the other write
# threads get their share.
WRITE_GATHER = 8
# Most photos a decode worker takes from the inbox at once, of those waiting already (never more than
# its share: the other workers decode the rest side by side): their metadata is read in one exiftool
# call (Planner.read_ahead), ~20% less exiftool work each than a call per photo.
READ_AHEAD = 8


class RunError(Exception):
    """The run cannot go on: the index failed, or a bug. ``str(e)`` is one line; the cause is chained."""


def error_line(exc: BaseException) -> str:
    """One line for an error that is not a photo's: the index's own message, else the type and message."""
    if isinstance(exc, SQLAlchemyError):
        return f"index error: {first_line(getattr(exc, 'orig', None) or exc)}"
    if isinstance(exc, OSError):
        return os_error_reason(exc) + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {first_line(exc)}"


def run_error(exc: BaseException) -> RunError:
    """The one line a run stops with, for an error that is not any photo's fault."""
    if isinstance(exc, SQLAlchemyError):
        error = RunError(error_line(exc))
    else:
        error = RunError(f"internal error: {error_line(exc)} (a bug; -vv shows where)")
    error.__cause__ = exc
    return error


def _index_busy(exc: SQLAlchemyError) -> bool:
    """Another process held the index past the busy timeout: a passing state, not a broken index."""
    cause = str(getattr(exc, "orig", None) or exc)
    return isinstance(exc, OperationalError) and ("locked" in cause or "busy" in cause)


class Pipeline:
    """Threads and queues for one run (a backfill, or a daemon's lifetime)."""

    def __init__(
        self,
        settings: Settings,
        index: PhotoIndex,
        exiftool: ExifToolSession,
        *,
        captioner_factory: Callable[[], CaptionBackend] | None = None,
        write_files: WriteFiles | None = None,
        dry_run: bool = False,
        retry_failed: bool = False,
        include_restored: bool = False,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.exiftool = exiftool
        self.dry_run = dry_run
        self.planner = Planner(settings, index, exiftool, retry_failed=retry_failed, include_restored=include_restored)
        # what runs the model: BLIP in this process or a child (phototag.model_process), or Ray actors
        # (phototag.cluster, --ray: their owner stops them)
        self._captioner_factory: Callable[[], CaptionBackend] = captioner_factory or (
            lambda: local_captioner(settings.model)
        )
        self._owns_captioner = captioner_factory is None
        self._on_outcome = on_outcome or (lambda outcome: None)
        self.captioner: CaptionBackend | None = None
        self.error: BaseException | None = None
        self._decode_workers = settings.pipeline.effective_decode_workers
        self._write_threads = max(1, exiftool.processes)
        self._writers_left = self._write_threads
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._to_model: queue.Queue[Any] = queue.Queue()
        self._to_writer: queue.Queue[Any] = queue.Queue()
        self._size_queues(settings.model.batch_size or default_batch_size(settings.model.device))
        self._model_ready = threading.Event()
        self._model_wanted = threading.Event()  # set by the first photo that needs the model
        self._stopping = threading.Event()
        self._workers_left = self._decode_workers
        self._workers_busy = 0  # decode workers holding a photo: more may reach the model soon
        self._workers_lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._decode_loop, name=f"phototag-decode-{i}", daemon=True)
            for i in range(self._decode_workers)
        ]
        self._threads.append(threading.Thread(target=self._caption_loop, name="phototag-caption", daemon=True))
        self._threads += [
            threading.Thread(target=self._write_loop, name=f"phototag-write-{i}", daemon=True)
            for i in range(self._write_threads)
        ]
        # the side-effect stages: a dry run swaps them for reporting ones and writes no index
        self.embeddings: EmbedWorker | None = None
        self._index_writer: IndexWriter | None = None
        self._recorder: RecordStage
        self._writer: WriteStage
        if dry_run:
            self._recorder, self._writer = ReportRecords(self._report), ReportWrites(self._report)
        else:
            # captions are embedded (for search by meaning) on a helper thread, after they are indexed
            if settings.search.embeddings:
                self.embeddings = EmbedWorker(
                    index,
                    settings.embedding_model(),
                    store=self._store_vectors,
                    on_index_error=lambda exc: self._fail(run_error(exc)),
                )
                self._threads.append(threading.Thread(target=self._embed_loop, name="phototag-embed", daemon=True))
            producers = 2 if self.embeddings is not None else 1  # the write and embed threads
            writer = self._index_writer = IndexWriter(
                index, self._report, self._done_with, lambda exc: self._fail(run_error(exc)), producers=producers
            )
            self._threads.append(threading.Thread(target=writer.run, name="phototag-index", daemon=True))
            self._recorder = IndexRecords(writer, self._report)
            on_indexed = self.embeddings.submit if self.embeddings is not None else None
            self._writer = MetadataWrites(
                writer, exiftool, settings.model, on_indexed=on_indexed, write_files=write_files
            )
        self._started = False

    def _size_queues(self, batch_size: int) -> None:
        """Queue depths follow the batch the model takes (``[pipeline] queue_batches`` batches wait for
        it). Called again once the model has loaded, when "auto" has become a device with its own
        default; nothing reaches the model's queue before that."""
        depth = max(1, batch_size) * max(1, self.settings.pipeline.queue_batches)
        for q, size in ((self._inbox, depth * 2), (self._to_model, depth), (self._to_writer, depth * 2)):
            with q.mutex:  # queue.Queue reads maxsize under its mutex; growing it wakes blocked producers
                q.maxsize = size
                q.not_full.notify_all()

    @property
    def queue_depths(self) -> tuple[int, int, int]:
        """Capacity of the inbox, the model's queue and the writer's queue."""
        return self._inbox.maxsize, self._to_model.maxsize, self._to_writer.maxsize

    @property
    def thread_names(self) -> list[str]:
        return [thread.name for thread in self._threads]

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> Pipeline:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
        return self

    def submit(self, path: Path) -> bool:
        """Queue a photo; blocks while the pipeline is full. False once the pipeline is stopping."""
        key = str(path)
        with self._in_flight_lock:
            if key in self._in_flight:
                return True
            self._in_flight.add(key)
        while not self._stopping.is_set():
            try:
                self._inbox.put(path, timeout=0.2)
                return True
            except queue.Full:
                continue
        self._done_with(key)
        return False

    def queued(self) -> int:
        with self._in_flight_lock:
            return len(self._in_flight)

    def close(self, timeout: float | None = None) -> bool:
        """No more input: let queued work finish. True when every thread ended within ``timeout``.

        One stop marker per decode worker; the other threads end in a chain from there (the last
        decode worker tells the model, the model the writer, the writer the index and embed threads)."""
        for _ in range(self._decode_workers):
            while not self._stopping.is_set():
                try:
                    self._inbox.put(_STOP, timeout=0.2)
                    break
                except queue.Full:
                    continue
        return self.join(timeout)

    def stop(self) -> None:
        """Finish the batch in flight and what is already captioned; drop what was not started."""
        self._stopping.set()
        self._model_ready.set()
        if self.embeddings is not None:
            self.embeddings.stop()

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(t.is_alive() for t in self._threads)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _done_with(self, key: str) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(key)

    def _report(self, outcome: Outcome) -> None:
        self._done_with(str(outcome.path))
        try:
            self._on_outcome(outcome)
        except Exception:  # a broken progress callback must not stop the pipeline
            log.exception("outcome callback failed")

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop()

    # -- stage 1: plan, record, decode -----------------------------------------------------------

    def _decode_loop(self) -> None:
        try:
            stop = False
            while not stop and not self._stopping.is_set():
                try:
                    item = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is _STOP:
                    break
                with self._workers_lock:
                    self._workers_busy += 1
                try:
                    # what else is waiting already (never waiting for more): its metadata is read in one call
                    chunk, stop = self._take_waiting([item])
                    reads = self._read_ahead(chunk)
                    for path in chunk:
                        if self._stopping.is_set():
                            break  # like a photo still in the inbox: it stays pending
                        self._plan_and_decode_one(path, reads.get(path))
                finally:
                    with self._workers_lock:
                        self._workers_busy -= 1
        except Exception as exc:  # the index failed, or a bug: the run's failure, not each photo's
            log.debug("the decode stage failed", exc_info=True)
            self._fail(run_error(exc))
        finally:
            with self._workers_lock:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last:
                self._to_model.put(_STOP)

    def _take_waiting(self, chunk: list[Path]) -> tuple[list[Path], bool]:
        """``chunk`` plus photos already in the inbox: this worker's share of what waits (the others
        decode the rest side by side), at most READ_AHEAD in all; True when the stop marker came with
        them (this worker ends after the chunk)."""
        share = -(-(self._inbox.qsize() + len(chunk)) // self._decode_workers)  # rounded up
        while len(chunk) < min(READ_AHEAD, share):
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return chunk, True
            chunk.append(item)
        return chunk, False

    def _read_ahead(self, chunk: list[Path]) -> dict[Path, MetadataSnapshot]:
        """The plan's metadata reads for ``chunk`` in one exiftool call. Only a head start: whatever
        goes wrong here, each photo is planned (and read, and its trouble reported) on its own."""
        try:
            return self.planner.read_ahead(chunk)
        except (MetadataError, OSError, SQLAlchemyError):
            log.debug("reading ahead failed; each photo is read on its own", exc_info=True)
            return {}

    def _plan_and_decode_one(self, path: Path, read: MetadataSnapshot | None) -> None:
        """:meth:`_plan_and_decode`, with this photo's own trouble reported as its failure."""
        try:
            self._plan_and_decode(path, read)
        except (ImageError, MetadataError, OSError) as exc:  # this photo's trouble: the run goes on
            log.debug("%s failed", path, exc_info=True)
            self._report(Outcome(path, FAILED_OUTCOME, reason=photo_failure(exc)[0]))
        except SQLAlchemyError as exc:
            if not _index_busy(exc):
                raise
            # the row is untouched, so the next backfill or rescan tries this photo again
            cause = getattr(exc, "orig", None) or exc
            self._report(Outcome(path, FAILED_OUTCOME, reason=f"index busy ({first_line(cause)})"))

    def _plan_and_decode(self, path: Path, read: MetadataSnapshot | None = None) -> None:
        decision = self.planner.plan(path, read)
        self._recorder.record(decision)
        task = decision.task
        if task is None:
            if decision.outcome is None:
                self._done_with(str(path))  # gone since it was queued
            return
        if not task.needs_model:
            self._to_writer.put([task])
            return
        self._model_wanted.set()
        self._model_ready.wait()
        if self._stopping.is_set() or self.captioner is None:
            self._done_with(str(path))
            return
        if isinstance(self.captioner, ClusterDecoding) and self.captioner.decodes_on_cluster:
            # --ray-io: a cluster node decodes it (the library is mounted there at the same path)
            task.pixels = self.captioner.decode_request(path, task.size, task.mtime_ns)
            self._to_model.put(task)
            return
        try:
            image = load_rgb(
                path,
                min_side=self.captioner.input_size,
                draft=self.captioner.draft_decode,
                preview=self._raw_preview(path),
            )
            task.pixels = self.captioner.preprocess(image)
        except (ImageError, MetadataError, OSError) as exc:  # MetadataError: a RAW preview; OSError: I/O
            task.reason, task.transient = photo_failure(exc)
            self._to_writer.put([task])
            return
        self._to_model.put(task)

    def _raw_preview(self, path: Path) -> bytes | None:
        """RAW files are captioned from their embedded JPEG preview (None: let Pillow try the file)."""
        return self.exiftool.preview(path) if is_raw_path(path) else None

    # -- stage 2: caption ------------------------------------------------------------------------

    def _caption_loop(self) -> None:
        try:
            if self._model_needed():
                self.captioner = self._captioner_factory()
                self._size_queues(self.captioner.batch_size)
        except ModelLoadError as exc:
            log.debug("loading the model failed", exc_info=True)
            self._fail(exc)
        except Exception as exc:  # e.g. an ImportError from a broken install: say which, keep the cause
            log.debug("loading the model failed", exc_info=True)
            error = ModelLoadError(
                f"cannot load model {self.settings.model.name!r}: {type(exc).__name__}: {first_line(exc)}"
            )
            error.__cause__ = exc
            self._fail(error)
        finally:
            self._model_ready.set()
        try:
            finished = False
            while not finished:
                batch, finished = self._next_batch()
                if batch and not self._stopping.is_set():
                    try:
                        captioned = self._caption_batch(batch)
                    except Exception as exc:  # a bug (the model's own failures fail their batch): stop the run
                        log.debug("the caption stage failed", exc_info=True)
                        self._fail(run_error(exc))
                    else:
                        # a GPU's batch of 32 goes to several write threads, not all to one
                        for start in range(0, len(captioned), WRITE_GATHER):
                            self._to_writer.put(captioned[start : start + WRITE_GATHER])
                for task in batch if self._stopping.is_set() else ():
                    self._done_with(str(task.path))  # dropped: never started, still pending
        finally:
            for _ in range(self._write_threads):  # one stop marker per write thread, after every batch
                self._to_writer.put(_STOP)
            if self.captioner is not None and self._owns_captioner:
                self.captioner.close()

    def _model_needed(self) -> bool:
        """Wait until a photo needs the model: a daemon watching a quiet library never loads it."""
        while not self._model_wanted.wait(0.2):
            if self._stopping.is_set() or self._workers_left == 0:
                return False
        return not self._stopping.is_set()

    def _next_batch(self) -> tuple[list[Task], bool]:
        size = self.captioner.batch_size if self.captioner else 1
        first = self._to_model.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + BATCH_FILL_WAIT_S
        while len(batch) < size:
            try:
                item = self._to_model.get(timeout=0.05)
            except queue.Empty:
                if self._decoding() and time.monotonic() < deadline:
                    continue  # a partial batch costs a whole model call: wait for photos on their way
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _decoding(self) -> bool:
        """Photos that may reach the model soon: in a decode worker's hands, or waiting for one."""
        return not self._stopping.is_set() and (self._workers_busy > 0 or not self._inbox.empty())

    def _caption_batch(self, batch: list[Task]) -> list[Task]:
        assert self.captioner is not None
        captions: list[str | CaptionFailure | None]
        try:
            captions = list(self.captioner.caption([task.pixels for task in batch]))
        except Exception as exc:  # e.g. out of memory: fail this batch, keep the run going
            log.warning("captioning a batch of %d failed: %s", len(batch), exc)
            captions = [None] * len(batch)
            for task in batch:
                task.reason = f"model failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        for task, caption in zip(batch, captions, strict=True):
            task.pixels = None
            if task.reason:
                continue
            if isinstance(caption, CaptionFailure):  # this photo alone failed (e.g. a cluster node lost twice)
                task.reason, task.transient = caption.reason, caption.transient
            elif not caption:
                task.reason = "the model produced an empty caption"
            else:
                task.caption = caption
                task.keywords = keywords_from_caption(caption)
        return batch

    # -- stage 3: write; the index and embed threads ----------------------------------------------

    def _write_loop(self) -> None:
        try:
            self._write_until_stop()
        finally:
            with self._workers_lock:
                self._writers_left -= 1
                last = self._writers_left == 0
            # the last write thread to end tells the index thread (and through it the embed thread)
            if last and self._index_writer is not None:
                if self.embeddings is not None:
                    # after the last result is committed (and its captions queued): embed them, then end
                    self._index_writer.put(IndexJob(lambda session: [], after_commit=self.embeddings.close))
                self._index_writer.finish()

    def _write_until_stop(self) -> None:
        while True:
            item = self._to_writer.get()
            if item is _STOP:  # this thread's own marker: every batch before it is taken
                return
            tasks: list[Task] = list(item)
            while len(tasks) < WRITE_GATHER:  # gather what is ready, to index in batches
                try:
                    more = self._to_writer.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._write(tasks)
                    return
                tasks.extend(more)
            self._write(tasks)

    def _write(self, tasks: Sequence[Task]) -> None:
        if isinstance(self.error, RunError):  # the index failed or a bug: leave these pending for the next run
            for task in tasks:
                self._done_with(str(task.path))
            return
        try:
            self._writer.handle(tasks)
        except Exception as exc:  # the index failed, or a bug: stop the run with one line, not N failures
            log.debug("writing results failed", exc_info=True)
            self._fail(run_error(exc))
            for task in tasks:
                self._done_with(str(task.path))

    def _embed_loop(self) -> None:
        assert self.embeddings is not None and self._index_writer is not None
        try:
            self.embeddings.run()
        finally:
            self._index_writer.finish()

    def _store_vectors(self, model: str, items: Sequence[tuple[int, str]], vectors: Any) -> None:
        """The embed thread's vectors are saved by the index thread, like every other index write."""
        assert self._index_writer is not None
        self._index_writer.put(store_vectors_job(lambda session: save_vectors(session, model, items, vectors)))
