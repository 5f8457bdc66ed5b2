"""The ``phototag`` command line: a thin Click group; each command lives in its own module."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import click

from phototag import __version__
from phototag.config import ConfigError, Settings, load_settings, override


class AppContext:
    """What every command needs: settings (file + global flags), resolved lazily."""

    def __init__(self, config: Path | None, db: Path | None, quiet: bool = False) -> None:
        self.quiet = quiet  # -q: errors only (no progress line, no summary)
        self._config = config
        self._db = db
        self._settings: Settings | None = None

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

    def lock_index(self, command: str) -> None:
        """Become the index's one writer until the command ends, or stop with one line naming the
        phototag that writes it now (a daemon, another backfill...) and how to stop it."""
        from phototag.daemon_state import AlreadyRunning, WriterLock

        db = self.settings.db_path()
        lock = WriterLock(db, command)
        try:
            lock.acquire()
        except AlreadyRunning as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # e.g. an index folder this user cannot write
            raise click.ClickException(f"cannot use the index folder {db.parent}: {exc.strerror or exc}") from None
        click.get_current_context().call_on_close(lock.release)

    def with_overrides(self, section: str, **values: object) -> Settings:
        try:
            self._settings = override(self.settings, section, **values)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        return self._settings


pass_app = click.make_pass_decorator(AppContext)

# Command name -> module with a ``command``. Imported only when run (or listed by --help), so
# ``phototag search`` never imports the captioning pipeline, SQLAlchemy or torch.
COMMANDS = {
    "backfill": "phototag.cli.backfill",
    "prune": "phototag.cli.prune",
    "reindex": "phototag.cli.reindex",
    "restore": "phototag.cli.restore",
    "search": "phototag.cli.search",
    "show": "phototag.cli.show",
    "status": "phototag.cli.status",
    "watch": "phototag.cli.watch",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.add_command(importlib.import_module(COMMANDS[cmd_name]).command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="phototag")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="TOML config file.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), envvar="PHOTOTAG_DB",
              help="Index file (default: ~/.local/share/phototag/index.sqlite3; env PHOTOTAG_DB).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def main(ctx: click.Context, config: Path | None, db: Path | None, verbose: int, quiet: bool) -> None:
    """Caption your photos with BLIP, write the captions into their metadata, and search them.

    \b
    Examples:
      phototag backfill ~/Pictures
      phototag search "dog on beach"
      phototag status
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    ctx.obj = AppContext(config, db, quiet)
