"""``phototag status``: how much of the library is captioned, and what failed and why."""

from __future__ import annotations

import json

import click

from phototag.cli import AppContext, pass_app
from phototag.index import PhotoIndex


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--failures", type=click.IntRange(0), default=20, show_default=True,
              help="How many failed photos to list (0: all).")
@pass_app
def command(app: AppContext, as_json: bool, failures: int) -> None:
    """Counts by status (done, pending, failed), and the failed photos with their reasons.

    \b
    Examples:
      phototag status
      phototag status --json
    """
    db = app.settings.db_path()
    if not db.exists():
        if as_json:
            click.echo(json.dumps({"index": str(db), "exists": False}))
        else:
            click.echo(f"no index yet at {db}: run 'phototag backfill PATH' first")
        return
    index = PhotoIndex(db)
    counts = index.counts()
    failed = index.failures(limit=failures or None)
    if as_json:
        data = {
            "index": str(db),
            "counts": counts,
            "total": sum(counts.values()),
            "failed": [{"path": row.path, "reason": row.failure_reason} for row in failed],
        }
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    click.echo(f"index: {db}")
    click.echo(f"photos: {sum(counts.values())}  done: {counts['done']}  pending: {counts['pending']}  "
               f"failed: {counts['failed']}")
    if failed:
        click.echo("failed:")
        for row in failed:
            click.echo(f"  {row.path}: {row.failure_reason}")
        if counts["failed"] > len(failed):
            click.echo(f"  ... and {counts['failed'] - len(failed)} more (--failures 0 lists all)")
