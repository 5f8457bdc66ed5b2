"""One home per fact: status names, caption sources and the busy timeout come from phototag.schema."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import text

from phototag import index, schema, search
from phototag.index import PhotoIndex
from tests.conftest import REPO


def test_every_index_reader_waits_the_same_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite3"
    photo_index = PhotoIndex(db)
    with photo_index.engine.connect() as conn:
        through_sqlalchemy = conn.execute(text("PRAGMA busy_timeout")).scalar()
    photo_index.close()
    plain = search.connect(db)
    try:
        through_sqlite3 = plain.execute("PRAGMA busy_timeout").fetchone()[0]
    finally:
        plain.close()
    assert through_sqlalchemy == through_sqlite3 == int(schema.BUSY_TIMEOUT_S * 1000)


def test_status_names_are_spelled_once() -> None:
    assert (index.PENDING, index.DONE, index.FAILED, index.MISSING, index.RESTORED) == schema.STATUSES
    assert search.DONE is schema.DONE and index.SOURCE_HUMAN is schema.SOURCE_HUMAN
    # no module but schema.py spells a status name or a busy timeout in code (SQL included)
    literal = re.compile(r"""(["'])(pending|done)\1|status\s*=\s*'|busy_timeout\s*=\s*\d|timeout=10""")
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "phototag").rglob("*.py"))
        if path.name != "schema.py" and literal.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
