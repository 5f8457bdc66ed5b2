"""Names and settings every reader of the index shares: row statuses, caption sources, the busy timeout.

Standard library only, so the SQLAlchemy index (:mod:`phototag.index`), the plain-sqlite3 search
(:mod:`phototag.search`) and the commands all import the same values instead of spelling them again.
"""

from __future__ import annotations

# photos.status
PENDING = "pending"  # queued or in flight; resumed after a crash
DONE = "done"  # caption written to the photo (or its sidecar) and indexed
FAILED = "failed"  # failure_reason says why; failure_kind whether a later run retries it (phototag.failures)
# no longer on disk (deleted, moved away, its share unmounted): the row keeps caption, source and original
# metadata (undo data) for when the photo is back, until `phototag prune` forgets it (phototag.sweep)
MISSING = "missing"
RESTORED = "restored"  # `phototag restore` undid phototag's writes; not captioned again until its content changes
STATUSES = (PENDING, DONE, FAILED, MISSING, RESTORED)

# photos.caption_source
SOURCE_MODEL = "model"
SOURCE_HUMAN = "human"

# How long a connection waits for another writer (the daemon, a backfill) before "database is locked".
BUSY_TIMEOUT_S = 10.0
