"""``phototag prune``: forget photos marked missing, and say what undo data goes with them."""

from __future__ import annotations

import time
from pathlib import Path

import click

from phototag.cli.context import AppContext, absolute, pass_app, verbosity
from phototag.cli.options import dry_run_option, paths_argument
from phototag.sweep import has_undo_data, missing_rows, prune

DAY_S = 86400.0


@click.command("prune")
@paths_argument()
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="Only photos missing for at least DAYS days.",
)
@dry_run_option("List what would be forgotten; change nothing.")
@click.pass_context
@pass_app
def command(
    app: AppContext, ctx: click.Context, paths: tuple[Path, ...], older_than: float | None, dry_run: bool
) -> None:
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
    app.existing_db("nothing to prune")
    roots = absolute(paths) or None
    if not dry_run:
        app.lock_index("phototag prune")  # a daemon beside it may be bringing a missing row back
    index = app.index()
    rows = missing_rows(index, older_than_s=None if older_than is None else older_than * DAY_S, paths=roots)
    with_undo = [row for row in rows if has_undo_data(row)]
    if dry_run or verbosity(ctx):
        for row in with_undo:
            since = time.strftime("%Y-%m-%d", time.localtime(row.missing_since)) if row.missing_since else "?"
            click.echo(f"{row.path}\tmissing since {since}\tundo data: original metadata of phototag's caption")
    if dry_run:
        click.echo(
            f"dry run: would forget {len(rows)} missing photos; {len(with_undo)} of them have undo "
            "data (original metadata) that would be dropped",
            err=True,
        )
        return
    forgotten = prune(index, rows)
    dropped = sum(1 for row in forgotten if has_undo_data(row))
    if not rows:
        click.echo("no missing photos to forget", err=True)
        return
    click.echo(
        f"forgot {len(forgotten)} missing photos; the undo data (original metadata) of {dropped} of them "
        "is dropped: 'phototag restore' can no longer put their descriptions back",
        err=True,
    )
