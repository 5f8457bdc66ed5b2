"""``phototag search``: paths of the photos whose captions match, best first."""

from __future__ import annotations

import json
import os

import click

from phototag.cli import AppContext, pass_app
from phototag.index import PhotoIndex
from phototag.search import QueryError, parse_query


@click.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("-n", "--limit", type=click.IntRange(1), default=20, show_default=True, help="Most results.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines with path, caption and score.")
@pass_app
def command(app: AppContext, query: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Find photos by what their captions say. Prints absolute paths, best match first.

    Words are matched in any order and form ("dogs" finds "dog"); small words like "on" and "the"
    are ignored. "exact phrase" keeps words together, -word excludes, tag:word matches a keyword.

    \b
    Examples:
      phototag search dog on beach
      phototag search "red car" -night
      phototag search tag:cat --json
      phototag search sunset | xargs -d '\\n' feh
    """
    text = " ".join(query)
    try:
        parsed = parse_query(text)
    except QueryError as exc:
        raise click.UsageError(str(exc)) from None
    db = app.settings.db_path()
    if not db.exists():
        raise click.ClickException(f"no index at {db}: run 'phototag backfill PATH' first")
    index = PhotoIndex(db)
    hits = [hit for hit in index.search(parsed, limit=limit * 2) if os.path.exists(hit.path)][:limit]
    for hit in hits:
        click.echo(json.dumps(hit.as_dict(), ensure_ascii=False) if as_json else hit.path)
