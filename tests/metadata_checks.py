"""Independent checks of what a metadata write did to a photo, shared by the metadata, CLI and corpus
tests: every tag read by a separate stay-open ``exiftool`` (never phototag's own reader), the tags a
caption write may change, decoded pixels (Pillow + pillow-heif), file digests, leftover temp files;
and a spy on phototag's own exiftool commands (which ran, which writes overlapped).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from phototag.exiftool import ExifTool
from tests.conftest import CORPUS

DATA = Path(__file__).parent / "data" / "metadata"  # small prepared files
EXIFTOOL = shutil.which("exiftool")

# What a caption write may change: the owned fields, ExifTool's bookkeeping, EXIF-mandatory IFD0 tags
# added with a new EXIF block, and layout (offsets, HEIF media data, the WebP "has XMP" flag).
ALLOWED_CHANGES = {
    "XMP-dc:Description", "IFD0:ImageDescription", "IPTC:Caption-Abstract", "XMP-dc:Subject",
    "IPTC:Keywords", "IPTC:CodedCharacterSet", "Photoshop:IPTCDigest", "XMP-x:XMPToolkit",
    "IPTC:EnvelopeRecordVersion", "IFD0:XPComment", "IFD0:XPSubject", "IFD0:XPKeywords", "ExifIFD:UserComment",
}  # fmt: skip
ADDED_WITH_NEW_EXIF = {"IFD0:XResolution", "IFD0:YResolution", "IFD0:ResolutionUnit", "IFD0:YCbCrPositioning"}
LAYOUT = re.compile(r"(Offsets?|Start|MediaDataSize|MediaDataOffset|WebP_Flags)$")
IGNORED_GROUPS = {"SourceFile", "System", "File", "ExifTool", "Composite"}


_READER: list = []  # one independent stay-open exiftool for checks (not the module's session)


def stop_reader() -> None:
    """End the independent exiftool (conftest does, after each test module)."""
    while _READER:
        _READER.pop().terminate()


def exiftool_json(path: Path) -> dict:
    """Independent read: every tag, raw values, duplicates kept (-G1:4 copies folded per group)."""
    if not _READER:
        import exiftool

        _READER.append(exiftool.ExifTool(EXIFTOOL, common_args=[], encoding="utf-8"))
        _READER[0].run()
    args = ["-j", "-a", "-G1:4", "-struct", "-n", "-b", "-charset", "exif=utf8", str(path)]
    out = _READER[0].execute(*args, raw_bytes=True)
    record = json.loads(out.decode("utf-8"), parse_float=str, parse_int=str)[0]
    folded: dict[str, object] = {}
    repeated: set[str] = set()
    for key, value in record.items():
        name = re.sub(r":Copy\d+:", ":", key)
        if name not in folded:
            folded[name] = value
        elif name in repeated:
            folded[name].append(value)
        else:
            folded[name], _ = [folded[name], value], repeated.add(name)
    return folded


def changed_tags(before: dict, after: dict) -> set[str]:
    keys = set(before) | set(after)
    return {
        k
        for k in keys
        if before.get(k) != after.get(k) and k.split(":")[0] not in IGNORED_GROUPS and not LAYOUT.search(k)
    }


def allowed_changes(before: dict, photo: Path) -> set[str]:
    allowed = set(ALLOWED_CHANGES)
    if not any(k.startswith("IFD0:") for k in before):
        allowed |= ADDED_WITH_NEW_EXIF
    if photo.name == "Panasonic_DMC-FZ30.jpg":
        # its maker notes carry a "suspicious offset" that exiftool skips when reading; the rewrite
        # relocates them and the (unchanged) DataDump becomes readable
        allowed.add("Panasonic:DataDump")
    return allowed


def pixels(path: Path) -> tuple[str, tuple[int, int], bytes]:
    from PIL import Image
    from pillow_heif import register_heif_opener

    register_heif_opener()
    with Image.open(path) as im:
        im.load()
        return im.mode, im.size, im.tobytes()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stray_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if "phototag-tmp" in p.name or p.name.endswith("_exiftool_tmp"))


def copy_one(tmp_path: Path, relative: str) -> Path:
    """A writable copy of one corpus file in ``tmp_path``."""
    source = CORPUS / relative
    target = tmp_path / Path(relative).name
    shutil.copyfile(source, target)
    target.chmod(0o644)
    return target


CAPTION = "a brown dog running on a beach"
HOSTILE = (
    ' leading space & <b>"bold"</b> it\'s $HOME @home 100% \\n not-a-newline back\\slash\\'
    "\nsecond line\n-execute\n-all=\n\ttabbed 猫と犬 🐕‍🦺 Ünïcödé émoji 👍🏽  trailing  "
)


def make_jpeg(path: Path) -> None:
    """A small JPEG with no metadata at all."""
    from PIL import Image

    Image.new("RGB", (16, 12), (120, 30, 200)).save(path, quality=90)


_TEMP = re.compile(r"\.(?P<name>.+)\.phototag-tmp")


def _text(arg: str | bytes) -> str:
    return os.fsdecode(arg) if isinstance(arg, bytes) else arg


class WriteSpy:
    """Every exiftool command of any process (``calls``), and which files are being written at once.

    A write is the command that edits a temp copy (``-o TMP`` or ``-overwrite_original TMP``); the file
    it is for is named in the temp's name. Until ``overlap`` writes have been seen at once, a write
    waits up to ``wait_s`` for more to begin."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, overlap: int = 2, wait_s: float = 60.0) -> None:
        self.calls: list[list[str]] = []
        self.active: list[str] = []
        self.max_active = 0
        self.same_file_at_once: list[str] = []
        self._overlap, self._wait_s = overlap, wait_s
        self._seen = False
        self._changed = threading.Condition()
        real = ExifTool._execute

        def execute(tool: ExifTool, args: Any) -> Any:
            text = [_text(a) for a in args]
            self.calls.append(text)
            target = self._target(text)
            if target is None:
                return real(tool, args)
            with self._changed:
                if target in self.active:
                    self.same_file_at_once.append(target)
                self.active.append(target)
                self.max_active = max(self.max_active, len(self.active))
                self._seen = self._seen or len(self.active) >= self._overlap
                self._changed.notify_all()
                self._changed.wait_for(lambda: self._seen, timeout=self._wait_s)
            try:
                return real(tool, args)
            finally:
                with self._changed:
                    self.active.remove(target)

        monkeypatch.setattr(ExifTool, "_execute", execute)

    @staticmethod
    def _target(args: list[str]) -> str | None:
        for flag in ("-o", "-overwrite_original"):
            if flag in args:
                tmp = Path(args[args.index(flag) + 1] if flag == "-o" else args[-1])
                match = _TEMP.match(tmp.name)
                return str(tmp.parent / match.group("name")) if match else None
        return None

    def calls_naming(self, path: Path) -> list[list[str]]:
        return [call for call in self.calls if str(path) in call]
