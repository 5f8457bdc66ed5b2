"""The one context every ``phototag`` command enters and leaves.

``AppContext`` holds the settings (config file + global flags) and opens, only when a command asks,
what commands share: the index, the exiftool process, the index's writer lock, a search connection,
the roots to work on. Everything it opens goes on one exit stack, which the ``phototag`` group closes
when the command ends however it ends (done, a ``ClickException``, ``sys.exit``, Ctrl-C): no command
leaks an open index, an exiftool child process or a held lock. The last thing opened is closed first,
so exiftool and the index are closed before the writer lock is released.

Heavy modules (SQLAlchemy, the exiftool session) are imported inside the methods that need them, so
``phototag search`` in keyword mode still starts without them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from phototag.config import ConfigError, Settings, load_settings, override
from phototag.database import IndexLocation, IndexUnreachable

if TYPE_CHECKING:
    import sqlite3

    from phototag.daemon_state import DaemonLock, WriterLock
    from phototag.index import PhotoIndex
    from phototag.metadata import ExifToolSession
    from phototag.pg_lock import PgWriterLock
    from phototag.pg_search import PgFinder

T = TypeVar("T")


class AppContext:
    """What every command needs: settings resolved lazily, and the resources it opens, closed at its end."""

    def __init__(self, config: Path | None, db: str | Path | None, quiet: bool = False) -> None:
        self.quiet = quiet  # -q: errors only (no progress line, no summary)
        self._config = config
        self._db = db
        self._settings: Settings | None = None
        self._resources = ExitStack()
        self._index: PhotoIndex | None = None
        self._exiftool: ExifToolSession | None = None

    # -- settings ----------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                settings = load_settings(self._config)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            if self._db is not None:
                settings = override(settings, "index", db=str(self._db))
            self._settings = settings
        return self._settings

    def with_overrides(self, section: str, **values: object) -> Settings:
        try:
            self._settings = override(self.settings, section, **values)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        return self._settings

    def note(self, message: str) -> None:
        """A line for the person at the terminal (stderr); -q keeps only errors, so it stays silent."""
        if not self.quiet:
            click.echo(message, err=True)

    def location(self) -> IndexLocation:
        """The index: a SQLite file or a database server (``--db``, ``[index] db``, ``$PHOTOTAG_DB``)."""
        return self.settings.index_location()

    def db_path(self) -> Path:
        """The SQLite index file; for a server index, the local name of its side files (locks, state)."""
        return self.settings.db_path()

    def existing_db(self, otherwise: str) -> Path:
        """The index file, or stop with ``no index at DB: <otherwise>`` when there is none yet (a server
        is asked when the index is opened)."""
        location = self.location()
        if not location.exists():
            raise click.ClickException(f"no index at {location}: {otherwise}")
        return location.path

    # -- resources, each closed when the command ends ----------------------------------------------

    def enter(self, resource: AbstractContextManager[T]) -> T:
        """Enter ``resource`` now and leave it when the command ends."""
        return self._resources.enter_context(resource)

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when the command ends (before what was opened earlier is closed)."""
        self._resources.callback(callback)

    def close(self) -> None:
        """Close everything the command opened, the last opened first. Safe to call twice."""
        self._resources.close()
        self._index = None
        self._exiftool = None

    def index(self, path: Path | None = None) -> PhotoIndex:
        """The index (the configured one unless ``path`` is given), opened once and closed at the end."""
        if self._index is None:
            index = _open_index(IndexLocation(path) if path is not None else self.location())
            self.on_close(index.close)
            self._index = index
        return self._index

    def open_other_index(self, location: IndexLocation) -> PhotoIndex:
        """Another index than the configured one (a copy's target), closed when the command ends."""
        index = _open_index(location)
        self.on_close(index.close)
        return index

    def scratch_index(self) -> PhotoIndex:
        """The configured index if it exists, else a throwaway one (a dry run creates no index)."""
        location = self.location()
        if location.exists():
            return self.index()
        db = Path(self.enter(tempfile.TemporaryDirectory(prefix="phototag-dry-run-"))) / "index.sqlite3"
        return self.index(db)

    def search_connection(self) -> sqlite3.Connection:
        """A plain sqlite3 connection for searching (no SQLAlchemy), closed at the end."""
        from phototag.search import connect

        conn = connect(self.existing_db("run 'phototag backfill PATH' first"))
        self.on_close(conn.close)
        return conn

    def server_finder(self) -> PgFinder:
        """Search over a PostgreSQL index (psycopg, no SQLAlchemy), its connection closed at the end."""
        from phototag.pg_search import PgFinder, connect

        try:
            conn = connect(self.location())
        except IndexUnreachable as exc:
            raise click.ClickException(str(exc)) from None
        except ImportError as exc:
            raise click.ClickException(f"{exc}: pip install 'phototag[postgres]' to use a PostgreSQL index") from None
        self.on_close(conn.close)
        return PgFinder(conn)

    def exiftool(self) -> ExifToolSession:
        """The ``[metadata]`` exiftool session, started once; its processes end with the command."""
        if self._exiftool is None:
            from phototag.exiftool import MetadataError
            from phototag.metadata import ExifToolSession

            try:
                # as many processes as the pipeline's write threads; started only as they are needed
                processes = self.settings.pipeline.effective_exiftool_processes
                session = ExifToolSession.from_settings(self.settings.metadata, processes)
            except MetadataError as exc:
                raise click.ClickException(str(exc)) from None
            self.on_close(session.close)
            self._exiftool = session
        return self._exiftool

    def lock_index(self, command: str) -> None:
        """Become the index's one writer until the command ends, or stop with one line naming the
        phototag that writes it now (a daemon, another backfill...) and how to stop it."""
        from phototag.pg_lock import writer_lock

        self._hold(writer_lock(self.location(), command))

    def daemon_lock(self) -> DaemonLock:
        """The watch daemon's lock (the writer lock included), held until the command ends."""
        from phototag.daemon_state import DaemonLock
        from phototag.pg_lock import writer_lock

        lock = DaemonLock(self.db_path(), writer_lock(self.location(), "phototag watch"))
        self._hold(lock)
        return lock

    def hold_lock(self, lock: WriterLock | PgWriterLock | DaemonLock) -> None:
        """Take ``lock`` (e.g. another index's writer lock) until the command ends, or stop with one line."""
        self._hold(lock)

    def _hold(self, lock: WriterLock | PgWriterLock | DaemonLock) -> None:
        """Take ``lock`` until the command ends; who holds it instead, or why it cannot be taken, is one line."""
        from phototag.daemon_state import AlreadyRunning

        try:
            lock.acquire()
        except (AlreadyRunning, IndexUnreachable) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # e.g. an index folder this user cannot write
            folder = self.db_path().parent
            raise click.ClickException(f"cannot use the index folder {folder}: {exc.strerror or exc}") from None
        self.on_close(lock.release)

    # -- roots -------------------------------------------------------------------------------------

    def roots(self, paths: Iterable[Path], *, folders: bool = False) -> list[Path]:
        """The given paths that exist (only folders with ``folders``), absolute; the others are
        skipped with one line each. Stops when none is left."""
        roots = []
        for path in paths:
            path = path.expanduser()
            if not (path.is_dir() if folders else path.exists()):
                click.echo(
                    f"phototag: {path}: {'not a folder' if folders else 'no such file or folder'}, skipped", err=True
                )
                continue
            roots.append(Path(os.path.abspath(path)))
        if not roots:
            raise click.ClickException(
                "none of the folders to watch exist" if folders else "none of the given paths exist"
            )
        return roots


def _open_index(db: IndexLocation) -> PhotoIndex:
    """The index, or one clear line (no traceback) when it cannot be opened: a folder this user cannot
    write, a damaged file, a disk that is full, a server that is down or refuses us."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    from phototag.index import PhotoIndex
    from phototag.pg_schema import UnsupportedDatabase

    try:
        return PhotoIndex(db)
    except UnsupportedDatabase as exc:
        raise click.ClickException(str(exc)) from None
    except (SQLAlchemyError, sqlite3.Error) as exc:
        cause = getattr(exc, "orig", None) or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise click.ClickException(f"cannot open the index {db}: {first}") from None
    except ImportError as exc:  # e.g. postgresql:// without the [postgres] extra
        raise click.ClickException(
            f"cannot open the index {db}: {exc}; pip install 'phototag[postgres]' for PostgreSQL"
        ) from None
    except OSError as exc:
        raise click.ClickException(f"cannot open the index {db}: {exc.strerror or exc}") from None


def absolute(paths: Iterable[Path]) -> list[Path]:
    """``paths`` made absolute, ``~`` expanded; existing or not (a restore or prune of a gone folder)."""
    return [Path(os.path.abspath(path.expanduser())) for path in paths]


pass_app = click.make_pass_decorator(AppContext)


def verbosity(ctx: click.Context) -> int:
    """How many ``-v`` the ``phototag`` group was given."""
    root = ctx.find_root()
    return int(root.params.get("verbose") or 0)
