"""Metadata options end to end through the CLI: keywords and tag search, sidecar modes and names,
keep_mtime, crash leftovers, read-only photos, dry runs and restore (tiny model, real exiftool)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from phototag.safe_write import temp_path
from tests.conftest import copy_from_corpus, dead_pid, index_rows, read_only_folder, write_config
from tests.conftest import run_cli as run
from tests.metadata_checks import DATA, changed_tags, exiftool_json, sha256

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

HOSTILE_COMMENT = 'a & b < c > "d"\n猫と犬 🐕 Ünïcödé\nlast line'
XP_COMMENT = HOSTILE_COMMENT.replace("🐕", "")  # exiftool stores XP* tags as UCS-2: no emoji


def et(*args: str | Path) -> None:
    subprocess.run(["exiftool", "-q", "-overwrite_original", *map(str, args)], check=True)


def make_config(tmp_path: Path, tiny_model: Path, metadata: str = "") -> Path:
    return write_config(tmp_path, tiny_model, extra=f"[metadata]\n{metadata}\n")


@pytest.fixture
def config(tmp_path: Path, tiny_model: Path) -> Path:
    return make_config(tmp_path, tiny_model)


# --------------------------------------------------------------------------------------------------
# keywords


def test_a_persons_keyword_is_kept_indexed_and_tag_search_filters(config: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    tagged, human, plain = copy_from_corpus(["jpg/Canon_40D.jpg", "jpg/gps/DSCN0012.jpg", "jpg/gps/DSCN0010.jpg"], lib)
    et("-XMP-dc:Subject=Grandma", "-XMP-dc:Subject=New York", tagged)
    et("-XMP-dc:Description=grandma's birthday cake", "-IFD0:ImageDescription=grandma's birthday cake", human)

    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    index = index_rows(tmp_path / "index.sqlite3")
    derived = index[str(tagged)]["keywords"].split()
    assert derived[:3] == ["Grandma", "New", "York"] and len(derived) > 3  # the person's first, then the model's
    subject = exiftool_json(tagged)["XMP-dc:Subject"]
    assert subject[:2] == ["Grandma", "New York"] and set(derived[3:]) <= set(subject)

    assert run(config, "search", "tag:grandma").output.splitlines() == [str(tagged)]
    assert set(run(config, "search", "--mode", "keyword", "grandma").output.splitlines()) == {str(tagged), str(human)}
    model_word = index[str(plain)]["keywords"].split()[0]
    found = run(config, "search", f"tag:{model_word}").output.splitlines()
    assert str(plain) in found and str(human) not in found

    # re-captioning (another run that overwrites) never drops the person's keywords
    assert run(config, "backfill", str(lib), "--overwrite", "--no-progress").exit_code == 0
    assert exiftool_json(tagged)["XMP-dc:Subject"][:2] == ["Grandma", "New York"]
    assert index_rows(tmp_path / "index.sqlite3")[str(tagged)]["keywords"].split()[:3] == ["Grandma", "New", "York"]
    assert run(config, "search", "tag:grandma").output.splitlines() == [str(tagged)]


# --------------------------------------------------------------------------------------------------
# sidecar options from the config


def test_sidecar_mode_with_base_naming_never_touches_originals_or_collides(tmp_path: Path, tiny_model: Path) -> None:
    config = make_config(tmp_path, tiny_model, 'mode = "sidecar"\nsidecar_naming = "base"')
    lib = tmp_path / "lib"
    copies = copy_from_corpus(["raw/DNG.dng", "jpg/Canon_40D.jpg", "jpg/gps/DSCN0010.jpg"], lib)
    raw, jpeg, alone = (copies[0].rename(lib / "IMG_1.DNG"), copies[1].rename(lib / "IMG_1.JPG"),
                        copies[2].rename(lib / "IMG_2.JPG"))  # fmt: skip
    digests = {p: sha256(p) for p in (raw, jpeg, alone)}

    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0

    assert {p: sha256(p) for p in digests} == digests
    expected = {raw: lib / "IMG_1.xmp", jpeg: lib / "IMG_1.JPG.xmp", alone: lib / "IMG_2.xmp"}
    index = index_rows(tmp_path / "index.sqlite3")
    for photo, sidecar in expected.items():
        assert index[str(photo)]["written_to"] == str(sidecar)
        assert exiftool_json(sidecar)["XMP-dc:Description"] == index[str(photo)]["caption"]
    assert sorted(p.name for p in lib.iterdir()) == sorted(
        [p.name for p in digests] + [s.name for s in expected.values()]
    )
    # a second run reads its own sidecars back and skips everything
    again = run(config, "backfill", str(lib), "--no-progress")
    assert "captioned 0" in again.output and "failed 0" in again.output

    assert run(config, "restore", "--all", "--no-progress").exit_code == 0
    assert sorted(p.name for p in lib.iterdir()) == sorted(p.name for p in digests)
    assert {p: sha256(p) for p in digests} == digests


def test_darktable_sidecar_is_merged_then_restored(config: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (raw,) = copy_from_corpus(["raw/DNG.dng"], lib)
    side = lib / "DNG.dng.xmp"
    shutil.copyfile(DATA / "darktable_sidecar.xmp", side)
    before = exiftool_json(side)

    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    row = index_rows(tmp_path / "index.sqlite3")[str(raw)]
    merged = exiftool_json(side)
    assert row["written_to"] == str(side) and merged["XMP-dc:Description"] == row["caption"]
    assert merged["XMP-dc:Subject"][0] == "holiday" and row["keywords"].split()[0] == "holiday"
    assert merged["XMP-darktable:History"] == before["XMP-darktable:History"]
    assert changed_tags(before, merged) <= {"XMP-dc:Description", "XMP-dc:Subject", "XMP-x:XMPToolkit",
                                            "XMP-darktable:Masks_history"}  # fmt: skip
    assert run(config, "search", "tag:holiday").output.splitlines() == [str(raw)]

    assert run(config, "restore", str(raw), "--no-progress").exit_code == 0
    assert changed_tags(before, exiftool_json(side)) <= {"XMP-darktable:Masks_history"}  # the empty list


def test_mode_both_embeds_and_writes_the_sidecar(tmp_path: Path, tiny_model: Path) -> None:
    config = make_config(tmp_path, tiny_model, 'mode = "both"')
    lib = tmp_path / "lib"
    (photo,) = copy_from_corpus(["jpg/Canon_40D.jpg"], lib)
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    caption = index_rows(tmp_path / "index.sqlite3")[str(photo)]["caption"]
    assert exiftool_json(photo)["XMP-dc:Description"] == caption
    assert exiftool_json(lib / "Canon_40D.jpg.xmp")["XMP-dc:Description"] == caption


# --------------------------------------------------------------------------------------------------
# preserve


def test_keep_mtime_from_the_config(tmp_path: Path, tiny_model: Path) -> None:
    config = make_config(tmp_path, tiny_model, "keep_mtime = true")
    lib = tmp_path / "lib"
    (photo,) = copy_from_corpus(["jpg/gps/DSCN0010.jpg"], lib)
    old = 1_400_000_000_000_000_000
    os.utime(photo, ns=(old, old))
    digest = sha256(photo)
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    assert photo.stat().st_mtime_ns == old and sha256(photo) != digest
    assert exiftool_json(photo)["XMP-dc:Description"] == index_rows(tmp_path / "index.sqlite3")[str(photo)]["caption"]
    again = run(config, "backfill", str(lib), "--no-progress")
    assert "captioned 0" in again.output and "skipped (unchanged) 1" in again.output


def test_backfill_cleans_crash_leftovers_first(config: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (photo,) = copy_from_corpus(["jpg/Canon_40D.jpg"], lib)
    gone = dead_pid()
    stale = [
        temp_path(photo, pid=gone),
        Path(f"{temp_path(photo, pid=gone)}_exiftool_tmp"),
        lib / ".gone.NEF.xmp.phototag-tmp.xmp",
    ]  # a dead writer's, and an older phototag's old one
    young = lib / ".busy.jpg.phototag-tmp.jpg"  # may be another phototag's write in progress
    alive = temp_path(lib / "slow.jpg")  # a live writer's (this process): kept however old
    foreign = lib / "IMG_9.jpg_exiftool_tmp"  # somebody's own exiftool run
    for path in (*stale, young, alive, foreign):
        shutil.copyfile(photo, path)
    an_hour_ago = time.time() - 3600
    for path in (stale[2], alive, foreign):
        os.utime(path, (an_hour_ago, an_hour_ago))

    result = run(config, "backfill", str(lib), "--no-progress")
    assert result.exit_code == 0 and "removed 3 temp files" in result.output
    assert not any(p.exists() for p in stale) and young.exists() and alive.exists() and foreign.exists()
    assert list(index_rows(tmp_path / "index.sqlite3")) == [str(photo)]  # temp files are never taken for photos


@pytest.fixture
def locked_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can create files in: chmod for ordinary users, chattr +i for root."""
    folder = tmp_path / "lib" / "locked"
    copy_from_corpus(["jpg/gps/DSCN0021.jpg"], folder)
    with read_only_folder(folder):
        yield folder


def test_read_only_photo_gets_a_sidecar_read_only_folder_fails_with_a_reason(
    config: Path, tmp_path: Path, locked_folder: Path
) -> None:
    lib = tmp_path / "lib"
    (read_only,) = copy_from_corpus(["jpg/Canon_40D.jpg"], lib)
    read_only.chmod(0o444)
    locked = locked_folder / "DSCN0021.jpg"
    digests = {p: sha256(p) for p in (read_only, locked)}

    result = run(config, "backfill", str(lib), "--no-progress")
    assert result.exit_code == 0 and "failed 1" in result.output

    index = index_rows(tmp_path / "index.sqlite3")
    assert index[str(read_only)]["status"] == "done"
    assert index[str(read_only)]["written_to"] == str(lib / "Canon_40D.jpg.xmp")
    assert index[str(locked)]["status"] == "failed"
    reason = index[str(locked)]["failure_reason"]
    assert "read-only" in reason and "\n" not in reason
    assert {p: sha256(p) for p in digests} == digests
    assert sorted(p.name for p in locked_folder.iterdir()) == ["DSCN0021.jpg"]


# --------------------------------------------------------------------------------------------------
# dry run


def test_dry_run_prints_one_line_per_photo_and_creates_nothing(config: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    human, junk = copy_from_corpus(["jpg/Canon_40D.jpg", "jpg/exif-org/olympus-c960.jpg"], lib)
    et("-IFD0:ImageDescription=line one\n\tline two", human)
    before = {p: sha256(p) for p in (human, junk)}

    result = run(config, "backfill", str(lib), "--dry-run", "--overwrite", "--no-progress")
    assert result.exit_code == 0
    lines = [line for line in result.stdout.splitlines() if line]
    assert len(lines) == 2 and all(line.count("\t") == 2 for line in lines)
    fields = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert fields[str(human)][1] == "line one\\n\\tline two"
    assert fields[str(junk)][1].rstrip() == "OLYMPUS DIGITAL CAMERA"  # boilerplate: replaced, shown as it is
    assert all(f[2] for f in fields.values())
    assert {p: sha256(p) for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "lib"]  # not even an index

    # with an index: the dry run leaves its rows exactly as they were
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    indexed = {k: dict(v) for k, v in index_rows(tmp_path / "index.sqlite3").items()}
    after_backfill = {p: sha256(p) for p in before}
    assert run(config, "backfill", str(lib), "--dry-run", "--overwrite", "--no-progress").exit_code == 0
    assert {k: dict(v) for k, v in index_rows(tmp_path / "index.sqlite3").items()} == indexed
    assert {p: sha256(p) for p in before} == after_backfill


# --------------------------------------------------------------------------------------------------
# restore


def test_restore_puts_back_hostile_text_and_the_photos_stay_restored(config: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    windows, raw, other, human = copy_from_corpus(
        ["jpg/exif-org/olympus-c960.jpg", "raw/DNG.dng", "jpg/gps/DSCN0010.jpg", "jpg/long_description.jpg"], lib
    )
    et(f"-XPComment={XP_COMMENT}", f"-UserComment={HOSTILE_COMMENT}", "-XMP-dc:Subject=Grandma", windows)
    before = {p: exiftool_json(p) for p in (windows, raw, other, human)}
    digests = {p: sha256(p) for p in before}

    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    caption = index_rows(tmp_path / "index.sqlite3")[str(windows)]["caption"]
    written = exiftool_json(windows)
    assert written["IFD0:XPComment"] == caption and written["ExifIFD:UserComment"] == caption
    assert (lib / "DNG.dng.xmp").exists()
    et("-XMP-dc:Subject+=edited later", human)  # phototag kept its description: this edit is not ours
    assert str(windows) in run(config, "search", caption).output

    # one photo: only it is restored; its row stays, as restored, without a caption
    one = run(config, "restore", str(windows), "--no-progress")
    assert one.exit_code == 0 and "restored 1," in one.output
    assert changed_tags(before[windows], exiftool_json(windows)) == set()
    assert exiftool_json(windows)["IFD0:XPComment"] == XP_COMMENT
    assert exiftool_json(windows)["ExifIFD:UserComment"] == HOSTILE_COMMENT
    restored = index_rows(tmp_path / "index.sqlite3")[str(windows)]
    assert restored["status"] == "restored" and restored["caption"] is None and restored["keywords"] == ""
    assert restored["original_metadata"] and index_rows(tmp_path / "index.sqlite3")[str(other)]["status"] == "done"
    assert run(config, "search", "tag:grandma").output == ""

    # a photo that cannot be restored keeps its row and makes the exit status 1
    other.chmod(0o444)
    partial = run(config, "restore", "--all", "--no-progress")
    assert partial.exit_code == 1 and "failed 1" in partial.output and "read-only" in partial.output
    assert "removed sidecars 1" in partial.output and not (lib / "DNG.dng.xmp").exists()
    assert {path: row["status"] for path, row in index_rows(tmp_path / "index.sqlite3").items()} == {
        str(p): "done" if p == other else "restored" for p in (windows, raw, other, human)
    }
    other.chmod(0o644)
    assert run(config, "restore", str(lib), "--no-progress").exit_code == 0
    assert {row["status"] for row in index_rows(tmp_path / "index.sqlite3").values()} == {"restored"}
    for photo in (windows, raw, other):
        assert changed_tags(before[photo], exiftool_json(photo)) == set(), photo
    assert sha256(raw) == digests[raw]
    assert changed_tags(before[human], exiftool_json(human)) == {"XMP-dc:Subject", "XMP-x:XMPToolkit"}
    assert json.loads(run(config, "status", "--json").output)["counts"] == {
        "done": 0,
        "pending": 0,
        "failed": 0,
        "missing": 0,
        "restored": 4,
    }
    assert "restored: 4" in run(config, "status").output
    assert run(config, "search", caption).output == ""  # no caption of the model left to find

    # restored photos stay restored: a later backfill leaves them alone ...
    again = run(config, "backfill", str(lib), "--no-progress")
    assert again.exit_code == 0 and "captioned 0" in again.output, again.output
    for photo in (windows, raw, other):
        assert changed_tags(before[photo], exiftool_json(photo)) == set(), photo
    # ... unless asked to caption them again
    assert "captioned 3" in run(config, "backfill", str(lib), "--include-restored", "--no-progress").output
    assert {row["status"] for row in index_rows(tmp_path / "index.sqlite3").values()} == {"done"}


def test_restore_needs_paths_or_all(config: Path, tmp_path: Path) -> None:
    assert run(config, "restore").exit_code == 2
    assert run(config, "restore", "--all", str(tmp_path)).exit_code == 2
    lib = tmp_path / "lib"
    copy_from_corpus(["jpg/Canon_40D.jpg"], lib)
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    missing = run(config, "restore", str(tmp_path / "elsewhere"))
    assert missing.exit_code == 1 and "nothing of" in missing.output
