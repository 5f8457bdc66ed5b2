"""``phototag status``: how much of the library is captioned, and what failed and why."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from phototag import last_run
from phototag.cli.context import AppContext, pass_app
from phototag.daemon_state import daemon_status
from phototag.failures import MAX_TRIES, TRANSIENT
from phototag.index import DONE, FAILED, MISSING, PENDING, RESTORED


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option(
    "--failures", type=click.IntRange(0), default=20, show_default=True, help="How many failed photos to list (0: all)."
)
@pass_app
def command(app: AppContext, as_json: bool, failures: int) -> None:
    """Counts by status (done, pending, failed, missing, and restored by `phototag restore`), the failed
    photos with their reasons, and whether a `phototag watch` daemon is running on this index (its queue
    and last error).

    Missing photos are no longer on disk (deleted, moved away, or on a share that is not mounted):
    their rows keep caption and undo data and come back when the photo does; `phototag prune`
    forgets them.

    \b
    Examples:
      phototag status
      phototag status --json
    """
    db = app.db_path()  # for a server index: the local name of this machine's daemon state
    location = app.location()
    if not location.exists():
        if as_json:
            click.echo(json.dumps({"index": str(location), "exists": False, "daemon": daemon_status(db)}))
        else:
            click.echo(f"no index yet at {location}: run 'phototag backfill PATH' first")
        return
    index = app.index()
    counts = index.counts()
    failed = index.failures(limit=failures or None)
    stopped = last_run.read(db) if counts[PENDING] else None  # why photos wait, if a run stopped early
    writer = None
    if location.is_server:  # a shared index: its writer may run on another machine
        from phototag.pg_lock import current_writer

        writer = current_writer(index.engine)
    if as_json:
        data = {
            "index": str(location),
            "counts": counts,
            "total": sum(counts.values()),
            "failed": [
                {"path": row.path, "reason": row.failure_reason, "kind": row.failure_kind, "tries": row.tries}
                for row in failed
            ],
            "daemon": daemon_status(db),
            "last_run_error": stopped,
        }
        if location.is_server:
            data["writer"] = writer
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    click.echo(f"index: {location}")
    click.echo(
        f"photos: {sum(counts.values())}  done: {counts[DONE]}  pending: {counts[PENDING]}  "
        f"failed: {counts[FAILED]}  missing: {counts[MISSING]}  restored: {counts[RESTORED]}"
    )
    if stopped:
        click.echo(
            f"  pending because the last {stopped.get('command', 'run')} ({_when(stopped.get('at'))}) "
            f"stopped: {stopped['error']}".replace("\n", "\n    ")
        )
    if counts[MISSING]:
        click.echo(
            f"missing: {counts[MISSING]} photos are no longer on disk; their rows (and undo data) are "
            "kept until they come back or 'phototag prune' forgets them"
        )
    click.echo(_daemon_line(daemon_status(db)))
    if location.is_server:
        if writer is None:
            click.echo("writer: none (no phototag writes this index now, on any machine)")
        else:
            click.echo(
                f"writer: {writer['command']} (pid {writer['pid']} on {writer['host']}, since {_when(writer['since'])})"
            )
    if failed:
        click.echo("failed:")
        for row in failed:
            click.echo(f"  {row.path}: {row.failure_reason}{_retry_note(row.failure_kind, row.tries)}")
        if counts[FAILED] > len(failed):
            click.echo(f"  ... and {counts[FAILED] - len(failed)} more (--failures 0 lists all)")


def _retry_note(kind: str | None, tries: int | None) -> str:
    """Whether the next run tries a failed photo again by itself (see phototag.failures)."""
    if kind != TRANSIENT:
        return ""
    if (tries or 0) < MAX_TRIES:
        return f" (not the photo's fault: the next run retries it; failed {tries} of {MAX_TRIES} tries)"
    return f" (failed {tries} tries in a row: backfill --retry-failed tries again)"


def _when(epoch: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if isinstance(epoch, int | float) else "?"


def _daemon_line(daemon: dict[str, Any]) -> str:
    if daemon["running"]:
        line = (
            f"daemon: running (pid {daemon.get('pid')}, since {_when(daemon.get('started_at'))}), "
            f"queue: {daemon.get('queue', 0)}, watching: {', '.join(daemon.get('folders', []))}"
        )
    elif daemon.get("died"):
        line = (
            f"daemon: not running; pid {daemon.get('pid')} died without stopping "
            f"(last seen {_when(daemon.get('updated_at'))}); its pending photos resume on the next start"
        )
    elif "stopped_at" in daemon:
        line = f"daemon: not running (stopped {_when(daemon.get('stopped_at'))})"
    else:
        line = "daemon: not running"
    error = daemon.get("last_error")
    if error:
        line += f"\n  last error ({_when(error.get('at'))}): {error.get('message')}"
    return line
