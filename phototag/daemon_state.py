"""Daemon bookkeeping: one ``phototag watch`` per index, and the state file ``phototag status`` reads.

Both files live beside the index:

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
import time
from pathlib import Path
from typing import IO, Any


class AlreadyRunning(Exception):
    """Another daemon holds the index; the message says which one."""


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".daemon.lock")


def state_path(db: Path) -> Path:
    return db.with_name(db.name + ".daemon.json")


class DaemonLock:
    """The exclusive lock that keeps two daemons off one index."""

    def __init__(self, db: Path) -> None:
        self.path = lock_path(db)
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self, wait: float = 1.0) -> None:
        """Take the lock (no-op if held) or raise AlreadyRunning. ``wait`` covers a ``phototag status``
        peeking at it."""
        if self.held:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    handle.close()
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    pid = _read_pid(self.path)
                    who = f" (pid {pid})" if pid else ""
                    raise AlreadyRunning(
                        f"another phototag watch{who} is already running on the index {self.path.parent}; "
                        "stop it first (phototag status shows it)"
                    ) from None
                time.sleep(0.05)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


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
    """Replace the state file atomically (a reader never sees half a file)."""
    target = state_path(db)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)


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
