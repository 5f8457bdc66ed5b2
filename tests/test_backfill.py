"""End to end: backfill a folder of real camera files with the tiny model, then search it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from phototag.imaging import load_rgb
from phototag.index import PhotoIndex
from tests.conftest import copy_from_corpus, rgb_pixels, write_config
from tests.conftest import run_cli as run

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

PHOTOS = [
    "jpg/gps/DSCN0010.jpg",
    "jpg/gps/DSCN0012.jpg",
    "jpg/Canon_40D.jpg",
    "jpg/exif-org/olympus-c960.jpg",
    "jpg/orientation/portrait_6.jpg",
    "jpg/exif-org/nikon-e950.jpg",
    "jpg/long_description.jpg",
    "generated/gen_png.png",
    "generated/gen_webp_lossy.webp",
    "generated/gen_heic.heic",
    "tiff/BSG1.tiff",
    "raw/Nikon.nef",
    "raw/DNG.dng",
]
KEPT_TAGS = [
    "EXIF:GPSLatitude",
    "EXIF:GPSLongitude",
    "EXIF:DateTimeOriginal",
    "EXIF:Orientation",
    "EXIF:Make",
    "EXIF:Model",
]


def exiftool_json(*paths: Path, args: tuple[str, ...] = ("-G", "-n")) -> list[dict]:
    out = subprocess.run(["exiftool", "-j", *args, *map(str, paths)], capture_output=True, text=True)
    return json.loads(out.stdout) if out.stdout.strip() else []


@pytest.fixture
def library(tmp_path: Path, corpus: Path) -> Path:
    lib = tmp_path / "Pictures"
    copy_from_corpus(PHOTOS, lib / "2019")
    (lib / "junk").mkdir()
    (lib / "junk" / "empty.jpg").write_bytes(b"")
    (lib / "junk" / "notes.jpg").write_text("this is not a photo\n")
    data = (corpus / "jpg/gps/DSCN0021.jpg").read_bytes()
    (lib / "junk" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return lib


@pytest.fixture
def config(tmp_path: Path, tiny_model: Path) -> Path:
    return write_config(tmp_path, tiny_model)


def test_backfill_captions_writes_metadata_and_search_finds(library: Path, config: Path, tmp_path: Path) -> None:
    photos = sorted(p for p in library.rglob("*") if p.is_file())
    before = {p: exiftool_json(p)[0] for p in photos if p.suffix.lower() not in (".jpg",) or p.stat().st_size}
    before_pixels = {
        p: rgb_pixels(p) for p in photos if p.parent.name == "2019" and p.suffix.lower() not in (".nef", ".dng")
    }
    before_bytes = {p: p.read_bytes() for p in photos}

    result = run(config, "backfill", str(library), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "failed 3" in result.output

    index = PhotoIndex(tmp_path / "index.sqlite3")
    rows = {Path(r.path): r for r in _all_rows(index)}
    assert set(rows) == set(photos)
    for path, row in rows.items():
        if path.parent.name == "junk":
            assert row.status == "failed" and row.failure_reason and "\n" not in row.failure_reason
            assert path.read_bytes() == before_bytes[path]
            continue
        assert row.status == "done", (path, row.failure_reason)
        assert row.caption
        if row.caption_source == "human":
            continue
        if path.suffix.lower() in (".nef", ".dng"):
            # RAW: original untouched, caption in photo.ext.xmp
            assert path.read_bytes() == before_bytes[path]
            sidecar = path.with_name(path.name + ".xmp")
            assert row.written_to == str(sidecar)
            assert exiftool_json(sidecar)[0]["XMP:Description"] == row.caption
            continue
        after = exiftool_json(path, args=("-G1", "-XMP-dc:Description", "-EXIF:ImageDescription"))[0]
        assert after["XMP-dc:Description"] == row.caption, path
        assert after["IFD0:ImageDescription"] == row.caption, path
        assert rgb_pixels(path) == before_pixels[path], path
        now = exiftool_json(path)[0]
        for tag in KEPT_TAGS:
            assert now.get(tag) == before[path].get(tag), (path, tag)

    # a person's description is kept and indexed, a camera's boilerplate is replaced
    human = rows[library / "2019" / "long_description.jpg"]
    assert (
        human.caption_source == "human"
        and human.caption == before[library / "2019" / "long_description.jpg"]["EXIF:ImageDescription"]
    )
    olympus = rows[library / "2019" / "olympus-c960.jpg"]
    assert (
        before[library / "2019" / "olympus-c960.jpg"]["EXIF:ImageDescription"].strip().upper()
        == "OLYMPUS DIGITAL CAMERA"
    )
    assert olympus.caption_source == "model"
    assert json.loads(olympus.original_metadata)  # the original values were kept for a restore

    # search: a word of a caption finds its photo; paths are absolute, one per line
    target = rows[library / "2019" / "DSCN0010.jpg"]
    word = max(target.keywords.split(), key=len)
    found = run(config, "search", word).output.splitlines()
    assert str(library / "2019" / "DSCN0010.jpg") in found
    assert all(os.path.isabs(line) for line in found)

    # a second backfill changes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in photos}
    again = run(config, "backfill", str(library), "--no-progress")
    assert again.exit_code == 0
    assert "captioned 0" in again.output and "failed 0" in again.output
    assert {p: p.stat().st_mtime_ns for p in photos} == mtimes

    status = run(config, "status", "--json")
    counts = json.loads(status.output)["counts"]
    assert counts == {"done": len(photos) - 3, "pending": 0, "failed": 3, "missing": 0, "restored": 0}


def _all_rows(index: PhotoIndex) -> list:
    from sqlalchemy import select

    from phototag.index import Photo

    with index.session() as session:
        return list(session.scalars(select(Photo)))


@pytest.mark.parametrize(
    "query",
    [
        '"',
        "*",
        "AND",
        "dog AND",
        "-",
        "'",
        "dog's",
        "NEAR(",
        "🐶",
        "tag:",
        '"unclosed phrase',
        "a OR b NOT c",
        "%",
        "city -city",
    ],
)
def test_hostile_queries_never_fail(query: str, config: Path, library: Path) -> None:
    copy = library / "2019"
    assert run(config, "backfill", str(copy / "DSCN0010.jpg"), "--no-progress").exit_code == 0
    result = run(config, "search", query)
    assert result.exit_code == 0, result.output


def test_search_ranks_all_words_first_and_skips_deleted(config: Path, tmp_path: Path, corpus: Path) -> None:
    lib = tmp_path / "lib"
    photos = copy_from_corpus(["jpg/long_description.jpg", "jpg/gps/DSCN0010.jpg"], lib)
    subprocess.run(
        [
            "exiftool",
            "-q",
            "-overwrite_original",
            "-XMP-dc:Description=a dog running on the beach",
            "-EXIF:ImageDescription=a dog running on the beach",
            str(photos[1]),
        ],
        check=True,
    )
    subprocess.run(
        [
            "exiftool",
            "-q",
            "-overwrite_original",
            "-XMP-dc:Description=a beach at sunset",
            "-EXIF:ImageDescription=a beach at sunset",
            str(photos[0]),
        ],
        check=True,
    )
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    assert run(config, "search", "dog on beach").output.splitlines() == [str(photos[1]), str(photos[0])]
    assert run(config, "search", "dogs").output.splitlines() == [str(photos[1])]
    photos[1].unlink()
    assert run(config, "search", "dog on beach").output.splitlines() == [str(photos[0])]


def test_dry_run_changes_nothing(config: Path, library: Path, tmp_path: Path) -> None:
    photos = sorted(p for p in library.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in photos}
    result = run(config, "backfill", str(library), "--dry-run", "--no-progress")
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if "\t" in line]
    assert len(lines) >= 8 and all(Path(line.split("\t")[0]).exists() for line in lines)
    assert {p: p.read_bytes() for p in photos} == before
    assert not any(p.name.endswith(".xmp") for p in library.rglob("*"))
    counts = json.loads(run(config, "status", "--json").output).get("counts", {})
    assert sum(counts.values()) == 0


def test_orientation_is_applied_before_captioning(corpus: Path) -> None:
    upright = load_rgb(corpus / "jpg/orientation/portrait_1.jpg")
    for n in range(2, 9):
        turned = load_rgb(corpus / f"jpg/orientation/portrait_{n}.jpg")
        assert turned.size == upright.size


def test_backfill_marks_deleted_photos_missing_only_under_its_folders(config: Path, tmp_path: Path) -> None:
    lib, sibling = tmp_path / "lib", tmp_path / "lib_2"  # a sibling folder sharing the prefix "lib"
    kept, gone = copy_from_corpus(["jpg/gps/DSCN0010.jpg", "jpg/gps/DSCN0012.jpg"], lib)
    (elsewhere,) = copy_from_corpus(["jpg/gps/DSCN0021.jpg"], sibling)
    assert run(config, "backfill", str(lib), str(sibling), "--no-progress").exit_code == 0
    gone.unlink()
    elsewhere.unlink()
    result = run(config, "backfill", str(lib), "--no-progress")
    assert result.exit_code == 0 and "marked 1 photos no longer on disk as missing" in result.output
    index = PhotoIndex(tmp_path / "index.sqlite3")
    statuses = {r.path: r.status for r in _all_rows(index)}
    assert statuses == {str(kept): "done", str(gone): "missing", str(elsewhere): "done"}
    with sqlite3.connect(tmp_path / "index.sqlite3") as connection:  # the FTS index is intact
        connection.execute("INSERT INTO photos_fts(photos_fts, rank) VALUES ('integrity-check', 1)")
