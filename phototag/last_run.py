"""Why the last backfill stopped early: a small owner-only file beside the index that ``status`` reads.

A backfill whose model would not load leaves the photos it had queued ``pending``; without this
``phototag status`` would list them with no reason. The file is ``<index>.last-run.json``, written when
a run stops on an error and removed when a run completes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from phototag.config import write_private_json


def path_for(db: Path) -> Path:
    return db.with_name(db.name + ".last-run.json")


def record_error(db: Path, command: str, message: str) -> None:
    write_private_json(path_for(db), {"command": command, "error": message, "at": time.time()})


def clear(db: Path) -> None:
    try:
        os.unlink(path_for(db))
    except FileNotFoundError:
        pass


def read(db: Path) -> dict[str, Any] | None:
    """The recorded error, or None when the last run completed (or none recorded one)."""
    try:
        data = json.loads(path_for(db).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("error") else None
