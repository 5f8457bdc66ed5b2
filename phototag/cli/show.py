"""``phototag show``: everything the index knows about one photo."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from phototag.cli import AppContext, pass_app
from phototag.index import MISSING, PhotoIndex


@click.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def command(app: AppContext, path: Path, as_json: bool) -> None:
    """Show what the index knows about the photo at PATH.

    \b
    Examples:
      phototag show ~/Pictures/IMG_0001.JPG
      phototag show ~/Pictures/IMG_0001.JPG --json | jq .caption
    """
    db = app.settings.db_path()
    absolute = os.path.abspath(path.expanduser())
    row = PhotoIndex(db).get(absolute) if db.exists() else None
    if row is None:
        raise click.ClickException(f"{absolute} is not in the index")
    data = row.as_dict()
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    if row.status == MISSING:
        since = data.pop("missing_since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
        data["status"] = f"missing (not on disk since {when}; 'phototag prune' forgets it)"
    for key, value in data.items():
        if value in (None, "", [], {}):
            continue
        if key == "keywords":
            value = ", ".join(value)
        elif key == "original_metadata":
            value = json.dumps(value, ensure_ascii=False)
        click.echo(f"{key:>18}: {value}")
