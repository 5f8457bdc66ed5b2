"""The ``phototag`` command line: a thin Click group; each command lives in its own module and runs in
the one :class:`~phototag.cli.context.AppContext`."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import click

from phototag import __version__
from phototag.cli.context import AppContext, pass_app

__all__ = ["AppContext", "main", "pass_app"]

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
@click.option(
    "--db",
    metavar="FILE|URL",
    envvar="PHOTOTAG_DB",
    help="The index: a SQLite file (default: ~/.local/share/phototag/index.sqlite3) or a PostgreSQL "
    "database shared by several machines, postgresql://USER@HOST/DB (env PHOTOTAG_DB; [index] db).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def main(ctx: click.Context, config: Path | None, db: str | None, verbose: int, quiet: bool) -> None:
    """Caption your photos with BLIP, write the captions into their metadata, and search them.

    \b
    Examples:
      phototag backfill ~/Pictures
      phototag search "dog on beach"
      phototag status
      phototag --db postgresql://photos@nas/phototag search beach
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # every command enters this one context; the group closes it when the command ends, on every exit
    # path (errors and Ctrl-C included), so no index, exiftool process or lock outlives the command
    app = AppContext(config, db, quiet)
    ctx.obj = app
    ctx.call_on_close(app.close)
