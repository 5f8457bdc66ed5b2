"""One list of photo formats: every RAW format ExifTool reads is scanned, watched and captioned."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from phototag import formats, imaging, sidecars
from phototag.cli import main
from phototag.config import Settings
from phototag.index import PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.scan import walk_photos
from phototag.watch import WatchDaemon
from tests.conftest import REPO, copy_from_corpus, write_config

# RAW formats the old scan list missed although the sidecar writer knew them.
ONCE_MISSING = (".iiq", ".raw", ".mef", ".mos", ".fff", ".dcr", ".k25", ".gpr", ".ori", ".rwz", ".srw")


def test_every_raw_extension_is_walked_in_any_case(tmp_path: Path) -> None:
    expected = set()
    for ext in sorted(formats.RAW_EXTENSIONS):
        for name in (f"a{ext}", f"B{ext.upper()}"):
            (tmp_path / name).write_bytes(b"x")  # the walk looks at names only
            expected.add(tmp_path / name)
    (tmp_path / "a.raw.xmp").write_bytes(b"x")  # a sidecar is not a photo
    (tmp_path / ".hidden.iiq").write_bytes(b"x")
    assert set(walk_photos([tmp_path])) == expected
    assert set(ONCE_MISSING) <= formats.RAW_EXTENSIONS
    assert len(formats.RAW_EXTENSIONS) >= 41


def test_every_raw_extension_is_watched_and_treated_as_raw(tmp_path: Path, settings: Settings) -> None:
    index = PhotoIndex(settings.db_path())
    with ExifToolSession() as exiftool:
        daemon = WatchDaemon(settings, [tmp_path], index=index, exiftool=exiftool)
        for ext in sorted(formats.RAW_EXTENSIONS):
            assert daemon._watched(str(tmp_path / f"IMG_1{ext.upper()}")), ext
            assert sidecars.is_raw(tmp_path / f"IMG_1{ext}") and imaging.is_raw_path(f"IMG_1{ext}"), ext
    index.close()
    assert not formats.is_raw_path("a.jpg") and not formats.is_raw_path("a.heic")
    assert imaging.IMAGE_EXTENSIONS is formats.IMAGE_EXTENSIONS and sidecars.is_raw_path is formats.is_raw_path


def test_no_second_copy_of_the_extension_lists() -> None:
    """Only formats.py spells out extensions: a copy elsewhere would drift again."""
    literal = re.compile(r"""["'\s]\.(iiq|nef|cr2|heic|jfif|arw)\b""")
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "phototag").rglob("*.py"))
        if path.name != "formats.py" and literal.search(path.read_text(encoding="utf-8").split('"""', 2)[-1])
    ]
    assert offenders == []


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_once_missing_raw_formats_are_captioned_with_a_sidecar(tmp_path: Path, tiny_model: Path) -> None:
    """A real DNG under the names of formats the scan used to skip: each is captioned, original untouched."""
    lib = tmp_path / "lib"
    (dng,) = copy_from_corpus(["raw/DNG.dng"], tmp_path / "src")
    photos = []
    for ext in (".iiq", ".raw", ".mef", ".mos", ".fff"):
        target = lib / f"shot{ext.upper()}"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(dng, target)
        photos.append(target)
    original = dng.read_bytes()
    config = write_config(tmp_path, tiny_model)
    result = CliRunner().invoke(main, ["--config", str(config), "backfill", str(lib), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "captioned 5," in result.output and "failed 0" in result.output
    with ExifToolSession() as exiftool:
        for photo in photos:
            assert photo.read_bytes() == original
            sidecar = photo.with_name(photo.name + ".xmp")
            assert exiftool.read(photo).description, photo  # read back from the sidecar
            assert sidecar.is_file()
