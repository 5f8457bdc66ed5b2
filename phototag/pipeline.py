"""The one path every photo takes: plan -> decode -> caption -> write metadata -> index.

Sources (the backfill walker, the watch daemon) call :meth:`Pipeline.submit` with paths. Inside:

- ``plan`` + ``decode`` run on a few worker threads: skip what the index already has, read the
  photo's current metadata, keep a person's description, else decode and preprocess for the model;
- ``caption`` runs on one thread that holds the model (loaded when the first photo needs it) and
  batches whatever is queued;
- ``write`` runs on one thread: metadata through exiftool (safe write), then the index row.

Queues between stages are bounded, so memory does not grow with the library. A photo's row says
``done`` only after its metadata write succeeded. Before a write, the planned caption is committed
on the ``pending`` row, so after a crash the next run can tell its own half-finished work from a
person's description, and writes that caption without running the model again. A dry run swaps
the write stage for one that only reports.

A photo's own trouble (ImageError, MetadataError, OSError) fails that photo, as transient or permanent
(:mod:`phototag.failures`), and the run goes on; an index error or a bug stops the run with one line
(:class:`RunError`), leaving the photos not yet done ``pending``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from phototag.captioner import Captioner, ModelLoadError
from phototag.config import Settings, default_batch_size
from phototag.embeddings import EmbedWorker
from phototag.exiftool import MetadataError
from phototag.failures import MAX_TRIES, PERMANENT, TRANSIENT, is_transient_os_error, os_error_reason
from phototag.fingerprint import content_hash
from phototag.imaging import ImageError, is_raw_path, load_rgb
from phototag.index import (
    DONE,
    FAILED,
    MISSING,
    PENDING,
    RESTORED,
    SOURCE_HUMAN,
    SOURCE_MODEL,
    Photo,
    PhotoIndex,
)
from phototag.keywords import keywords_from_caption
from phototag.metadata import ExifToolSession
from phototag.mwg import ExistingMetadata, local_time_iso

log = logging.getLogger(__name__)

# Outcome kinds reported to the caller.
CAPTIONED = "captioned"
HUMAN = "human"
SKIPPED = "skipped"
MOVED = "moved"
RETURNED = "returned"  # a photo marked missing is back where it was, still carrying its caption
FAILED_OUTCOME = "failed"
WOULD_WRITE = "would-write"
SYMLINK = "symlink"  # a link to a file: never captioned through the link (see Pipeline.plan)

_STOP = object()
# Longest wait for a batch to fill while photos are still being decoded (the first batch of a run, or
# a GPU that outpaces decoding); a lone photo (the watch daemon) never waits.
BATCH_FILL_WAIT_S = 1.0


class RunError(Exception):
    """The run cannot go on: the index failed, or a bug. ``str(e)`` is one line; the cause is chained."""


def error_line(exc: BaseException) -> str:
    """One line for an error that is not a photo's: the index's own message, else the type and message."""
    if isinstance(exc, SQLAlchemyError):
        return f"index error: {_first_line(getattr(exc, 'orig', None) or exc)}"
    if isinstance(exc, OSError):
        return os_error_reason(exc) + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {_first_line(exc)}"


def run_error(exc: BaseException) -> RunError:
    """The one line a run stops with, for an error that is not any photo's fault."""
    if isinstance(exc, SQLAlchemyError):
        error = RunError(error_line(exc))
    else:
        error = RunError(f"internal error: {error_line(exc)} (a bug; -vv shows where)")
    error.__cause__ = exc
    return error


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _index_busy(exc: SQLAlchemyError) -> bool:
    """Another process held the index past the busy timeout: a passing state, not a broken index."""
    cause = str(getattr(exc, "orig", None) or exc)
    return isinstance(exc, OperationalError) and ("locked" in cause or "busy" in cause)


def photo_failure(exc: BaseException, doing: str = "cannot read file") -> tuple[str, bool]:
    """A per-photo error as (one-line reason, transient?)."""
    if isinstance(exc, MetadataError):
        return str(exc), exc.transient
    if isinstance(exc, OSError):
        return f"{doing}: {os_error_reason(exc)}", is_transient_os_error(exc)
    return str(exc), False


@dataclass(frozen=True)
class Outcome:
    path: Path
    kind: str
    caption: str | None = None
    reason: str | None = None
    old_description: str | None = None
    written_to: str | None = None


@dataclass
class Task:
    path: Path
    size: int
    mtime_ns: int
    digest: str
    existing: ExistingMetadata
    pixels: Any = None
    caption: str | None = None
    source: str = SOURCE_MODEL
    reason: str | None = None
    transient: bool = False  # the failure in ``reason`` was not the photo's fault: retry it later
    confirm_only: bool = False
    keywords: tuple[str, ...] = field(default_factory=tuple)


class WriteStage(Protocol):
    def handle(self, tasks: Sequence[Task]) -> list[Outcome]: ...


class Pipeline:
    """Threads and queues for one run (a backfill, or a daemon's lifetime)."""

    def __init__(
        self,
        settings: Settings,
        index: PhotoIndex,
        exiftool: ExifToolSession,
        *,
        captioner_factory: Callable[[], Captioner] | None = None,
        dry_run: bool = False,
        retry_failed: bool = False,
        include_restored: bool = False,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.exiftool = exiftool
        self.dry_run = dry_run
        self.retry_failed = retry_failed
        self.include_restored = include_restored
        self.overwrite = settings.metadata.overwrite
        self._captioner_factory = captioner_factory or (lambda: Captioner(settings.model))
        self._on_outcome = on_outcome or (lambda outcome: None)
        self.captioner: Captioner | None = None
        self.error: BaseException | None = None
        workers = max(1, settings.pipeline.decode_workers)
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._to_model: queue.Queue[Any] = queue.Queue()
        self._to_writer: queue.Queue[Any] = queue.Queue()
        self._size_queues(settings.model.batch_size or default_batch_size(settings.model.device))
        self._model_ready = threading.Event()
        self._model_wanted = threading.Event()  # set by the first photo that needs the model
        self._stopping = threading.Event()
        self._workers_left = workers
        self._workers_busy = 0  # decode workers holding a photo: more may reach the model soon
        self._workers_lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()
        self._writer: WriteStage = ReportWrites() if dry_run else MetadataWrites(self)
        self._threads = [
            threading.Thread(target=self._decode_loop, name=f"phototag-decode-{i}", daemon=True)
            for i in range(workers)
        ]
        self._threads.append(threading.Thread(target=self._caption_loop, name="phototag-caption", daemon=True))
        self._threads.append(threading.Thread(target=self._write_loop, name="phototag-write", daemon=True))
        # captions are embedded (for search by meaning) on a helper thread, after they are indexed
        self.embeddings: EmbedWorker | None = None
        if settings.search.embeddings and not dry_run:
            self.embeddings = EmbedWorker(index, settings.embedding_model(),
                                          on_index_error=lambda exc: self._fail(run_error(exc)))
            self._threads.append(self.embeddings.thread)
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
        """No more input: let queued work finish. True when every thread ended within ``timeout``."""
        for _ in range(len(self._threads) - 2):
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

    # -- stage 1: plan + decode ------------------------------------------------------------------

    def _decode_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    item = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is _STOP:
                    break
                with self._workers_lock:
                    self._workers_busy += 1
                try:
                    self._plan_and_decode(item)
                except (ImageError, MetadataError, OSError) as exc:  # this photo's trouble: the run goes on
                    log.debug("%s failed", item, exc_info=True)
                    self._report(Outcome(item, FAILED_OUTCOME, reason=photo_failure(exc)[0]))
                except SQLAlchemyError as exc:
                    if not _index_busy(exc):
                        raise
                    # the row is untouched, so the next backfill or rescan tries this photo again
                    cause = getattr(exc, "orig", None) or exc
                    self._report(Outcome(item, FAILED_OUTCOME, reason=f"index busy ({_first_line(cause)})"))
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

    def _plan_and_decode(self, path: Path) -> None:
        task = self.plan(path)
        if task is None:
            return
        if task.source == SOURCE_HUMAN or task.confirm_only or task.reason or task.caption is not None:
            self._to_writer.put([task])
            return
        self._model_wanted.set()
        self._model_ready.wait()
        if self._stopping.is_set() or self.captioner is None:
            self._done_with(str(path))
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

    def plan(self, path: Path) -> Task | None:
        """Decide what a photo needs; None when nothing (reported as skipped or moved)."""
        if os.path.islink(path):
            # Writing through a link would change a file that may lie outside every folder phototag was
            # given, and replacing the link would turn it into a copy. A target inside the library is
            # walked (and captioned) under its own name anyway.
            self._report(Outcome(path, SYMLINK, reason=symlink_reason(path)))
            return None
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            self._done_with(str(path))
            return None
        row = self.index.get(path)
        if row is not None and row.status in (DONE, FAILED) and self._unchanged(row, stat):
            if row.status == DONE or not self._retry(row):
                self._report(Outcome(path, SKIPPED, caption=row.caption))
                return None
        # `phototag restore` put it back: it stays so while unchanged (its row's size, mtime and hash are
        # those after the restore), unless asked for; a person's later edit makes it a photo like any other
        keep_restored = row is not None and row.status == RESTORED and not self.include_restored
        if keep_restored and row is not None and self._unchanged(row, stat):
            self._report(Outcome(path, SKIPPED, reason="restored"))
            return None
        try:
            digest = content_hash(path)
        except OSError as exc:
            self._report(Outcome(path, FAILED_OUTCOME, reason=f"cannot read file: {exc.strerror or exc}"))
            return None
        if row is None and (moved := self._moved_from(digest)) is not None:
            if moved.status == MISSING:
                row = moved  # moved while it was missing: the row follows the photo, as below
            else:
                if not self.dry_run:
                    self._update(moved.id, path=str(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
                self._report(Outcome(path, MOVED, caption=moved.caption, reason=f"moved from {moved.path}"))
                return None
        if row is not None and row.status == MISSING:
            row = self._returned(row, path, stat, digest)
            if row is None:
                return None
        keep_restored = row is not None and row.status == RESTORED and not self.include_restored
        if row is not None and row.content_hash == digest and (
            (row.status == FAILED and not self._retry(row)) or keep_restored
        ):
            self._refresh(row, stat, digest)
            self._report(Outcome(path, SKIPPED, caption=row.caption))
            return None
        try:
            existing = self.exiftool.read(path)
        except MetadataError as exc:
            existing = ExistingMetadata(None, (), {})
            task = Task(path, stat.st_size, stat.st_mtime_ns, digest, existing, reason=str(exc),
                        transient=exc.transient)
            self._mark_pending(task, row)
            return task
        task = Task(path, stat.st_size, stat.st_mtime_ns, digest, existing)
        ours = row is not None and row.caption is not None and existing.description == row.caption
        if ours and row is not None:
            same_model = row.caption_source == SOURCE_HUMAN or (
                row.model_name == self.settings.model.name and (row.prompt or "") == self.settings.model.prompt
            )
            if row.status == PENDING:
                task.caption, task.source, task.confirm_only = row.caption, row.caption_source or SOURCE_MODEL, True
                task.keywords = tuple(row.keywords.split())
                return task
            if same_model and not self.overwrite:
                self._refresh(row, stat, digest)
                self._report(Outcome(path, SKIPPED, caption=row.caption))
                return None
        if row is not None and not ours and self._planned_and_unwritten(row, digest, existing):
            # a crash came between committing this caption and writing the file: write it, no new inference
            task.caption, task.source, task.keywords = row.caption, SOURCE_MODEL, tuple(row.keywords.split())
            return task
        if existing.description and not ours and not self.overwrite:
            task.caption, task.source = existing.description, SOURCE_HUMAN
            task.keywords = existing.keywords
        self._mark_pending(task, row)
        return task

    def _retry(self, row: Photo) -> bool:
        """Try a failed photo again: always with --retry-failed, else after a transient failure (disk
        full, I/O error, exiftool died) while it has failed fewer than MAX_TRIES times in a row."""
        return self.retry_failed or (row.failure_kind == TRANSIENT and (row.tries or 0) < MAX_TRIES)

    def _planned_and_unwritten(self, row: Photo, digest: str, existing: ExistingMetadata) -> bool:
        """A pending row holding a model caption for exactly this content (same model and prompt)."""
        return (
            row.status == PENDING
            and bool(row.caption)
            and row.caption_source == SOURCE_MODEL
            and row.content_hash == digest
            and row.model_name == self.settings.model.name
            and (row.prompt or "") == self.settings.model.prompt
            and (not existing.description or self.overwrite)
        )

    def _returned(self, row: Photo, path: Path, stat: os.stat_result, digest: str) -> Photo | None:
        """A photo marked missing is on disk again, at ``path`` (its own, or where it was moved while
        missing). Its row comes back with caption, source and original metadata untouched. If the photo
        still carries the row's caption, the row is done again without inference (None: reported);
        else the row is planned as usual, as failed (it had failed) or pending, so a caption phototag
        wrote is never taken for a person's and the original metadata is never replaced."""
        try:
            description = self.exiftool.read(path).description
        except MetadataError:
            description = None  # the usual planning reads it again and records why it failed
        ours = row.caption is not None and description == row.caption
        status = DONE if ours else (FAILED if row.failure_reason else PENDING)
        values = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                  "content_hash": digest, "status": status, "missing_since": None}
        previous = row.path
        if not self.dry_run:
            self._update(row.id, **values)
        if ours:
            if previous == str(path):
                self._report(Outcome(path, RETURNED, caption=row.caption, reason="back on disk"))
            else:
                self._report(Outcome(path, MOVED, caption=row.caption, reason=f"moved from {previous}"))
            return None
        for key, value in values.items():
            setattr(row, key, value)
        return row

    @staticmethod
    def _unchanged(row: Photo, stat: os.stat_result) -> bool:
        return row.size == stat.st_size and row.mtime_ns == stat.st_mtime_ns

    def _moved_from(self, digest: str) -> Photo | None:
        with self.index.session() as session:
            candidates = session.scalars(
                select(Photo).where(Photo.content_hash == digest, Photo.status.in_((DONE, MISSING, RESTORED)))
            ).all()
        for candidate in candidates:
            if not os.path.exists(candidate.path):
                return candidate
        return None

    def _update(self, row_id: int, **values: Any) -> None:
        with self.index.transaction() as session:
            row = session.get(Photo, row_id)
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)

    def _refresh(self, row: Photo, stat: os.stat_result, digest: str) -> None:
        if not self.dry_run and (row.size, row.mtime_ns, row.content_hash) != (
            stat.st_size,
            stat.st_mtime_ns,
            digest,
        ):
            self._update(row.id, size=stat.st_size, mtime_ns=stat.st_mtime_ns, content_hash=digest)

    def _mark_pending(self, task: Task, row: Photo | None) -> None:
        """Record the photo as queued work (the daemon resumes pending rows after a crash)."""
        if self.dry_run:
            return
        with self.index.transaction() as session:
            current = session.get(Photo, row.id) if row is not None else None
            new = current is None
            if current is None:
                current = Photo(path=str(task.path), size=task.size, mtime_ns=task.mtime_ns)
                session.add(current)
            if current.content_hash != task.digest:
                current.tries = 0  # new content: earlier failures were about the old one
            current.status = PENDING
            current.size, current.mtime_ns, current.content_hash = task.size, task.mtime_ns, task.digest
            current.failure_reason = current.failure_kind = None
            # the file's own time, before any phototag write: recorded once (a row from an older index
            # learns it only if the mtime predates the row: phototag has not written the file since)
            if current.mtime_before_write_ns is None and (new or task.mtime_ns < (current.created_at or 0) * 1e9):
                current.mtime_before_write_ns = task.mtime_ns
            if current.original_metadata is None and task.existing.original:
                import json

                current.original_metadata = json.dumps(task.existing.original, ensure_ascii=False)

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
                f"cannot load model {self.settings.model.name!r}: {type(exc).__name__}: {_first_line(exc)}"
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
                        self._to_writer.put(captioned)
                for task in batch if self._stopping.is_set() else ():
                    self._done_with(str(task.path))  # dropped: never started, still pending
        finally:
            self._to_writer.put(_STOP)

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
        try:
            captions = self.captioner.caption([task.pixels for task in batch])
        except Exception as exc:  # e.g. out of memory: fail this batch, keep the run going
            log.warning("captioning a batch of %d failed: %s", len(batch), exc)
            captions = [None] * len(batch)
            for task in batch:
                task.reason = f"model failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        for task, caption in zip(batch, captions, strict=True):
            task.pixels = None
            if task.reason:
                continue
            if not caption:
                task.reason = "the model produced an empty caption"
            else:
                task.caption = caption
                task.keywords = keywords_from_caption(caption)
        return batch

    # -- stage 3: write --------------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            self._write_until_stop()
        finally:
            if self.embeddings is not None:
                self.embeddings.close()

    def _write_until_stop(self) -> None:
        while True:
            item = self._to_writer.get()
            if item is _STOP:
                break
            tasks: list[Task] = list(item)
            while len(tasks) < 64:  # gather what is ready, to commit the index in batches
                try:
                    more = self._to_writer.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._write(tasks)
                    return
                tasks.extend(more)
            self._write(tasks)

    def _write(self, tasks: list[Task]) -> None:
        if isinstance(self.error, RunError):  # the index failed or a bug: leave these pending for the next run
            for task in tasks:
                self._done_with(str(task.path))
            return
        try:
            outcomes = self._writer.handle(tasks)
        except Exception as exc:  # the index failed, or a bug: stop the run with one line, not N failures
            log.debug("writing results failed", exc_info=True)
            self._fail(run_error(exc))
            for task in tasks:
                self._done_with(str(task.path))
            return
        for outcome in outcomes:
            self._report(outcome)


class MetadataWrites:
    """The real write stage: caption into the photo (or sidecar), then the index row."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.index = pipeline.index
        self.exiftool = pipeline.exiftool
        self.model = pipeline.settings.model

    def handle(self, tasks: Sequence[Task]) -> list[Outcome]:
        to_write = [t for t in tasks if t.caption and not t.reason and t.source == SOURCE_MODEL and not t.confirm_only]
        # 1. commit the planned captions, so a crash mid-write is recognised on the next run
        with self.index.transaction() as session:
            for task in to_write:
                row = self._row(session, task)
                row.caption, row.caption_source, row.keywords = task.caption, SOURCE_MODEL, index_keywords(task)
                row.model_name, row.prompt = self.model.name, self.model.prompt
        # 2. write the files
        results: dict[int, tuple[str, str | None]] = {}
        for i, task in enumerate(to_write):
            try:
                written = self.exiftool.write(task.path, task.caption or "", task.keywords)
                if written.fallback_reason:
                    log.info("wrote a sidecar instead: %s", written.fallback_reason)
                results[i] = ("ok", str(written.target) if written.kind == "sidecar" else "embedded")
            except (MetadataError, OSError) as exc:
                reason, task.transient = photo_failure(exc, "cannot write file")
                results[i] = ("failed", reason)
        # 3. record the outcome of every task
        outcomes: list[Outcome] = []
        indexed: list[tuple[Photo, str]] = []
        written_ids = {id(t): i for i, t in enumerate(to_write)}
        with self.index.transaction() as session:
            for task in tasks:
                row = self._row(session, task)
                if task.reason:
                    outcomes.append(self._failed(row, task, task.reason))
                    continue
                if id(task) in written_ids:
                    status, detail = results[written_ids[id(task)]]
                    if status == "failed":
                        row.caption, row.keywords = None, ""
                        outcomes.append(self._failed(row, task, detail or "metadata write failed"))
                        continue
                    row.written_to = detail
                    self._restat(row, task)
                    kind = CAPTIONED
                else:
                    row.caption, row.caption_source = task.caption, task.source
                    row.keywords = " ".join(task.keywords)
                    if task.source == SOURCE_HUMAN:
                        row.model_name, row.prompt, row.written_to = None, None, None
                    kind = HUMAN if task.source == SOURCE_HUMAN else CAPTIONED
                row.status, row.failure_reason, row.captioned_at = DONE, None, time.time()
                row.failure_kind, row.tries = None, 0
                # no EXIF date: the file's time before phototag first wrote it (never the write's own time)
                pre_write_ns = row.mtime_before_write_ns if row.mtime_before_write_ns is not None else task.mtime_ns
                row.taken_at = task.existing.taken_at or row.taken_at or local_time_iso(pre_write_ns)
                indexed.append((row, task.caption or ""))
                outcomes.append(
                    Outcome(
                        task.path,
                        kind,
                        caption=task.caption,
                        old_description=task.existing.description,
                        written_to=row.written_to,
                    )
                )
        if self.pipeline.embeddings is not None:
            self.pipeline.embeddings.submit([(row.id, caption) for row, caption in indexed])
        return outcomes

    @staticmethod
    def _row(session: Any, task: Task) -> Photo:
        row = session.scalar(select(Photo).where(Photo.path == str(task.path)))
        if row is None:  # the row is made at plan time; this covers a row deleted meanwhile
            row = Photo(path=str(task.path), size=task.size, mtime_ns=task.mtime_ns, content_hash=task.digest,
                        mtime_before_write_ns=task.mtime_ns)
            session.add(row)
        return row

    @staticmethod
    def _failed(row: Photo, task: Task, reason: str) -> Outcome:
        row.status, row.failure_reason = FAILED, reason
        row.failure_kind = TRANSIENT if task.transient else PERMANENT
        row.tries = (row.tries or 0) + 1
        return Outcome(task.path, FAILED_OUTCOME, reason=reason)

    @staticmethod
    def _restat(row: Photo, task: Task) -> None:
        """After our own write the file has a new size, mtime and hash: remember them."""
        try:
            stat = os.stat(task.path)
            row.size, row.mtime_ns, row.content_hash = stat.st_size, stat.st_mtime_ns, content_hash(task.path)
        except OSError:
            pass


def symlink_reason(path: Path) -> str:
    """One line on why a link is skipped, naming where it points."""
    try:
        target = os.path.realpath(path, strict=True)
    except OSError:
        return "a symbolic link whose target cannot be reached: skipped"
    return f"a symbolic link to {target}: skipped (phototag never writes through a link; caption the file itself)"


def index_keywords(task: Task) -> str:
    """The keywords the photo carries after the write: its own (a person's are never dropped, and
    ``tag:`` must find them) followed by those derived from the new caption."""
    merged: dict[str, str] = {}
    for keyword in (*task.existing.keywords, *task.keywords):
        merged.setdefault(keyword.casefold(), keyword)
    return " ".join(merged.values())


class ReportWrites:
    """The dry-run write stage: say what would be written; touch neither photos nor index."""

    def handle(self, tasks: Sequence[Task]) -> list[Outcome]:
        outcomes = []
        for task in tasks:
            if task.reason:
                outcomes.append(Outcome(task.path, FAILED_OUTCOME, reason=task.reason))
            elif task.source == SOURCE_HUMAN:
                outcomes.append(Outcome(task.path, HUMAN, caption=task.caption))
            else:
                outcomes.append(
                    Outcome(
                        task.path,
                        WOULD_WRITE,
                        caption=task.caption,
                        old_description=task.existing.current_description(),
                    )
                )
        return outcomes
