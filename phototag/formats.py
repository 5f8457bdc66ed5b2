"""Which files are photos: the one list of extensions that scanning, watching, decoding and sidecars share.

No imports beyond the standard library, so every room (the walker, the watch daemon, the metadata
writer) can ask without loading Pillow or exiftool.
"""

from __future__ import annotations

import os

# Camera RAW formats. ExifTool reads each of them (by content, whatever the extension) and writes an
# XMP sidecar beside it; captions come from the embedded JPEG preview. ExifTool 12.57's `-listf` and
# `-listwf` name most of them; the rest are TIFF-based variants (Kodak .dcs/.drf, Phase One .cap,
# Pentax .ptx, ...) it reads as TIFF.
RAW_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".3fr", ".ari", ".arq", ".arw", ".bay", ".braw", ".cap", ".ciff", ".cr2", ".cr3", ".crw",
        ".cs1", ".dcr", ".dcs", ".dng", ".drf", ".eip", ".erf", ".fff", ".gpr", ".iiq", ".k25",
        ".kdc", ".mdc", ".mef", ".mos", ".mrw", ".nef", ".nrw", ".orf", ".ori", ".pef", ".ptx",
        ".pxn", ".r3d", ".raf", ".raw", ".rw2", ".rwl", ".rwz", ".sr2", ".srf", ".srw", ".x3f",
    }
)  # fmt: skip

# Formats Pillow (with pillow-heif) decodes itself.
DECODABLE_EXTENSIONS: frozenset[str] = frozenset(
    ".jpg .jpeg .jpe .jfif .png .tif .tiff .webp .heic .heif .hif .avif .bmp .gif".split()
)

# What the scan and the watch daemon pick up.
IMAGE_EXTENSIONS: frozenset[str] = DECODABLE_EXTENSIONS | RAW_EXTENSIONS

# Photos phototag does not scan, but which may share a base name with one it does (so "base" sidecar
# naming must not hand their IMG_1.xmp to another photo).
PAIRED_EXTENSIONS: frozenset[str] = IMAGE_EXTENSIONS | {".psd", ".jxl"}


def extension(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """A photo phototag captions, judged by its name alone (hidden files never are)."""
    name = os.path.basename(os.fspath(path))
    if name.startswith("."):
        return False
    return extension(name) in IMAGE_EXTENSIONS


def is_raw_path(path: str | os.PathLike[str]) -> bool:
    return extension(path) in RAW_EXTENSIONS
