"""Tests for phototag.metadata against a real exiftool and copies of the real-camera corpus.

Every check of what landed in a file is made with a separate ``exiftool`` process, not with the
module's own reader, and pixels are compared by decoding with Pillow (+ pillow-heif).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from phototag import metadata, mwg, safe_write
from phototag.exiftool import EXIFTOOL_MISSING, MetadataError, escape_value
from phototag.formats import RAW_EXTENSIONS
from phototag.metadata import ExifToolSession, WriteResult
from phototag.mwg import ExistingMetadata, is_junk_description, normalize_caption
from phototag.sidecars import sidecar_path
from tests.conftest import CORPUS, read_only_folder
from tests.metadata_checks import (
    ALLOWED_CHANGES,
    CAPTION,
    DATA,
    EXIFTOOL,
    HOSTILE,
    allowed_changes,
    changed_tags,
    copy_one,
    exiftool_json,
    make_jpeg,
    pixels,
    sha256,
    stray_temp_files,
)

needs_exiftool = pytest.mark.skipif(
    EXIFTOOL is None, reason="exiftool not installed (Debian/Ubuntu: apt-get install libimage-exiftool-perl)"
)
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"test corpus not found at {CORPUS}")

# Tags that must survive any caption write untouched (where the file has them).
KEY_TAGS = (
    "IFD0:Make", "IFD0:Model", "IFD0:Orientation", "ExifIFD:DateTimeOriginal", "GPS:GPSLatitude",
    "GPS:GPSLongitude", "GPS:GPSLatitudeRef", "GPS:GPSLongitudeRef", "GPS:GPSAltitude", "GPS:GPSTimeStamp",
)  # fmt: skip


@pytest.fixture(scope="module")
def session() -> Iterator[ExifToolSession]:
    if EXIFTOOL is None:
        pytest.skip("exiftool not installed (Debian/Ubuntu: apt-get install libimage-exiftool-perl)")
    with ExifToolSession() as et:
        yield et


@pytest.fixture()
def sidecar_session() -> Iterator[ExifToolSession]:
    if EXIFTOOL is None:
        pytest.skip("exiftool not installed")
    with ExifToolSession(mode="sidecar") as et:
        yield et


# --------------------------------------------------------------------------------------------------
# pure functions


@pytest.mark.parametrize(
    "text",
    [
        None, "", "   ", "\x00\x00", "OLYMPUS DIGITAL CAMERA", "OLYMPUS DIGITAL CAMERA         ", "SONY DSC",
        "KONICA MINOLTA DIGITAL CAMERA", "SANYO DIGITAL CAMERA", "DCIM", "Default", "<no description>",
        "Digital Camera", "Kodak Digital Still Camera", "NIKON", "Canon", "Canon EOS 40D", "DSC_0012.JPG",
        "IMG_1234", "P1000123.JPG", "-----", "untitled",
        "a5cb01550dbb9a6bf732f87e413f6e231cc4581e6a5be800fb0871dce0760cd5",
        "<Digimax i50 MP3, Samsung #1 MP3>", "CREATOR: gd-jpeg v1.0 (using IJG JPEG v62), quality = 90",
    ],
)  # fmt: skip
def test_junk_descriptions(text: str | None) -> None:
    assert is_junk_description(text)


@pytest.mark.parametrize(
    "text",
    [
        "A witty caption", "Der Goalie bin ig", "RIGHT-EXIF-Description", "a dog on the beach", "Paris 2019",
        "Route 66", "My old Olympus camera on the table", "Sony A7 in the park", "猫", "Mt. Fuji at dawn",
        "Camera club outing", "Grandma's 90th birthday",
    ],
)  # fmt: skip
def test_human_descriptions(text: str) -> None:
    assert not is_junk_description(text)


def test_junk_uses_make_and_model() -> None:
    assert is_junk_description("WWL     ", make="WWL", model="ION230")
    assert is_junk_description("Caplio RR330", make="RICOH", model="Caplio RR330")
    assert not is_junk_description("WWL office party", make="WWL", model="ION230")


@needs_exiftool
@needs_corpus
def test_junk_detection_on_every_corpus_image_description() -> None:
    human = {"long_description.jpg", "MWG.jpg", "XMP.jpg", "no_exif.jpg", "BlueSquare.jpg"}
    out = subprocess.run(
        [EXIFTOOL, "-r", "-j", "-G1", "-IFD0:ImageDescription", "-IFD0:Make", "-IFD0:Model", str(CORPUS)],
        capture_output=True,
        check=True,
    ).stdout
    seen = 0
    for record in json.loads(out):
        if "IFD0:ImageDescription" not in record:
            continue
        seen += 1
        name = Path(record["SourceFile"]).name
        junk = is_junk_description(
            str(record["IFD0:ImageDescription"]), make=record.get("IFD0:Make"), model=record.get("IFD0:Model")
        )
        assert junk == (name not in human), f"{name}: {record['IFD0:ImageDescription']!r}"
    assert seen > 20


def test_sidecar_path_naming() -> None:
    assert sidecar_path(Path("/p/IMG_1.NEF")) == Path("/p/IMG_1.NEF.xmp")
    assert sidecar_path(Path("/p/IMG_1.NEF"), "base") == Path("/p/IMG_1.xmp")
    with pytest.raises(ValueError):
        sidecar_path(Path("a.jpg"), "other")


def test_temp_path_is_hidden_beside_the_target_and_keeps_the_extension() -> None:
    host, pid = safe_write.HOST_TAG, os.getpid()
    first = safe_write.temp_path(Path("/d/IMG_1.jpg"))
    assert re.fullmatch(rf"\.IMG_1\.jpg\.phototag-tmp-{host}-{pid}-[0-9a-f]{{8}}\.jpg", first.name), first
    assert first.parent == Path("/d") and safe_write.is_temp_name(first.name)
    assert safe_write.temp_owner(first.name) == (host, pid)
    sidecar = safe_write.temp_path(Path("/d/a.nef.xmp"), pid=1234)
    assert re.fullmatch(rf"\.a\.nef\.xmp\.phototag-tmp-{host}-1234-[0-9a-f]{{8}}\.xmp", sidecar.name), sidecar
    long = safe_write.temp_path(Path("/d/" + "é" * 120 + ".heic"))
    assert (
        long.parent == Path("/d")
        and long.name.endswith(".heic")
        and len(os.fsencode(long.name + "_exiftool_tmp")) <= 255
        and safe_write.temp_owner(long.name) == (host, pid)
    )
    # older phototags' names are still temp names, without an owner
    old_name = ".IMG_1.jpg.phototag-tmp.jpg"
    assert safe_write.is_temp_name(old_name) and safe_write.temp_owner(old_name) is None


def test_two_writers_never_share_a_temp_name() -> None:
    """Each write gets its own temp (pid + random part), so one writer never deletes another's."""
    target = Path("/d/IMG_1.jpg")
    names = {safe_write.temp_path(target).name for _ in range(50)}
    assert len(names) == 50
    other = safe_write.temp_path(target, pid=os.getpid() + 1)
    assert other.name not in names and safe_write.temp_owner(other.name) == (safe_write.HOST_TAG, os.getpid() + 1)


def test_raw_extensions() -> None:
    wanted = ".dng .nef .cr2 .cr3 .arw .raf .rw2 .orf .pef .srw .nrw .rwl .3fr .erf .kdc .mrw".split()
    assert set(wanted) <= RAW_EXTENSIONS
    assert ".jpg" not in RAW_EXTENSIONS and ".heic" not in RAW_EXTENSIONS


def test_escape_value_keeps_each_argument_on_one_line() -> None:
    escaped = escape_value(HOSTILE)
    assert "\n" not in escaped and "\r" not in escaped and "\t" not in escaped
    assert escaped.startswith("&#32;")
    assert "&amp;" in escaped and "&#10;" in escaped


def test_caption_line_endings_and_bad_characters() -> None:
    assert normalize_caption("a\r\nb\rc") == "a\nb\nc"
    for bad in ("", "  \n ", "nul\x00inside", "bell\x07"):
        with pytest.raises(MetadataError):
            normalize_caption(bad)


# --------------------------------------------------------------------------------------------------
# session basics


def test_missing_exiftool_names_the_fix() -> None:
    with pytest.raises(MetadataError) as info:
        ExifToolSession("/nonexistent/bin/exiftool")
    assert str(info.value) == EXIFTOOL_MISSING
    assert "\n" not in str(info.value)


@needs_exiftool
def test_version(session: ExifToolSession) -> None:
    assert re.fullmatch(r"\d+\.\d+", session.version())


@needs_exiftool
def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        ExifToolSession(mode="overwrite")
    with pytest.raises(ValueError):
        ExifToolSession(sidecar_naming="lightroom")


# --------------------------------------------------------------------------------------------------
# read


@needs_corpus
@pytest.mark.parametrize(
    ("relative", "description", "keywords"),
    [
        ("jpg/MWG.jpg", "RIGHT-EXIF-Description", ("RIGHT1of2-XMP-Keywords", "RIGHT2of2-XMP-Keywords")),
        ("jpg/IPTC.jpg", "A witty caption", ("ExifTool", "Test", "IPTC")),
        ("jpg/XMP.jpg", "A witty caption", ("ExifTool", "Test", "XMP")),
        ("jpg/xmp/no_exif.jpg", "Der Goalie bin ig", ("tag",)),
        ("jpg/exif-org/olympus-c960.jpg", None, ()),
        ("jpg/Konica_Minolta_DiMAGE_Z3.jpg", None, ()),
        ("jpg/exif-org/sanyo-vpcsx550.jpg", None, ()),
        ("jpg/gps/DSCN0010.jpg", None, ()),
        ("jpg/Samsung_Digimax_i50_MP3.jpg", None, ()),
        ("jpg/WWL_(Polaroid)_ION230.jpg", None, ()),
        ("jpg/corrupted.jpg", None, ()),
        ("raw/Nikon.nef", "A caption", ()),
    ],
)
def test_read_finds_the_human_description(
    session: ExifToolSession, tmp_path: Path, relative: str, description: str | None, keywords: tuple
) -> None:
    photo = copy_one(tmp_path, relative)
    found = session.read(photo)
    assert isinstance(found, ExistingMetadata)
    assert found.description == description
    assert found.keywords == keywords


@needs_corpus
def test_read_long_description(session: ExifToolSession, tmp_path: Path) -> None:
    found = session.read(copy_one(tmp_path, "jpg/long_description.jpg"))
    assert found.description is not None
    assert found.description.startswith("Operation Mountain Viper put the soldiers")
    assert len(found.description) > 300


@needs_corpus
def test_read_original_holds_every_owned_field_as_json(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/MWG.jpg")
    original = session.read(photo).original
    json.dumps(original)  # must be serialisable for the index
    tags = original["file"]["tags"]
    assert tags["XMP-dc:Description"] == "WRONG-XMP-Description"
    assert tags["IFD0:ImageDescription"] == "RIGHT-EXIF-Description"
    assert tags["IPTC:Caption-Abstract"] == "WRONG-IPTC-Description"
    assert tags["IPTC:Keywords"] == ["WRONG1of2-IPTC-Keywords", "WRONG2of2-IPTC-Keywords"]
    assert tags["Photoshop:IPTCDigest"] is None  # absent, recorded as such so a restore can delete it
    assert original["sidecar"] == {"path": str(sidecar_path(photo)), "exists": False, "tags": {}}


@needs_exiftool
def test_read_keeps_number_like_text_exact(session: ExifToolSession, tmp_path: Path) -> None:
    photo = tmp_path / "n.jpg"
    make_jpeg(photo)
    subprocess.run(
        [
            EXIFTOOL,
            "-q",
            "-overwrite_original",
            "-XMP-dc:Description=1.50",
            "-XMP-dc:Subject=007",
            str(photo),
        ],
        check=True,
    )
    found = session.read(photo)
    assert found.description == "1.50" and found.keywords == ("007",)


@needs_exiftool
def test_read_odd_files_raise_one_line_errors(session: ExifToolSession, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\nat all\n")
    for path, reason in (
        (empty, "empty"),
        (text, "not an image"),
        (tmp_path / "missing.jpg", "no such file"),
    ):
        with pytest.raises(MetadataError) as info:
            session.read(path)
        assert reason in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# embedded writes


ROUND_TRIP = [
    "jpg/gps/DSCN0010.jpg",
    "jpg/orientation/portrait_6.jpg",
    "jpg/Canon_40D.jpg",
    "jpg/IPTC.jpg",
    "tiff/BSG1.tiff",
    "tiff/Crémieux11.tiff",
    "generated/gen_png.png",
    "generated/gen_webp_lossy.webp",
    "generated/gen_webp_lossless.webp",
    "generated/gen_webp_exiftool_exif.webp",
    "generated/gen_heic.heic",
    "heic/IMG_5195.HEIC",
    "generated/gen_avif.avif",
]


@needs_corpus
@pytest.mark.parametrize("relative", ROUND_TRIP)
def test_embedded_round_trip_changes_nothing_else(session: ExifToolSession, tmp_path: Path, relative: str) -> None:
    photo = copy_one(tmp_path, relative)
    photo.chmod(0o640)
    before_tags, before_pixels = exiftool_json(photo), pixels(photo)

    result = session.write(photo, CAPTION, ["dog", "beach"])

    assert result == WriteResult("embedded", photo)
    after = exiftool_json(photo)
    assert after["XMP-dc:Description"] == CAPTION
    assert after["IFD0:ImageDescription"] == CAPTION
    assert set(after["XMP-dc:Subject"]) >= {"dog", "beach"}
    assert pixels(photo) == before_pixels
    for tag in KEY_TAGS:
        assert after.get(tag) == before_tags.get(tag), tag
    assert changed_tags(before_tags, after) <= allowed_changes(before_tags, photo)
    assert (photo.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [photo.name]
    assert session.read(photo).description == CAPTION


@needs_corpus
def test_gps_and_dates_survive(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/gps/DSCN0010.jpg")
    session.write(photo, CAPTION)
    after = exiftool_json(photo)
    assert after["GPS:GPSLatitude"].startswith("43.46") and after["GPS:GPSLatitudeRef"] == "N"
    assert after["ExifIFD:DateTimeOriginal"] == "2008:10:22 16:28:39"
    assert after["IFD0:Make"] == "NIKON" and after["IFD0:Model"] == "COOLPIX P6000"


@needs_corpus
@pytest.mark.parametrize("relative", ["jpg/IPTC.jpg", "jpg/gps/DSCN0010.jpg", "heic/IMG_5195.HEIC"])
def test_hostile_caption_round_trips_exactly(session: ExifToolSession, tmp_path: Path, relative: str) -> None:
    photo = copy_one(tmp_path, relative)
    before = exiftool_json(photo)
    session.write(photo, HOSTILE, ["rock & roll", "<tag>", "猫"])
    after = exiftool_json(photo)
    assert after["XMP-dc:Description"] == HOSTILE
    assert after["IFD0:ImageDescription"] == HOSTILE
    assert {"rock & roll", "<tag>", "猫"} <= set(after["XMP-dc:Subject"])
    # "-execute" / "-all=" lines inside the caption must not have reached exiftool as arguments
    assert after.get("IFD0:Make") == before.get("IFD0:Make")
    if "IPTC:Caption-Abstract" in before:
        assert after["IPTC:Caption-Abstract"] == HOSTILE
    assert session.read(photo).description == HOSTILE


@needs_corpus
def test_crlf_is_stored_as_lf(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    session.write(photo, "first\r\nsecond\rthird")
    assert exiftool_json(photo)["XMP-dc:Description"] == "first\nsecond\nthird"


@needs_corpus
def test_iptc_is_updated_only_where_it_exists(session: ExifToolSession, tmp_path: Path) -> None:
    with_iptc = copy_one(tmp_path, "jpg/IPTC.jpg")
    without = copy_one(tmp_path, "jpg/gps/DSCN0010.jpg")
    caption = "猫 on a café table 🐱"
    session.write(with_iptc, caption, ["cat", "test"])
    session.write(without, caption)

    after = exiftool_json(with_iptc)
    assert after["IPTC:Caption-Abstract"] == caption
    assert after["IPTC:CodedCharacterSet"] == "\x1b%G"  # UTF-8 declared
    assert after["IPTC:City"] == "Kingston" and after["IPTC:By-line"] == "Phil Harvey"
    assert after["IPTC:Keywords"] == ["ExifTool", "Test", "IPTC", "cat"]
    assert after["XMP-dc:Subject"] == ["ExifTool", "Test", "IPTC", "cat"]  # synced for XMP-only readers
    # IPTC.jpg's stored IPTCDigest was already stale, so (as MWG says) it is left alone
    assert after["Photoshop:IPTCDigest"] == "05ad1770b1a95f1f9788ac995fa647da"
    assert not any(k.startswith("IPTC:") for k in exiftool_json(without))


@needs_corpus
def test_iptc_digest_refreshed_when_in_sync(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/xmp/BlueSquare.jpg")
    session.write(photo, CAPTION)
    after = exiftool_json(photo)
    assert after["IPTC:Caption-Abstract"] == CAPTION
    assert after["Photoshop:IPTCDigest"] == after["File:CurrentIPTCDigest"]


@needs_exiftool
def test_latin1_iptc_is_reencoded_to_utf8(session: ExifToolSession, tmp_path: Path) -> None:
    photo = tmp_path / "latin.jpg"
    make_jpeg(photo)
    subprocess.run(
        [EXIFTOOL, "-q", "-overwrite_original", "-charset", "iptc=latin", "-IPTC:City=Zürich",
         "-IPTC:Keywords=Bäume", "-IPTC:Caption-Abstract=alt", str(photo)],
        check=True,
    )  # fmt: skip
    session.write(photo, "Straße in 東京", ["Bäume", "Haus"])
    after = exiftool_json(photo)
    assert after["IPTC:City"] == "Zürich"
    assert after["IPTC:Keywords"] == ["Bäume", "Haus"]
    assert after["IPTC:Caption-Abstract"] == "Straße in 東京"


@needs_corpus
def test_keywords_merge_without_dropping_or_duplicating(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/XMP.jpg")
    session.write(photo, CAPTION, ["dog", "test", " Dog ", "猫"])
    session.write(photo, CAPTION, ["dog", "beach"])
    assert exiftool_json(photo)["XMP-dc:Subject"] == ["ExifTool", "Test", "XMP", "dog", "猫", "beach"]
    assert session.read(photo).keywords == ("ExifTool", "Test", "XMP", "dog", "猫", "beach")


@needs_corpus
def test_a_temp_left_beside_the_photo_neither_blocks_a_write_nor_is_touched_by_it(
    session: ExifToolSession, tmp_path: Path
) -> None:
    """A write uses a temp of its own; another's (a crash's, or a live writer's) is left to
    clean_stale_temps, which knows whether its writer still runs."""
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    others = [tmp_path / ".Canon_40D.jpg.phototag-tmp.jpg", safe_write.temp_path(photo, pid=os.getpid() + 1)]
    for other in others:
        other.write_bytes(b"half-written junk")
    session.write(photo, CAPTION)
    assert exiftool_json(photo)["XMP-dc:Description"] == CAPTION
    assert sorted(stray_temp_files(tmp_path)) == sorted(p.name for p in others)
    assert all(p.read_bytes() == b"half-written junk" for p in others)


@needs_corpus
def test_awkward_file_names(session: ExifToolSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    dashed = Path("-all= & (1) 猫.jpg")  # relative, starts like an exiftool option
    shutil.copyfile(CORPUS / "jpg/Canon_40D.jpg", dashed)
    latin1 = Path(os.fsdecode(b"caf\xe9.jpg"))  # not valid UTF-8 on disk
    shutil.copyfile(CORPUS / "jpg/Canon_40D.jpg", latin1)
    for photo in (dashed, latin1):
        assert session.write(photo, CAPTION).kind == "embedded"
        assert session.read(photo).description == CAPTION
    assert exiftool_json(tmp_path / dashed)["IFD0:Make"] == "Canon"


@needs_corpus
def test_read_is_one_exiftool_call(session: ExifToolSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = copy_one(tmp_path, "raw/Nikon.nef")
    shutil.copyfile(DATA / "darktable_sidecar.xmp", sidecar_path(photo))
    calls = []
    real = session.exiftool.run
    monkeypatch.setattr(session.exiftool, "run", lambda args: calls.append(args) or real(args))
    found = session.read(photo)
    assert len(calls) == 1
    assert found.keywords == ("holiday",) and found.original["sidecar"]["exists"] is True


@needs_corpus
def test_several_snapshots_in_one_call_equal_each_ones_own(
    session: ExifToolSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``snapshots`` (the pipeline's read-ahead) reads many photos, sidecars included, in one call, and
    finds for each exactly what its own ``snapshot`` finds; what it cannot read it leaves out."""
    names = ["jpg/Canon_40D.jpg", "jpg/XMP.jpg", "raw/Nikon.nef", "jpg/IPTC.jpg", "heic/IMG_5195.HEIC"]
    photos = [copy_one(tmp_path, name) for name in names]
    shutil.copyfile(DATA / "darktable_sidecar.xmp", sidecar_path(photos[2]))  # the NEF's
    (not_image := tmp_path / "notes.jpg").write_text("not a photo")
    odd = tmp_path / "two\nlines.jpg"  # reached through an alias: a name exiftool's argument stream cannot take
    shutil.copyfile(photos[0], odd)
    gone = tmp_path / "gone.jpg"
    calls: list[object] = []
    real = session.exiftool.run
    monkeypatch.setattr(session.exiftool, "run", lambda args: calls.append(args) or real(args))
    found = session.snapshots([*photos, not_image, gone, odd])
    assert len(calls) == 1
    assert set(found) == {*photos, odd}
    monkeypatch.undo()
    for photo in [*photos, odd]:
        own = session.snapshot(photo)
        got = found[photo]
        assert (got.file_tags, got.sidecar_tags, got.existing, got.stamps) == (
            own.file_tags,
            own.sidecar_tags,
            own.existing,
            own.stamps,
        ), photo.name
    assert found[photos[2]].existing.keywords == ("holiday",)  # from the sidecar
    with pytest.raises(MetadataError):
        session.snapshot(not_image)  # its own read says why
    assert session.snapshots([]) == {} and session.snapshots([gone]) == {}


@needs_corpus
def test_a_link_is_never_written_through_nor_replaced(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    link = tmp_path / "link.jpg"
    link.symlink_to(photo)
    before = photo.read_bytes()
    with pytest.raises(MetadataError, match="symbolic link"):
        session.write(link, CAPTION)
    assert link.is_symlink() and photo.read_bytes() == before
    # a sidecar that is a link (to a file elsewhere) is not replaced or written through either
    raw = copy_one(tmp_path, "raw/DNG.dng")
    elsewhere = tmp_path / "elsewhere.xmp"
    session.write(raw, CAPTION)
    shutil.move(sidecar_path(raw), elsewhere)
    sidecar_path(raw).symlink_to(elsewhere)
    kept = elsewhere.read_bytes()
    with pytest.raises(MetadataError, match="sidecar is a symbolic link"):
        session.write(raw, "another caption")
    assert sidecar_path(raw).is_symlink() and elsewhere.read_bytes() == kept


# --------------------------------------------------------------------------------------------------
# sidecars


@needs_corpus
@pytest.mark.parametrize("relative", ["raw/DNG.dng", "raw/Nikon.nef"])
def test_raw_gets_a_sidecar_and_stays_byte_identical(session: ExifToolSession, tmp_path: Path, relative: str) -> None:
    photo = copy_one(tmp_path, relative)
    digest = sha256(photo)
    result = session.write(photo, HOSTILE, ["dog"])
    assert result == WriteResult("sidecar", photo.with_name(photo.name + ".xmp"))
    assert sha256(photo) == digest
    side = exiftool_json(result.target)
    assert side["XMP-dc:Description"] == HOSTILE
    assert side["XMP-dc:Subject"] == ["dog"] or side["XMP-dc:Subject"] == "dog"
    assert session.read(photo).description == HOSTILE
    assert stray_temp_files(tmp_path) == []


@needs_corpus
def test_sidecar_base_naming(tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "raw/Nikon.nef")
    with ExifToolSession(sidecar_naming="base") as et:
        result = et.write(photo, CAPTION)
    assert result.target == tmp_path / "Nikon.xmp"
    assert exiftool_json(result.target)["XMP-dc:Description"] == CAPTION


@needs_corpus
def test_existing_sidecar_is_merged_not_clobbered(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "raw/Nikon.nef")
    side = sidecar_path(photo)
    shutil.copyfile(DATA / "darktable_sidecar.xmp", side)
    side.chmod(0o600)
    before = exiftool_json(side)
    assert session.read(photo).keywords == ("holiday",)

    session.write(photo, CAPTION, ["dog", "Holiday"])

    after = exiftool_json(side)
    assert after["XMP-dc:Description"] == CAPTION
    assert after["XMP-dc:Subject"] == ["holiday", "dog"]
    history = after["XMP-darktable:History"]
    assert [h["Operation"] for h in history] == ["rawprepare", "exposure"]
    assert history == before["XMP-darktable:History"]
    for tag in ("XMP-crs:Exposure2012", "XMP-acme:Project", "XMP-xmp:Rating", "XMP-lr:HierarchicalSubject",
                "XMP-darktable:History_end", "XMP-exif:DateTimeOriginal"):  # fmt: skip
        assert after[tag] == before[tag], tag
    # exiftool drops the empty darktable:masks_history list; nothing else may go
    lost = {t for t in changed_tags(before, after)} - ALLOWED_CHANGES - {"XMP-darktable:Masks_history"}
    assert not lost
    assert "http://darktable.sf.net/" in side.read_text()
    assert (side.stat().st_mode & 0o777) == 0o600
    assert stray_temp_files(tmp_path) == []


@needs_corpus
def test_new_sidecar_keeps_the_photos_own_keywords(sidecar_session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/IPTC.jpg")
    digest = sha256(photo)
    result = sidecar_session.write(photo, CAPTION, ["dog"])
    assert result == WriteResult("sidecar", tmp_path / "IPTC.jpg.xmp")
    assert sha256(photo) == digest  # mode "sidecar" never touches the original
    assert exiftool_json(result.target)["XMP-dc:Subject"] == ["ExifTool", "Test", "IPTC", "dog"]


@needs_corpus
def test_mode_both_embeds_and_writes_sidecar(tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    with ExifToolSession(mode="both") as et:
        result = et.write(photo, CAPTION)
    assert result.kind == "embedded" and result.also_written == (sidecar_path(photo),)
    assert exiftool_json(photo)["XMP-dc:Description"] == CAPTION
    assert exiftool_json(sidecar_path(photo))["XMP-dc:Description"] == CAPTION


@needs_corpus
def test_refused_file_falls_back_to_sidecar(session: ExifToolSession, tmp_path: Path) -> None:
    # Pillow wrote this TIFF's EXIF with a broken InteropIFD; exiftool refuses to rewrite it.
    photo = copy_one(tmp_path, "generated/gen_tiff.tif")
    digest = sha256(photo)
    result = session.write(photo, CAPTION)
    assert result.kind == "sidecar" and result.target == sidecar_path(photo)
    assert result.fallback_reason and "InteropIFD" in result.fallback_reason
    assert sha256(photo) == digest
    assert exiftool_json(result.target)["XMP-dc:Description"] == CAPTION
    assert stray_temp_files(tmp_path) == []


@needs_corpus
def test_partial_write_falls_back_to_sidecar(
    session: ExifToolSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    digest = sha256(photo)
    real = safe_write.caption_problems

    def embed_lost_exif(tags: dict, caption: str, keywords: list, **kw: bool) -> list[str]:
        if kw.get("exif", True):  # the embedded read-back: pretend EXIF did not take the caption
            return ["IFD0:ImageDescription reads back as None"]
        return real(tags, caption, keywords, **kw)

    monkeypatch.setattr(metadata, "caption_problems", embed_lost_exif)
    result = session.write(photo, CAPTION)
    assert result.kind == "sidecar" and "partial write" in (result.fallback_reason or "")
    assert sha256(photo) == digest
    assert stray_temp_files(tmp_path) == []


def test_unexpected_changes_rules() -> None:
    before = {
        "IFD0:Make": "NIKON", "IFD0:ImageDescription": "old", "IFD1:ThumbnailOffset": "100",
        "XMP-darktable:Masks_history": "", "System:FileSize": "10", "XMP-acme:Project": "trip",
    }  # fmt: skip
    same = {**before, "IFD0:ImageDescription": "new", "IFD1:ThumbnailOffset": "140", "System:FileSize": "12"}
    del same["XMP-darktable:Masks_history"]
    assert safe_write.unexpected_changes(before, {**same, "IFD0:Artist": "added tags are not losses"}) == []
    assert safe_write.unexpected_changes(before, {**same, "IFD0:Make": "Nikon"}) == [
        "IFD0:Make changed from 'NIKON' to 'Nikon'"
    ]
    del same["XMP-acme:Project"]
    assert safe_write.unexpected_changes(before, same) == ["XMP-acme:Project removed"]


@needs_corpus
def test_write_that_would_touch_another_tag_falls_back(
    session: ExifToolSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = copy_one(tmp_path, "jpg/gps/DSCN0010.jpg")
    digest = sha256(photo)
    real = mwg.embed_args

    def sloppy_args(*args: object) -> tuple[list[str], bool]:  # a bug that also rewrites the camera model
        found, iptc = real(*args)
        return [*found, "-IFD0:Model=Something Else"], iptc

    monkeypatch.setattr(metadata, "embed_args", sloppy_args)
    result = session.write(photo, CAPTION)
    assert result.kind == "sidecar" and "IFD0:Model changed" in (result.fallback_reason or "")
    assert sha256(photo) == digest
    assert stray_temp_files(tmp_path) == []


@needs_corpus
def test_read_only_photo_falls_back_to_sidecar(session: ExifToolSession, tmp_path: Path) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    photo.chmod(0o444)  # the mode bits are respected even by root, who could replace the file anyway
    digest = sha256(photo)
    result = session.write(photo, CAPTION)
    assert result.kind == "sidecar" and "read-only" in (result.fallback_reason or "")
    assert sha256(photo) == digest


# --------------------------------------------------------------------------------------------------
# failures leave the original alone


@pytest.fixture()
def locked_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can create files in: chmod for ordinary users, chattr +i for root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    shutil.copyfile(CORPUS / "jpg/Canon_40D.jpg", folder / "photo.jpg")
    with read_only_folder(folder):
        yield folder


@needs_corpus
def test_read_only_folder_raises_and_keeps_original(session: ExifToolSession, locked_dir: Path) -> None:
    photo = locked_dir / "photo.jpg"
    digest = sha256(photo)
    with pytest.raises(MetadataError) as info:
        session.write(photo, CAPTION)
    assert "\n" not in str(info.value) and "photo.jpg" in str(info.value)
    assert sha256(photo) == digest
    assert sorted(p.name for p in locked_dir.iterdir()) == ["photo.jpg"]


@needs_corpus
def test_failed_replace_raises_and_cleans_up(
    session: ExifToolSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = copy_one(tmp_path, "jpg/IPTC.jpg")
    digest = sha256(photo)

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safe_write.os, "replace", disk_full)
    with pytest.raises(MetadataError, match="No space left"):
        session.write(photo, CAPTION)
    assert sha256(photo) == digest
    assert stray_temp_files(tmp_path) == []


@needs_exiftool
def test_unreadable_sidecar_is_left_alone(sidecar_session: ExifToolSession, tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    make_jpeg(photo)
    side = sidecar_path(photo)
    side.write_text("<x:xmpmeta>not xml at all")
    digests = sha256(photo), sha256(side)
    with pytest.raises(MetadataError, match="sidecar"):
        sidecar_session.write(photo, CAPTION)
    assert (sha256(photo), sha256(side)) == digests
    assert stray_temp_files(tmp_path) == []


@needs_exiftool
def test_non_image_is_refused_without_a_sidecar(session: ExifToolSession, tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("shopping list\n")
    with pytest.raises(MetadataError, match="not an image"):
        session.write(fake, CAPTION)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.jpg"]


@needs_corpus
def test_concurrent_writes_share_one_session(session: ExifToolSession, tmp_path: Path) -> None:
    photos = []
    for i in range(6):
        photos.append(tmp_path / f"p{i}.jpg")
        shutil.copyfile(CORPUS / "jpg/gps/DSCN0012.jpg", photos[-1])
    errors: list[BaseException] = []

    def work(p: Path) -> None:
        try:
            session.write(p, f"caption for {p.stem}")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in photos]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for p in photos:
        assert exiftool_json(p)["XMP-dc:Description"] == f"caption for {p.stem}"


# --------------------------------------------------------------------------------------------------
# the whole corpus


@needs_corpus
@pytest.mark.corpus
def test_every_corpus_file_is_captioned_safely(session: ExifToolSession, tmp_path: Path) -> None:
    """Each file either embeds the caption with pixels and other tags intact, or gets a sidecar and
    stays byte-identical."""
    outcomes = {}
    for source in sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md"):
        folder = tmp_path / source.parent.relative_to(CORPUS)
        folder.mkdir(parents=True, exist_ok=True)
        photo = folder / source.name
        shutil.copyfile(source, photo)
        digest, before = sha256(photo), exiftool_json(photo)
        result = session.write(photo, HOSTILE, ["phototag"])
        outcomes[str(source.relative_to(CORPUS))] = result.kind
        if result.kind == "sidecar":
            assert sha256(photo) == digest, source
            assert exiftool_json(result.target)["XMP-dc:Description"] == HOSTILE, source
            continue
        after = exiftool_json(photo)
        assert after["XMP-dc:Description"] == HOSTILE and after["IFD0:ImageDescription"] == HOSTILE, source
        allowed = allowed_changes(before, photo)
        assert changed_tags(before, after) <= allowed, (source, changed_tags(before, after) - allowed)
    assert stray_temp_files(tmp_path) == []
    sidecars = sorted(name for name, kind in outcomes.items() if kind == "sidecar")
    assert sidecars == ["generated/gen_tiff.tif", "raw/DNG.dng", "raw/Nikon.nef"]


@needs_corpus
@pytest.mark.corpus
def test_pixels_unchanged_across_formats(session: ExifToolSession, tmp_path: Path) -> None:
    big_and_odd = (
        "generated/big_4000x3000_q92.jpg",
        "heic/mobile/iphone_13_pro_max.HEIC",
        "heic/mobile/HMD_Nokia_8.3_5G.heif",
        "tiff/Rudless.tiff",
        "jpg/corrupted.jpg",
    )
    for relative in big_and_odd:
        photo = copy_one(tmp_path, relative)
        before = pixels(photo)
        assert session.write(photo, CAPTION).kind == "embedded", relative
        assert pixels(photo) == before, relative


def test_exiftool_dying_mid_call_fails_the_call_and_restarts(corpus: Path) -> None:
    """pyexiftool alone spins forever on a dead exiftool; the session must fail fast and recover."""
    import contextlib
    import signal

    from phototag.exiftool import MetadataError
    from phototag.metadata import ExifToolSession

    with ExifToolSession() as session:
        pid = session.exiftool.pid

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        threading.Timer(0.3, kill).start()
        started = time.monotonic()
        with pytest.raises(MetadataError, match="exiftool"):
            for _ in range(200):  # a slow read of the whole corpus, many times, until the kill lands
                session.exiftool.run(["-j", "-a", "-G1", "-r", str(corpus)])
        assert time.monotonic() - started < 30
        assert session.read(corpus / "jpg/Canon_40D.jpg").description is None  # a fresh exiftool answers
