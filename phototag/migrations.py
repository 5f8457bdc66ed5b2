"""The index's schema in SQL: creating a new index and upgrading one an older phototag made.

Plain :mod:`sqlite3`, standard library only, so both readers of the index can bring it up to date:
the SQLAlchemy index (:mod:`phototag.index`, whose models map these tables) and the search engine
(:mod:`phototag.search`, which must start without SQLAlchemy). The DDL here is what SQLAlchemy emits
for the models; a test creates an index both ways and compares them, so the two cannot drift.

A new column goes into ``Photo`` (phototag.index), into :data:`PHOTOS_TABLE` and into
:data:`ADDED_COLUMNS` (an existing index gets it by ``ALTER TABLE``), with :data:`SCHEMA_VERSION` raised.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3  # 2: photos.taken_at, photo_embeddings; 3: photos.missing_since, failure_kind, tries,
# mtime_before_write_ns

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
        for ddl in INDEXES + FTS_DDL + EMBEDDING_DDL:
            conn.execute(ddl)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        if not in_transaction:
            conn.rollback()
        raise
    if not in_transaction:
        conn.commit()
