"""Child processes that never outlive phototag: exiftool, and the model's process.

Each starts in a session of its own (a terminal's Ctrl-C reaches phototag alone, which then finishes
the work in flight and stops its children itself) and, on Linux, gets SIGTERM when phototag dies
(``PR_SET_PDEATHSIG``), so a killed phototag leaves no exiftool or model process behind.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def start_child(command: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command, **popen)`` in its own session, ended when phototag dies."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    process: subprocess.Popen[bytes] = _LAUNCHER.call(
        lambda: subprocess.Popen(list(command), start_new_session=True, preexec_fn=preexec, **popen)
    )
    return process


def _die_with_parent() -> None:
    """Runs in the child before exec (Linux): it gets SIGTERM when phototag dies, never outliving it."""
    ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Launcher:
    """Starts child processes from one long-lived thread.

    Linux sends the parent-death signal (``PR_SET_PDEATHSIG``) when the *thread* that started a child
    ends, not its process: an exiftool (or a model process) started or restarted by a pipeline's worker thread
    would get SIGTERM when that thread ends, while another thread still uses it. The main thread lives as long
    as the process, so it starts its own; any other thread asks this launcher's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] | None = None
        self._pid = 0

    def call(self, start: Callable[[], Any]) -> Any:
        if threading.current_thread() is threading.main_thread():
            return start()
        with self._lock:
            if self._jobs is None or self._pid != os.getpid():  # none yet, or this is a forked child
                self._jobs, self._pid = queue.SimpleQueue(), os.getpid()
                threading.Thread(target=self._serve, args=(self._jobs,), name="phototag-launcher", daemon=True).start()
            jobs = self._jobs
        future: Future[Any] = Future()
        jobs.put((start, future))
        return future.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        while True:
            start, future = jobs.get()
            try:
                future.set_result(start())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                future.set_exception(exc)


_LAUNCHER = _Launcher()
