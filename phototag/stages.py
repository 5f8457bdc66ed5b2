"""The pipeline's side-effect stages, and the one thread that writes the index.

A stage with side effects comes in two kinds that the pipeline swaps, like beets' pretend mode:

- recording a plan's :class:`~phototag.planning.Decision`: :class:`IndexRecords` (the index learns
  it) or :class:`ReportRecords` (a dry run: only the outcome is reported);
- writing captions: :class:`MetadataWrites` (into the photo or its sidecar through exiftool, then
  the index row) or :class:`ReportWrites` (a dry run: say what would be written).

Every index write of a run goes through :class:`IndexWriter`, one thread that applies jobs in the
order they came and commits them in batches: a job nobody waits for (a plan's pending mark, a
photo's result) may wait a moment for others to share its transaction; one a stage waits for (the
captions planned before a write) is committed at once, with every job before it. The order a crash
relies on holds: a photo is ``pending`` before it reaches the model, its planned caption is committed
before its file is written (the write stage waits for that commit), and it is ``done`` only after
the write.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from phototag.config import ModelSettings
from phototag.failures import PERMANENT, TRANSIENT
from phototag.index import DONE, FAILED, PENDING, SOURCE_HUMAN, SOURCE_MODEL, Photo, PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.mwg import local_time_iso
from phototag.photo_write import WriteJob, WriteReport, write_photos
from phototag.planning import CAPTIONED, FAILED_OUTCOME, HUMAN, WOULD_WRITE, Decision, Outcome, Task

log = logging.getLogger(__name__)

Report = Callable[[Outcome], None]
WriteFiles = Callable[[Sequence[WriteJob]], list[WriteReport]]
WRITER_BATCH = 64  # index jobs committed in one transaction, at most
# How long a job nobody waits for may wait for others to share its transaction (one transaction per
# photo was a large share of the index's cost); short beside a photo's time in the pipeline.
WRITER_LINGER_S = 0.05


# -- the index writer -------------------------------------------------------------------------------


@dataclass
class IndexJob:
    """Changes for the index writer's transaction. ``apply`` returns the outcomes to report once they
    are committed; if the commit fails, each of ``paths`` is reported failed instead."""

    apply: Callable[[Session], list[Outcome]]
    paths: Sequence[Path] = ()
    after_commit: Callable[[], None] | None = None
    committed: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    awaited: bool = False  # a stage waits for this commit: no lingering


class IndexWriter:
    """The one thread that writes the index. It ends after ``producers`` :meth:`finish` calls.

    A failed commit is the run's failure (``on_error``): its photos, and those of every later job, are
    left as they were (``pending``) for the next run, and none of them is blamed (``dropped``)."""

    def __init__(
        self,
        index: PhotoIndex,
        report: Report,
        dropped: Callable[[str], None],
        on_error: Callable[[BaseException], None],
        producers: int = 1,
    ) -> None:
        self.index = index
        self._report = report
        self._dropped = dropped
        self._on_error = on_error
        self._producers = producers
        self.failed = False
        # Unbounded: this thread never waits on its producers, and each of them is throttled upstream
        # (the inbox, the model, the embedding model), so no producer can deadlock against it.
        self._jobs: queue.Queue[IndexJob | None] = queue.Queue()

    def put(self, job: IndexJob) -> IndexJob:
        self._jobs.put(job)
        return job

    def commit(self, job: IndexJob) -> bool:
        """Apply ``job`` and wait for its commit. False when it failed."""
        job.awaited = True
        self.put(job).committed.wait()
        return job.ok

    def finish(self) -> None:
        """One producer has no more jobs."""
        self._jobs.put(None)

    def run(self) -> None:
        finished = 0
        while finished < self._producers:
            jobs: list[IndexJob] = []
            item = self._jobs.get()
            linger_until = time.monotonic() + WRITER_LINGER_S
            awaited = False
            while True:
                if item is None:
                    finished += 1
                else:
                    jobs.append(item)
                    awaited = awaited or item.awaited
                if len(jobs) >= WRITER_BATCH or finished == self._producers:
                    break
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    wait = linger_until - time.monotonic()
                    if awaited or wait <= 0:
                        break
                    try:  # more jobs are likely on their way: let them share this transaction
                        item = self._jobs.get(timeout=wait)
                    except queue.Empty:
                        break
            if jobs:
                self._commit(jobs)

    def _commit(self, jobs: list[IndexJob]) -> None:
        outcomes: list[list[Outcome]] = []
        if not self.failed:
            try:
                with self.index.transaction() as session:
                    outcomes = [job.apply(session) for job in jobs]
            except Exception as exc:  # the index failed, or a bug: the run's failure, not these photos'
                log.debug("writing the index failed", exc_info=True)
                self.failed = True
                self._on_error(exc)
        if self.failed:
            for job in jobs:
                job.committed.set()
                for path in job.paths:
                    self._dropped(str(path))
            return
        for job, reports in zip(jobs, outcomes, strict=True):
            job.ok = True
            job.committed.set()
            if job.after_commit is not None:
                job.after_commit()
            for outcome in reports:
                self._report(outcome)


# -- recording a plan ---------------------------------------------------------------------------------


class RecordStage(Protocol):
    def record(self, decision: Decision) -> None: ...


class IndexRecords:
    """The real record stage: the decision's row changes (and the pending mark) go to the index writer;
    its outcome is reported once they are committed."""

    def __init__(self, writer: IndexWriter, report: Report) -> None:
        self.writer = writer
        self.report = report

    def record(self, decision: Decision) -> None:
        settled = [decision.outcome] if decision.outcome is not None else []
        if not decision.writes_index:
            for outcome in settled:
                self.report(outcome)
            return

        def apply(session: Session) -> list[Outcome]:
            apply_decision(session, decision)
            return settled

        self.writer.put(IndexJob(apply, paths=[decision.path] if settled else []))


class ReportRecords:
    """The dry-run record stage: report the outcome; the index stays as it is."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def record(self, decision: Decision) -> None:
        if decision.outcome is not None:
            self.report(decision.outcome)


def apply_decision(session: Session, decision: Decision) -> None:
    """Record a decision in the index (inside the caller's transaction)."""
    row = session.get(Photo, decision.row_id) if decision.row_id is not None else None
    for key, value in decision.changes.items():
        if row is not None:
            setattr(row, key, value)
    task = decision.task
    if not decision.pending or task is None:
        return
    # the photo is queued work from now on (a daemon resumes pending rows after a crash)
    if row is None:
        row = session.scalar(select(Photo).where(Photo.path == str(task.path)))
    new = row is None
    if row is None:
        row = Photo(path=str(task.path), size=task.size, mtime_ns=task.mtime_ns)
        session.add(row)
    if row.content_hash != task.digest:
        row.tries = 0  # new content: earlier failures were about the old one
    row.status = PENDING
    row.size, row.mtime_ns, row.content_hash = task.size, task.mtime_ns, task.digest
    row.failure_reason = row.failure_kind = None
    # the file's own time, before any phototag write: recorded once (a row from an older index
    # learns it only if the mtime predates the row: phototag has not written the file since)
    if row.mtime_before_write_ns is None and (new or task.mtime_ns < (row.created_at or 0) * 1e9):
        row.mtime_before_write_ns = task.mtime_ns
    if row.original_metadata is None and task.existing.original:
        row.original_metadata = json.dumps(task.existing.original, ensure_ascii=False)


# -- writing captions ---------------------------------------------------------------------------------


class WriteStage(Protocol):
    def handle(self, tasks: Sequence[Task]) -> None: ...


class MetadataWrites:
    """The real write stage: commit the planned captions, write them into the photos (or sidecars),
    then hand the results to the index writer, which marks the rows and reports the outcomes.

    ``write_files`` writes a chunk and reports each photo (:func:`phototag.photo_write.write_photo`):
    by default through this process's exiftool; with ``--ray-io`` on the Ray cluster's nodes
    (:meth:`phototag.cluster_io.RayIO.write`), which run that same function."""

    def __init__(
        self,
        writer: IndexWriter,
        exiftool: ExifToolSession,
        model: ModelSettings,
        on_indexed: Callable[[list[tuple[int, str]]], None] | None = None,
        write_files: WriteFiles | None = None,
    ) -> None:
        self.writer = writer
        self.exiftool = exiftool
        self.model = model
        self.on_indexed = on_indexed
        # who writes the files: this process's exiftool, or writer actors on a Ray cluster (--ray-io)
        self.write_files: WriteFiles = write_files or (lambda jobs: write_photos(exiftool, jobs))

    def handle(self, tasks: Sequence[Task]) -> None:
        to_write = [t for t in tasks if t.caption and not t.reason and t.source == SOURCE_MODEL and not t.confirm_only]
        # 1. commit the planned captions, so a crash mid-write is recognised on the next run
        if to_write and not self.writer.commit(
            IndexJob(lambda s: self._plan_captions(s, to_write), paths=[t.path for t in tasks])
        ):
            return
        # 2. write the files
        jobs = [WriteJob(t.path, t.caption or "", t.keywords, t.snapshot) for t in to_write]
        reports = self.write_files(jobs) if jobs else []
        results: dict[int, WriteReport] = {}
        for task, report in zip(to_write, reports, strict=True):
            if report.fallback_reason:
                log.info("wrote a sidecar instead: %s", report.fallback_reason)
            if not report.ok:
                task.transient = report.transient
            results[id(task)] = report
        # 3. record the outcome of every task
        indexed: list[tuple[int, str]] = []
        on_indexed = self.on_indexed
        after = (lambda: on_indexed(indexed)) if on_indexed is not None else None
        self.writer.put(
            IndexJob(
                lambda s: self._record(s, tasks, results, indexed), paths=[t.path for t in tasks], after_commit=after
            )
        )

    def _plan_captions(self, session: Session, tasks: Sequence[Task]) -> list[Outcome]:
        rows = _rows(session, tasks)
        for task in tasks:
            row = rows[str(task.path)]
            row.caption, row.caption_source, row.keywords = task.caption, SOURCE_MODEL, index_keywords(task)
            row.model_name, row.prompt = self.model.name, self.model.prompt
        return []

    @staticmethod
    def _record(
        session: Session, tasks: Sequence[Task], results: dict[int, WriteReport], indexed: list[tuple[int, str]]
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        done: list[tuple[Photo, str]] = []
        rows = _rows(session, tasks)
        for task in tasks:
            row = rows[str(task.path)]
            if task.reason:
                outcomes.append(_failed(row, task, task.reason))
                continue
            if id(task) in results:
                report = results[id(task)]
                if not report.ok:
                    row.caption, row.keywords = None, ""
                    outcomes.append(_failed(row, task, report.reason or "metadata write failed"))
                    continue
                row.written_to = report.written_to
                if report.stat is not None:  # after our own write the file has a new size, mtime and hash
                    row.size, row.mtime_ns, row.content_hash = report.stat
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
            done.append((row, task.caption or ""))
            outcomes.append(
                Outcome(
                    task.path,
                    kind,
                    caption=task.caption,
                    old_description=task.existing.description,
                    written_to=row.written_to,
                )
            )
        session.flush()  # new rows get their ids
        indexed.extend((row.id, caption) for row, caption in done)
        return outcomes


class ReportWrites:
    """The dry-run write stage: say what would be written; touch neither photos nor index."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def handle(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            if task.reason:
                self.report(Outcome(task.path, FAILED_OUTCOME, reason=task.reason))
            elif task.source == SOURCE_HUMAN:
                self.report(Outcome(task.path, HUMAN, caption=task.caption))
            else:
                self.report(
                    Outcome(
                        task.path,
                        WOULD_WRITE,
                        caption=task.caption,
                        old_description=task.existing.current_description(),
                    )
                )


def _rows(session: Session, tasks: Sequence[Task]) -> dict[str, Photo]:
    """The tasks' rows by path, in one query (a query per photo was much of the index's cost)."""
    paths = list(dict.fromkeys(str(task.path) for task in tasks))
    rows = {row.path: row for row in session.scalars(select(Photo).where(Photo.path.in_(paths)))}
    for task in tasks:
        if str(task.path) not in rows:  # the row is made when the plan is recorded; this covers a row deleted meanwhile
            row = rows[str(task.path)] = Photo(
                path=str(task.path),
                size=task.size,
                mtime_ns=task.mtime_ns,
                content_hash=task.digest,
                mtime_before_write_ns=task.mtime_ns,
            )
            session.add(row)
    return rows


def _failed(row: Photo, task: Task, reason: str) -> Outcome:
    row.status, row.failure_reason = FAILED, reason
    row.failure_kind = TRANSIENT if task.transient else PERMANENT
    row.tries = (row.tries or 0) + 1
    return Outcome(task.path, FAILED_OUTCOME, reason=reason)


def index_keywords(task: Task) -> str:
    """The keywords the photo carries after the write: its own (a person's are never dropped, and
    ``tag:`` must find them) followed by those derived from the new caption."""
    merged: dict[str, str] = {}
    for keyword in (*task.existing.keywords, *task.keywords):
        merged.setdefault(keyword.casefold(), keyword)
    return " ".join(merged.values())


def store_vectors_job(store: Callable[[Any], int]) -> IndexJob:
    """An index job saving a batch of caption vectors (the embedding thread's writes)."""

    def apply(session: Session) -> list[Outcome]:
        session.flush()
        store(session)
        return []

    return IndexJob(apply)
