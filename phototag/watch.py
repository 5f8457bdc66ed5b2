"""The watch daemon: filesystem events -> settled paths -> the same Pipeline backfill uses.

Threads, each with one job:

- watchdog's observer calls :meth:`WatchDaemon.dispatch`, which only *notes* paths (never blocks);
- the dispatcher hands a noted path to the pipeline once it has settled (unchanged for
  ``[watch] settle_seconds`` and at least that old), and drops deleted photos' rows once the queue is
  quiet, so that a moved photo's new path is matched to its row by content first;
- the scanner resumes the index's pending rows, catches up with what arrived while the daemon was down,
  then rescans every ``[watch] rescan_interval`` seconds for events a watcher missed;
- the state writer refreshes the state file that ``phototag status`` reads.

phototag's own writes (a hidden temp copy moved over the photo) are recognised by the temp file's name
and never queue the photo again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phototag.caption_backend import CaptionBackend
from phototag.config import Settings
from phototag.daemon_state import DaemonLock, write_state
from phototag.formats import is_image_path
from phototag.index import PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.pg_lock import writer_lock
from phototag.pipeline import Pipeline, error_line
from phototag.planning import CAPTIONED, FAILED_OUTCOME, HUMAN, MOVED, RETURNED, SYMLINK, Outcome
from phototag.safe_write import TEMP_MARKER
from phototag.scan import walk_photos
from phototag.stages import WriteFiles
from phototag.sweep import sweep, sweepable

log = logging.getLogger(__name__)

# Names that are never photos yet: partial downloads and copies, editor backups, exiftool's temp file.
IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", "~", ".crdownload", ".download", "_exiftool_tmp")
STATE_INTERVAL = 2.0  # seconds between state file refreshes
DELETE_MAX_WAIT = 60.0  # drop deleted photos' rows after this long even if the queue never goes quiet
SCAN_RETRY = 60.0  # seconds before a failed scan is tried again when periodic rescans are off


def is_ignored_name(name: str) -> bool:
    """Hidden files (``.DS_Store``, ``._x.jpg``, phototag's ``.x.jpg.phototag-tmp.jpg``) and temp names."""
    return name.startswith(".") or TEMP_MARKER in name or name.lower().endswith(IGNORED_SUFFIXES)


def distinct_roots(folders: Iterable[Path]) -> list[Path]:
    """Absolute folders, without duplicates or folders inside another one (their events would double)."""
    roots: list[Path] = []
    for folder in sorted({Path(os.path.abspath(os.path.expanduser(f))) for f in folders}):
        if not any(folder == root or root in folder.parents for root in roots):
            roots.append(folder)
    return roots


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time of the last event or observed change


class Settler:
    """Paths waiting to settle, and deleted paths waiting for their rows to be dropped.

    A path is ready once its size and mtime have not changed for ``settle_seconds`` and its mtime is at
    least that old: a file still being copied keeps changing, and a copy that pauses keeps a young mtime.
    """

    def __init__(self, settle_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle = settle_seconds
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._gone: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, path: str) -> None:
        """Something happened to ``path`` (created, written, moved in): restart its settle clock."""
        stat = _stat(path)
        with self._lock:
            self._gone.pop(path, None)
            if stat is None:
                self._seen.pop(path, None)
            else:
                self._seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, self._clock())

    def gone(self, path: str) -> None:
        """``path`` (a photo or a folder) was deleted or moved away."""
        prefix = path.rstrip(os.sep) + os.sep
        with self._lock:
            self._seen.pop(path, None)
            for key in [k for k in self._seen if k.startswith(prefix)]:
                del self._seen[key]
            self._gone[path] = self._clock()

    def settling(self) -> int:
        with self._lock:
            return len(self._seen)

    def is_settling(self, path: str) -> bool:
        with self._lock:
            return path in self._seen

    def ready(self) -> list[str]:
        """Paths that have settled, oldest first; they are no longer tracked."""
        now = self._clock()
        with self._lock:
            due = [path for path, seen in self._seen.items() if now - seen.changed_at >= self.settle]
        ready = []
        for path in due:
            stat = _stat(path)
            with self._lock:
                seen = self._seen.get(path)
                if seen is None:
                    continue
                if stat is None:  # gone before it settled; a delete or move event says what became of it
                    del self._seen[path]
                    continue
                if (stat.st_size, stat.st_mtime_ns) != (seen.size, seen.mtime_ns):
                    self._seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, now)
                    continue
                age = time.time() - stat.st_mtime
                if 0 <= age < self.settle:  # a future mtime (camera clock) must not wait forever
                    continue
                del self._seen[path]
            ready.append(path)
        return ready

    def deletions(self, quiet: bool, max_wait: float = DELETE_MAX_WAIT) -> list[str]:
        """Deleted paths whose rows may go now: all of them once nothing waits (``quiet``, and no path
        settling), so a moved photo's destination was matched by content first; else the old ones."""
        now = self._clock()
        with self._lock:
            if quiet and not self._seen:
                taken = list(self._gone)
            else:
                taken = [path for path, since in self._gone.items() if now - since >= max_wait]
            for path in taken:
                del self._gone[path]
        return taken


class WatchDaemon:
    """Watch ``folders`` and feed every settled photo to one long-lived :class:`Pipeline`."""

    def __init__(
        self,
        settings: Settings,
        folders: Sequence[Path],
        *,
        index: PhotoIndex,
        exiftool: ExifToolSession,
        captioner_factory: Callable[[], CaptionBackend] | None = None,
        write_files: WriteFiles | None = None,
        lock: DaemonLock | None = None,
    ) -> None:
        self.settings = settings
        self.roots = distinct_roots(folders)
        self.index = index
        self.db = settings.db_path()
        self.settler = Settler(settings.watch.settle_seconds)
        self.pipeline = Pipeline(
            settings,
            index,
            exiftool,
            captioner_factory=captioner_factory,
            write_files=write_files,
            on_outcome=self._on_outcome,
        )
        self.counts: Counter[str] = Counter()  # outcomes since start, by kind
        self._counts_lock = threading.Lock()
        self.last_error: dict[str, Any] | None = None
        self.ready = threading.Event()  # set once the catch-up scan is done
        self.scans_done = 0  # finished scans (catch-up and rescans), shown in the state file
        self.started_at = time.time()
        self._stop = threading.Event()
        self._lock = lock or DaemonLock(self.db, writer_lock(settings.index_location(), "phototag watch"))
        self._observer: Any = None
        self._threads: list[threading.Thread] = []
        self._unwatched: list[Path] = []
        self._tick = min(0.25, max(0.02, settings.watch.settle_seconds / 4))

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> WatchDaemon:
        """Take the index's daemon lock (AlreadyRunning if another daemon has it; a no-op if the caller
        took it already), then start watching and working."""
        self._lock.acquire()
        try:
            self._write_state()
            self.pipeline.start()
            self._observer = self._start_observer()
            for name, target in (
                ("dispatch", self._dispatch_loop),
                ("scan", self._scan_loop),
                ("state", self._state_loop),
            ):
                thread = threading.Thread(target=target, name=f"phototag-watch-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self._lock.release()
            raise
        return self

    @property
    def error(self) -> BaseException | None:
        """A fatal pipeline error (the model cannot load, the index cannot be written)."""
        return self.pipeline.error

    def shutdown(self, timeout: float) -> bool:
        """Stop watching, finish the batch in flight and write it. True when everything ended in time;
        photos not started stay ``pending`` in the index and resume on the next start."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self.pipeline.stop()
        if self._observer is not None:
            self._observer.stop()
        finished = self.pipeline.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.0, min(1.0, deadline - time.monotonic())))
        if self._observer is not None:
            self._observer.join(max(0.0, min(1.0, deadline - time.monotonic())))
        self._write_state(stopped=True)
        if finished:  # else threads may still write: the lock goes with the process
            self._lock.release()
        return finished

    def queue_length(self) -> int:
        return self.settler.settling() + self.pipeline.queued()

    # -- events ----------------------------------------------------------------------------------

    def _start_observer(self) -> Any:
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        daemon = self

        class Handler(FileSystemEventHandler):
            """watchdog wants a handler object; every event goes to the daemon's dispatch."""

            def dispatch(self, event: FileSystemEvent) -> None:
                daemon.dispatch(event)

        # no open/close-without-write events: phototag's own reads must not wake the daemon
        wanted = [
            FileCreatedEvent,
            FileModifiedEvent,
            FileClosedEvent,
            FileMovedEvent,
            FileDeletedEvent,
            DirCreatedEvent,
            DirMovedEvent,
            DirDeletedEvent,
        ]
        observer = Observer()
        for root in self.roots:
            try:
                observer.schedule(Handler(), str(root), recursive=True, event_filter=wanted)
            except OSError as exc:  # e.g. the inotify watch limit
                self._unwatched.append(root)
                hint = " (raise fs.inotify.max_user_watches)" if "limit" in str(exc) else ""
                self._error(f"cannot watch {root}: {exc}{hint}; relying on the periodic rescan")
        observer.start()
        return observer

    def dispatch(self, event: Any) -> None:
        """watchdog's handler entry point (called on the observer's thread)."""
        try:
            self._on_event(event)
        except Exception:  # an odd event must not kill the observer
            log.exception("handling %r failed", event)

    def _on_event(self, event: Any) -> None:
        src = os.fsdecode(event.src_path)
        kind = event.event_type
        if kind == "moved":
            dest = os.fsdecode(event.dest_path)
            if TEMP_MARKER in os.path.basename(src):
                return  # phototag's own safe write: its temp copy replaced the photo
            if event.is_directory:
                if self._watched(src, folder=True):
                    self.settler.gone(src)  # watchdog also reports each file inside as moved
                return
            if self._watched(src):
                self.settler.gone(src)  # a no-op once the destination took the row over
            if self._watched(dest):
                self.settler.note(dest)
        elif kind == "deleted":
            if self._watched(src, folder=event.is_directory):
                self.settler.gone(src)
        elif not event.is_directory and self._watched(src):  # created, modified, closed after writing
            self.settler.note(src)

    def _watched(self, path: str, folder: bool = False) -> bool:
        """Is ``path`` a photo (or a folder) phototag cares about: under a root, not hidden, not temp?"""
        for root in self.roots:
            relative = os.path.relpath(path, root)
            if relative.startswith(os.pardir) or relative == os.curdir:
                continue
            parts = relative.split(os.sep)
            if any(is_ignored_name(part) for part in parts):
                return False
            return folder or is_image_path(parts[-1])
        return False

    # -- dispatcher ------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stop.wait(self._tick):
            for path in self.settler.ready():
                if not self.pipeline.submit(Path(path)):
                    return
            quiet = self.pipeline.queued() == 0
            gone = self.settler.deletions(quiet)
            if gone:
                self._forget(gone)

    def _forget(self, paths: list[str]) -> None:
        try:
            swept = sweep(self.index, self.roots, [Path(p) for p in paths], exists=os.path.lexists)
        except Exception as exc:  # the index is busy or broken: say so, keep watching (the next scan sweeps)
            self._error(f"marking deleted photos missing in the index failed: {error_line(exc)}", source="sweep")
            return
        for path in swept.missing:
            log.info("%s is missing (deleted or moved away; its row is kept)", path)

    # -- scanner ---------------------------------------------------------------------------------

    def _scan_loop(self) -> None:
        """Catch up, then rescan every interval. A failed scan (the index busy or unwritable, say) is
        logged, shown by ``status`` and tried again after the interval; a scan that works clears it."""
        label = "catch-up"
        interval = self.settings.watch.rescan_interval
        while not self._stop.is_set():
            try:
                if label == "catch-up":
                    self._resume_pending()
                self._rescan(label)
            except Exception as exc:  # whatever broke, the scanner must outlive it: the daemon runs for months
                log.debug("%s scan failed", label, exc_info=True)
                wait = interval if interval > 0 else SCAN_RETRY
                self._error(f"{label} scan failed: {error_line(exc)}; trying again in {wait:g}s", source="scan")
            else:
                if self._stop.is_set():
                    break
                self._clear_errors("scan", "sweep")  # a full scan also swept the rows a failed sweep left
                label, wait = "rescan", interval
            if not self.ready.is_set():
                self.ready.set()
                self._write_state()
            if wait <= 0 or self._stop.wait(wait):
                break
        self.ready.set()

    def _resume_pending(self) -> None:
        """Queued work survives a crash as ``pending`` rows: resume those under the watched folders."""
        rows = [row for row in self.index.pending() if self._watched(row.path)]
        if rows:
            log.info("resuming %d pending photos", len(rows))
        for row in rows:
            if self._stop.is_set() or not self.pipeline.submit(Path(row.path)):
                return

    def _rescan(self, label: str) -> None:
        """Walk the folders; queue what changed; sweep rows whose file is gone once the queue is quiet."""
        roots = [root for root in self.roots if self._usable(root)]
        for path in walk_photos(roots):
            if self._stop.is_set():
                return
            if self.settler.is_settling(str(path)):
                continue
            stat = _stat(str(path))
            if stat is not None and 0 <= time.time() - stat.st_mtime < self.settler.settle:
                self.settler.note(str(path))  # arriving right now: let it settle first
            elif not self.pipeline.submit(path):
                return
        if not self._wait_quiet():
            return
        swept = sweep(self.index, roots)
        for gone in swept.missing:
            log.info("%s is missing (no longer on disk; its row is kept)", gone)
        log.debug("%s scan of %d folders done", label, len(roots))
        self.scans_done += 1

    def _usable(self, root: Path) -> bool:
        """A missing or empty root is likely an unmounted share: not walked (the sweep skips it too)."""
        empty = not sweepable(root)
        if empty:
            log.info("%s is missing or empty (an unmounted share?): not scanned, no rows swept", root)
        return not empty

    def _wait_quiet(self, max_wait: float = DELETE_MAX_WAIT) -> bool:
        deadline = time.monotonic() + max_wait
        while self.queue_length() and time.monotonic() < deadline:
            if self._stop.wait(self._tick):
                return False
        return not self._stop.is_set()

    # -- outcomes and state ----------------------------------------------------------------------

    def _on_outcome(self, outcome: Outcome) -> None:
        with self._counts_lock:
            self.counts[outcome.kind] += 1
        if outcome.kind == CAPTIONED:
            log.info("captioned %s: %s", outcome.path, outcome.caption)
        elif outcome.kind == HUMAN:
            log.info("kept the description of %s: %s", outcome.path, outcome.caption)
        elif outcome.kind == RETURNED:
            log.info("%s is back, caption kept", outcome.path)
        elif outcome.kind == MOVED:
            log.info("%s: %s, caption kept", outcome.path, outcome.reason)
        elif outcome.kind == FAILED_OUTCOME:
            self._error(f"{outcome.path}: {outcome.reason}")
        elif outcome.kind == SYMLINK:
            log.info("%s: %s", outcome.path, outcome.reason)
        else:
            log.debug("%s %s", outcome.kind, outcome.path)

    def _error(self, message: str, source: str = "photo") -> None:
        log.warning("%s", message)
        self.last_error = {"at": time.time(), "message": message, "source": source}

    def _clear_errors(self, *sources: str) -> None:
        """Things work again: an error from one of ``sources`` no longer shows in ``status``."""
        error = self.last_error
        if error is not None and error.get("source") in sources:
            self.last_error = None  # the state writer shows it within STATE_INTERVAL

    def _state_loop(self) -> None:
        while not self._stop.wait(STATE_INTERVAL):
            self._write_state()

    def state(self, stopped: bool = False) -> dict[str, Any]:
        error = self.error
        last_error = {"at": time.time(), "message": str(error)} if error is not None else self.last_error
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "stopped_at": time.time() if stopped else None,
            "folders": [str(root) for root in self.roots],
            "unwatched": [str(root) for root in self._unwatched],
            "caught_up": self.ready.is_set(),
            "scans_done": self.scans_done,
            "queue": self.queue_length(),
            "model_loaded": self.pipeline.captioner is not None,
            "counts": self._counts_copy(),
            "last_error": last_error,
        }

    def _counts_copy(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self.counts)

    def _write_state(self, stopped: bool = False) -> None:
        try:
            write_state(self.db, self.state(stopped))
        except OSError as exc:
            log.warning("cannot write the daemon state file: %s", exc)
