"""``phototag prune``: forget photos marked missing, and say what undo data goes with them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from phototag.cli import AppContext, pass_app
from phototag.index import PhotoIndex
from phototag.sweep import has_undo_data, missing_rows, prune

DAY_S = 86400.0


@click.command("prune")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), metavar="DAYS",
              help="Only photos missing for at least DAYS days.")
@click.option("--dry-run", is_flag=True, help="List what would be forgotten; change nothing.")
@click.pass_context
@pass_app
def command(app: AppContext, ctx: click.Context, paths: tuple[Path, ...], older_than: float | None,
            dry_run: bool) -> None:
    """Forget the photos marked missing (no longer on disk), under PATHS or everywhere.

    A photo that is deleted, moved away or on a share that is not mounted keeps its index row, marked
    missing, so that it gets its caption back when it returns and `phototag restore` can still undo
    phototag's write. Pruning forgets those rows for good, and with them the original metadata
    (description and keywords from before phototag's first write) that restore needs: if such a photo
    turns up again later, its phototag caption can no longer be undone. Photos with undo data are
    listed one per line with -v or --dry-run.

    \b
    Examples:
      phototag status                          # how many photos are missing
      phototag prune --dry-run                 # what would be forgotten
      phototag prune --older-than 30           # missing for a month or more
      phototag -v prune /mnt/nas/photos/2012   # only under a folder, listing each photo with undo data
    """
    db = app.settings.db_path()
    if not db.exists():
        raise click.ClickException(f"no index at {db}: nothing to prune")
    roots = [Path(os.path.abspath(p.expanduser())) for p in paths] or None
    verbose = (ctx.parent.params.get("verbose") or 0) if ctx.parent is not None else 0
    if not dry_run:
        app.lock_index("phototag prune")  # a daemon beside it may be bringing a missing row back
    index = PhotoIndex(db)
    try:
        rows = missing_rows(index, older_than_s=None if older_than is None else older_than * DAY_S, paths=roots)
        with_undo = [row for row in rows if has_undo_data(row)]
        if dry_run or verbose:
            for row in with_undo:
                since = time.strftime("%Y-%m-%d", time.localtime(row.missing_since)) if row.missing_since else "?"
                click.echo(f"{row.path}\tmissing since {since}\tundo data: original metadata of phototag's caption")
        if dry_run:
            click.echo(f"dry run: would forget {len(rows)} missing photos; {len(with_undo)} of them have undo "
                       "data (original metadata) that would be dropped", err=True)
            return
        forgotten = prune(index, rows)
        dropped = sum(1 for row in forgotten if has_undo_data(row))
    finally:
        index.close()
    if not rows:
        click.echo("no missing photos to forget", err=True)
        return
    click.echo(f"forgot {len(forgotten)} missing photos; the undo data (original metadata) of {dropped} of them "
               "is dropped: 'phototag restore' can no longer put their descriptions back", err=True)
