"""One writer at a time on a PostgreSQL index, across machines: a session-level advisory lock.

The writer commands (backfill, watch, restore, reindex, prune) hold ``pg_try_advisory_lock`` on a
connection of their own for as long as they run; the server drops the lock when that session ends,
even when the machine holding it dies or loses the network, so a crashed writer never blocks the next.
The holder writes its host, pid and command into ``phototag_writer`` (with its server session's pid),
so a second writer, on any machine, refuses with the same one line as on a SQLite index
(:func:`phototag.daemon_state.refusal`), naming the machine to go to.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from phototag.daemon_state import AlreadyRunning, WriterLock, refusal
from phototag.database import IndexLocation, IndexUnreachable

# The granted advisory lock on WRITER_LOCK_KEY in this database, and who wrote that they hold it.
_HOLDER = """SELECT w.host, w.pid, w.command, w.since FROM pg_locks l
    LEFT JOIN phototag_writer w ON w.backend_pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((l.classid::bigint << 32) | l.objid::bigint) = :key"""


class PgWriterLock:
    """The writer lock of a PostgreSQL index (the same interface as :class:`~phototag.daemon_state.WriterLock`)."""

    def __init__(self, location: IndexLocation, command: str) -> None:
        self.location = location
        self.command = command
        self._engine: Any = None
        self._conn: Any = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock (no-op if held) or raise AlreadyRunning naming the holder; IndexUnreachable when
        the server cannot be asked."""
        if self.held:
            return
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import SQLAlchemyError
        from sqlalchemy.pool import NullPool

        from phototag.pg_schema import SCHEMA_LOCK_KEY, WRITER_LOCK_KEY, WRITER_TABLE

        try:
            self._engine = create_engine(self.location.engine_url(), poolclass=NullPool)
            # autocommit: the lock lives as long as the session, without holding a transaction open for hours
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            deadline = time.monotonic() + wait
            while not conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": WRITER_LOCK_KEY}).scalar():
                if time.monotonic() >= deadline:
                    conn.close()
                    host, pid, command = self._holder()
                    self._dispose()
                    raise AlreadyRunning(refusal(self.location, pid, command, host=host))
                time.sleep(0.1)
            backend_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            with self._engine.begin() as tx:
                tx.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                tx.exec_driver_sql(WRITER_TABLE)
                tx.execute(
                    text(
                        "INSERT INTO phototag_writer (id, backend_pid, host, pid, command, since) "
                        "VALUES (1, :backend, :host, :pid, :command, :since) ON CONFLICT (id) DO UPDATE SET "
                        "backend_pid = EXCLUDED.backend_pid, host = EXCLUDED.host, pid = EXCLUDED.pid, "
                        "command = EXCLUDED.command, since = EXCLUDED.since"
                    ),
                    {
                        "backend": backend_pid,
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "command": self.command,
                        "since": time.time(),
                    },
                )
        except SQLAlchemyError as exc:
            self._dispose()
            cause = getattr(exc, "orig", None) or exc
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise IndexUnreachable(f"cannot reach the index {self.location}: {first}") from None
        self._conn = conn

    def _holder(self) -> tuple[str | None, int | None, str]:
        """(host, pid, command) of the writer holding the lock, as it recorded them. A holder records
        itself right after locking: a refusal arriving in between looks again for a moment."""
        from sqlalchemy import text

        from phototag.pg_schema import WRITER_LOCK_KEY

        deadline = time.monotonic() + 1.0
        with self._engine.connect() as conn:
            while True:
                row = None
                if conn.exec_driver_sql("SELECT to_regclass('phototag_writer')").scalar() is not None:
                    row = conn.execute(text(_HOLDER), {"key": WRITER_LOCK_KEY}).first()
                    conn.rollback()
                if (row is not None and row[0] is not None) or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        if row is None or row[0] is None:
            return None, None, "another phototag"
        return row[0], row[1], row[2]

    def release(self) -> None:
        if self._conn is not None:
            from sqlalchemy.exc import SQLAlchemyError

            from phototag.pg_schema import WRITER_LOCK_KEY

            try:  # closing the session drops the lock; unlocking first says so at once
                self._conn.exec_driver_sql(f"SELECT pg_advisory_unlock({WRITER_LOCK_KEY})")
            except SQLAlchemyError:
                pass  # the session is gone already, and its lock with it
            self._conn.close()
            self._conn = None
        self._dispose()

    def _dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> PgWriterLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def writer_lock(location: IndexLocation, command: str) -> WriterLock | PgWriterLock:
    """The writer lock of the index at ``location``: the lock file beside a SQLite index, the advisory
    lock of a PostgreSQL one. (Here, not in daemon_state, which this module builds on.)"""
    if location.is_server:
        return PgWriterLock(location, command)
    return WriterLock(location.path, command)


def current_writer(engine: Any) -> dict[str, Any] | None:
    """Who writes the PostgreSQL index now, from any machine (host, pid, command, since), or None:
    what ``phototag status`` on a laptop says about the daemon on the NAS."""
    from sqlalchemy import text

    from phototag.pg_schema import WRITER_LOCK_KEY

    with engine.connect() as conn:
        if conn.exec_driver_sql("SELECT to_regclass('phototag_writer')").scalar() is None:
            return None
        row = conn.execute(text(_HOLDER), {"key": WRITER_LOCK_KEY}).first()
    if row is None:
        return None
    return {"host": row[0], "pid": row[1], "command": row[2] or "another phototag", "since": row[3]}
