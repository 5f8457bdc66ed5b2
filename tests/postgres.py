"""A real PostgreSQL server for the tests: a fresh database per test module, emptied before each test.

The server is the one ``.ci/run`` installs and starts (Debian's ``postgresql`` 15); the tests reach it
at ``$PHOTOTAG_TEST_PG_URL`` (default ``postgresql:///postgres``: the local socket, as root, whom
``.ci/run`` makes a superuser). In CI (``$CI`` set) a missing server fails the tests loudly; elsewhere
they skip, saying why.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.components import unavailable

ADMIN_URL = os.environ.get("PHOTOTAG_TEST_PG_URL", "postgresql:///postgres")


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    parts = urlsplit(url)  # (urlunsplit would drop the "//" of a URL with no host: postgresql:///db)
    return f"{parts.scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")


def _admin() -> Any:
    import psycopg

    return psycopg.connect(ADMIN_URL, autocommit=True)


def server_or_skip() -> None:
    """Stop the test (fail in CI, skip elsewhere) when no PostgreSQL server answers at ADMIN_URL."""
    try:
        import psycopg
    except ImportError as exc:
        reason = f"psycopg is not installed ({exc}): pip install -e '.[postgres]'"
    else:
        try:
            _admin().close()
            return
        except psycopg.Error as exc:
            reason = f"no PostgreSQL server at {ADMIN_URL} ({str(exc).strip().splitlines()[0]}); .ci/run starts one"
    unavailable("PostgreSQL", reason)


@pytest.fixture(scope="module")
def pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of its own for this test module (dropped at its end): its URL."""
    server_or_skip()
    module = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.rsplit(".", 1)[-1].lower())
    name = f"phototag_{module}_{uuid.uuid4().hex[:8]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(ADMIN_URL, name)
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The module's database, emptied of everything a test before this one made: its URL."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_database


def pg_rows(url: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (none for a statement that returns none), by a connection of its own (as another
    machine would)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def pg_photos(url: str) -> dict[str, tuple[Any, ...]]:
    """path -> (status, caption, caption_source, keywords, failure_reason) of every photo."""
    rows = pg_rows(url, "SELECT path, status, caption, caption_source, keywords, failure_reason FROM photos")
    return {row[0]: tuple(row[1:]) for row in rows}
