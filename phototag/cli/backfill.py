"""``phototag backfill``: caption every photo under some folders (resumable, skips what is done)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from phototag import last_run
from phototag.cli.context import AppContext, pass_app
from phototag.cli.options import (
    apply_model_options,
    cluster_stages,
    dry_run_option,
    model_options,
    paths_argument,
    progress_option,
    ray_option,
)
from phototag.cli.progress import Progress
from phototag.pipeline import Pipeline
from phototag.planning import WOULD_WRITE, Outcome
from phototag.safe_write import clean_stale_temps
from phototag.scan import count_photos, walk_photos
from phototag.sweep import sweep


@click.command("backfill")
@paths_argument(required=True)
@model_options
@dry_run_option("Show what would be written; change nothing on disk.")
@click.option("--retry-failed", is_flag=True, help="Try again photos that failed before and did not change.")
@click.option(
    "--include-restored",
    is_flag=True,
    help="Caption again photos that 'phototag restore' put back (skipped otherwise while unchanged).",
)
@ray_option
@progress_option
@pass_app
def command(
    app: AppContext,
    paths: tuple[Path, ...],
    dry_run: bool,
    retry_failed: bool,
    include_restored: bool,
    ray_address: str | None,
    ray_io: bool | None,
    no_progress: bool,
    **model_values: Any,
) -> None:
    """Caption every photo under PATHS and write the captions into their metadata.

    Photos already captioned and unchanged are skipped, so an interrupted backfill resumes where it
    stopped. Descriptions a person wrote are kept (and indexed) unless --overwrite is given. RAW files
    get an XMP sidecar (photo.nef.xmp). Ctrl-C finishes the batch in flight and stops cleanly.
    --dry-run prints "path<TAB>old description<TAB>new caption" for each photo it would caption and
    changes nothing on disk. Temp files a crashed run left beside the photos are removed first.
    Photos `phototag restore` put back stay as they are until their content changes, unless
    --include-restored is given. One phototag writes an index at a time: while `phototag watch` (or
    another backfill) runs on it, backfill refuses and says which process to stop (a dry run is fine).

    \b
    Examples:
      phototag backfill ~/Pictures
      phototag backfill ~/Pictures/2019 --prompt "a photography of" --batch-size 8
      phototag backfill /mnt/photos --model ~/models/blip-large --device cuda
      phototag backfill ~/Pictures --dry-run
      phototag backfill ~/Pictures/2019 --include-restored
      phototag backfill /mnt/photos --ray 192.168.1.20:6379   # the model on a Ray cluster
      phototag backfill /mnt/photos --ray 192.168.1.20:6379 --ray-io   # decode and write on its nodes too
    """
    settings = apply_model_options(app, model_values)
    roots = app.roots(paths)
    if not dry_run:
        app.lock_index("phototag backfill")  # before anything is written, the stale temps included
    cluster = cluster_stages(app, ray_address, ray_io)

    progress = Progress(enabled=not no_progress, quiet=app.quiet)

    def report_would_write(outcome: Outcome) -> None:
        progress(outcome)
        if outcome.kind == WOULD_WRITE:
            old = _one_field(outcome.old_description or "")
            click.echo(f"{outcome.path}\t{old}\t{_one_field(outcome.caption or '')}")

    outcome_sink: Callable[[Outcome], None] = report_would_write if dry_run else progress

    index = app.scratch_index() if dry_run else app.index()  # a dry run creates no index
    exiftool = app.exiftool()
    db = app.db_path()
    if not dry_run:
        last_run.clear(db)  # this run's outcome replaces the last one's reason
        stale = clean_stale_temps(roots)
        if stale:
            app.note(f"removed {len(stale)} temp files left by an interrupted run")
    pipeline = Pipeline(
        settings,
        index,
        exiftool,
        dry_run=dry_run,
        retry_failed=retry_failed,
        include_restored=include_restored,
        on_outcome=outcome_sink,
        captioner_factory=cluster.captioner_factory,
        write_files=cluster.write_files,
    ).start()
    threading.Thread(target=_count_into, args=(progress, roots), daemon=True).start()
    completed = _feed(pipeline, roots)
    progress.finish(draw=pipeline.error is None)
    if completed and not dry_run:
        swept = sweep(index, roots)
        for root in swept.skipped_roots:
            app.note(
                f"phototag: {root} is missing or holds no photos (an unmounted share?): "
                "its photos in the index are left as they are"
            )
        if swept.missing:
            app.note(
                f"marked {len(swept.missing)} photos no longer on disk as missing (their captions and "
                "undo data are kept; 'phototag prune' forgets them)"
            )
    if pipeline.error is not None:
        if not dry_run:  # so `phototag status` can say why photos are still pending
            last_run.record_error(db, "backfill", str(pipeline.error))
        raise click.ClickException(str(pipeline.error))
    if not app.quiet:
        click.echo(("dry run: " if dry_run else "") + progress.summary(), err=True)
    if not completed:
        sys.exit(130)


def _one_field(text: str) -> str:
    """Keep a dry-run line one line with three fields: tabs, line breaks and backslashes escaped."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def _count_into(progress: Progress, roots: list[Path]) -> None:
    progress.total = count_photos(roots)


def _feed(pipeline: Pipeline, roots: list[Path]) -> bool:
    """Walk and submit; on Ctrl-C finish the batch in flight. True when every photo was handled."""
    try:
        for path in walk_photos(roots):
            if not pipeline.submit(path):
                break
        pipeline.close()
        return pipeline.error is None
    except KeyboardInterrupt:
        click.echo("\nstopping: finishing the batch in flight (Ctrl-C again to quit at once)", err=True)
        # a second Ctrl-C exits at once; safe writes mean no photo is left half-written
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        pipeline.stop()
        pipeline.join()
        return False
