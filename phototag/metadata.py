"""Photo metadata through ExifTool: read existing captions, write new ones safely, fall back to sidecars.

The one room that touches photo files. Everything goes through a single long-running ``exiftool``
process (pyexiftool); nothing here re-encodes an image.

Writing follows the Metadata Working Group (MWG) guideline without loading ExifTool's MWG module
(loading it switches the whole stay-open process to "strict MWG" reading, and it writes IPTC as
Latin-1, turning CJK and emoji into ``?``). Instead the same fields are written explicitly:

* ``XMP-dc:Description`` (x-default) and ``EXIF:ImageDescription`` (UTF-8) always;
* ``IPTC:Caption-Abstract`` only where an IPTC block already exists (JPEG/TIFF/PSD), re-encoding the
  existing IPTC to UTF-8 and declaring ``CodedCharacterSet``; ``IPTCDigest`` is refreshed when it
  was absent or in sync, exactly as the MWG module does;
* keywords are merged into ``XMP-dc:Subject`` (and ``IPTC:Keywords`` where IPTC exists), never
  dropping one;
* the Windows fields ``XPComment``/``XPSubject``/``XPKeywords`` and EXIF ``UserComment`` are updated
  only where they already hold text, so Windows Explorer does not show a stale description.

The description is written as the ``x-default`` entry of the lang-alt list: other languages stay.

A write never edits the original in place: ExifTool writes a hidden temp file next to it, the temp
file is read back and checked (caption landed, no other tag changed), then atomically replaces the
original (keeping its permissions, owner, extended attributes and, with ``keep_mtime``, its mtime).
RAW files, formats ExifTool refuses, read-only and hard-linked photos and partial writes get an XMP
sidecar instead, which is merged (never clobbered) when it already exists.

:meth:`ExifToolSession.restore` undoes phototag's writes through the same safe path, from the owned
values :meth:`ExifToolSession.read` recorded before the first write; :func:`clean_stale_temps` removes
the temp files a crash left behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from phototag.failures import disk_full, file_size, is_transient_os_error, os_error_reason
from phototag.formats import PAIRED_EXTENSIONS, RAW_EXTENSIONS, is_raw_path

if TYPE_CHECKING:
    from phototag.config import MetadataSettings

log = logging.getLogger(__name__)

__all__ = [
    "RAW_EXTENSIONS",
    "ExifToolSession",
    "ExistingMetadata",
    "MetadataError",
    "RestoreResult",
    "WriteResult",
    "clean_stale_temps",
    "pid_alive",
    "temp_owner",
    "is_junk_description",
    "sidecar_for",
    "sidecar_path",
]

EXIFTOOL_MISSING = (
    "exiftool not found: install it "
    "(Debian/Ubuntu: sudo apt-get install libimage-exiftool-perl; macOS: brew install exiftool)"
)

MODES = ("embed", "sidecar", "both")
SIDECAR_NAMINGS = ("ext", "base")
TEMP_MARKER = ".phototag-tmp"
# Temp names carry their writer (host, pid, a random part): a temp whose writer is a dead process on
# this host is a crash's leftover at once. For the others (another host sharing the folder, names from
# an older phototag) only age tells: a write rewrites its temp continuously, then verifies and renames
# it within seconds, so one this old is a leftover; a younger one may be another phototag's write.
STALE_TEMP_SECONDS = 600
# What temp_path() makes (".NAME.phototag-tmp-HOST-PID-RANDOM.EXT"; older phototags made
# ".NAME.phototag-tmp.EXT"), and exiftool's own temp beside it.
_TEMP_NAME = re.compile(
    r"\..+" + re.escape(TEMP_MARKER) + r"(?:-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8})?"
    r"(\.[^.]+)?(_exiftool_tmp)?",
    re.DOTALL,
)
# This machine, as temp names say it (a host name can be long and hold dots; 8 hex digits cannot).
HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]

# Tags phototag may write (ExifTool family-1 group names, as printed with -G1).
XMP_DESCRIPTION = "XMP-dc:Description"
EXIF_DESCRIPTION = "IFD0:ImageDescription"
IPTC_CAPTION = "IPTC:Caption-Abstract"
XMP_SUBJECT = "XMP-dc:Subject"
IPTC_KEYWORDS = "IPTC:Keywords"
IPTC_CHARSET = "IPTC:CodedCharacterSet"
IPTC_DIGEST = "Photoshop:IPTCDigest"
IPTC_ENVELOPE = "IPTC:EnvelopeRecordVersion"
IPTC_APP_VERSION = "IPTC:ApplicationRecordVersion"
XMP_TOOLKIT = "XMP-x:XMPToolkit"
CURRENT_IPTC_DIGEST = "File:CurrentIPTCDigest"
EXIF_BYTE_ORDER = "File:ExifByteOrder"  # present exactly when the file has an EXIF/TIFF structure
XP_COMMENT = "IFD0:XPComment"  # Windows Explorer "Comments"
XP_SUBJECT = "IFD0:XPSubject"  # Windows Explorer "Subject"
XP_KEYWORDS = "IFD0:XPKeywords"  # Windows Explorer "Tags", ";"-separated
USER_COMMENT = "ExifIFD:UserComment"
# Written only where they already hold text (description in the first three, keywords in the last).
WINDOWS_DESCRIPTION_TAGS = (XP_COMMENT, XP_SUBJECT, USER_COMMENT)
IF_PRESENT_TAGS = (*WINDOWS_DESCRIPTION_TAGS, XP_KEYWORDS)
# Description and keyword values: what a write changes and a restore puts back.
RESTORABLE_TAGS = (
    XMP_DESCRIPTION,
    EXIF_DESCRIPTION,
    IPTC_CAPTION,
    XMP_SUBJECT,
    IPTC_KEYWORDS,
    *IF_PRESENT_TAGS,
)
OWNED_TAGS = (*RESTORABLE_TAGS, IPTC_CHARSET, IPTC_DIGEST)
SIDECAR_OWNED_TAGS = (XMP_DESCRIPTION, XMP_SUBJECT)
LIST_TAGS = frozenset({XMP_SUBJECT, IPTC_KEYWORDS})

# ExifTool stamps itself as the XMP toolkit whenever it rewrites XMP.
_INCIDENTAL_TAGS = frozenset({"XMP-x:XMPToolkit"})
# IFD0 tags ExifTool adds when it creates an EXIF block (EXIF requires them).
_MANDATORY_EXIF_TAGS = frozenset(
    {"IFD0:XResolution", "IFD0:YResolution", "IFD0:ResolutionUnit", "IFD0:YCbCrPositioning"}
)
_EXIF_GROUPS = frozenset({"IFD0", "IFD1", "ExifIFD", "GPS", "InteropIFD", "SubIFD"})
# Groups that describe the file rather than its metadata, and structural fields that follow the
# layout: offsets that move when a block grows (thumbnail/preview/strips, HEIF media data) and the
# WebP VP8X flags, which gain the "has XMP" bit when XMP is added.
_VOLATILE_GROUPS = frozenset({"SourceFile", "System", "File", "ExifTool", "Composite"})
_STRUCTURAL_TAG = re.compile(r"(Offsets?|Start|MediaDataSize|MediaDataOffset|WebP_Flags)$")

IPTC_WRITABLE_TYPES = frozenset({"JPEG", "TIFF", "PSD", "PSB"})
IPTC_CAPTION_LIMIT = 2000  # bytes, IPTC IIM dataset 2:120
IPTC_KEYWORD_LIMIT = 64  # bytes, IPTC IIM dataset 2:25
COPY_THEN_WRITE_SUFFIXES = frozenset({".webp", ""})  # exiftool 12.x refuses "-o x.webp" ("Can't write RIFF")

_READ_TAGS = (
    "-File:FileType", "-File:MIMEType", "-ExifTool:Error", "-ExifTool:Warning", "-File:CurrentIPTCDigest",
    "-File:ExifByteOrder", "-IFD0:Make", "-IFD0:Model", "-IFD0:ImageDescription", "-IFD0:XPComment",
    "-IFD0:XPSubject", "-IFD0:XPKeywords", "-ExifIFD:UserComment", "-XMP-x:XMPToolkit", "-XMP-dc:all", "-IPTC:all",
    "-Photoshop:IPTCDigest", "-ExifIFD:DateTimeOriginal", "-XMP-exif:DateTimeOriginal",
)  # fmt: skip
_IO_ERROR = re.compile(
    r"Error (creating|opening|renaming|writing)|Permission denied|Read-only|No space|already exists|"
    r"File not found|Can't open",
    re.IGNORECASE,
)


class MetadataError(Exception):
    """A metadata read or write failed; ``str(e)`` is a one-line reason naming the file.

    ``transient``: the trouble was not the photo's (disk full, I/O error, exiftool died), so a later run
    may retry it (see :mod:`phototag.failures`).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(" ".join(str(message).split()))
        self.transient = transient


class _Unwritable(Exception):
    """ExifTool cannot embed into this file (refused format, partial write): use a sidecar."""


@dataclass(frozen=True)
class ExistingMetadata:
    """What a photo already says about itself, and the raw values a restore would need."""

    description: str | None
    keywords: tuple[str, ...]
    original: dict[str, object] = field(default_factory=dict)
    taken_at: str | None = None  # DateTimeOriginal as "YYYY-MM-DDTHH:MM:SS" (camera's local time)

    def current_description(self) -> str | None:
        """What the photo's description fields say now, camera boilerplate included (the person's
        description if there is one): the text a write would replace."""
        if self.description is not None:
            return self.description
        tags = _mapping(_mapping(self.original.get("file")).get("tags"))
        for name in (EXIF_DESCRIPTION, XMP_DESCRIPTION, IPTC_CAPTION):
            if holds_text(tags.get(name)):
                return _text(tags.get(name))
        return None


@dataclass(frozen=True)
class WriteResult:
    """Where a caption went. ``kind`` is "embedded" or "sidecar"; ``target`` the file written."""

    kind: str
    target: Path
    also_written: tuple[Path, ...] = ()  # mode "both": the sidecar written beside the photo
    fallback_reason: str | None = None  # why an embed fell back to a sidecar


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


# --------------------------------------------------------------------------------------------------
# Pure helpers


_VENDOR_WORDS = frozenset(
    """
    agfa aiptek apple argus asus benq blackberry canon casio concord contax digimax dimage dji epson
    eastman finepix fuji fujifilm gopro hasselblad hmd htc huawei hewlett hp jenoptik jvc kodak konica
    kyocera leica lg lumix mamiya medion minolta minox motorola mustek nikon nokia olympus oneplus oppo
    packard panasonic pentax phase polaroid praktica ricoh rollei samsung sanyo sharp sigma sony toshiba
    vivitar vivo xiaomi yashica zte coolpix cybershot powershot ixus exilim optio caplio easyshare
    mavica camedia iphone ipad galaxy pixel eos rebel alpha stylus elph ixy dmc qv dimage
    """.split()
)
_BOILERPLATE_WORDS = frozenset(
    """
    digital camera cameras still dsc dsc image images imaging photo photos picture pictures optical
    electronics electric co corp corporation company inc ltd limited gmbh ag techwin global
    """.split()
)
_PLACEHOLDERS = frozenset(
    {
        "default", "no description", "description", "untitled", "untitled image", "no title", "title",
        "image", "picture", "photo", "none", "null", "nil", "n/a", "na", "dcim", "caption", "no caption",
        "comment", "no comment", "comments", "unknown", "empty", "camera", "digital camera",
        "digital still camera", "digicam", "dsc", "img", "exif", "exif_jpeg_picture", "exif jpeg picture",
        "jpeg", "jpg", "image description", "imagedescription", "description of image",
    }
)  # fmt: skip
_FILENAME_LIKE = re.compile(
    r"(?:img|dsc[nf]?|_dsc|pict|pxl|sam|dcp|cimg|mvc|gopr|dji|imag|wp|pano|p|photo|image|scan)?[_ -]?"
    r"\d{3,}(?:[_-]\d+)*(?:\.(?:jpe?g|heic|heif|png|tiff?|dng|nef|cr2|cr3|arw|orf|raf|rw2|raw))?",
    re.IGNORECASE,
)
_MODEL_CODE = re.compile(r"(?=.*\d)[a-z0-9]+")
_HEX_DIGEST = re.compile(r"[0-9a-f]{16,}", re.IGNORECASE)
_SOFTWARE_STAMP = re.compile(
    r"(creator: gd-jpeg|lead technologies|created with gimp|processed with vsco|optimized by jpegmini|"
    r"made with photoshop)",
    re.IGNORECASE,
)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.casefold())


def is_junk_description(text: str | None, *, make: str | None = None, model: str | None = None) -> bool:
    """True when ``text`` is not a human caption: empty, a placeholder, or camera/software boilerplate.

    The rule, rather than a list: after trimming, a description is junk when it has no letters or
    digits, is a known placeholder ("Default", "<no description>", "DCIM"), is wrapped in ``<...>``, looks
    like a file name or a hash, is a software stamp, or consists only of vendor names, camera model
    codes and words like DIGITAL/CAMERA/DSC ("OLYMPUS DIGITAL CAMERA", "SONY DSC"). With ``make`` and
    ``model`` (the file's EXIF Make/Model) a description made only of those words is junk too.
    """
    if text is None:
        return True
    cleaned = " ".join(_CONTROL_CHARS.sub(" ", str(text)).split())
    if not cleaned or not any(ch.isalnum() for ch in cleaned):
        return True
    folded = cleaned.casefold()
    if folded.strip(" .:;-_!?") in _PLACEHOLDERS:
        return True
    if folded.startswith("<") and folded.endswith(">"):
        return True
    if _FILENAME_LIKE.fullmatch(cleaned) or _HEX_DIGEST.fullmatch(cleaned) or _SOFTWARE_STAMP.match(cleaned):
        return True
    words = _words(cleaned)
    camera_words = {w for w in _words(f"{make or ''} {model or ''}")}
    boiler = _BOILERPLATE_WORDS | camera_words
    if all(w in boiler for w in words):
        return True
    vendors_present = any(w in _VENDOR_WORDS or w in camera_words for w in words)
    return vendors_present and all(
        w in _VENDOR_WORDS or w in boiler or _MODEL_CODE.fullmatch(w) for w in words
    )


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


def temp_path(target: Path, *, pid: int | None = None, host: str = HOST_TAG) -> Path:
    """Hidden temp file beside ``target`` that keeps its extension (so ExifTool keeps the format). Its
    name says who writes it (``host``, ``pid``: this process) plus a random part, so two writers never
    share a temp, and :func:`clean_stale_temps` can tell a live writer's temp from a dead one's."""
    owner = f"{TEMP_MARKER}-{host}-{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}"
    name = f".{target.name}{owner}{target.suffix}"
    # Stay under NAME_MAX with room for exiftool's "_exiftool_tmp"; and give exiftool a name it can
    # take (its argument stream is one name per line).
    if len(os.fsencode(name)) > 240 or _has_line_break(name):
        digest = hashlib.sha1(os.fsencode(target.name)).hexdigest()[:16]
        name = f".{digest}{owner}{target.suffix}"
    return target.with_name(name)


def is_raw(photo: Path) -> bool:
    return is_raw_path(photo)


def is_temp_name(name: str) -> bool:
    """True for the name of a temp file phototag (or exiftool, working for phototag) makes."""
    return bool(_TEMP_NAME.fullmatch(name))


def temp_owner(name: str) -> tuple[str, int] | None:
    """(host tag, pid) of the writer a temp name names; None for other names and older phototags' temps."""
    match = _TEMP_NAME.fullmatch(name)
    if match is None or match.group("host") is None:
        return None
    return match.group("host"), int(match.group("pid"))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(
    roots: Iterable[Path], *, older_than: float = STALE_TEMP_SECONDS, now: float | None = None
) -> list[Path]:
    """Delete the temp files a crash left under ``roots`` (only names phototag makes). A temp written by
    a process of this machine is removed once that process is gone, never while it lives; one from
    another machine or an older phototag once older than ``older_than`` seconds. Returns what was
    removed. Never follows folder links; unreadable folders are skipped; a file root cleans its own
    folder (not below it)."""
    deadline = (time.time() if now is None else now) - older_than
    removed: list[Path] = []
    for folder in _temp_folders(roots):
        try:
            with os.scandir(folder) as entries:
                candidates = [e for e in entries if e.name.startswith(".") and is_temp_name(e.name)]
        except OSError:
            continue
        for entry in candidates:
            owner = temp_owner(entry.name)
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if owner is not None and owner[0] == HOST_TAG:
                    stale = not pid_alive(owner[1])
                else:
                    stale = entry.stat(follow_symlinks=False).st_mtime < deadline
                if stale:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError as exc:
                log.warning("cannot remove stale temp file %s: %s", entry.path, exc.strerror or exc)
    return removed


def _temp_folders(roots: Iterable[Path]) -> Iterator[str]:
    """The folders phototag may have written in under ``roots`` (the walk skips hidden folders, as
    the photo scan does)."""
    for root in roots:
        root = Path(os.path.abspath(os.path.expanduser(root)))
        if not root.is_dir():
            if root.parent.is_dir():
                yield str(root.parent)
            continue
        stack = [str(root)]
        while stack:
            folder = stack.pop()
            yield folder
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
            except OSError:
                continue


def normalize_caption(caption: str) -> str:
    """Caption as it will be stored: line breaks become ``\\n`` (XML turns a CR into LF on reading, so a
    CR could never round-trip through XMP). Raises MetadataError for text XMP cannot hold."""
    if not isinstance(caption, str):
        raise MetadataError(f"caption must be text, not {type(caption).__name__}")
    text = caption.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise MetadataError("refusing to write an empty caption")
    _check_xml_text(text, "caption")
    return text


def normalize_keywords(keywords: Iterable[str]) -> list[str]:
    """Trimmed, non-empty keywords in order, without case-insensitive duplicates."""
    if isinstance(keywords, str):
        keywords = [keywords]
    seen: set[str] = set()
    result = []
    for raw in keywords:
        kw = " ".join(str(raw).split())
        if kw and kw.casefold() not in seen:
            _check_xml_text(kw, "keyword")
            seen.add(kw.casefold())
            result.append(kw)
    return result


def _check_xml_text(text: str, what: str) -> None:
    bad = _CONTROL_CHARS.search(text) or re.search(r"[\ud800-\udfff\ufffe\uffff]", text)
    if bad:
        raise MetadataError(f"{what} contains a character XMP cannot store: {bad.group()!r}")


def escape_value(value: str) -> str:
    """Escape a tag value for exiftool's ``-ex`` (XML) input mode.

    Values travel through pyexiftool's ``-@ -`` argument stream, one argument per line: a newline
    would end the argument, leading white space and one space after ``=`` are stripped. With ``-ex``
    exiftool un-escapes ``&amp;``-style entities in values, so these characters are sent as numeric
    character references and ``&`` as ``&amp;``.
    """
    out = []
    for ch in value:
        if ch == "&":
            out.append("&amp;")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"&#{ord(ch)};")
        else:
            out.append(ch)
    text = "".join(out)
    if text[:1] == " ":
        text = "&#32;" + text[1:]
    return text


def _has_line_break(text: str) -> bool:
    return "\n" in text or "\r" in text


def _arg_path(path: Path) -> bytes:
    """A file argument for the ``-@ -`` stream: absolute (so "-x.jpg" is never read as an option),
    as the file system's own bytes (any name works, UTF-8 or not), and on one line (a name with a line
    break goes through :class:`_SafeNames` first)."""
    raw = os.fsencode(os.path.abspath(path))
    if b"\n" in raw or b"\r" in raw:
        raise MetadataError(f"cannot handle a file name containing a line break: {str(path)!r}")
    return raw


class _SafeNames:
    """Names without line breaks for paths that have them, so exiftool's line-based argument stream
    can reach every file.

    The aliases are symbolic links in a private temp folder (mode 0700, removed on :meth:`close`): a
    photo whose own name has a line break is read through a link to it; a folder whose name has one is
    reached through a link to the folder, so exiftool can also write phototag's temp copy inside it
    (temp names never have a line break). Every write still ends with phototag's own rename of that
    temp copy onto the real name, so photos and sidecars keep their names.
    """

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._aliases: dict[str, Path] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> Path:
        path = Path(os.path.abspath(path))
        if not _has_line_break(str(path)):
            return path
        with self._lock:
            return self._alias(path)

    def _alias(self, path: Path) -> Path:
        known = self._aliases.get(str(path))
        if known is not None:
            return known
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="phototag-names-"))
        if _has_line_break(path.name):
            suffix = "" if _has_line_break(path.suffix) else path.suffix  # exiftool picks formats by suffix
            alias = self._folder / f"{len(self._aliases)}{suffix}"
            os.symlink(path, alias)
        else:
            alias = self._alias(path.parent) / path.name  # the line break is in a folder's name
        self._aliases[str(path)] = alias
        return alias

    def aliases(self, *paths: Path) -> list[Path]:
        """The aliases made for ``paths`` (to take them out of exiftool's messages)."""
        with self._lock:
            return [self._aliases[key] for key in map(str, paths) if key in self._aliases]

    def close(self) -> None:
        with self._lock:
            folder, self._folder = self._folder, None
            self._aliases.clear()
        if folder is None:
            return
        try:
            for entry in os.scandir(folder):
                os.unlink(entry.path)  # the links themselves, never what they point to
            os.rmdir(folder)
        except OSError as exc:
            log.warning("cannot remove phototag's temp folder %s: %s", folder, exc.strerror or exc)


def as_list(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def holds_text(value: object) -> bool:
    """True when a field holds text: not absent, empty, blank, NUL padding or binary data."""
    if value is None or isinstance(value, dict):
        return False
    text = _text(value) or ""
    if text.startswith(("(Binary data ", "base64:")):
        return False
    return bool(text.strip(" \t\r\n\x00"))


def ucs2(text: str) -> str:
    """``text`` as the Windows XP* tags can hold it through ExifTool, which encodes them as UCS-2:
    characters beyond the Basic Multilingual Plane (emoji) become U+FFFD."""
    return "".join(ch if ord(ch) <= 0xFFFF else "\ufffd" for ch in text)


def _xp_keywords(value: object) -> list[str]:
    return [kw.strip() for kw in (_text(value) or "").split(";") if kw.strip()]


def if_present_values(caption: str, keywords: Sequence[str], tags: Mapping[str, object]) -> dict[str, str]:
    """Values for the Windows/EXIF comment fields that already hold text, as they will read back.

    XPComment/XPSubject and UserComment get the caption; XPKeywords (";"-separated) gets the new
    keywords appended. Fields that are absent or empty stay so: creating them would add a Windows-only
    copy of the caption that other tools never update.
    """
    values = {}
    for name in WINDOWS_DESCRIPTION_TAGS:
        if holds_text(tags.get(name)):
            # ExifTool trims trailing blanks when it reads EXIF text such as UserComment
            values[name] = ucs2(caption) if name.startswith("IFD0:XP") else caption.rstrip(" ")
    if holds_text(tags.get(XP_KEYWORDS)):
        existing = _xp_keywords(tags.get(XP_KEYWORDS))
        added = _missing(existing, [ucs2(kw) for kw in keywords if ";" not in kw])
        if added:
            values[XP_KEYWORDS] = ";".join(existing + added)
    return values


def _iptc_in_sync(tags: Mapping[str, object]) -> bool:
    """MWG: XMP mirrors the IPTC unless a stored IPTCDigest disagrees with the current IPTC."""
    stored, current = tags.get(IPTC_DIGEST), tags.get(CURRENT_IPTC_DIGEST)
    return stored is None or current is None or stored == current


def choose_description(tags: Mapping[str, object]) -> str | None:
    """The human description in one file's tags, by MWG precedence, skipping boilerplate.

    MWG reads EXIF first, then XMP when it is in sync with the IPTC, else the IPTC. A junk value
    (e.g. "OLYMPUS DIGITAL CAMERA" in EXIF) does not hide a real caption in the next field.
    """
    make, model = _text(tags.get("IFD0:Make")), _text(tags.get("IFD0:Model"))
    exif, xmp, iptc = (_text(tags.get(k)) for k in (EXIF_DESCRIPTION, XMP_DESCRIPTION, IPTC_CAPTION))
    order = (exif, xmp, iptc) if _iptc_in_sync(tags) else (exif, iptc, xmp)
    for candidate in order:
        if not is_junk_description(candidate, make=make, model=model):
            return candidate
    return None


def choose_keywords(tags: Mapping[str, object]) -> list[str]:
    """Existing keywords by MWG precedence: XMP dc:subject unless the IPTC was changed after it."""
    xmp, iptc = as_list(tags.get(XMP_SUBJECT)), as_list(tags.get(IPTC_KEYWORDS))
    if xmp and _iptc_in_sync(tags):
        return xmp
    return iptc or xmp


def _merge_keywords(*lists: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    merged = []
    for items in lists:
        for kw in items:
            if kw.casefold() not in seen:
                seen.add(kw.casefold())
                merged.append(kw)
    return merged


def _missing(existing: Sequence[str], wanted: Sequence[str]) -> list[str]:
    have = {kw.casefold() for kw in existing}
    return [kw for kw in wanted if kw.casefold() not in have]


def _file_state(tags: Mapping[str, object]) -> dict[str, object]:
    """Facts about the blocks a write may create or re-encode, so a restore can undo that too."""
    return {
        "exif": EXIF_BYTE_ORDER in tags,
        "iptc_digest": tags.get(CURRENT_IPTC_DIGEST),
        "iptc_envelope": tags.get(IPTC_ENVELOPE),
        "iptc_app_version": tags.get(IPTC_APP_VERSION),
        "xmp_toolkit": tags.get(XMP_TOOLKIT),
    }


def _owned_values(tags: Mapping[str, object], names: Sequence[str]) -> dict[str, object]:
    values: dict[str, object] = {name: tags.get(name) for name in names}
    for name, value in tags.items():  # other languages of a lang-alt description
        if name.startswith(XMP_DESCRIPTION + "-"):
            values[name] = value
    return values


_EXIF_DATE = re.compile(r"(\d{4})[:-](\d{2})[:-](\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?")


def parse_exif_date(value: object) -> str | None:
    """An EXIF/XMP date ("2008:10:22 16:29:49", "2008-10-22T16:29:49+02:00") as "2008-10-22T16:29:49",
    the camera's wall-clock time (a zone, when given, is dropped); None for empty or impossible dates."""
    match = _EXIF_DATE.match(str(value).strip()) if value is not None else None
    if match is None:
        return None
    parts = [int(g) if g else 0 for g in match.groups()]
    try:
        return datetime(*parts).isoformat()  # type: ignore[misc]
    except ValueError:  # "0000:00:00 00:00:00" and friends
        return None


def local_time_iso(mtime_ns: int) -> str:
    """A file time as local wall-clock "YYYY-MM-DDTHH:MM:SS" (comparable with EXIF dates)."""
    return datetime.fromtimestamp(mtime_ns / 1e9).replace(microsecond=0).isoformat()


def existing_metadata(
    photo: Path,
    file_tags: Mapping[str, object],
    sidecar: Path,
    sidecar_tags: Mapping[str, object] | None,
) -> ExistingMetadata:
    """Build ExistingMetadata from one exiftool record for the photo and one for its sidecar (if any)."""
    description = choose_description(file_tags)
    keywords = choose_keywords(file_tags)
    if sidecar_tags is not None:
        # A sidecar exists because a tool chose not to touch the original (darktable, Lightroom for RAW,
        # phototag itself): it is the newer word, so its description wins over the embedded one.
        candidate = _text(sidecar_tags.get(XMP_DESCRIPTION))
        make, model = _text(file_tags.get("IFD0:Make")), _text(file_tags.get("IFD0:Model"))
        if not is_junk_description(candidate, make=make, model=model):
            description = candidate
        keywords = _merge_keywords(keywords, as_list(sidecar_tags.get(XMP_SUBJECT)))
    original: dict[str, object] = {
        "file": {
            "path": str(photo),
            "tags": _owned_values(file_tags, OWNED_TAGS),
            "state": _file_state(file_tags),
        },
        "sidecar": {
            "path": str(sidecar),
            "exists": sidecar_tags is not None,
            "tags": _owned_values(sidecar_tags or {}, SIDECAR_OWNED_TAGS) if sidecar_tags is not None else {},
        },
    }
    if sidecar_tags is not None:
        original["sidecar"]["state"] = {"xmp_toolkit": sidecar_tags.get(XMP_TOOLKIT)}  # type: ignore[index]
    taken_at = parse_exif_date(file_tags.get("ExifIFD:DateTimeOriginal")) or parse_exif_date(
        file_tags.get("XMP-exif:DateTimeOriginal") or (sidecar_tags or {}).get("XMP-exif:DateTimeOriginal")
    )
    return ExistingMetadata(description=description, keywords=tuple(keywords), original=original, taken_at=taken_at)


def embed_args(caption: str, keywords: Sequence[str], tags: Mapping[str, object]) -> tuple[list[str], bool]:
    """ExifTool arguments that embed ``caption``/``keywords`` into a file whose current tags are ``tags``.

    Returns the arguments and whether IPTC is written (only where an IPTC block already exists in a
    format ExifTool writes IPTC to). Lists are assigned whole (existing items first) so nothing is
    dropped and nothing duplicated.
    """
    value = escape_value(caption)
    args = ["-ex", f"-{XMP_DESCRIPTION}-x-default={value}", f"-{EXIF_DESCRIPTION}={value}"]
    args += [f"-{name}={escape_value(v)}" for name, v in if_present_values(caption, keywords, tags).items()]
    subject = as_list(tags.get(XMP_SUBJECT))
    # When IPTC holds the keywords by MWG rules (no XMP yet, or IPTC edited later), bring them into
    # XMP too: XMP-only readers would otherwise see just the new keywords.
    added = _missing(subject, _merge_keywords(choose_keywords(tags), keywords)) if keywords else []
    if added:
        args += [f"-{XMP_SUBJECT}={escape_value(kw)}" for kw in subject + added]
    write_iptc = _has_iptc(tags) and str(tags.get("File:FileType")) in IPTC_WRITABLE_TYPES
    if write_iptc:
        iptc_keywords = as_list(tags.get(IPTC_KEYWORDS))
        iptc_added = _missing(iptc_keywords, keywords)
        if not _declares_utf8(tags):
            # Re-encode the existing IPTC (read as Latin-1, ExifTool's default) to UTF-8 (ExifTool FAQ 10).
            args += ["-tagsFromFile", "@", "-IPTC:all", f"--{IPTC_CAPTION}", f"--{IPTC_CHARSET}"]
            if iptc_added:
                args.append(f"--{IPTC_KEYWORDS}")
            args.append(f"-{IPTC_CHARSET}=UTF8")
        args.append(f"-{IPTC_CAPTION}={value}")
        if iptc_added:
            args += [f"-{IPTC_KEYWORDS}={escape_value(kw)}" for kw in iptc_keywords + iptc_added]
        if _iptc_in_sync(tags):
            args.append(f"-{IPTC_DIGEST}=new")
    return args, write_iptc


def sidecar_args(caption: str, keywords: Sequence[str], tags: Mapping[str, object]) -> list[str]:
    """ExifTool arguments for an XMP sidecar whose current tags are ``tags`` (empty for a new one)."""
    args = ["-ex", f"-{XMP_DESCRIPTION}-x-default={escape_value(caption)}"]
    subject = as_list(tags.get(XMP_SUBJECT))
    added = _missing(subject, keywords)
    if added:
        args += [f"-{XMP_SUBJECT}={escape_value(kw)}" for kw in subject + added]
    return args


def _declares_utf8(tags: Mapping[str, object]) -> bool:
    return tags.get(IPTC_CHARSET) in ("UTF8", "\x1b%G")  # print-converted or raw (-n)


def _has_iptc(tags: Mapping[str, object]) -> bool:
    return any(name.startswith("IPTC:") for name in tags)


def caption_problems(
    tags: Mapping[str, object],
    caption: str,
    keywords: Sequence[str],
    *,
    exif: bool = True,
    iptc: bool = False,
    expected: Mapping[str, str] | None = None,
) -> list[str]:
    """What is missing from a read-back: empty when the caption and keywords landed exactly.
    ``expected``: further tags that must read back as the given text (the Windows fields)."""
    problems = []
    for name, value in (expected or {}).items():
        if _text(tags.get(name)) != value:
            problems.append(f"{name} reads back as {_text(tags.get(name))!r}")
    checks = [XMP_DESCRIPTION] + ([EXIF_DESCRIPTION] if exif else [])
    if iptc and len(caption.encode()) <= IPTC_CAPTION_LIMIT:
        checks.append(IPTC_CAPTION)
    for name in checks:
        if _text(tags.get(name)) != caption:
            problems.append(f"{name} reads back as {_text(tags.get(name))!r}")
    if iptc and not _declares_utf8(tags):
        problems.append(f"{IPTC_CHARSET} is {tags.get(IPTC_CHARSET)!r}, not UTF8")
    if _missing(as_list(tags.get(XMP_SUBJECT)), keywords):
        problems.append(f"{XMP_SUBJECT} lacks {_missing(as_list(tags.get(XMP_SUBJECT)), keywords)}")
    if iptc:
        short = [kw for kw in keywords if len(kw.encode()) <= IPTC_KEYWORD_LIMIT]
        if _missing(as_list(tags.get(IPTC_KEYWORDS)), short):
            problems.append(f"{IPTC_KEYWORDS} lacks {_missing(as_list(tags.get(IPTC_KEYWORDS)), short)}")
    return problems


def unexpected_changes(
    before: Mapping[str, object], after: Mapping[str, object], owned: Iterable[str] = OWNED_TAGS
) -> list[str]:
    """Tags (from ``exiftool -a -G1 -j``) that a caption write removed or changed but must not have.

    Owned tags, ExifTool bookkeeping, file-system facts and structural offsets are ignored (other
    languages of the description are not owned: only x-default is written). Tags the
    write *added* are not reported here (ExifTool adds the EXIF-mandatory IFD0 tags when it creates an
    EXIF block, and can reveal data it skipped before); empty values that vanish are not a loss
    (ExifTool drops empty ``rdf:Seq`` lists such as darktable's masks_history).
    """
    skip = set(owned) | _INCIDENTAL_TAGS
    problems = []
    for name, old in before.items():
        group, _, tag = name.partition(":")
        if group in _VOLATILE_GROUPS or name in skip:
            continue
        if _STRUCTURAL_TAG.search(tag):
            continue
        if name not in after:
            if old not in ("", [], None):
                problems.append(f"{name} removed")
        elif after[name] != old:
            problems.append(f"{name} changed from {_short(old)} to {_short(after[name])}")
    return problems


def merge_copies(record: Mapping[str, object]) -> dict[str, object]:
    """Fold ``-G1:4`` keys ("IFD1:Copy2:XResolution") back to "IFD1:XResolution".

    Copy numbers count occurrences across all groups, so they shift when a write adds a tag anywhere
    (a new IFD0:XResolution renumbers JFIF's). Keyed by group and tag instead, repeated tags within one
    group (e.g. an unknown XMP structure flattened to repeated fields) become a list in file order.
    """
    merged: dict[str, object] = {}
    repeated: set[str] = set()
    for key, value in record.items():
        name = re.sub(r":Copy\d+:", ":", key)
        if name not in merged:
            merged[name] = value
        elif name in repeated:
            merged[name].append(value)  # type: ignore[union-attr]
        else:
            merged[name] = [merged[name], value]
            repeated.add(name)
    return merged


def dropped_keywords(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """Keywords present before a write and gone after it (must be empty: merging never drops one)."""
    lost = []
    for name in (XMP_SUBJECT, IPTC_KEYWORDS):
        remaining = set(as_list(after.get(name)))
        lost += [f"{name} lost {kw!r}" for kw in as_list(before.get(name)) if kw not in remaining]
    return lost


def _same_value(name: str, a: object, b: object) -> bool:
    if name in LIST_TAGS:
        return as_list(a) == as_list(b)
    return _text(a) == _text(b)


def _assign(name: str, value: object) -> list[str]:
    """Arguments that make tag ``name`` hold ``value`` exactly (None: absent; "": present but empty)."""
    tag = f"{name}-x-default" if name == XMP_DESCRIPTION else name  # other languages stay
    if value is None:
        return [f"-{tag}="]
    if name in LIST_TAGS:
        items = as_list(value)
        return [f"-{tag}={escape_value(v)}" for v in items] if items else [f"-{tag}="]
    text = _text(value) or ""
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
    iptc_ok = _has_iptc(current) and str(current.get("File:FileType")) in IPTC_WRITABLE_TYPES
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
            if _declares_utf8({IPTC_CHARSET: want}) != _declares_utf8(after) or (want is None) != (got is None):
                problems.append(f"{name} reads back as {got!r}")
        elif not _same_value(name, want, got):
            problems.append(f"{name} reads back as {_short(got)}, not {_short(want)}")
    return problems


def _created_exif_only(record: Mapping[str, object]) -> bool:
    """True when a file's EXIF holds nothing but phototag's fields and the tags ExifTool adds with a
    new EXIF block: the EXIF phototag itself created, safe to remove on restore."""
    exif = {name for name in record if name.split(":")[0] in _EXIF_GROUPS}
    return bool(exif) and exif <= (set(RESTORABLE_TAGS) | _MANDATORY_EXIF_TAGS)


def _phototag_only_sidecar(record: Mapping[str, object]) -> bool:
    """True when a sidecar holds nothing but what phototag writes into a new one."""
    ours = {XMP_DESCRIPTION, XMP_SUBJECT} | _INCIDENTAL_TAGS
    return all(name.split(":")[0] in _VOLATILE_GROUPS or name in ours for name in record)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(text: str, *paths: Path) -> str:
    """The gist of exiftool's stderr: its error lines (else any lines), without the " - FILE" suffix."""
    for path in paths:
        text = text.replace(f" - {path}", "")
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    return " ".join((errors or lines or ["no message"])[:2])


# --------------------------------------------------------------------------------------------------
# File-system edges


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        try:
            if path.is_file() or path.is_symlink():
                path.unlink()
        except OSError:
            pass


def _copy_owner(path: Path, like: os.stat_result) -> None:
    """Best effort: give ``path`` the owner and group of ``like`` (root can; others may set a group)."""
    if not hasattr(os, "chown"):
        return
    current = os.stat(path)
    for uid, gid in ((like.st_uid, like.st_gid), (-1, like.st_gid)):
        if (current.st_uid, current.st_gid) == (like.st_uid, like.st_gid):
            return
        try:
            os.chown(path, uid, gid)
            return
        except OSError:
            continue


def _copy_xattrs(source: Path, path: Path) -> None:
    """Best effort: extended attributes (Finder/desktop tags, ACLs, SELinux labels) survive a write."""
    if not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(source)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(path, name, os.getxattr(source, name))
        except OSError as exc:
            log.debug("cannot copy extended attribute %s to %s: %s", name, path, exc)


def _commit(tmp: Path, target: Path, mode_from: Path | None, *, keep_mtime: bool = False) -> None:
    """Give ``tmp`` the permissions, owner and extended attributes of ``mode_from``, flush it and
    atomically move it onto ``target``. ``keep_mtime``: ``target`` keeps ``mode_from``'s mtime."""
    like = os.stat(mode_from) if mode_from is not None else None
    if mode_from is not None and like is not None:
        _copy_owner(tmp, like)
        os.chmod(tmp, stat.S_IMODE(like.st_mode))
        _copy_xattrs(mode_from, tmp)
    _fsync_file(tmp)
    os.replace(tmp, target)
    if keep_mtime and like is not None:
        # After the rename, not before: a temp file with an old mtime would look like a crash's leftover.
        try:
            os.utime(target, ns=(like.st_atime_ns, like.st_mtime_ns))
        except OSError as exc:
            log.warning("%s: written, but its mtime could not be kept: %s", target, exc.strerror or exc)
    _fsync_dir(target.parent)


# --------------------------------------------------------------------------------------------------
# The session


def _start_exiftool_in_own_session() -> None:
    """Start exiftool in its own session, so a Ctrl-C at the terminal reaches phototag alone.

    Otherwise the terminal's SIGINT also kills exiftool mid-write and that photo fails, although
    phototag itself would have finished it. pyexiftool offers no Popen option, so its module's view
    of ``subprocess`` gets a Popen that adds ``start_new_session`` (its parent-death signal stays).
    Its output reader is replaced too (see :func:`_read_until_marker`).
    """
    import subprocess
    import types

    import exiftool.exiftool as module

    if getattr(module.subprocess, "phototag_own_session", False):
        return

    class Popen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    names = {**vars(subprocess), "Popen": Popen, "phototag_own_session": True}
    module.subprocess = types.SimpleNamespace(**names)
    if os.name == "posix":
        module._read_fd_endswith = _read_until_marker


def _read_until_marker(fd: int, marker: bytes, block_size: int) -> bytes:
    """Read exiftool's output up to ``marker``, raising when the pipe closes.

    pyexiftool's own loop treats end-of-file as "no data yet" and spins forever (a core at 100 %,
    a growing list) once exiftool has died; this one fails the call, and the session restarts
    exiftool for the next one.
    """
    chunks: list[bytes] = []
    tail = b""
    keep = len(marker) + 4
    while not tail.strip().endswith(marker):
        data = os.read(fd, block_size)
        if not data:
            raise OSError("exiftool closed its output (the process stopped)")
        chunks.append(data)
        tail = (tail + data)[-keep:]
    return b"".join(chunks)


class ExifToolSession:
    """One long-running exiftool process (pyexiftool ExifToolHelper), thread-safe via a lock.

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
        resolved = shutil.which(executable or "exiftool")
        if resolved is None:
            raise MetadataError(EXIFTOOL_MISSING)
        self.executable = resolved
        self.sidecar_naming = sidecar_naming
        self.mode = mode
        self.keep_mtime = keep_mtime
        self._lock = threading.RLock()
        self._helper = None
        self._closed = False
        self._safe_names = _SafeNames()
        self._start()

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

    # -- process ------------------------------------------------------------------------------------

    def _start(self) -> None:
        import exiftool  # pyexiftool; imported here so the rest of the module loads without it

        _start_exiftool_in_own_session()
        helper = exiftool.ExifToolHelper(
            executable=self.executable,
            common_args=["-charset", "utf8", "-charset", "exif=utf8"],
            encoding="utf-8",
            check_execute=False,
            check_tag_names=False,
        )
        try:
            helper.run()
        except (OSError, RuntimeError, exiftool.exceptions.ExifToolException) as exc:
            raise MetadataError(f"cannot start exiftool ({self.executable}): {exc}") from exc
        self._helper = helper

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop()
            self._safe_names.close()

    def _arg(self, path: Path) -> bytes:
        """``path`` as one argument line for exiftool, through a safe alias if its name has a line break."""
        return _arg_path(self._safe_names(path))

    def _stop(self) -> None:
        with self._lock:
            if self._helper is not None:
                try:
                    self._helper.terminate()
                except Exception:  # noqa: BLE001 - closing must not raise
                    pass
                self._helper = None

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
        stdout, _, _ = self._run(["-ver"])
        return stdout.strip()

    def _run(self, args: Sequence[str | bytes]) -> tuple[str, str, int]:
        """Run one exiftool command; returns (stdout, stderr, status). Restarts a dead process once."""
        with self._lock:
            if self._closed:
                raise MetadataError("exiftool session is closed")
            if self._helper is None or not self._helper.running:
                try:
                    self._start()
                except MetadataError as exc:  # it ran before: not this photo's fault
                    raise MetadataError(str(exc), transient=True) from exc
            try:
                raw = self._helper.execute(*args, raw_bytes=True)
            except Exception as exc:  # the process died or the protocol broke: start afresh next time
                self._stop()
                raise MetadataError(f"exiftool stopped unexpectedly: {exc}", transient=True) from exc
            stderr = self._helper.last_stderr or b""
            status = self._helper.last_status or 0
        return (
            raw.decode("utf-8", "replace"),
            stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr,
            status,
        )

    def _read_json(
        self, paths: Sequence[Path], tags: Sequence[str] = (), *, everything: bool = False
    ) -> list[dict]:
        """One exiftool read of ``paths``. ``everything``: every tag, raw values, binary as base64,
        duplicates kept apart (-G1:4 numbers copies; plain -G1 JSON silently keeps only the first) and
        XMP structures whole (-struct), so that two reads can be compared tag by tag."""
        args = ["-j", "-a", "-G1:4", "-struct", "-n", "-b"] if everything else ["-j", "-G1"]
        args += list(tags) + [self._arg(p) for p in paths]
        stdout, stderr, _ = self._run(args)
        try:
            # numbers stay text: "1.50" or "007" must not become 1.5 or 7
            records = json.loads(stdout, parse_float=str, parse_int=str) if stdout.strip() else []
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{paths[0].name}: unreadable exiftool output ({_one_line(stderr)})") from exc
        if len(records) != len(paths):
            raise MetadataError(f"{paths[0].name}: exiftool could not read it ({_one_line(stderr)})")
        return [merge_copies(r) for r in records] if everything else records

    # -- reading ----------------------------------------------------------------------------------------

    def preview(self, photo: Path) -> bytes | None:
        """The largest embedded JPEG preview of a RAW file (what cameras show), or None."""
        tags = ["-JpgFromRaw", "-PreviewImage", "-OtherImage", "-ThumbnailImage"]
        stdout, _, _ = self._run(["-j", "-b", *tags, self._arg(Path(photo))])
        try:
            record = (json.loads(stdout) if stdout.strip() else [{}])[0]
        except (json.JSONDecodeError, IndexError):
            return None
        best: bytes | None = None
        for key, value in record.items():
            if key == "SourceFile" or not isinstance(value, str) or not value.startswith("base64:"):
                continue
            data = base64.b64decode(value[len("base64:"):])
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
        records = self._read_json(paths, _READ_TAGS)
        file_tags = records[0]
        _check_image(photo, file_tags)
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
        _check_folder_writable(photo)
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

        self._safe_edit(photo, args, check, rejected=_Unwritable, keep_mtime=self.keep_mtime)

    def _safe_edit(
        self,
        target: Path,
        args: Sequence[str],
        check: Callable[[Mapping[str, object], Mapping[str, object]], str | None],
        *,
        rejected: Callable[[str], Exception],
        keep_mtime: bool = False,
    ) -> None:
        """Apply ``args`` to a hidden temp copy of ``target`` (which need not exist yet), read both back,
        let ``check(before, after)`` veto, then atomically replace ``target``.

        A refusal or veto raises ``rejected(reason)``; a file-system error raises MetadataError. Either
        way ``target`` is untouched and no temp file is left.
        """
        # A name of its own (this process, a random part): another writer's temp is never touched here,
        # and no crash's leftover can share it (clean_stale_temps removes those).
        tmp = temp_path(target)
        leftovers = (tmp, Path(f"{tmp}_exiftool_tmp"))
        exists = target.is_file()
        # A new sidecar is created in place; WebP (and sidecars) are copied, then edited in place.
        edit_in_place = not exists or target.suffix.lower() in COPY_THEN_WRITE_SUFFIXES | {".xmp"}
        try:
            if edit_in_place:
                if exists:
                    shutil.copyfile(target, tmp)
                command = [*args, "-overwrite_original", self._arg(tmp)]
            else:
                command = [*args, "-o", self._arg(tmp), self._arg(target)]
            _, stderr, status = self._run(command)
            if status != 0 or not tmp.is_file() or (exists and tmp.stat().st_size == 0):
                message = _one_line(stderr, target, tmp, *self._safe_names.aliases(target, tmp))
                if _IO_ERROR.search(message):
                    raise _write_error(target, message)
                raise rejected(f"exiftool refused to write it ({message})")
            records = self._read_json([target, tmp] if exists else [tmp], everything=True)
            problem = check(records[0] if exists else {}, records[-1])
            if problem:
                raise rejected(problem)
            _commit(tmp, target, mode_from=target if exists else None, keep_mtime=keep_mtime and exists)
        except OSError as exc:
            raise MetadataError(f"{target}: {os_error_reason(exc)}", transient=is_transient_os_error(exc)) from exc
        finally:
            _remove_quietly(*leftovers)

    def _write_sidecar(
        self,
        photo: Path,
        caption: str,
        keywords: list[str],
        photo_keywords: list[str],
        sidecar_tags: Mapping[str, object] | None,
    ) -> WriteResult:
        """Create or merge ``photo``'s XMP sidecar through a temp copy; other tags and namespaces survive."""
        target = self.sidecar_for(photo)
        if target.is_symlink():  # replacing it would write a file where a link was (or write through it)
            raise MetadataError(f"{target}: the sidecar is a symbolic link; not touching it")
        exists = target.is_file()
        if exists and sidecar_tags is None:
            raise MetadataError(f"{target}: existing sidecar is unreadable; not touching it")
        if not exists:
            _check_folder_writable(photo)
        # A new sidecar starts with the photo's own keywords: readers that prefer the sidecar keep them.
        wanted = keywords if exists else _merge_keywords(photo_keywords, keywords)

        def check(before: Mapping[str, object], after: Mapping[str, object]) -> str | None:
            problems = caption_problems(after, caption, wanted, exif=False)
            if exists:
                problems += dropped_keywords(before, after)
                problems += unexpected_changes(before, after, owned=SIDECAR_OWNED_TAGS)
            return "; ".join(problems[:3]) if problems else None

        def rejected(reason: str) -> MetadataError:
            return MetadataError(f"{target}: sidecar not written: {reason}")

        self._safe_edit(target, sidecar_args(caption, wanted, sidecar_tags or {}), check, rejected=rejected)
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
        file_part = _mapping(original.get("file"))
        side_part = _mapping(original.get("sidecar"))
        with self._lock:
            if not photo.is_file():
                raise MetadataError(f"{photo}: no such file")
            restored = False
            if file_part.get("tags") is not None:
                restored = self._restore_photo(photo, _mapping(file_part["tags"]), _mapping(file_part.get("state")))
            side = _recorded_sidecar(photo, file_part, side_part)
            action = self._restore_sidecar(side, side_part) if side is not None else None
        return RestoreResult(restored, action, side if action else None)

    def _restore_photo(self, photo: Path, original: Mapping[str, object], state: Mapping[str, object]) -> bool:
        current = self._read_json([photo], _READ_TAGS)[0]
        _check_image(photo, current)
        args, targets = restore_args(original, state, current)
        if not args:
            return False
        owned = set(RESTORABLE_TAGS) | {IPTC_CHARSET, IPTC_DIGEST, IPTC_ENVELOPE, IPTC_APP_VERSION}
        if not state.get("exif", True) and original.get(EXIF_DESCRIPTION) is None:
            # The EXIF block may be phototag's own creation: drop it if nothing else lives there.
            if _created_exif_only(self._read_json([photo], everything=True)[0]):
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
        _check_folder_writable(photo)
        self._safe_edit(photo, args, check, rejected=rejected, keep_mtime=self.keep_mtime)
        return True

    def _restore_sidecar(self, side: Path, recorded: Mapping[str, object]) -> str | None:
        if not side.is_file():
            return None  # never written, or removed since: nothing to undo (and nothing to recreate)

        def rejected(reason: str) -> MetadataError:
            return MetadataError(f"{side}: not restored: {reason}")

        if recorded.get("exists"):
            current = self._read_json([side], _READ_TAGS)[0]
            original = _mapping(recorded.get("tags"))
            targets = {
                name: original.get(name)
                for name in SIDECAR_OWNED_TAGS
                if not _same_value(name, original.get(name), current.get(name))
            }
            state = _mapping(recorded.get("state"))
            if targets and "xmp_toolkit" in state and not _same_value(
                XMP_TOOLKIT, state["xmp_toolkit"], current.get(XMP_TOOLKIT)
            ):
                targets[XMP_TOOLKIT] = state["xmp_toolkit"]  # ExifTool stamped itself on the write
            action = "restored"
        else:
            record = self._read_json([side], everything=True)[0]
            if _phototag_only_sidecar(record):
                try:
                    side.unlink()
                    _fsync_dir(side.parent)
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

        self._safe_edit(side, args, check, rejected=rejected)
        return action


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _recorded_sidecar(photo: Path, file_part: Mapping[str, object], side_part: Mapping[str, object]) -> Path | None:
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


def _write_error(target: Path, message: str) -> MetadataError:
    """exiftool's write error as a reason: it says "Error writing output file" for a full disk, so the
    free space of the folder decides (the write needed room for a whole temp copy of the file)."""
    if "no space" in message.lower() or disk_full(target.parent, file_size(target)):
        return MetadataError(f"{target}: disk full (exiftool: {message})", transient=True)
    transient = bool(re.search(r"Error (writing|renaming)", message, re.IGNORECASE))  # I/O, not the photo
    return MetadataError(f"{target}: exiftool could not write: {message}", transient=transient)


def _check_folder_writable(photo: Path) -> None:
    """A clear reason instead of exiftool's "Error creating file" when nothing can be written beside
    ``photo`` (neither a temp copy nor a sidecar). Root passes the mode check; exiftool then fails."""
    folder = photo.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MetadataError(f"{photo}: its folder is read-only; neither the photo nor a sidecar can be written")


def _check_image(photo: Path, tags: Mapping[str, object]) -> None:
    """Raise MetadataError unless exiftool read ``photo`` as an image."""
    error = tags.get("ExifTool:Error")
    if error:
        raise MetadataError(f"{photo}: {error}")
    mime = str(tags.get("File:MIMEType") or "")
    if not mime.startswith("image/"):
        kind = tags.get("File:FileType") or "unknown"
        raise MetadataError(f"{photo}: not an image exiftool can read (looks like {kind})")
