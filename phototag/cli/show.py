"""``phototag show``: everything the index knows about one photo."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from phototag.cli.context import AppContext, pass_app
from phototag.index import MISSING


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
    absolute = os.path.abspath(path.expanduser())
    row = app.index().get(absolute) if app.location().exists() else None
    if row is None:
        raise click.ClickException(f"{absolute} is not in the index")
    data = row.as_dict()
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    if row.status == MISSING:
        since = data.get("missing_since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
        data["status"] = f"missing (not on disk since {when}; 'phototag prune' forgets it)"
    for label, value in readable(data):
        click.echo(f"{label:>10}: {value}" if label else f"{'':>10}  {value}")


# Bookkeeping tags stored with the originals so restore can rebuild the blocks exactly; not a person's words.
_TECHNICAL_TAGS = {"IPTC:CodedCharacterSet", "Photoshop:IPTCDigest"}


def _when(epoch: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else None


def _size(size: int | None) -> str | None:
    if not size:
        return None
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return None


def _tag_value(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) and not value.strip() else str(value)


def readable(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines for a person: dates instead of epoch numbers, and what restore would put back
    instead of the raw record (``--json`` keeps every field as stored)."""
    source = {"model": "by the captioning model", "human": "written by a person, kept"}.get(
        data.get("caption_source") or "", data.get("caption_source") or ""
    )
    caption = data.get("caption")
    if caption and source:
        caption = f"{caption}  ({source})"
    taken = (data.get("taken_at") or "").replace("T", " ") or None
    written = data.get("written_to")
    lines = [
        ("path", data["path"]),
        ("status", data["status"]),
        ("failed", data.get("failure_reason")),
        ("caption", caption),
        ("keywords", ", ".join(data.get("keywords") or []) or None),
        ("model", data.get("model")),
        ("prompt", data.get("prompt")),
        (
            "written to",
            {"embedded": "the photo's own metadata", "sidecar": "an XMP sidecar"}.get(written or "", written),
        ),
        ("taken", taken),
        ("captioned", _when(data.get("captioned_at"))),
        ("updated", _when(data.get("updated_at"))),
        ("size", _size(data.get("size"))),
    ]
    result = [(label, str(value)) for label, value in lines if value not in (None, "")]
    original = data.get("original_metadata") or {}
    if not written:
        result.append(("restore", "nothing to put back: phototag has not written to this photo"))
        return result
    tags = {
        k: v
        for k, v in (original.get("file") or {}).get("tags", {}).items()
        if k not in _TECHNICAL_TAGS and v is not None
    }
    before = [f"{tag} = {_tag_value(value)}" for tag, value in tags.items()]
    sidecar = original.get("sidecar") or {}
    if sidecar.get("exists"):
        before.append(f"sidecar {sidecar.get('path')} as it was")
    elif written == "sidecar" and sidecar.get("path"):
        before.append(f"no sidecar (restore deletes {sidecar['path']})")
    if not before:
        result.append(("restore", "removes phototag's description and keywords (the photo had none before)"))
        return result
    result.append(("restore", "puts back " + before[0]))
    result.extend(("", f"          {line}") for line in before[1:])
    return result
