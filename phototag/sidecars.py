"""XMP sidecars: which file is a photo's sidecar, and writing one.

RAW files, formats ExifTool refuses, read-only and hard-linked photos and partial writes get an XMP
sidecar beside the photo instead of an embedded caption ("sidecar" mode always does). Its name follows
``sidecar_naming`` ("ext": ``IMG_1.nef.xmp`` for darktable, digiKam, Immich; "base": ``IMG_1.xmp``
for Lightroom), and two photos sharing a base name never share one. An existing sidecar is merged,
never clobbered: other tools' tags and namespaces survive, through the same safe write as a photo.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from phototag.exiftool import ExifTool, MetadataError, escape_value
from phototag.formats import PAIRED_EXTENSIONS, is_raw_path
from phototag.mwg import SIDECAR_OWNED_TAGS, XMP_DESCRIPTION, XMP_SUBJECT, as_list, merge_keywords, missing_keywords
from phototag.safe_write import (
    caption_problems,
    check_folder_writable,
    dropped_keywords,
    safe_edit,
    unexpected_changes,
)

SIDECAR_NAMINGS = ("ext", "base")


def sidecar_path(photo: Path, naming: str = "ext") -> Path:
    """The XMP sidecar for ``photo``: ``IMG_1.nef.xmp`` ("ext": darktable, digiKam, Immich) or
    ``IMG_1.xmp`` ("base": Lightroom)."""
    photo = Path(photo)
    if naming == "ext":
        return photo.with_name(photo.name + ".xmp")
    if naming == "base":
        return photo.with_suffix(".xmp")
    raise ValueError(f"sidecar naming must be one of {SIDECAR_NAMINGS}, not {naming!r}")


# Extensions of photos that could share a base name with another photo in the same folder.
_PAIRED_EXTENSIONS = tuple(sorted(PAIRED_EXTENSIONS))


def sidecar_for(photo: Path, naming: str = "ext") -> Path:
    """The sidecar phototag uses for ``photo``: :func:`sidecar_path`, except that two photos sharing a
    base name never share a sidecar.

    With "base" naming ``IMG_1.CR2`` and ``IMG_1.JPG`` would both want ``IMG_1.xmp``. The name goes to
    one of them, chosen from the folder alone (so every run and every order agrees): the RAW file (as
    Lightroom pairs RAW+JPEG), else the first name in sorted order. The others use "ext" naming
    (``IMG_1.JPG.xmp``), which can never collide.
    """
    photo = Path(photo)
    if naming == "base" and not _owns_base_sidecar(photo):
        return sidecar_path(photo, "ext")
    return sidecar_path(photo, naming)


def _owns_base_sidecar(photo: Path) -> bool:
    siblings = _same_stem_photos(photo)
    if not siblings:
        return True
    owner = min([photo, *siblings], key=lambda p: (not is_raw(p), p.name.casefold(), p.name))
    return owner == photo


def _same_stem_photos(photo: Path) -> list[Path]:
    """Other photos in ``photo``'s folder with the same base name. Probes the known extensions (in
    lower and upper case) rather than listing the folder, which would cost O(folder) per photo."""
    try:
        own = os.stat(photo)
    except OSError:
        own = None
    found = []
    for ext in _PAIRED_EXTENSIONS:
        for variant in dict.fromkeys((ext, ext.upper())):
            candidate = photo.with_suffix(variant)
            if candidate.name == photo.name:
                continue
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if own is not None and (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
                continue  # the photo itself, on a case-insensitive file system
            if stat.S_ISREG(st.st_mode):
                found.append(candidate)
    return found


def is_raw(photo: Path) -> bool:
    return is_raw_path(photo)


def sidecar_args(caption: str, keywords: Sequence[str], tags: Mapping[str, object]) -> list[str]:
    """ExifTool arguments for an XMP sidecar whose current tags are ``tags`` (empty for a new one)."""
    args = ["-ex", f"-{XMP_DESCRIPTION}-x-default={escape_value(caption)}"]
    subject = as_list(tags.get(XMP_SUBJECT))
    added = missing_keywords(subject, keywords)
    if added:
        args += [f"-{XMP_SUBJECT}={escape_value(kw)}" for kw in subject + added]
    return args


def write_sidecar(
    exiftool: ExifTool,
    target: Path,
    photo: Path,
    caption: str,
    keywords: list[str],
    photo_keywords: list[str],
    sidecar_tags: Mapping[str, object] | None,
) -> Path:
    """Create or merge ``photo``'s XMP sidecar ``target`` through a temp copy; other tags and namespaces
    survive. ``photo_keywords``: the photo's own, which a new sidecar starts with."""
    if target.is_symlink():  # replacing it would write a file where a link was (or write through it)
        raise MetadataError(f"{target}: the sidecar is a symbolic link; not touching it")
    exists = target.is_file()
    if exists and sidecar_tags is None:
        raise MetadataError(f"{target}: existing sidecar is unreadable; not touching it")
    if not exists:
        check_folder_writable(photo)
    # A new sidecar starts with the photo's own keywords: readers that prefer the sidecar keep them.
    wanted = keywords if exists else merge_keywords(photo_keywords, keywords)

    def check(before: Mapping[str, object], after: Mapping[str, object]) -> str | None:
        problems = caption_problems(after, caption, wanted, exif=False)
        if exists:
            problems += dropped_keywords(before, after)
            problems += unexpected_changes(before, after, owned=SIDECAR_OWNED_TAGS)
        return "; ".join(problems[:3]) if problems else None

    def rejected(reason: str) -> MetadataError:
        return MetadataError(f"{target}: sidecar not written: {reason}")

    safe_edit(exiftool, target, sidecar_args(caption, wanted, sidecar_tags or {}), check, rejected=rejected)
    return target
