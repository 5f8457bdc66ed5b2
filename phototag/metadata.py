"""Photo metadata: read a photo's existing caption, write a new one safely, restore the old one.

The one room the rest of phototag calls to touch photo files: :class:`ExifToolSession`, built from the
``[metadata]`` settings. Everything goes through a single long-running exiftool process
(:mod:`phototag.exiftool`); nothing re-encodes an image. The work is done in the rooms beside it:

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from phototag.exiftool import ExifTool, MetadataError
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


class ExifToolSession:
    """Read, write and restore photos' captions through one exiftool process; thread-safe.

    ``mode``: "embed" writes into the photo (RAW and refused formats get a sidecar), "sidecar" never
    touches originals, "both" embeds and writes the sidecar. ``sidecar_naming``: see :func:`sidecar_for`.
    ``keep_mtime``: a photo written into keeps its modification time (off by default: backup tools,
    sync clients and file watchers rely on the mtime to notice a changed file).
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        sidecar_naming: str = "ext",
        mode: str = "embed",
        keep_mtime: bool = False,
    ) -> None:
        if sidecar_naming not in SIDECAR_NAMINGS:
            raise ValueError(f"sidecar_naming must be one of {SIDECAR_NAMINGS}, not {sidecar_naming!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.sidecar_naming = sidecar_naming
        self.mode = mode
        self.keep_mtime = keep_mtime
        self.exiftool = ExifTool(executable)
        self.executable = self.exiftool.executable
        self._lock = self.exiftool.lock  # one lock: a write's reads, edit and check are one unit

    @classmethod
    def from_settings(cls, settings: MetadataSettings) -> ExifToolSession:
        """The session the ``[metadata]`` config asks for (every command that writes uses this)."""
        return cls(
            settings.exiftool or None,
            sidecar_naming=settings.sidecar_naming,
            mode=settings.mode,
            keep_mtime=settings.keep_mtime,
        )

    def sidecar_for(self, photo: Path) -> Path:
        return sidecar_for(photo, self.sidecar_naming)

    # -- the exiftool process -----------------------------------------------------------------------

    def close(self) -> None:
        self.exiftool.close()

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
        return self.exiftool.version()

    # -- reading ----------------------------------------------------------------------------------------

    def preview(self, photo: Path) -> bytes | None:
        """The largest embedded JPEG preview of a RAW file (what cameras show), or None."""
        tags = ["-JpgFromRaw", "-PreviewImage", "-OtherImage", "-ThumbnailImage"]
        stdout, _, _ = self.exiftool.run(["-j", "-b", *tags, self.exiftool.arg(Path(photo))])
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
        photo = Path(photo)
        file_tags, sidecar_tags = self._read_owned(photo)
        return existing_metadata(photo, file_tags, self.sidecar_for(photo), sidecar_tags)

    def _read_owned(self, photo: Path) -> tuple[dict, dict | None]:
        if not photo.is_file():
            raise MetadataError(f"{photo}: no such file")
        sidecar = self.sidecar_for(photo)
        paths = [photo, sidecar] if sidecar.is_file() else [photo]
        records = self.exiftool.read_json(paths, READ_TAGS)
        file_tags = records[0]
        check_image(photo, file_tags)
        sidecar_tags = None
        if len(records) > 1 and "ExifTool:Error" not in records[1]:
            sidecar_tags = records[1]
        return file_tags, sidecar_tags

    # -- writing ----------------------------------------------------------------------------------------

    def write(self, photo: Path, caption: str, keywords: Sequence[str] = ()) -> WriteResult:
        """Write ``caption`` (and merge ``keywords``) into ``photo`` or its sidecar, per the session mode.

        Raises MetadataError (one line) on failure; the photo is then byte-identical to before.
        """
        caption = normalize_caption(caption)
        wanted = normalize_keywords(keywords)
        photo = Path(photo)
        if photo.is_symlink():
            # The target may lie outside every folder phototag was given; replacing the link would
            # turn it into a copy. The pipeline skips links before they get here.
            raise MetadataError(f"{photo}: a symbolic link; phototag never writes through a link")
        with self._lock:
            file_tags, sidecar_tags = self._read_owned(photo)
            existing_keywords = choose_keywords(file_tags)
            if self.mode == "sidecar" or is_raw(photo):
                return self._write_sidecar(photo, caption, wanted, existing_keywords, sidecar_tags)
            # "both" writes the sidecar first, so a failure after the photo changed cannot happen
            side = None
            if self.mode == "both":
                side = self._write_sidecar(photo, caption, wanted, existing_keywords, sidecar_tags)
            try:
                self._embed(photo, caption, wanted, file_tags)
            except _Unwritable as exc:
                reason = f"{photo.name}: {exc}"
                if side is None:
                    side = self._write_sidecar(photo, caption, wanted, existing_keywords, sidecar_tags)
                return WriteResult("sidecar", side.target, fallback_reason=reason)
            return WriteResult("embedded", photo, also_written=(side.target,) if side else ())

    def _embed(self, photo: Path, caption: str, keywords: list[str], tags: Mapping[str, object]) -> None:
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

        safe_edit(self.exiftool, photo, args, check, rejected=_Unwritable, keep_mtime=self.keep_mtime)

    def _write_sidecar(
        self,
        photo: Path,
        caption: str,
        keywords: list[str],
        photo_keywords: list[str],
        sidecar_tags: Mapping[str, object] | None,
    ) -> WriteResult:
        target = self.sidecar_for(photo)
        write_sidecar(self.exiftool, target, photo, caption, keywords, photo_keywords, sidecar_tags)
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
        with self._lock:
            if not photo.is_file():
                raise MetadataError(f"{photo}: no such file")
            restored = False
            if file_part.get("tags") is not None:
                tags, state = as_mapping(file_part["tags"]), as_mapping(file_part.get("state"))
                restored = restore_photo(self.exiftool, photo, tags, state, keep_mtime=self.keep_mtime)
            side = recorded_sidecar(photo, file_part, side_part)
            action = restore_sidecar(self.exiftool, side, side_part) if side is not None else None
        return RestoreResult(restored, action, side if action else None)
