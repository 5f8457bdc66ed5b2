"""``phototag restore``: undo phototag's writes, putting back what photos said before its first write."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from phototag.cli import AppContext, pass_app
from phototag.cli.progress import Progress
from phototag.exiftool import MetadataError
from phototag.index import RESTORED, SOURCE_MODEL, Photo, PhotoIndex, count_rows, iter_rows, mark_restored
from phototag.metadata import ExifToolSession
from phototag.pipeline import FAILED_OUTCOME, Outcome
from phototag.sweep import mark_missing

UNCHANGED = "unchanged"
GONE = "gone"


@click.command("restore")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--all", "everything", is_flag=True, help="Every photo in the index.")
@click.option("--no-progress", is_flag=True, help="No progress line on stderr.")
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
    settings = app.settings
    db = settings.db_path()
    if not db.exists():
        raise click.ClickException(f"no index at {db}: phototag has not written anything yet")
    roots = None if everything else [Path(os.path.abspath(p.expanduser())) for p in paths]
    app.lock_index("phototag restore")
    index = PhotoIndex(db)
    total = count_rows(index, roots)
    if total == 0:
        index.close()
        where = "the index" if roots is None else " ".join(str(r) for r in roots)
        raise click.ClickException(f"no photos to restore: nothing of {where} is in the index")
    try:
        exiftool = ExifToolSession.from_settings(settings.metadata)
    except MetadataError as exc:
        index.close()
        raise click.ClickException(str(exc)) from None
    progress = Progress(enabled=not no_progress and not app.quiet, rate_of=(RESTORED, UNCHANGED, GONE),
                        rate_unit="photos/s")
    progress.total = total
    sidecars_removed = 0
    with exiftool:
        try:
            for row in iter_rows(index, roots):
                outcome, removed_sidecar = restore_row(exiftool, index, row)
                sidecars_removed += removed_sidecar
                progress(outcome)
                if outcome.kind == FAILED_OUTCOME and not progress.enabled:  # always say what failed
                    click.echo(f"failed: {outcome.path}: {outcome.reason}", err=True)
        except KeyboardInterrupt:
            click.echo("\nstopped: photos not reached yet keep their captions and index rows", err=True)
            sys.exit(130)
        finally:
            progress.finish()
            index.close()
    counts = progress.counts
    click.echo(
        f"restored {counts[RESTORED]}, unchanged {counts[UNCHANGED]}, removed sidecars {sidecars_removed}, "
        f"not on disk (kept as missing) {counts[GONE]}, failed {counts[FAILED_OUTCOME]}",
        err=True,
    )
    if counts[FAILED_OUTCOME]:
        sys.exit(1)


def restore_row(exiftool: ExifToolSession, index: PhotoIndex, row: Photo) -> tuple[Outcome, bool]:
    """Restore one photo from its index row, then mark the row restored (a photo no longer on disk:
    marked missing, its undo data kept). Returns the outcome and whether a sidecar phototag created
    was removed. A failure keeps the row as it was (and says why)."""
    path = Path(row.path)
    if not os.path.lexists(path):
        # an unmounted share looks like this: keep the undo data (marked missing) for when it is back
        mark_missing(index, row.id)
        return Outcome(path, GONE), False
    original = row.original()
    if not original or row.caption_source != SOURCE_MODEL:
        # phototag never wrote to it (a person's description was kept, or it could not be read): any
        # difference from the recorded values is somebody else's edit, which stays
        mark_restored(index, row.id, path)
        return Outcome(path, UNCHANGED), False
    try:
        result = exiftool.restore(path, original)
    except MetadataError as exc:
        return Outcome(path, FAILED_OUTCOME, reason=str(exc)), False
    mark_restored(index, row.id, path)
    return Outcome(path, RESTORED if result.changed else UNCHANGED), result.sidecar == "removed"
