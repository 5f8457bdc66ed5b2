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
  dropping one.

A write never edits the original in place: ExifTool writes a hidden temp file next to it, the temp
file is read back and checked (caption landed, no other tag changed), then atomically replaces the
original. RAW files, formats ExifTool refuses and partial writes get an XMP sidecar instead, which
is merged (never clobbered) when it already exists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType

__all__ = [
    "RAW_EXTENSIONS",
    "ExifToolSession",
    "ExistingMetadata",
    "MetadataError",
    "WriteResult",
    "is_junk_description",
    "sidecar_path",
]

EXIFTOOL_MISSING = (
    "exiftool not found: install it "
    "(Debian/Ubuntu: sudo apt-get install libimage-exiftool-perl; macOS: brew install exiftool)"
)

RAW_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".3fr", ".ari", ".arw", ".bay", ".braw", ".cap", ".cr2", ".cr3", ".crw", ".dcr", ".dcs",
        ".dng", ".drf", ".eip", ".erf", ".fff", ".gpr", ".iiq", ".k25", ".kdc", ".mdc", ".mef",
        ".mos", ".mrw", ".nef", ".nrw", ".orf", ".ori", ".pef", ".ptx", ".pxn", ".r3d", ".raf",
        ".raw", ".rw2", ".rwl", ".rwz", ".sr2", ".srf", ".srw", ".x3f",
    }
)  # fmt: skip

MODES = ("embed", "sidecar", "both")
SIDECAR_NAMINGS = ("ext", "base")
TEMP_MARKER = ".phototag-tmp"

# Tags phototag may write (ExifTool family-1 group names, as printed with -G1).
XMP_DESCRIPTION = "XMP-dc:Description"
EXIF_DESCRIPTION = "IFD0:ImageDescription"
IPTC_CAPTION = "IPTC:Caption-Abstract"
XMP_SUBJECT = "XMP-dc:Subject"
IPTC_KEYWORDS = "IPTC:Keywords"
IPTC_CHARSET = "IPTC:CodedCharacterSet"
IPTC_DIGEST = "Photoshop:IPTCDigest"
CURRENT_IPTC_DIGEST = "File:CurrentIPTCDigest"
OWNED_TAGS = (
    XMP_DESCRIPTION,
    EXIF_DESCRIPTION,
    IPTC_CAPTION,
    XMP_SUBJECT,
    IPTC_KEYWORDS,
    IPTC_CHARSET,
    IPTC_DIGEST,
)
SIDECAR_OWNED_TAGS = (XMP_DESCRIPTION, XMP_SUBJECT)

# ExifTool stamps itself as the XMP toolkit whenever it rewrites XMP.
_INCIDENTAL_TAGS = frozenset({"XMP-x:XMPToolkit"})
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
    "-IFD0:Make", "-IFD0:Model", "-IFD0:ImageDescription", "-XMP-dc:all", "-IPTC:all",
    "-Photoshop:IPTCDigest", "-ExifIFD:DateTimeOriginal", "-XMP-exif:DateTimeOriginal",
)  # fmt: skip
_IO_ERROR = re.compile(
    r"Error (creating|opening|renaming|writing)|Permission denied|Read-only|No space|already exists|"
    r"File not found|Can't open",
    re.IGNORECASE,
)


class MetadataError(Exception):
    """A metadata read or write failed; ``str(e)`` is a one-line reason naming the file."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class _Unwritable(Exception):
    """ExifTool cannot embed into this file (refused format, partial write): use a sidecar."""


@dataclass(frozen=True)
class ExistingMetadata:
    """What a photo already says about itself, and the raw values a restore would need."""

    description: str | None
    keywords: tuple[str, ...]
    original: dict[str, object] = field(default_factory=dict)
    taken_at: str | None = None  # DateTimeOriginal as "YYYY-MM-DDTHH:MM:SS" (camera's local time)


@dataclass(frozen=True)
class WriteResult:
    """Where a caption went. ``kind`` is "embedded" or "sidecar"; ``target`` the file written."""

    kind: str
    target: Path
    also_written: tuple[Path, ...] = ()  # mode "both": the sidecar written beside the photo
    fallback_reason: str | None = None  # why an embed fell back to a sidecar


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


def temp_path(target: Path) -> Path:
    """Hidden temp file beside ``target`` that keeps its extension (so ExifTool keeps the format)."""
    name = f".{target.name}{TEMP_MARKER}{target.suffix}"
    if len(os.fsencode(name)) > 240:  # stay under NAME_MAX with room for exiftool's "_exiftool_tmp"
        digest = hashlib.sha1(os.fsencode(target.name)).hexdigest()[:16]
        name = f".{digest}{TEMP_MARKER}{target.suffix}"
    return target.with_name(name)


def is_raw(photo: Path) -> bool:
    return Path(photo).suffix.lower() in RAW_EXTENSIONS


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


def _arg_path(path: Path) -> bytes:
    """A file argument for the ``-@ -`` stream: absolute (so "-x.jpg" is never read as an option),
    as the file system's own bytes (any name works, UTF-8 or not), and on one line."""
    raw = os.fsencode(os.path.abspath(path))
    if b"\n" in raw or b"\r" in raw:
        raise MetadataError(f"cannot handle a file name containing a line break: {str(path)!r}")
    return raw


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
        "file": {"path": str(photo), "tags": _owned_values(file_tags, OWNED_TAGS)},
        "sidecar": {
            "path": str(sidecar),
            "exists": sidecar_tags is not None,
            "tags": _owned_values(sidecar_tags or {}, SIDECAR_OWNED_TAGS) if sidecar_tags is not None else {},
        },
    }
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
    args = ["-ex", f"-{XMP_DESCRIPTION}={value}", f"-{EXIF_DESCRIPTION}={value}"]
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
    args = ["-ex", f"-{XMP_DESCRIPTION}={escape_value(caption)}"]
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
) -> list[str]:
    """What is missing from a read-back: empty when the caption and keywords landed exactly."""
    problems = []
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

    Owned tags, ExifTool bookkeeping, file-system facts and structural offsets are ignored. Tags the
    write *added* are not reported here (ExifTool adds the EXIF-mandatory IFD0 tags when it creates an
    EXIF block, and can reveal data it skipped before); empty values that vanish are not a loss
    (ExifTool drops empty ``rdf:Seq`` lists such as darktable's masks_history).
    """
    skip = set(owned) | _INCIDENTAL_TAGS
    problems = []
    for name, old in before.items():
        group, _, tag = name.partition(":")
        if group in _VOLATILE_GROUPS or name in skip or name.startswith(XMP_DESCRIPTION + "-"):
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


def _commit(tmp: Path, target: Path, mode_from: Path | None) -> None:
    """Give ``tmp`` the permission bits of ``mode_from``, flush it and atomically move it onto ``target``."""
    if mode_from is not None:
        os.chmod(tmp, stat.S_IMODE(os.stat(mode_from).st_mode))
    _fsync_file(tmp)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


# --------------------------------------------------------------------------------------------------
# The session


class ExifToolSession:
    """One long-running exiftool process (pyexiftool ExifToolHelper), thread-safe via a lock.

    ``mode``: "embed" writes into the photo (RAW and refused formats get a sidecar), "sidecar" never
    touches originals, "both" embeds and writes the sidecar. ``sidecar_naming``: see :func:`sidecar_path`.
    """

    def __init__(
        self, executable: str | None = None, *, sidecar_naming: str = "ext", mode: str = "embed"
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
        self._lock = threading.RLock()
        self._helper = None
        self._closed = False
        self._start()

    # -- process ------------------------------------------------------------------------------------

    def _start(self) -> None:
        import exiftool  # pyexiftool; imported here so the rest of the module loads without it

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
                self._start()
            try:
                raw = self._helper.execute(*args, raw_bytes=True)
            except Exception as exc:  # the process died or the protocol broke: start afresh next time
                self._stop()
                raise MetadataError(f"exiftool stopped unexpectedly: {exc}") from exc
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
        args += list(tags) + [_arg_path(p) for p in paths]
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
        stdout, _, _ = self._run(["-j", "-b", *tags, _arg_path(Path(photo))])
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
        return existing_metadata(photo, file_tags, sidecar_path(photo, self.sidecar_naming), sidecar_tags)

    def _read_owned(self, photo: Path) -> tuple[dict, dict | None]:
        if not photo.is_file():
            raise MetadataError(f"{photo}: no such file")
        sidecar = sidecar_path(photo, self.sidecar_naming)
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
        if photo.is_symlink():  # replace the file the link points to, not the link
            photo = photo.resolve()
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
        if not os.access(photo, os.W_OK):
            raise _Unwritable("the photo is read-only")
        args, wrote_iptc = embed_args(caption, keywords, tags)
        tmp = temp_path(photo)
        leftovers = (tmp, Path(f"{tmp}_exiftool_tmp"))
        _remove_quietly(*leftovers)  # a stale temp from a crash would make exiftool refuse
        try:
            if photo.suffix.lower() in COPY_THEN_WRITE_SUFFIXES:
                shutil.copyfile(photo, tmp)
                command = [*args, "-overwrite_original", _arg_path(tmp)]
            else:
                command = [*args, "-o", _arg_path(tmp), _arg_path(photo)]
            _, stderr, status = self._run(command)
            if status != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
                message = _one_line(stderr, photo, tmp)
                if _IO_ERROR.search(message):
                    raise MetadataError(f"{photo}: exiftool could not write: {message}")
                raise _Unwritable(f"exiftool refused to write it ({message})")
            before, after = self._read_json([photo, tmp], everything=True)
            problems = caption_problems(after, caption, keywords, iptc=wrote_iptc)
            if problems:
                raise _Unwritable("partial write: " + "; ".join(problems))
            changed = dropped_keywords(before, after) + unexpected_changes(before, after)
            if changed:
                raise _Unwritable("writing would change other tags: " + "; ".join(changed[:3]))
            _commit(tmp, photo, mode_from=photo)
        except OSError as exc:
            raise MetadataError(f"{photo}: {exc.strerror or exc}") from exc
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
        target = sidecar_path(photo, self.sidecar_naming)
        tmp = temp_path(target)
        leftovers = (tmp, Path(f"{tmp}_exiftool_tmp"))
        _remove_quietly(*leftovers)
        exists = target.is_file()
        if exists and sidecar_tags is None:
            raise MetadataError(f"{target}: existing sidecar is unreadable; not touching it")
        # A new sidecar starts with the photo's own keywords: readers that prefer the sidecar keep them.
        wanted = keywords if exists else _merge_keywords(photo_keywords, keywords)
        try:
            if exists:
                shutil.copyfile(target, tmp)
            _, stderr, status = self._run(
                [
                    *sidecar_args(caption, wanted, sidecar_tags or {}),
                    "-overwrite_original",
                    _arg_path(tmp),
                ]
            )
            if status != 0 or not tmp.is_file():
                raise MetadataError(
                    f"{target}: exiftool could not write the sidecar: {_one_line(stderr, tmp)}"
                )
            paths = [target, tmp] if exists else [tmp]
            records = self._read_json(paths, everything=True)
            after = records[-1]
            problems = caption_problems(after, caption, wanted, exif=False)
            if exists:
                problems += dropped_keywords(records[0], after)
                problems += unexpected_changes(records[0], after, owned=SIDECAR_OWNED_TAGS)
            if problems:
                raise MetadataError(f"{target}: sidecar check failed: " + "; ".join(problems[:3]))
            _commit(tmp, target, mode_from=target if exists else None)
        except OSError as exc:
            raise MetadataError(f"{target}: {exc.strerror or exc}") from exc
        finally:
            _remove_quietly(*leftovers)
        return WriteResult("sidecar", target)


def _check_image(photo: Path, tags: Mapping[str, object]) -> None:
    """Raise MetadataError unless exiftool read ``photo`` as an image."""
    error = tags.get("ExifTool:Error")
    if error:
        raise MetadataError(f"{photo}: {error}")
    mime = str(tags.get("File:MIMEType") or "")
    if not mime.startswith("image/"):
        kind = tags.get("File:FileType") or "unknown"
        raise MetadataError(f"{photo}: not an image exiftool can read (looks like {kind})")
