"""What is read and written where: the Metadata Working Group (MWG) policy, as pure functions.

Which tags hold a photo's description and keywords, which of them a read believes (MWG precedence:
EXIF, then XMP when in sync with the IPTC, else IPTC), what counts as a junk description ("OLYMPUS
DIGITAL CAMERA", "<no description>", file names), the date a photo was taken, and the ExifTool
arguments that embed a caption and keywords. Nothing here runs exiftool or touches a file.

Writing follows the MWG guideline without loading ExifTool's MWG module (loading it switches the whole
stay-open process to "strict MWG" reading, and it writes IPTC as Latin-1, turning CJK and emoji into
``?``). Instead the same fields are written explicitly:

* ``XMP-dc:Description`` (x-default) and ``EXIF:ImageDescription`` (UTF-8) always;
* ``IPTC:Caption-Abstract`` only where an IPTC block already exists (JPEG/TIFF/PSD), re-encoding the
  existing IPTC to UTF-8 and declaring ``CodedCharacterSet``; ``IPTCDigest`` is refreshed when it
  was absent or in sync, exactly as the MWG module does;
* keywords are merged into ``XMP-dc:Subject`` (and ``IPTC:Keywords`` where IPTC exists), never
  dropping one;
* the Windows fields ``XPComment``/``XPSubject``/``XPKeywords`` and EXIF ``UserComment`` are updated
  only where they already hold text, so Windows Explorer does not show a stale description.

The description is written as the ``x-default`` entry of the lang-alt list: other languages stay.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from phototag.exiftool import MetadataError, escape_value

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


IPTC_WRITABLE_TYPES = frozenset({"JPEG", "TIFF", "PSD", "PSB"})
IPTC_CAPTION_LIMIT = 2000  # bytes, IPTC IIM dataset 2:120
IPTC_KEYWORD_LIMIT = 64  # bytes, IPTC IIM dataset 2:25


READ_TAGS = (
    "-File:FileType", "-File:MIMEType", "-ExifTool:Error", "-ExifTool:Warning", "-File:CurrentIPTCDigest",
    "-File:ExifByteOrder", "-IFD0:Make", "-IFD0:Model", "-IFD0:ImageDescription", "-IFD0:XPComment",
    "-IFD0:XPSubject", "-IFD0:XPKeywords", "-ExifIFD:UserComment", "-XMP-x:XMPToolkit", "-XMP-dc:all", "-IPTC:all",
    "-Photoshop:IPTCDigest", "-ExifIFD:DateTimeOriginal", "-XMP-exif:DateTimeOriginal",
)  # fmt: skip


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
        tags = as_mapping(as_mapping(self.original.get("file")).get("tags"))
        for name in (EXIF_DESCRIPTION, XMP_DESCRIPTION, IPTC_CAPTION):
            if holds_text(tags.get(name)):
                return as_text(tags.get(name))
        return None


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
    return vendors_present and all(w in _VENDOR_WORDS or w in boiler or _MODEL_CODE.fullmatch(w) for w in words)


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


def as_list(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def holds_text(value: object) -> bool:
    """True when a field holds text: not absent, empty, blank, NUL padding or binary data."""
    if value is None or isinstance(value, dict):
        return False
    text = as_text(value) or ""
    if text.startswith(("(Binary data ", "base64:")):
        return False
    return bool(text.strip(" \t\r\n\x00"))


def ucs2(text: str) -> str:
    """``text`` as the Windows XP* tags can hold it through ExifTool, which encodes them as UCS-2:
    characters beyond the Basic Multilingual Plane (emoji) become U+FFFD."""
    return "".join(ch if ord(ch) <= 0xFFFF else "\ufffd" for ch in text)


def _xp_keywords(value: object) -> list[str]:
    return [kw.strip() for kw in (as_text(value) or "").split(";") if kw.strip()]


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
        added = missing_keywords(existing, [ucs2(kw) for kw in keywords if ";" not in kw])
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
    make, model = as_text(tags.get("IFD0:Make")), as_text(tags.get("IFD0:Model"))
    exif, xmp, iptc = (as_text(tags.get(k)) for k in (EXIF_DESCRIPTION, XMP_DESCRIPTION, IPTC_CAPTION))
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


def merge_keywords(*lists: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    merged = []
    for items in lists:
        for kw in items:
            if kw.casefold() not in seen:
                seen.add(kw.casefold())
                merged.append(kw)
    return merged


def missing_keywords(existing: Sequence[str], wanted: Sequence[str]) -> list[str]:
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
        return datetime(*parts).isoformat()  # type: ignore[arg-type]
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
        candidate = as_text(sidecar_tags.get(XMP_DESCRIPTION))
        make, model = as_text(file_tags.get("IFD0:Make")), as_text(file_tags.get("IFD0:Model"))
        if not is_junk_description(candidate, make=make, model=model):
            description = candidate
        keywords = merge_keywords(keywords, as_list(sidecar_tags.get(XMP_SUBJECT)))
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
    added = missing_keywords(subject, merge_keywords(choose_keywords(tags), keywords)) if keywords else []
    if added:
        args += [f"-{XMP_SUBJECT}={escape_value(kw)}" for kw in subject + added]
    write_iptc = has_iptc(tags) and str(tags.get("File:FileType")) in IPTC_WRITABLE_TYPES
    if write_iptc:
        iptc_keywords = as_list(tags.get(IPTC_KEYWORDS))
        iptc_added = missing_keywords(iptc_keywords, keywords)
        if not declares_utf8(tags):
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


def declares_utf8(tags: Mapping[str, object]) -> bool:
    return tags.get(IPTC_CHARSET) in ("UTF8", "\x1b%G")  # print-converted or raw (-n)


def has_iptc(tags: Mapping[str, object]) -> bool:
    return any(name.startswith("IPTC:") for name in tags)


def as_mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def check_image(photo: Path, tags: Mapping[str, object]) -> None:
    """Raise MetadataError unless exiftool read ``photo`` as an image."""
    error = tags.get("ExifTool:Error")
    if error:
        raise MetadataError(f"{photo}: {error}")
    mime = str(tags.get("File:MIMEType") or "")
    if not mime.startswith("image/"):
        kind = tags.get("File:FileType") or "unknown"
        raise MetadataError(f"{photo}: not an image exiftool can read (looks like {kind})")
