"""The index's schema in SQL: creating a new index and upgrading one an older phototag made.

Plain :mod:`sqlite3`, standard library only, so both readers of the index can bring it up to date:
the SQLAlchemy index (:mod:`phototag.index`, whose models map these tables) and the search engine
(:mod:`phototag.search`, which must start without SQLAlchemy). The DDL here is what SQLAlchemy emits
for the models; a test creates an index both ways and compares them, so the two cannot drift.

A new column goes into ``Photo`` (phototag.index), into :data:`PHOTOS_TABLE` and into
:data:`ADDED_COLUMNS` (an existing index gets it by ``ALTER TABLE``), with :data:`SCHEMA_VERSION` raised.
"""

from __future__ import annotations

import os
import sqlite3

SCHEMA_VERSION = 4  # 2: photos.taken_at, photo_embeddings; 3: photos.missing_since, failure_kind, tries,
# mtime_before_write_ns; 4: folder_spans, day_spans

PHOTOS_TABLE = """CREATE TABLE IF NOT EXISTS photos (
    id INTEGER NOT NULL,
    path VARCHAR NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash VARCHAR,
    status VARCHAR NOT NULL,
    failure_reason TEXT,
    failure_kind VARCHAR,
    tries INTEGER DEFAULT '0' NOT NULL,
    caption TEXT,
    caption_source VARCHAR,
    keywords TEXT NOT NULL,
    model_name VARCHAR,
    prompt VARCHAR,
    written_to VARCHAR,
    original_metadata TEXT,
    created_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL,
    captioned_at FLOAT,
    taken_at VARCHAR,
    missing_since FLOAT,
    mtime_before_write_ns INTEGER,
    PRIMARY KEY (id),
    UNIQUE (path)
)"""

# Columns an older index lacks, in the order they came: (name, definition for ALTER TABLE ADD COLUMN).
ADDED_COLUMNS = (
    ("taken_at", "VARCHAR"),
    ("missing_since", "FLOAT"),
    ("failure_kind", "VARCHAR"),
    ("tries", "INTEGER NOT NULL DEFAULT 0"),
    ("mtime_before_write_ns", "INTEGER"),
)

EMBEDDINGS_TABLE = """CREATE TABLE IF NOT EXISTS photo_embeddings (
    seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    photo_id INTEGER NOT NULL,
    model VARCHAR NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (photo_id),
    FOREIGN KEY(photo_id) REFERENCES photos (id) ON DELETE CASCADE
)"""

INDEXES = [
    "CREATE INDEX IF NOT EXISTS ix_photos_status ON photos (status)",
    "CREATE INDEX IF NOT EXISTS ix_photos_taken_at ON photos (taken_at)",
    "CREATE INDEX IF NOT EXISTS ix_photos_hash ON photos (content_hash)",
    "CREATE INDEX IF NOT EXISTS ix_embeddings_model ON photo_embeddings (model)",
]

# FTS5 over the caption and keywords, an external-content table kept in sync by triggers.
FTS_DDL = [
    """CREATE VIRTUAL TABLE IF NOT EXISTS photos_fts USING fts5(
        caption, keywords, content='photos', content_rowid='id', tokenize='porter unicode61')""",
    """CREATE TRIGGER IF NOT EXISTS photos_ai AFTER INSERT ON photos BEGIN
        INSERT INTO photos_fts(rowid, caption, keywords) VALUES (new.id, new.caption, new.keywords);
    END""",
    """CREATE TRIGGER IF NOT EXISTS photos_ad AFTER DELETE ON photos BEGIN
        INSERT INTO photos_fts(photos_fts, rowid, caption, keywords)
        VALUES ('delete', old.id, old.caption, old.keywords);
    END""",
    """CREATE TRIGGER IF NOT EXISTS photos_au AFTER UPDATE OF caption, keywords ON photos BEGIN
        INSERT INTO photos_fts(photos_fts, rowid, caption, keywords)
        VALUES ('delete', old.id, old.caption, old.keywords);
        INSERT INTO photos_fts(rowid, caption, keywords) VALUES (new.id, new.caption, new.keywords);
    END""",
]

# A vector belongs to its caption: a changed caption or a deleted photo drops it.
EMBEDDING_DDL = [
    """CREATE TRIGGER IF NOT EXISTS photo_embeddings_stale AFTER UPDATE OF caption ON photos
    WHEN old.caption IS NOT new.caption BEGIN
        DELETE FROM photo_embeddings WHERE photo_id = old.id;
    END""",
    """CREATE TRIGGER IF NOT EXISTS photo_embeddings_gone AFTER DELETE ON photos BEGIN
        DELETE FROM photo_embeddings WHERE photo_id = old.id;
    END""",
]


# Where each folder's and each taken day's photos lie in id order: how many there are, and the lowest and
# highest id among them. A keyword search with ``in:``, ``after:`` or ``before:`` bounds its walk of the
# FTS index by them instead of scanning every photo the filter keeps (phototag.search,
# Finder._restriction). Triggers keep them: counts exact; a photo deleted, moved or redated leaves the
# bounds it was in as wide as they were, which is safe (a bound only says where to look, every match is
# still checked against the filter), and :func:`rebuild_spans` narrows them again.
# Two rules keep them true: a photo's id never changes, and no statement replaces a photos row
# (INSERT OR REPLACE deletes without firing the delete triggers, so its count would only grow: still safe,
# but no longer exact).
# A photo's folder is its path up to the last separator, kept: rtrim drops every character but that.
_FOLDER = "rtrim({0}, replace({0}, '" + os.sep + "', ''))"
_DAY = "substr({0}, 1, 10)"  # taken_at is ISO 8601: its day is its first 10 characters
SPAN_TABLES = {"folder_spans": ("folder", "path", _FOLDER), "day_spans": ("day", "taken_at", _DAY)}


def _span_ddl() -> list[str]:
    ddl = []
    for table, (key, column, of) in SPAN_TABLES.items():
        new, old = of.format(f"new.{column}"), of.format(f"old.{column}")
        add = (
            f"INSERT INTO {table} SELECT {new}, 1, new.id, new.id WHERE new.{column} IS NOT NULL "
            f"ON CONFLICT ({key}) DO UPDATE SET photos = photos + 1, low = min(low, excluded.low), "
            "high = max(high, excluded.high);"
        )
        remove = f"UPDATE {table} SET photos = photos - 1 WHERE {key} = {old};"
        ddl += [
            f"""CREATE TABLE IF NOT EXISTS {table} (
    {key} VARCHAR NOT NULL PRIMARY KEY,
    photos INTEGER NOT NULL,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL
) WITHOUT ROWID""",
            f"CREATE TRIGGER IF NOT EXISTS {table}_ai AFTER INSERT ON photos BEGIN {add} END",
            f"CREATE TRIGGER IF NOT EXISTS {table}_ad AFTER DELETE ON photos BEGIN {remove} END",
            f"""CREATE TRIGGER IF NOT EXISTS {table}_au AFTER UPDATE OF {column} ON photos
    WHEN old.{column} IS NOT new.{column} BEGIN {remove} {add} END""",
        ]
    return ddl


SPAN_DDL = _span_ddl()


def rebuild_spans(conn: sqlite3.Connection) -> None:
    """Count every folder's and day's photos again, with bounds as narrow as they can be (inside the
    caller's transaction)."""
    for table, (_, column, of) in SPAN_TABLES.items():
        conn.execute(f"DELETE FROM {table}")
        conn.execute(
            f"INSERT INTO {table} SELECT {of.format(column)} AS key, count(*), min(id), max(id) FROM photos "
            f"WHERE {column} IS NOT NULL GROUP BY key"
        )


def is_current(conn: sqlite3.Connection) -> bool:
    return conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def upgrade(conn: sqlite3.Connection) -> None:
    """Create what the index lacks (everything, for a new file) and mark it current, in one transaction.

    Every statement is idempotent and the transaction takes the write lock first, so of two processes
    opening an old index at once, the second waits (busy timeout) and then finds nothing left to do.
    """
    in_transaction = conn.in_transaction
    if not in_transaction:
        conn.execute("BEGIN IMMEDIATE")  # one writer at a time: columns are checked and added together
    try:
        conn.execute(PHOTOS_TABLE)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(photos)")}
        for name, definition in ADDED_COLUMNS:
            if name not in columns:
                conn.execute(f"ALTER TABLE photos ADD COLUMN {name} {definition}")
        conn.execute(EMBEDDINGS_TABLE)
        had_spans = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'folder_spans'").fetchone()
        for ddl in INDEXES + FTS_DDL + EMBEDDING_DDL + SPAN_DDL:
            conn.execute(ddl)
        if not had_spans:  # an older index: its photos are counted once, here
            rebuild_spans(conn)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        if not in_transaction:
            conn.rollback()
        raise
    if not in_transaction:
        conn.commit()
