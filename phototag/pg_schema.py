"""The index's schema on PostgreSQL: creating it, upgrading it, and what SQLite does with FTS5 and triggers.

The tables are the SQLAlchemy models' (:mod:`phototag.index`, created by ``create_all``), with 64-bit
integers where SQLite's INTEGER already is. What PostgreSQL does differently from
:mod:`phototag.migrations`:

- keyword search reads ``photos.search_vector``, a generated ``tsvector`` (English stemming and stop
  words; the caption weighted A, the keywords B, so ``tag:`` can ask for keywords alone) with a GIN index;
- a ``text_pattern_ops`` index on ``path`` answers ``in:FOLDER`` (a prefix ``LIKE``) whatever the
  database's collation;
- a trigger drops a caption's vector when the caption changes (a deleted photo's goes by its foreign key);
- ``phototag_writer`` names the machine, pid and command of the one writer (:mod:`phototag.pg_lock`);
- ``phototag_schema`` holds the schema version (SQLite keeps it in ``PRAGMA user_version``).

Creating and upgrading run in one transaction under an advisory lock, so two machines opening a new
index at once do it one after the other; a current index is opened without writing anything.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection, Engine

from phototag.migrations import SCHEMA_VERSION

# Advisory lock keys (any 64-bit numbers, the same in every phototag): schema changes, the one writer.
SCHEMA_LOCK_KEY = 0x70686F746F01  # "photo" + 1
WRITER_LOCK_KEY = 0x70686F746F02

TEXT_CONFIG = "english"  # stemming and stop words of keyword search (websearch_to_tsquery uses the same)

WRITER_TABLE = """CREATE TABLE IF NOT EXISTS phototag_writer (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    backend_pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    command TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL
)"""

SEARCH_VECTOR = (
    "ALTER TABLE photos ADD COLUMN IF NOT EXISTS search_vector tsvector GENERATED ALWAYS AS ("
    f"setweight(to_tsvector('{TEXT_CONFIG}'::regconfig, coalesce(caption, '')), 'A') || "
    f"setweight(to_tsvector('{TEXT_CONFIG}'::regconfig, coalesce(keywords, '')), 'B')) STORED"
)

EXTRA_DDL = [
    SEARCH_VECTOR,
    "CREATE INDEX IF NOT EXISTS ix_photos_search ON photos USING gin (search_vector)",
    "CREATE INDEX IF NOT EXISTS ix_photos_path_prefix ON photos (path text_pattern_ops)",
    # a vector belongs to its caption: a changed caption drops it
    """CREATE OR REPLACE FUNCTION phototag_drop_stale_vector() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM photo_embeddings WHERE photo_id = OLD.id;
        RETURN NULL;
    END $$""",
    """CREATE OR REPLACE TRIGGER photo_embeddings_stale AFTER UPDATE OF caption ON photos FOR EACH ROW
    WHEN (OLD.caption IS DISTINCT FROM NEW.caption) EXECUTE FUNCTION phototag_drop_stale_vector()""",
    WRITER_TABLE,
    "CREATE TABLE IF NOT EXISTS phototag_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
]


class UnsupportedDatabase(Exception):
    """A database URL phototag cannot keep its index in; the message says which ones it can."""


def schema_version(conn: Connection) -> int | None:
    """The index's schema version, or None for a database phototag has not set up."""
    if conn.exec_driver_sql("SELECT to_regclass('phototag_schema')").scalar() is None:
        return None
    return conn.exec_driver_sql("SELECT version FROM phototag_schema").scalar()


def ensure_schema(engine: Engine, metadata: MetaData) -> None:
    """Create or upgrade the index in the database ``engine`` connects to."""
    if engine.dialect.name != "postgresql":
        raise UnsupportedDatabase(
            f"an index in {engine.dialect.name} is not supported: use a SQLite file or postgresql://USER@HOST/DB"
        )
    with engine.connect() as conn:
        if schema_version(conn) == SCHEMA_VERSION:
            return
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        if schema_version(conn) == SCHEMA_VERSION:  # another machine did it while we waited
            return
        metadata.create_all(conn)
        _add_missing_columns(conn, metadata)
        for ddl in EXTRA_DDL:
            conn.exec_driver_sql(ddl)
        conn.execute(
            text(
                "INSERT INTO phototag_schema (id, version) VALUES (1, :v) "
                "ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version"
            ),
            {"v": SCHEMA_VERSION},
        )


def _add_missing_columns(conn: Connection, metadata: MetaData) -> None:
    """Columns a model has and an older index's table lacks, added (the models are the one definition)."""
    for table in metadata.sorted_tables:
        present = {
            row[0]
            for row in conn.execute(
                text("SELECT column_name FROM information_schema.columns WHERE table_name = :t"), {"t": table.name}
            )
        }
        for column in table.columns:
            if column.name in present:
                continue
            definition = column.type.compile(dialect=conn.dialect)
            default: Any = column.server_default
            if default is not None:
                definition += f" NOT NULL DEFAULT {default.arg}"
            conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS "{column.name}" {definition}')
