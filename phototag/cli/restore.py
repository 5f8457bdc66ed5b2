"""``phototag restore``: undo phototag's writes, putting back what photos said before its first write."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from phototag.cli.context import AppContext, absolute, pass_app
from phototag.cli.options import paths_argument, progress_option
from phototag.cli.progress import Progress
from phototag.index import count_rows
from phototag.planning import FAILED_OUTCOME
from phototag.undo import GONE, RESTORED, UNCHANGED, restore_rows


@click.command("restore")
@paths_argument()
@click.option("--all", "everything", is_flag=True, help="Every photo in the index.")
@progress_option
@pass_app
def command(app: AppContext, paths: tuple[Path, ...], everything: bool, no_progress: bool) -> None:
    """Undo phototag: put back the descriptions and keywords photos under PATHS had before phototag
    first wrote to them, and remove the sidecars it created.

    Photos whose own description phototag kept are left as they are. For the others, the values
    were stored in the index before the first write; they are written back through the
    same verified temp-copy path as a caption (only photos whose values differ are rewritten); fields
    that were absent are removed again. A sidecar phototag created is deleted (if another tool has
    added to it since, only phototag's values are removed from it); a sidecar that existed before
    gets its own values back. Each restored photo then stays in the index as "restored", without a
    caption: search no longer finds it, and neither backfill nor `phototag watch` captions it again
    while its content is unchanged (`phototag backfill --include-restored` does). A photo that fails
    keeps its row, so running restore again finishes the job; the exit status is then 1. A photo that
    is not on disk (an unmounted share?) keeps its row and undo data, marked missing, for a later restore.

    While `phototag watch` (or a backfill) writes this index, restore refuses and says which process
    to stop first.

    \b
    Examples:
      phototag restore ~/Pictures/2019
      phototag restore ~/Pictures/IMG_0001.JPG
      phototag restore --all
    """
    if bool(paths) == everything:
        raise click.UsageError("give the PATHS to restore, or --all for every photo in the index")
    app.existing_db("phototag has not written anything yet")
    roots = None if everything else absolute(paths)
    app.lock_index("phototag restore")
    index = app.index()
    total = count_rows(index, roots)
    if total == 0:
        where = "the index" if roots is None else " ".join(str(r) for r in roots)
        raise click.ClickException(f"no photos to restore: nothing of {where} is in the index")
    exiftool = app.exiftool()
    progress = Progress(
        enabled=not no_progress and not app.quiet, rate_of=(RESTORED, UNCHANGED, GONE), rate_unit="photos/s"
    )
    progress.total = total
    sidecars_removed = 0
    try:
        for outcome, removed_sidecar in restore_rows(index, exiftool, roots):
            sidecars_removed += removed_sidecar
            progress(outcome)
            if outcome.kind == FAILED_OUTCOME and not progress.enabled:  # always say what failed
                click.echo(f"failed: {outcome.path}: {outcome.reason}", err=True)
    except KeyboardInterrupt:
        click.echo("\nstopped: photos not reached yet keep their captions and index rows", err=True)
        sys.exit(130)
    finally:
        progress.finish()
    counts = progress.counts
    click.echo(
        f"restored {counts[RESTORED]}, unchanged {counts[UNCHANGED]}, removed sidecars {sidecars_removed}, "
        f"not on disk (kept as missing) {counts[GONE]}, failed {counts[FAILED_OUTCOME]}",
        err=True,
    )
    if counts[FAILED_OUTCOME]:
        sys.exit(1)
