"""Metadata fidelity beyond the basic write: Windows fields, other languages, sidecar names, what a
replace keeps (mode, owner, xattrs, mtime, hard links), crash leftovers, and restore.

Real exiftool, copies of real corpus files; checks read back with an independent exiftool process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from phototag import restore
from phototag.exiftool import MetadataError
from phototag.metadata import ExifToolSession
from phototag.mwg import if_present_values, ucs2
from phototag.restore import RestoreResult, restore_args
from phototag.safe_write import clean_stale_temps, temp_path
from phototag.sidecars import sidecar_for, sidecar_path
from tests.conftest import CORPUS, dead_pid
from tests.metadata_checks import (
    CAPTION,
    DATA,
    EXIFTOOL,
    HOSTILE,
    changed_tags,
    copy_one,
    exiftool_json,
    make_jpeg,
    sha256,
    stray_temp_files,
)

pytestmark = pytest.mark.skipif(EXIFTOOL is None or not CORPUS.is_dir(), reason="needs exiftool and the corpus")

TRICKY = 'line one & <b>"two"</b>\n猫と犬 🐕 Ünïcödé  '


def et(*args: str | Path) -> None:
    """Prepare a test file with the exiftool command line (independent of the module under test)."""
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def session() -> ExifToolSession:
    with ExifToolSession() as et_session:
        yield et_session


# --------------------------------------------------------------------------------------------------
# Windows XP* fields and EXIF UserComment: updated only where they already hold text


def test_windows_fields_are_updated_only_where_they_hold_text(session: ExifToolSession, tmp_path: Path) -> None:
    with_text = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    et("-XPComment=old comment", "-XPSubject=old subject", "-UserComment=old user comment",
       "-XPKeywords=family;Grandma", with_text)  # fmt: skip
    empty = copy_one(tmp_path, "jpg/gps/DSCN0010.jpg")  # UserComment present but empty
    assert exiftool_json(empty)["ExifIFD:UserComment"] == ""

    session.write(with_text, TRICKY, ["dog", "猫", "a;b"])
    session.write(empty, TRICKY, ["dog"])

    after = exiftool_json(with_text)
    assert after["IFD0:XPComment"] == ucs2(TRICKY) == TRICKY.replace("🐕", "\ufffd")
    assert after["IFD0:XPSubject"] == ucs2(TRICKY)
    assert after["ExifIFD:UserComment"] == TRICKY.rstrip(" ")  # exiftool trims trailing blanks on reading
    assert after["IFD0:XPKeywords"] == "family;Grandma;dog;猫"  # merged; ";" cannot live inside one
    untouched = exiftool_json(empty)
    assert untouched["ExifIFD:UserComment"] == ""
    assert not {"IFD0:XPComment", "IFD0:XPSubject", "IFD0:XPKeywords"} & set(untouched)


@pytest.mark.parametrize("value", [None, "", "   ", "\x00\x00", "(Binary data 264 bytes, use -b option to extract)"])
def test_no_text_means_no_write(value: object) -> None:
    tags = {"IFD0:XPComment": value, "ExifIFD:UserComment": value, "IFD0:XPKeywords": value}
    assert if_present_values(CAPTION, ["dog"], tags) == {}


def test_other_languages_of_the_description_survive(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    et("-XMP-dc:Description-de=Ein Hund", "-XMP-dc:Description-x-default=a dog", photo)
    session.write(photo, CAPTION)
    after = exiftool_json(photo)
    assert after["XMP-dc:Description"] == CAPTION and after["XMP-dc:Description-de"] == "Ein Hund"


# --------------------------------------------------------------------------------------------------
# sidecar names


def test_base_naming_never_gives_two_photos_one_sidecar(tmp_path: Path) -> None:
    for name in ("IMG_1.JPG", "IMG_1.CR2", "IMG_2.jpg", "IMG_2.heic", "IMG_3.JPG", "IMG_1.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert sidecar_for(tmp_path / "IMG_1.CR2", "base") == tmp_path / "IMG_1.xmp"  # the RAW owns it
    assert sidecar_for(tmp_path / "IMG_1.JPG", "base") == tmp_path / "IMG_1.JPG.xmp"
    assert sidecar_for(tmp_path / "IMG_2.heic", "base") == tmp_path / "IMG_2.xmp"  # first in sorted order
    assert sidecar_for(tmp_path / "IMG_2.jpg", "base") == tmp_path / "IMG_2.jpg.xmp"
    assert sidecar_for(tmp_path / "IMG_3.JPG", "base") == tmp_path / "IMG_3.xmp"  # alone: base naming
    assert sidecar_for(tmp_path / "IMG_1.JPG", "ext") == tmp_path / "IMG_1.JPG.xmp"


def test_raw_and_jpeg_pair_keep_separate_sidecars(tmp_path: Path) -> None:
    raw = copy_one(tmp_path, "raw/DNG.dng").rename(tmp_path / "IMG_1.DNG")
    jpeg = copy_one(tmp_path, "jpg/Canon_40D.jpg").rename(tmp_path / "IMG_1.JPG")
    with ExifToolSession(mode="sidecar", sidecar_naming="base") as et_session:
        assert et_session.write(raw, "the raw one").target == tmp_path / "IMG_1.xmp"
        assert et_session.write(jpeg, "the jpeg one").target == tmp_path / "IMG_1.JPG.xmp"
        assert et_session.read(raw).description == "the raw one"
        assert et_session.read(jpeg).description == "the jpeg one"
    assert exiftool_json(tmp_path / "IMG_1.xmp")["XMP-dc:Description"] == "the raw one"


# --------------------------------------------------------------------------------------------------
# what a replace keeps


def test_keep_mtime(tmp_path: Path) -> None:
    kept, changed = (copy_one(tmp_path, "jpg/Canon_40D.jpg"), tmp_path / "other.jpg")
    shutil.copyfile(kept, changed)
    old = 1_500_000_000_123_456_789
    for photo in (kept, changed):
        os.utime(photo, ns=(old, old))
    with ExifToolSession(keep_mtime=True) as et_session:
        et_session.write(kept, CAPTION)
    with ExifToolSession() as et_session:
        et_session.write(changed, CAPTION)
    assert kept.stat().st_mtime_ns == old and exiftool_json(kept)["XMP-dc:Description"] == CAPTION
    assert changed.stat().st_mtime_ns != old


def test_owner_and_extended_attributes_survive(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    try:
        os.setxattr(photo, "user.xdg.tags", b"favourite")
    except (AttributeError, OSError):
        pytest.skip("no user extended attributes on this file system")
    if os.geteuid() == 0:
        os.chown(photo, 4321, 8765)
    before = photo.stat()
    session.write(photo, CAPTION)
    after = photo.stat()
    assert after.st_ino != before.st_ino  # really replaced, not edited in place
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert os.getxattr(photo, "user.xdg.tags") == b"favourite"


def test_hard_linked_photo_gets_a_sidecar(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    other = tmp_path / "album" / "same.jpg"
    other.parent.mkdir()
    os.link(photo, other)
    digest = sha256(photo)
    result = session.write(photo, CAPTION)
    assert result.kind == "sidecar" and "hard links" in (result.fallback_reason or "")
    assert sha256(photo) == digest and os.path.samefile(photo, other)


# --------------------------------------------------------------------------------------------------
# temp files a crash leaves


def test_stale_temps_are_cleaned_and_nothing_else(tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    sub = tmp_path / "2019"
    sub.mkdir()
    hidden = tmp_path / ".thumbnails"
    hidden.mkdir()
    gone = dead_pid()
    old_format = tmp_path / f".{photo.name}.phototag-tmp.jpg"  # an older phototag's name: age decides
    stale = [
        temp_path(photo, pid=gone),  # its writer is dead: a leftover however young
        Path(f"{temp_path(photo, pid=gone)}_exiftool_tmp"),
        temp_path(sidecar_path(sub / "IMG_1.NEF"), pid=gone),
        temp_path(sub / ("x" * 250 + ".jpg"), pid=gone),  # the hashed name used for very long names
        old_format,
        temp_path(sub / "far.jpg", host="0123abcd"),  # another machine's, an hour old
    ]
    keep = [
        tmp_path / "photo.jpg_exiftool_tmp",  # a person's own exiftool run: not ours
        tmp_path / ".phototag-tmp.jpg",
        tmp_path / "notes.phototag-tmp.txt",
        hidden / ".a.jpg.phototag-tmp.jpg",  # phototag never writes in hidden folders
        temp_path(sub / "alive.jpg"),  # a live writer's (this process): kept however old
        sub / ".young.jpg.phototag-tmp.jpg",  # may belong to a phototag running right now
        temp_path(sub / "near.jpg", host="0123abcd"),  # another machine's, young: may be a write
    ]
    for path in stale + keep:
        path.write_bytes(b"half-written")
    now = time.time()
    for path in [*stale, *keep[:-2]]:
        if path not in stale[:4]:  # the dead writer's stay young: its death alone makes them stale
            os.utime(path, (now - 3600, now - 3600))
    assert sorted(clean_stale_temps([tmp_path])) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert photo.exists()
    # a file root cleans its own folder
    stale[0].write_bytes(b"x")
    assert clean_stale_temps([photo]) == [stale[0]]


# --------------------------------------------------------------------------------------------------
# restore


def _roundtrip(session: ExifToolSession, photo: Path, caption: str = HOSTILE) -> tuple[dict, RestoreResult]:
    """Write then restore through the index's JSON; returns the tags before and the restore result."""
    before = exiftool_json(photo)
    original = json.loads(json.dumps(session.read(photo).original))  # as the index stores it
    session.write(photo, caption, ["dog", "猫"])
    return before, session.restore(photo, original)


@pytest.mark.parametrize(
    "relative",
    [
        "jpg/Canon_40D.jpg",  # no XMP, no IPTC: both disappear again
        "jpg/IPTC.jpg",  # Latin-1 IPTC, no EXIF: IPTC re-encoded back, EXIF block removed
        "jpg/MWG.jpg",  # EXIF, IPTC and XMP disagreeing
        "jpg/xmp/no_exif.jpg",  # Windows XP fields with text, IPTC record 1 without a version
        "jpg/orientation/landscape_1.jpg",  # IPTC with only a record version
        "jpg/PaintTool_sample.jpg",  # UserComment holding a hash
        "generated/gen_png.png",
        "generated/gen_webp_lossy.webp",
        "heic/IMG_5195.HEIC",
        "tiff/BSG1.tiff",
    ],
)
def test_restore_brings_back_every_value(session: ExifToolSession, tmp_path: Path, relative: str) -> None:
    photo = copy_one(tmp_path, relative)
    digest = sha256(photo)
    before, result = _roundtrip(session, photo)
    assert result.photo
    assert changed_tags(before, exiftool_json(photo)) == set()
    if relative == "jpg/Canon_40D.jpg":
        assert sha256(photo) == digest  # even byte for byte, where no IPTC or XMP had to be re-serialised
    assert stray_temp_files(tmp_path) == []


def test_restore_of_latin1_iptc_and_created_exif_is_byte_exact(session: ExifToolSession, tmp_path: Path) -> None:
    photo = tmp_path / "latin.jpg"
    make_jpeg(photo)  # no EXIF at all
    et("-charset", "iptc=latin", "-IPTC:City=Zürich", "-IPTC:Keywords=Bäume", "-IPTC:Caption-Abstract=", photo)
    digest = sha256(photo)
    before, result = _roundtrip(session, photo, "Straße in 東京")
    assert result.photo and sha256(photo) == digest
    assert "IFD0:ImageDescription" not in exiftool_json(photo)


def test_restore_of_an_untouched_photo_writes_nothing(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    original = session.read(photo).original
    inode, mtime = photo.stat().st_ino, photo.stat().st_mtime_ns
    assert session.restore(photo, original) == RestoreResult(photo=False)
    assert (photo.stat().st_ino, photo.stat().st_mtime_ns) == (inode, mtime)


def test_restore_puts_back_an_empty_but_present_description(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    et("-IFD0:ImageDescription^=", photo)
    assert exiftool_json(photo)["IFD0:ImageDescription"] == ""
    before, _ = _roundtrip(session, photo)
    assert exiftool_json(photo)["IFD0:ImageDescription"] == ""
    assert changed_tags(before, exiftool_json(photo)) == set()


def test_restore_removes_the_sidecar_phototag_created(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "raw/DNG.dng")
    digest = sha256(photo)
    _, result = _roundtrip(session, photo)
    assert result == RestoreResult(photo=False, sidecar="removed", sidecar_path=sidecar_path(photo))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DNG.dng"] and sha256(photo) == digest


def test_restore_keeps_what_another_tool_added_to_our_sidecar(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "raw/DNG.dng")
    original = session.read(photo).original
    session.write(photo, CAPTION, ["dog"])
    et("-XMP-xmp:Rating=4", "-XMP-crs:Exposure2012=+1.0", sidecar_path(photo))  # e.g. Lightroom, later
    result = session.restore(photo, original)
    assert result.sidecar == "stripped"
    side = exiftool_json(sidecar_path(photo))
    assert side["XMP-xmp:Rating"] == "4" and side["XMP-crs:Exposure2012"] == "+1.0"
    assert "XMP-dc:Description" not in side and "XMP-dc:Subject" not in side


def test_restore_gives_a_darktable_sidecar_its_own_values_back(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "raw/Nikon.nef")
    side = sidecar_path(photo)
    shutil.copyfile(DATA / "darktable_sidecar.xmp", side)
    before = exiftool_json(side)
    _, result = _roundtrip(session, photo)
    assert result.sidecar == "restored"
    after = exiftool_json(side)
    assert after["XMP-dc:Subject"] == ["holiday"] and "XMP-dc:Description" not in after
    assert after["XMP-darktable:History"] == before["XMP-darktable:History"]
    assert changed_tags(before, after) <= {"XMP-darktable:Masks_history"}  # exiftool drops the empty list


def test_restore_follows_a_moved_photo(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "raw/DNG.dng")
    original = json.loads(json.dumps(session.read(photo).original))
    session.write(photo, CAPTION)
    moved = tmp_path / "moved"
    moved.mkdir()
    photo.rename(moved / "DNG.dng")
    sidecar_path(photo).rename(sidecar_path(moved / "DNG.dng"))
    assert session.restore(moved / "DNG.dng", original).sidecar == "removed"
    assert sorted(p.name for p in moved.iterdir()) == ["DNG.dng"]


def test_failed_restore_leaves_the_photo_alone(
    session: ExifToolSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = copy_one(tmp_path, "jpg/gps/DSCN0010.jpg")
    original = session.read(photo).original
    session.write(photo, CAPTION)
    digest = sha256(photo)
    real = restore.restore_args

    def sloppy(*args: object) -> tuple[list[str], dict]:  # a bug that would also change the camera model
        found, targets = real(*args)
        return [*found, "-IFD0:Model=Something Else"], targets

    monkeypatch.setattr(restore, "restore_args", sloppy)
    with pytest.raises(MetadataError, match="IFD0:Model changed") as info:
        session.restore(photo, original)
    assert "\n" not in str(info.value)
    assert sha256(photo) == digest and stray_temp_files(tmp_path) == []
    photo.chmod(0o444)
    monkeypatch.setattr(restore, "restore_args", real)
    with pytest.raises(MetadataError, match="read-only"):
        session.restore(photo, original)


def test_restore_args_only_touch_what_differs() -> None:
    original = {"XMP-dc:Description": None, "IFD0:ImageDescription": "old", "XMP-dc:Subject": ["a"]}
    current = {"XMP-dc:Description": "new", "IFD0:ImageDescription": "new", "XMP-dc:Subject": ["a", "dog"],
               "XMP-x:XMPToolkit": "Image::ExifTool 12.57"}  # fmt: skip
    args, targets = restore_args(original, {"xmp_toolkit": None}, current)
    assert args == ["-ex", "-XMP-dc:Description-x-default=", "-IFD0:ImageDescription=old", "-XMP-dc:Subject=a",
                    "-XMP-x:XMPToolkit="]  # fmt: skip
    assert targets["IFD0:ImageDescription"] == "old"
    assert restore_args(original, {}, {**original}) == ([], {})
