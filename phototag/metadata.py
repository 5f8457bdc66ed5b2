"""Photo metadata: read a photo's existing caption, write a new one safely, restore the old one.

The one room the rest of phototag calls to touch photo files: :class:`ExifToolSession`, built from the
``[metadata]`` settings. Everything goes through long-running exiftool processes, a pool of them
(:mod:`phototag.exiftool`), so reads and writes of different photos run side by side; two writes of
one file (a photo or its sidecar) never do. Nothing re-encodes an image. A read made
to plan a photo (:meth:`ExifToolSession.snapshot`) serves its write while the photo and its sidecar
are unchanged (same inode, size, mtime and ctime); else the write reads them again. The work is
done in the rooms beside it:

* :mod:`phototag.mwg`: which tags hold descriptions and keywords, what a read believes, junk
  descriptions, and the arguments that embed a caption;
* :mod:`phototag.safe_write`: the temp copy that is edited, verified, flushed and atomically swapped in,
  and the cleanup of temp files a crash left;
* :mod:`phototag.sidecars`: XMP sidecars (RAW files, refused formats, read-only photos, "sidecar" mode);
* :mod:`phototag.restore`: putting back what a photo said before phototag's first write.

``mode``: "embed" writes into the photo (RAW and refused formats get a sidecar), "sidecar" never
touches originals, "both" embeds and writes the sidecar.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from phototag.exiftool import ExifTool, ExifToolPool, MetadataError
from phototag.mwg import (
    IF_PRESENT_TAGS,
    OWNED_TAGS,
    READ_TAGS,
    ExistingMetadata,
    as_mapping,
    check_image,
    choose_keywords,
    embed_args,
    existing_metadata,
    if_present_values,
    normalize_caption,
    normalize_keywords,
)
from phototag.restore import RestoreResult, recorded_sidecar, restore_photo, restore_sidecar
from phototag.safe_write import caption_problems, check_folder_writable, dropped_keywords, safe_edit, unexpected_changes
from phototag.sidecars import SIDECAR_NAMINGS, is_raw, sidecar_for, write_sidecar

if TYPE_CHECKING:
    from phototag.config import MetadataSettings

MODES = ("embed", "sidecar", "both")


class _Unwritable(Exception):
    """ExifTool cannot embed into this file (refused format, partial write): use a sidecar."""


@dataclass(frozen=True)
class WriteResult:
    """Where a caption went. ``kind`` is "embedded" or "sidecar"; ``target`` the file written."""

    kind: str
    target: Path
    also_written: tuple[Path, ...] = ()  # mode "both": the sidecar written beside the photo
    fallback_reason: str | None = None  # why an embed fell back to a sidecar


Stamp = tuple[int, int, int, int]  # a file's inode, size, mtime and ctime (ns)


def file_stamp(path: Path) -> Stamp | None:
    """What tells a file changed since it was read (None: no such file). Not the device number: another
    machine mounting the same share (``--ray-io``) sees its own, for the same unchanged file."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@dataclass(frozen=True)
class MetadataSnapshot:
    """A photo's metadata as one read found it (and its sidecar's), with both files' stamps taken
    before that read: a write reuses it only while the stamps still match."""

    photo: Path
    sidecar: Path
    file_tags: Mapping[str, object]
    sidecar_tags: Mapping[str, object] | None
    existing: ExistingMetadata
    stamps: tuple[Stamp | None, Stamp | None]

    @classmethod
    def of(
        cls,
        photo: Path,
        sidecar: Path,
        file_tags: Mapping[str, object],
        sidecar_tags: Mapping[str, object] | None,
        stamps: tuple[Stamp | None, Stamp | None],
    ) -> MetadataSnapshot:
        existing = existing_metadata(photo, file_tags, sidecar, sidecar_tags)
        return cls(photo, sidecar, file_tags, sidecar_tags, existing, stamps)

    def current(self) -> bool:
        return (file_stamp(self.photo), file_stamp(self.sidecar)) == self.stamps


def _owned(photo: Path, records: Sequence[dict]) -> tuple[dict, dict | None]:
    """One read's records of a photo and, when it was read too, its sidecar -> the photo's tags (a
    MetadataError when it is not an image) and the sidecar's (None when exiftool could not read it)."""
    check_image(photo, records[0])
    sidecar_tags = records[1] if len(records) > 1 and "ExifTool:Error" not in records[1] else None
    return records[0], sidecar_tags


class _FileLocks:
    """Files being written: a write waits until none of its files (photo, sidecar) is another's."""

    def __init__(self) -> None:
        self._busy: set[str] = set()
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, *paths: Path) -> Iterator[None]:
        keys = {os.path.abspath(path) for path in paths}
        with self._changed:
            while self._busy & keys:
                self._changed.wait()
            self._busy |= keys
        try:
            yield
        finally:
            with self._changed:
                self._busy -= keys
                self._changed.notify_all()


class ExifToolSession:
    """Read, write and restore photos' captions through a pool of exiftool processes; thread-safe.

    ``mode``: "embed" writes into the photo (RAW and refused formats get a sidecar), "sidecar" never
    touches originals, "both" embeds and writes the sidecar. ``sidecar_naming``: see :func:`sidecar_for`.
    ``keep_mtime``: a photo written into keeps its modification time (off by default: backup tools,
    sync clients and file watchers rely on the mtime to notice a changed file). ``processes``: how
    many exiftool processes may run at once (``[pipeline] exiftool_processes``; started as needed).
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        sidecar_naming: str = "ext",
        mode: str = "embed",
        keep_mtime: bool = False,
        processes: int = 1,
    ) -> None:
        if sidecar_naming not in SIDECAR_NAMINGS:
            raise ValueError(f"sidecar_naming must be one of {SIDECAR_NAMINGS}, not {sidecar_naming!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.sidecar_naming = sidecar_naming
        self.mode = mode
        self.keep_mtime = keep_mtime
        self.pool = ExifToolPool(executable, processes)
        self.exiftool: ExifTool = self.pool.primary  # the one a single-threaded caller always gets
        self.executable = self.pool.executable
        self._writing = _FileLocks()

    @property
    def processes(self) -> int:
        """How many exiftool processes may run at once."""
        return self.pool.size

    @classmethod
    def from_settings(cls, settings: MetadataSettings, processes: int = 1) -> ExifToolSession:
        """The session the ``[metadata]`` config asks for (every command that writes uses this)."""
        return cls(
            settings.exiftool or None,
            sidecar_naming=settings.sidecar_naming,
            mode=settings.mode,
            keep_mtime=settings.keep_mtime,
            processes=processes,
        )

    def sidecar_for(self, photo: Path) -> Path:
        return sidecar_for(photo, self.sidecar_naming)

    # -- the exiftool process -----------------------------------------------------------------------

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> ExifToolSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort when a caller forgets close()
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def version(self) -> str:
        with self.pool.borrow() as tool:
            return tool.version()

    # -- reading ----------------------------------------------------------------------------------------

    def preview(self, photo: Path) -> bytes | None:
        """The largest embedded JPEG preview of a RAW file (what cameras show), or None."""
        tags = ["-JpgFromRaw", "-PreviewImage", "-OtherImage", "-ThumbnailImage"]
        with self.pool.borrow() as tool:
            stdout, _, _ = tool.run(["-j", "-b", *tags, tool.arg(Path(photo))])
        try:
            record = (json.loads(stdout) if stdout.strip() else [{}])[0]
        except (json.JSONDecodeError, IndexError):
            return None
        best: bytes | None = None
        for key, value in record.items():
            if key == "SourceFile" or not isinstance(value, str) or not value.startswith("base64:"):
                continue
            data = base64.b64decode(value[len("base64:") :])
            if data[:2] == b"\xff\xd8" and (best is None or len(data) > len(best)):
                best = data
        return best

    def read(self, photo: Path) -> ExistingMetadata:
        """Existing description, keywords and raw owned values of ``photo`` (and its sidecar): one call."""
        return self.snapshot(photo).existing

    def snapshot(self, photo: Path) -> MetadataSnapshot:
        """:meth:`read`, kept with the files' stamps, so the photo's write can reuse it (one call)."""
        photo = Path(photo)
        sidecar = self.sidecar_for(photo)
        stamps = (file_stamp(photo), file_stamp(sidecar))  # before the read: a change during it shows
        with self.pool.borrow() as tool:
            file_tags, sidecar_tags = self._read_owned(tool, photo)
        return MetadataSnapshot.of(photo, sidecar, file_tags, sidecar_tags, stamps)

    def snapshots(self, photos: Sequence[Path]) -> dict[Path, MetadataSnapshot]:
        """:meth:`snapshot` of several photos in one exiftool call, by photo.

        One call for a few photos costs exiftool less per photo than a call each: the per-call work and
        the caches warmed by the first file are shared (on the corpus, with other work between calls as
        in the pipeline, ~7.0 ms of exiftool CPU a photo alone, ~5.5 in eights). Best effort: a photo
        left out (gone, not an image, its read out of step) gets its own :meth:`snapshot` later, which
        says why; a read that fails as a whole returns nothing."""
        plan: list[tuple[Path, Path, tuple[Stamp | None, Stamp | None], bool]] = []
        paths: list[Path] = []
        for photo in map(Path, photos):
            sidecar = self.sidecar_for(photo)
            stamps = (file_stamp(photo), file_stamp(sidecar))
            has_sidecar = sidecar.is_file()
            if stamps[0] is None:
                continue
            plan.append((photo, sidecar, stamps, has_sidecar))
            paths += [photo, sidecar] if has_sidecar else [photo]
        if not paths:
            return {}
        with self.pool.borrow() as tool:
            try:
                records = tool.read_json(paths, READ_TAGS)
            except MetadataError:
                return {}
            names = [os.fsdecode(tool.arg(path)) for path in paths]
        if [record.get("SourceFile") for record in records] != names:
            return {}  # out of step with what was asked: each photo reads alone instead
        found: dict[Path, MetadataSnapshot] = {}
        position = 0
        for photo, sidecar, stamps, has_sidecar in plan:
            count = 2 if has_sidecar else 1
            own, position = records[position : position + count], position + count
            try:
                file_tags, sidecar_tags = _owned(photo, own)
            except MetadataError:
                continue  # not an image: its own read says so
            found[photo] = MetadataSnapshot.of(photo, sidecar, file_tags, sidecar_tags, stamps)
        return found

    def _read_owned(self, tool: ExifTool, photo: Path) -> tuple[dict, dict | None]:
        if not photo.is_file():
            raise MetadataError(f"{photo}: no such file")
        sidecar = self.sidecar_for(photo)
        paths = [photo, sidecar] if sidecar.is_file() else [photo]
        return _owned(photo, tool.read_json(paths, READ_TAGS))

    # -- writing ----------------------------------------------------------------------------------------

    def write(
        self, photo: Path, caption: str, keywords: Sequence[str] = (), *, snapshot: MetadataSnapshot | None = None
    ) -> WriteResult:
        """Write ``caption`` (and merge ``keywords``) into ``photo`` or its sidecar, per the session mode.

        ``snapshot``: the read that planned this write; used instead of reading again while the photo
        and its sidecar are unchanged since. Raises MetadataError (one line) on failure; the photo is
        then byte-identical to before.
        """
        caption = normalize_caption(caption)
        wanted = normalize_keywords(keywords)
        photo = Path(photo)
        if photo.is_symlink():
            # The target may lie outside every folder phototag was given; replacing the link would
            # turn it into a copy. The pipeline skips links before they get here.
            raise MetadataError(f"{photo}: a symbolic link; phototag never writes through a link")
        # the file lock before the process: a write waiting for its photo holds no exiftool
        sidecar = self.sidecar_for(photo)
        with self._writing.hold(photo, sidecar), self.pool.borrow() as tool:
            if snapshot is not None and (snapshot.photo, snapshot.sidecar) == (photo, sidecar) and snapshot.current():
                file_tags, sidecar_tags = dict(snapshot.file_tags), snapshot.sidecar_tags
            else:
                file_tags, sidecar_tags = self._read_owned(tool, photo)
            existing_keywords = choose_keywords(file_tags)
            if self.mode == "sidecar" or is_raw(photo):
                return self._write_sidecar(tool, photo, caption, wanted, existing_keywords, sidecar_tags)
            # "both" writes the sidecar first, so a failure after the photo changed cannot happen
            side = None
            if self.mode == "both":
                side = self._write_sidecar(tool, photo, caption, wanted, existing_keywords, sidecar_tags)
            try:
                self._embed(tool, photo, caption, wanted, file_tags)
            except _Unwritable as exc:
                reason = f"{photo.name}: {exc}"
                if side is None:
                    side = self._write_sidecar(tool, photo, caption, wanted, existing_keywords, sidecar_tags)
                return WriteResult("sidecar", side.target, fallback_reason=reason)
            return WriteResult("embedded", photo, also_written=(side.target,) if side else ())

    def _embed(
        self, tool: ExifTool, photo: Path, caption: str, keywords: list[str], tags: Mapping[str, object]
    ) -> None:
        info = os.stat(photo)
        if not os.access(photo, os.W_OK) or not info.st_mode & 0o222:
            raise _Unwritable("the photo is read-only")
        if info.st_nlink > 1:
            raise _Unwritable(f"the photo has {info.st_nlink} hard links; replacing it would split them")
        check_folder_writable(photo)
        args, wrote_iptc = embed_args(caption, keywords, tags)
        extra = if_present_values(caption, keywords, tags)
        owned = set(OWNED_TAGS) - (set(IF_PRESENT_TAGS) - set(extra))

        def check(before: Mapping[str, object], after: Mapping[str, object]) -> str | None:
            problems = caption_problems(after, caption, keywords, iptc=wrote_iptc, expected=extra)
            if problems:
                return "partial write: " + "; ".join(problems)
            changed = dropped_keywords(before, after) + unexpected_changes(before, after, owned)
            if changed:
                return "writing would change other tags: " + "; ".join(changed[:3])
            return None

        safe_edit(tool, photo, args, check, rejected=_Unwritable, keep_mtime=self.keep_mtime)

    def _write_sidecar(
        self,
        tool: ExifTool,
        photo: Path,
        caption: str,
        keywords: list[str],
        photo_keywords: list[str],
        sidecar_tags: Mapping[str, object] | None,
    ) -> WriteResult:
        target = self.sidecar_for(photo)
        write_sidecar(tool, target, photo, caption, keywords, photo_keywords, sidecar_tags)
        return WriteResult("sidecar", target)

    # -- restoring --------------------------------------------------------------------------------------

    def restore(self, photo: Path, original: Mapping[str, object]) -> RestoreResult:
        """Put back the description/keyword values ``original`` (``ExistingMetadata.original``, as the
        index stored it before phototag's first write) recorded for ``photo`` and its sidecar.

        Only values that differ are written (a photo phototag never touched is not rewritten), through
        the same verified temp-copy path as a write; a field that was absent is removed again, an EXIF
        or XMP block phototag created disappears with it. A sidecar phototag created is deleted, or, if
        another tool has added to it since, stripped of phototag's values; a sidecar that existed before
        gets its own values back. Raises MetadataError (one line); the photo is then untouched.
        """
        photo = Path(photo)
        if photo.is_symlink():
            photo = photo.resolve()
        file_part = as_mapping(original.get("file"))
        side_part = as_mapping(original.get("sidecar"))
        side = recorded_sidecar(photo, file_part, side_part)
        with self._writing.hold(photo, *([side] if side is not None else [])), self.pool.borrow() as tool:
            if not photo.is_file():
                raise MetadataError(f"{photo}: no such file")
            restored = False
            if file_part.get("tags") is not None:
                tags, state = as_mapping(file_part["tags"]), as_mapping(file_part.get("state"))
                restored = restore_photo(tool, photo, tags, state, keep_mtime=self.keep_mtime)
            action = restore_sidecar(tool, side, side_part) if side is not None else None
        return RestoreResult(restored, action, side if action else None)
