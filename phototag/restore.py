"""Restore: put back the descriptions and keywords a photo had before phototag's first write.

:func:`phototag.mwg.existing_metadata` records the owned values (and which blocks existed) before the
first write; the index keeps them. A restore plans the ExifTool arguments that bring back exactly those
values (:func:`restore_args`): only fields that differ are written, a field that was absent is removed,
IPTC phototag re-encoded to UTF-8 goes back to its character set, an EXIF block phototag created
disappears. It goes through the same verified temp copy as a write (:func:`phototag.safe_write.safe_edit`),
checked by :func:`restore_problems`. A sidecar phototag created is deleted, or stripped of phototag's
values when another tool has added to it since; one that existed before gets its own values back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from phototag.exiftool import ExifTool, MetadataError, escape_value
from phototag.mwg import (
    EXIF_DESCRIPTION,
    IPTC_APP_VERSION,
    IPTC_CHARSET,
    IPTC_DIGEST,
    IPTC_ENVELOPE,
    IPTC_WRITABLE_TYPES,
    LIST_TAGS,
    READ_TAGS,
    RESTORABLE_TAGS,
    SIDECAR_OWNED_TAGS,
    XMP_DESCRIPTION,
    XMP_SUBJECT,
    XMP_TOOLKIT,
    as_list,
    as_mapping,
    as_text,
    check_image,
    declares_utf8,
    has_iptc,
)
from phototag.safe_write import (
    INCIDENTAL_TAGS,
    VOLATILE_GROUPS,
    check_folder_writable,
    fsync_dir,
    safe_edit,
    short_repr,
    unexpected_changes,
)
from phototag.sidecars import sidecar_path

# IFD0 tags ExifTool adds when it creates an EXIF block (EXIF requires them).
_MANDATORY_EXIF_TAGS = frozenset(
    {"IFD0:XResolution", "IFD0:YResolution", "IFD0:ResolutionUnit", "IFD0:YCbCrPositioning"}
)
_EXIF_GROUPS = frozenset({"IFD0", "IFD1", "ExifIFD", "GPS", "InteropIFD", "SubIFD"})


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did. ``photo``: the photo's own values were put back. ``sidecar``: "removed"
    (phototag created it), "stripped" (phototag created it, another tool added to it since: only
    phototag's values were removed), "restored" (it existed before: its values were put back), or None."""

    photo: bool
    sidecar: str | None = None
    sidecar_path: Path | None = None

    @property
    def changed(self) -> bool:
        return self.photo or self.sidecar is not None


def _same_value(name: str, a: object, b: object) -> bool:
    if name in LIST_TAGS:
        return as_list(a) == as_list(b)
    return as_text(a) == as_text(b)


def _assign(name: str, value: object) -> list[str]:
    """Arguments that make tag ``name`` hold ``value`` exactly (None: absent; "": present but empty)."""
    tag = f"{name}-x-default" if name == XMP_DESCRIPTION else name  # other languages stay
    if value is None:
        return [f"-{tag}="]
    if name in LIST_TAGS:
        items = as_list(value)
        return [f"-{tag}={escape_value(v)}" for v in items] if items else [f"-{tag}="]
    text = as_text(value) or ""
    return [f"-{tag}={escape_value(text)}"] if text else [f"-{tag}^="]


def restore_args(
    original: Mapping[str, object], state: Mapping[str, object], current: Mapping[str, object]
) -> tuple[list[str], dict[str, object]]:
    """ExifTool arguments that put the ``original`` description/keyword values back into a file whose
    tags are now ``current`` (both as :meth:`ExifToolSession.read` records them).

    Returns the arguments (empty: nothing differs) and, per restored tag, the value it must read back
    as (None: absent). IPTC that phototag re-encoded to UTF-8 is encoded back to its original
    character set, and an IPTCDigest phototag added is removed again (one it refreshed is refreshed).
    """
    iptc_ok = has_iptc(current) and str(current.get("File:FileType")) in IPTC_WRITABLE_TYPES
    targets = {
        name: original.get(name)
        for name in RESTORABLE_TAGS
        if (iptc_ok or not name.startswith("IPTC:")) and not _same_value(name, original.get(name), current.get(name))
    }
    args: list[str] = []
    if any(name.startswith("XMP-") for name in targets) and "xmp_toolkit" in state:
        if not _same_value(XMP_TOOLKIT, state["xmp_toolkit"], current.get(XMP_TOOLKIT)):
            targets[XMP_TOOLKIT] = state["xmp_toolkit"]  # ExifTool stamped itself on the write
    iptc_changed = any(name.startswith("IPTC:") for name in targets)
    if iptc_ok and original.get(IPTC_CHARSET) != current.get(IPTC_CHARSET):
        # Copy the IPTC onto itself under the original character set (ExifTool FAQ 10, backwards).
        args += ["-tagsFromFile", "@", "-IPTC:all", f"--{IPTC_CHARSET}", f"--{IPTC_ENVELOPE}"]
        args += [f"--{name}" for name in targets if name.startswith("IPTC:")]
        targets[IPTC_CHARSET] = original.get(IPTC_CHARSET)
        iptc_changed = True
    for name, value in targets.items():
        args += _assign(name, value)
    if iptc_changed:
        # ExifTool adds EnvelopeRecordVersion whenever it rewrites record 1, and drops record 2 when
        # only ApplicationRecordVersion is left in it: undo the one, keep the other.
        if state.get("iptc_envelope") is None and current.get(IPTC_ENVELOPE) is not None:
            args.append(f"-{IPTC_ENVELOPE}=")
        if state.get("iptc_app_version") is not None:
            args += _assign(IPTC_APP_VERSION, state["iptc_app_version"])
        digest = original.get(IPTC_DIGEST)
        if digest is None and current.get(IPTC_DIGEST) is not None:
            args.append(f"-{IPTC_DIGEST}=")
        elif digest is not None and digest == state.get("iptc_digest"):
            args.append(f"-{IPTC_DIGEST}=new")  # it was in sync before: keep it so
    return (["-ex", *args] if args else []), targets


def restore_problems(after: Mapping[str, object], targets: Mapping[str, object]) -> list[str]:
    """Restored tags that do not read back as they should."""
    problems = []
    for name, want in targets.items():
        got = after.get(name)
        if name == IPTC_CHARSET:
            if declares_utf8({IPTC_CHARSET: want}) != declares_utf8(after) or (want is None) != (got is None):
                problems.append(f"{name} reads back as {got!r}")
        elif not _same_value(name, want, got):
            problems.append(f"{name} reads back as {short_repr(got)}, not {short_repr(want)}")
    return problems


def _created_exif_only(record: Mapping[str, object]) -> bool:
    """True when a file's EXIF holds nothing but phototag's fields and the tags ExifTool adds with a
    new EXIF block: the EXIF phototag itself created, safe to remove on restore."""
    exif = {name for name in record if name.split(":")[0] in _EXIF_GROUPS}
    return bool(exif) and exif <= (set(RESTORABLE_TAGS) | _MANDATORY_EXIF_TAGS)


def _phototag_only_sidecar(record: Mapping[str, object]) -> bool:
    """True when a sidecar holds nothing but what phototag writes into a new one."""
    ours = {XMP_DESCRIPTION, XMP_SUBJECT} | INCIDENTAL_TAGS
    return all(name.split(":")[0] in VOLATILE_GROUPS or name in ours for name in record)


def recorded_sidecar(photo: Path, file_part: Mapping[str, object], side_part: Mapping[str, object]) -> Path | None:
    """The sidecar recorded before the first write, moved along if the photo has moved since (the
    index follows moves). The recorded name wins over today's ``sidecar_naming``."""
    recorded = side_part.get("path")
    if not isinstance(recorded, str) or not recorded:
        return None
    side, was = Path(recorded), Path(str(file_part.get("path") or photo))
    if was == photo:
        return side
    if side.name == was.name + ".xmp":
        return sidecar_path(photo, "ext")
    if side.name == was.stem + ".xmp":
        return sidecar_path(photo, "base")
    return None


def restore_photo(
    exiftool: ExifTool, photo: Path, original: Mapping[str, object], state: Mapping[str, object], *, keep_mtime: bool
) -> bool:
    """Put the ``original`` owned values back into ``photo`` (``state``: the blocks it had); False when
    nothing differs (the photo is then not rewritten)."""
    current = exiftool.read_json([photo], READ_TAGS)[0]
    check_image(photo, current)
    args, targets = restore_args(original, state, current)
    if not args:
        return False
    owned = set(RESTORABLE_TAGS) | {IPTC_CHARSET, IPTC_DIGEST, IPTC_ENVELOPE, IPTC_APP_VERSION}
    if not state.get("exif", True) and original.get(EXIF_DESCRIPTION) is None:
        # The EXIF block may be phototag's own creation: drop it if nothing else lives there.
        if _created_exif_only(exiftool.read_json([photo], everything=True)[0]):
            args.append("-EXIF:all=")
            owned |= _MANDATORY_EXIF_TAGS

    def check(before: Mapping[str, object], after: Mapping[str, object]) -> str | None:
        problems = restore_problems(after, targets) + unexpected_changes(before, after, owned)
        return "restore check failed: " + "; ".join(problems[:3]) if problems else None

    def rejected(reason: str) -> MetadataError:
        return MetadataError(f"{photo}: not restored: {reason}")

    info = os.stat(photo)
    if not os.access(photo, os.W_OK) or not info.st_mode & 0o222:
        raise MetadataError(f"{photo}: not restored: the photo is read-only")
    if info.st_nlink > 1:
        raise MetadataError(f"{photo}: not restored: {info.st_nlink} hard links, replacing it would split them")
    check_folder_writable(photo)
    safe_edit(exiftool, photo, args, check, rejected=rejected, keep_mtime=keep_mtime)
    return True


def restore_sidecar(exiftool: ExifTool, side: Path, recorded: Mapping[str, object]) -> str | None:
    """Undo phototag's writes to sidecar ``side``; returns what was done (see :class:`RestoreResult`)."""
    if not side.is_file():
        return None  # never written, or removed since: nothing to undo (and nothing to recreate)

    def rejected(reason: str) -> MetadataError:
        return MetadataError(f"{side}: not restored: {reason}")

    if recorded.get("exists"):
        current = exiftool.read_json([side], READ_TAGS)[0]
        original = as_mapping(recorded.get("tags"))
        targets = {
            name: original.get(name)
            for name in SIDECAR_OWNED_TAGS
            if not _same_value(name, original.get(name), current.get(name))
        }
        state = as_mapping(recorded.get("state"))
        if (
            targets
            and "xmp_toolkit" in state
            and not _same_value(XMP_TOOLKIT, state["xmp_toolkit"], current.get(XMP_TOOLKIT))
        ):
            targets[XMP_TOOLKIT] = state["xmp_toolkit"]  # ExifTool stamped itself on the write
        action = "restored"
    else:
        record = exiftool.read_json([side], everything=True)[0]
        if _phototag_only_sidecar(record):
            try:
                side.unlink()
                fsync_dir(side.parent)
            except OSError as exc:
                raise MetadataError(f"{side}: not removed: {exc.strerror or exc}") from exc
            return "removed"
        targets = {name: None for name in SIDECAR_OWNED_TAGS if record.get(name) not in (None, "", [])}
        action = "stripped"
    if not targets:
        return None
    args = ["-ex"] + [arg for name, value in targets.items() for arg in _assign(name, value)]

    def check(before: Mapping[str, object], after: Mapping[str, object]) -> str | None:
        problems = restore_problems(after, targets) + unexpected_changes(before, after, SIDECAR_OWNED_TAGS)
        return "restore check failed: " + "; ".join(problems[:3]) if problems else None

    safe_edit(exiftool, side, args, check, rejected=rejected)
    return action
