"""Planning: what one photo needs, decided from its index row, the file and its current metadata.

:meth:`Planner.plan` reads (the row, the file's size, mtime and fingerprint, its metadata through
exiftool, or as :meth:`Planner.read_ahead` read it for several photos at once) and returns a
:class:`Decision`. It writes nothing: the pipeline's record stage applies a
decision to the index, and a dry run swaps that stage for one that only reports. The rules:

- a symbolic link is never captioned through the link; a file gone since it was queued is dropped;
- a file whose name is not valid UTF-8 fails with a reason (the index keeps names as text);
- an unchanged ``done`` (or ``failed``, unless retried, or ``restored``, unless asked for) photo is skipped;
- a new path whose content has a row at a vanished path is that photo moved: the row follows it;
- a ``missing`` photo back on disk gets its row back (done again when it still carries the caption);
- a photo carrying its row's caption is skipped, or confirmed when the row was still ``pending``;
- a pending row with a caption for exactly this content is a write a crash interrupted: write it again;
- a person's description is kept (unless ``overwrite``); anything else needs the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISLNK
from typing import Any

from sqlalchemy import select

from phototag.config import Settings
from phototag.exiftool import MetadataError
from phototag.failures import MAX_TRIES, TRANSIENT
from phototag.fingerprint import content_hash
from phototag.index import (
    DONE,
    FAILED,
    MISSING,
    PENDING,
    RESTORED,
    SOURCE_HUMAN,
    SOURCE_MODEL,
    Photo,
    PhotoIndex,
)
from phototag.metadata import ExifToolSession, MetadataSnapshot
from phototag.mwg import ExistingMetadata

# Outcome kinds reported to the caller.
CAPTIONED = "captioned"
HUMAN = "human"
SKIPPED = "skipped"
MOVED = "moved"
RETURNED = "returned"  # a photo marked missing is back where it was, still carrying its caption
FAILED_OUTCOME = "failed"
WOULD_WRITE = "would-write"
SYMLINK = "symlink"  # a link to a file: never captioned through the link (see Planner.plan)


@dataclass(frozen=True)
class Outcome:
    path: Path
    kind: str
    caption: str | None = None
    reason: str | None = None
    old_description: str | None = None
    written_to: str | None = None


@dataclass
class Task:
    """A photo with work left: the model (no caption yet) or a write (caption, reason or confirmation set)."""

    path: Path
    size: int
    mtime_ns: int
    digest: str
    existing: ExistingMetadata
    pixels: Any = None
    caption: str | None = None
    source: str = SOURCE_MODEL
    reason: str | None = None
    transient: bool = False  # the failure in ``reason`` was not the photo's fault: retry it later
    confirm_only: bool = False
    keywords: tuple[str, ...] = field(default_factory=tuple)
    snapshot: MetadataSnapshot | None = None  # the plan's metadata read: the write reuses it if unchanged

    @property
    def needs_model(self) -> bool:
        return self.source != SOURCE_HUMAN and not self.confirm_only and not self.reason and self.caption is None


@dataclass
class Decision:
    """What a photo needs, and what the index should remember about it now."""

    path: Path
    outcome: Outcome | None = None  # settled at plan time (skipped, moved, back, a link, unreadable)
    task: Task | None = None  # work left for the next stages
    row_id: int | None = None  # the existing row ``changes`` apply to
    changes: dict[str, Any] = field(default_factory=dict)  # column values to record on that row
    pending: bool = False  # record the task as queued work (the row is made for a new photo)

    @property
    def writes_index(self) -> bool:
        return bool(self.changes) or self.pending


class Planner:
    """Decides, for one path at a time, what the pipeline does with it. Reads; never writes."""

    def __init__(
        self,
        settings: Settings,
        index: PhotoIndex,
        exiftool: ExifToolSession,
        *,
        retry_failed: bool = False,
        include_restored: bool = False,
    ) -> None:
        self.index = index
        self.exiftool = exiftool
        self.model = settings.model
        self.overwrite = settings.metadata.overwrite
        self.retry_failed = retry_failed
        self.include_restored = include_restored

    def read_ahead(self, paths: Sequence[Path]) -> dict[Path, MetadataSnapshot]:
        """The metadata reads :meth:`plan` is likely to need for ``paths``, in one exiftool call (see
        :meth:`ExifToolSession.snapshots`); pass each path's to ``plan``. A photo ``plan`` skips
        unread (:meth:`_settled`) is not read; this only decides what is read early: ``plan`` decides as
        before, reading again for a photo left out or changed since. Empty for fewer than two photos."""
        if len(paths) < 2:
            return {}
        paths = [path for path in paths if utf8_name(path)]
        rows = self.index.get_many(paths)
        wanted = []
        for path in paths:
            try:
                stat = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            row = rows.get(str(path))
            if not S_ISLNK(stat.st_mode) and (row is None or self._settled(path, row, stat) is None):
                wanted.append(path)
        return self.exiftool.snapshots(wanted) if len(wanted) > 1 else {}

    def plan(self, path: Path, read: MetadataSnapshot | None = None) -> Decision:
        """What ``path`` needs. ``read``: its metadata as :meth:`read_ahead` found it, used while the
        photo and its sidecar are unchanged since."""
        if os.path.islink(path):
            # Writing through a link would change a file that may lie outside every folder phototag was
            # given, and replacing the link would turn it into a copy. A target inside the library is
            # walked (and captioned) under its own name anyway.
            return Decision(path, Outcome(path, SYMLINK, reason=symlink_reason(path)))
        if not utf8_name(path):
            # The index keeps paths as text: such a name cannot have a row, so it fails here, unread and
            # untouched, instead of stopping the run at the index.
            return Decision(path, Outcome(path, FAILED_OUTCOME, reason=NOT_UTF8))
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return Decision(path)  # gone since it was queued: nothing to do
        row = self.index.get(path)
        if row is not None and (settled := self._settled(path, row, stat)) is not None:
            return Decision(path, settled)
        try:
            digest = content_hash(path)
        except OSError as exc:
            return Decision(path, Outcome(path, FAILED_OUTCOME, reason=f"cannot read file: {exc.strerror or exc}"))
        decision = Decision(path, row_id=row.id if row is not None else None)
        if row is None and (moved := self._moved_from(digest)) is not None:
            if moved.status != MISSING:
                reason = f"moved from {moved.path}"
                return Decision(
                    path,
                    Outcome(path, MOVED, caption=moved.caption, reason=reason),
                    row_id=moved.id,
                    changes={"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
                )
            row, decision.row_id = moved, moved.id  # moved while it was missing: the row follows the photo
        if row is not None and row.status == MISSING:
            returned = self._returned(row, path, stat, digest, decision)
            if returned.outcome is not None:
                return returned
        keep_restored = row is not None and row.status == RESTORED and not self.include_restored
        if (
            row is not None
            and row.content_hash == digest
            and ((row.status == FAILED and not self._retry(row)) or keep_restored)
        ):
            return self._skip(decision, row, stat, digest)
        try:
            if read is not None and self._still_good(read, path):
                snapshot = read
            else:
                snapshot = self.exiftool.snapshot(path)
        except MetadataError as exc:
            decision.task = Task(
                path,
                stat.st_size,
                stat.st_mtime_ns,
                digest,
                ExistingMetadata(None, (), {}),
                reason=str(exc),
                transient=exc.transient,
            )
            decision.pending = True
            return decision
        existing = snapshot.existing
        task = decision.task = Task(path, stat.st_size, stat.st_mtime_ns, digest, existing, snapshot=snapshot)
        ours = row is not None and row.caption is not None and existing.description == row.caption
        if ours and row is not None:
            same_model = row.caption_source == SOURCE_HUMAN or (
                row.model_name == self.model.name and (row.prompt or "") == self.model.prompt
            )
            if row.status == PENDING:
                task.caption, task.source, task.confirm_only = row.caption, row.caption_source or SOURCE_MODEL, True
                task.keywords = tuple(row.keywords.split())
                return decision
            if same_model and not self.overwrite:
                decision.task = None
                return self._skip(decision, row, stat, digest)
        if row is not None and not ours and self._planned_and_unwritten(row, digest, existing):
            # a crash came between committing this caption and writing the file: write it, no new inference
            task.caption, task.source, task.keywords = row.caption, SOURCE_MODEL, tuple(row.keywords.split())
            return decision
        if existing.description and not ours and not self.overwrite:
            task.caption, task.source = existing.description, SOURCE_HUMAN
            task.keywords = existing.keywords
        decision.pending = True
        return decision

    def _settled(self, path: Path, row: Photo, stat: os.stat_result) -> Outcome | None:
        """The skip of a photo unchanged since its row was written, decided before anything is read;
        None when it needs planning."""
        if not _unchanged(row, stat):
            return None
        if row.status == DONE or (row.status == FAILED and not self._retry(row)):
            return Outcome(path, SKIPPED, caption=row.caption)
        # `phototag restore` put it back: it stays so while unchanged (its row's size, mtime and hash are
        # those after the restore), unless asked for; a person's later edit makes it a photo like any other
        if row.status == RESTORED and not self.include_restored:
            return Outcome(path, SKIPPED, reason="restored")
        return None

    def _still_good(self, read: MetadataSnapshot, path: Path) -> bool:
        """Whether an earlier read is this photo's now: the same photo and the same sidecar (with
        ``sidecar_naming = "base"`` which photo owns ``IMG_1.xmp`` depends on the folder), both unchanged."""
        return (read.photo, read.sidecar) == (Path(path), self.exiftool.sidecar_for(Path(path))) and read.current()

    def _retry(self, row: Photo) -> bool:
        """Try a failed photo again: always with --retry-failed, else after a transient failure (disk
        full, I/O error, exiftool died) while it has failed fewer than MAX_TRIES times in a row."""
        return self.retry_failed or (row.failure_kind == TRANSIENT and (row.tries or 0) < MAX_TRIES)

    @staticmethod
    def _skip(decision: Decision, row: Photo, stat: os.stat_result, digest: str) -> Decision:
        """Nothing to do; the row learns the file's size, mtime and fingerprint where they changed."""
        decision.outcome = Outcome(decision.path, SKIPPED, caption=row.caption)
        if (row.size, row.mtime_ns, row.content_hash) != (stat.st_size, stat.st_mtime_ns, digest):
            decision.changes.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns, content_hash=digest)
        return decision

    def _planned_and_unwritten(self, row: Photo, digest: str, existing: ExistingMetadata) -> bool:
        """A pending row holding a model caption for exactly this content (same model and prompt)."""
        return (
            row.status == PENDING
            and bool(row.caption)
            and row.caption_source == SOURCE_MODEL
            and row.content_hash == digest
            and row.model_name == self.model.name
            and (row.prompt or "") == self.model.prompt
            and (not existing.description or self.overwrite)
        )

    def _returned(self, row: Photo, path: Path, stat: os.stat_result, digest: str, decision: Decision) -> Decision:
        """A photo marked missing is on disk again, at ``path`` (its own, or where it was moved while
        missing). Its row comes back with caption, source and original metadata untouched. If the photo
        still carries the row's caption, the row is done again without inference (the decision has an
        outcome); else the row is planned as usual, as failed (it had failed) or pending, so a caption
        phototag wrote is never taken for a person's and the original metadata is never replaced."""
        try:
            description = self.exiftool.read(path).description
        except MetadataError:
            description = None  # the usual planning reads it again and records why it failed
        ours = row.caption is not None and description == row.caption
        status = DONE if ours else (FAILED if row.failure_reason else PENDING)
        values = {
            "path": str(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "content_hash": digest,
            "status": status,
            "missing_since": None,
        }
        decision.changes.update(values)
        if ours:
            if row.path == str(path):
                decision.outcome = Outcome(path, RETURNED, caption=row.caption, reason="back on disk")
            else:
                decision.outcome = Outcome(path, MOVED, caption=row.caption, reason=f"moved from {row.path}")
            return decision
        for key, value in values.items():
            setattr(row, key, value)  # plan on as if the row were already back
        return decision

    def _moved_from(self, digest: str) -> Photo | None:
        with self.index.session() as session:
            candidates = session.scalars(
                select(Photo).where(Photo.content_hash == digest, Photo.status.in_((DONE, MISSING, RESTORED)))
            ).all()
        for candidate in candidates:
            if not os.path.exists(candidate.path):
                return candidate
        return None


NOT_UTF8 = (
    "its name is not valid UTF-8 (an old camera's or a Windows share's encoding): rename it to UTF-8 "
    "to caption it (e.g. convmv -f latin1 -t utf8)"
)


def utf8_name(path: Path) -> bool:
    """Whether ``path`` is valid UTF-8 (Python holds other bytes of a file name as lone surrogates)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unchanged(row: Photo, stat: os.stat_result) -> bool:
    return row.size == stat.st_size and row.mtime_ns == stat.st_mtime_ns


def symlink_reason(path: Path) -> str:
    """One line on why a link is skipped, naming where it points."""
    try:
        target = os.path.realpath(path, strict=True)
    except OSError:
        return "a symbolic link whose target cannot be reached: skipped"
    return f"a symbolic link to {target}: skipped (phototag never writes through a link; caption the file itself)"
