"""Who writes an index: one writing phototag at a time, one ``phototag watch`` per index, and the
state file ``phototag status`` reads.

The files live beside the index:

- ``<index>.writer.lock`` holds an exclusive ``flock`` while any command that writes the index or photos
  runs (backfill, restore, reindex, watch) and names it (pid and command), so a second writer refuses
  with one line saying who to stop. Dry runs and read-only commands (search, show, status) never take it.
- ``<index>.daemon.lock`` holds an exclusive ``flock`` while a daemon runs. The kernel drops the lock
  when the process dies, even on SIGKILL, so a dead daemon never blocks the next one.
- ``<index>.daemon.json`` is the daemon's state (pid, folders, queue length, last error), rewritten
  every few seconds. A state file whose lock is free belongs to a daemon that is gone: ``stopped_at``
  says whether it stopped cleanly or died.

This module stays light (no watchdog, no pipeline), so ``phototag status`` starts fast.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from phototag.config import make_private_dir, write_private_json

if TYPE_CHECKING:
    from phototag.pg_lock import PgWriterLock


class AlreadyRunning(Exception):
    """Another phototag (a daemon, a backfill...) is writing the index; the message says which one and
    what to do."""


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".daemon.lock")


def writer_lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".writer.lock")


def _flock_exclusive(path: Path, wait: float) -> IO[str] | None:
    """An open handle holding an exclusive flock on ``path``, or None if another process holds it for
    longer than ``wait`` seconds."""
    make_private_dir(path.parent)
    # owner-only: the lock names the pid and command of whoever writes a private index
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+", encoding="utf-8")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                handle.close()
                raise
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)


def _unlock(handle: IO[str] | None) -> None:
    """Let go of a lock taken by :func:`_flock_exclusive` (nothing to do for one never taken)."""
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _stamp(handle: IO[str], text: str) -> None:
    """Replace the lock file's content (who holds it) in one write."""
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()


class WriterLock:
    """The exclusive lock that keeps two writing phototags (of any command) off one index.

    The lock file names its holder (``pid`` and command line), so the refusal can say whom to stop. The
    kernel drops the lock when the holder dies, even on SIGKILL: a crashed run never blocks the next.
    """

    def __init__(self, db: Path, command: str) -> None:
        self.db = db
        self.path = writer_lock_path(db)
        self.command = command
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock (no-op if held) or raise AlreadyRunning naming the holder."""
        if self.held:
            return
        handle = _flock_exclusive(self.path, wait)
        if handle is None:
            raise AlreadyRunning(refusal(self.db, *writer_holder(self.db)))
        _stamp(handle, f"{os.getpid()}\n{self.command}\n")
        self._handle = handle

    def release(self) -> None:
        _unlock(self._handle)
        self._handle = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def writer_holder(db: Path) -> tuple[int | None, str]:
    """(pid, command) of the process holding the writer lock, as it wrote them. A holder stamps the file
    right after locking it: a reader arriving in between briefly sees it empty, so it looks again."""
    deadline = time.monotonic() + 0.5
    while True:
        try:
            lines = writer_lock_path(db).read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        if lines or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    try:
        pid = int(lines[0]) if lines else None
    except ValueError:
        pid = None
    return pid, (lines[1] if len(lines) > 1 and lines[1] else "another phototag")


def refusal(db: object, pid: int | None, command: str, *, host: str | None = None) -> str:
    """The one line a second writer gets: who writes the index (on which machine, for a shared
    PostgreSQL index), and how to stop it."""
    elsewhere = host is not None and host != socket.gethostname()
    where = f" on {host}" if elsewhere else ""
    who = f"{command} (pid {pid}{where})" if pid else command + where
    if command.startswith("phototag watch"):
        kill = f", or kill {pid}" if pid else ""
        advice = f"stop it first ({'on ' + str(host) + ': ' if elsewhere else ''}systemctl --user stop phototag{kill})"
        advice += " and run this again"
    else:
        advice = "wait for it to finish or stop it" + (f" (kill {pid})" if pid else "") + ", then run this again"
    return f"{who} is already running on the index {db}; {advice}"


def state_path(db: Path) -> Path:
    return db.with_name(db.name + ".daemon.json")


class DaemonLock:
    """The exclusive lock that keeps two daemons off one index. A daemon is a writer: it takes the
    index's writer lock first (so no backfill, restore or reindex runs beside it), then this one, which
    ``phototag status`` peeks at to tell whether a daemon runs."""

    def __init__(self, db: Path, writer: WriterLock | PgWriterLock | None = None) -> None:
        self.db = db
        self.path = lock_path(db)
        # on a PostgreSQL index the writer lock is the server's (db is then the local name of the side files)
        self.writer = writer or WriterLock(db, "phototag watch")
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self, wait: float = 1.0) -> None:
        """Take the writer lock, then the daemon lock (no-op if held), or raise AlreadyRunning. ``wait``
        covers a ``phototag status`` peeking at the daemon lock."""
        if self.held:
            return
        self.writer.acquire()
        try:
            handle = _flock_exclusive(self.path, wait)
        except BaseException:
            self.writer.release()
            raise
        if handle is None:  # cannot happen while every daemon takes the writer lock first; kept for old ones
            self.writer.release()
            pid = _read_pid(self.path)
            raise AlreadyRunning(refusal(self.db, pid, "phototag watch"))
        _stamp(handle, f"{os.getpid()}\n")
        self._handle = handle

    def release(self) -> None:
        _unlock(self._handle)
        self._handle = None
        self.writer.release()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(db: Path) -> bool:
    """True while a daemon holds the index's lock (a shared lock attempt fails)."""
    try:
        handle = open(lock_path(db), encoding="utf-8")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def write_state(db: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically; owner-only: it names the watched folders and the last error
    (photo paths)."""
    write_private_json(state_path(db), state, indent=2)


def read_state(db: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(db).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def daemon_status(db: Path) -> dict[str, Any]:
    """What ``phototag status`` says about the daemon: ``running`` plus the last state it wrote.

    ``running`` is decided by the lock, not the pid, so a recycled pid cannot fool it. When the lock
    is free, ``died`` says whether the last daemon ended without a clean stop (SIGKILL, crash).
    """
    state = read_state(db) or {}
    running = is_locked(db)
    status: dict[str, Any] = {"running": running}
    if state:
        status.update(state)
        status["running"] = running
        if not running:
            status["died"] = state.get("stopped_at") is None
    return status
