"""Photos that vanish (deleted, moved away, an unmounted share) keep their rows, marked missing, with
their caption and undo data; they come back without inference; ``phototag prune`` forgets them.

End to end through the CLI (and the watch daemon in-process) with real corpus JPEGs, a real exiftool,
a real SQLite file and the tiny BLIP.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from phototag.config import Settings
from phototag.index import MISSING, PhotoIndex
from phototag.sweep import sweep
from tests.conftest import copy_from_corpus, done_count, photo_rows, running_daemon, write_config
from tests.conftest import run_cli as run
from tests.conftest import wait_until as wait_for

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

# "OLYMPUS DIGITAL CAMERA" in EXIF:ImageDescription: junk phototag replaces, and restore puts back
OLYMPUS = "jpg/exif-org/olympus-c960.jpg"
OTHERS = ["jpg/gps/DSCN0010.jpg", "jpg/gps/DSCN0012.jpg"]


@pytest.fixture
def config(tmp_path: Path, tiny_model: Path) -> Path:
    return write_config(tmp_path, tiny_model)


def backfill(config: Path, folder: Path) -> str:
    result = run(config, "backfill", str(folder), "--no-progress")
    assert result.exit_code == 0, result.output
    return result.output


def row_of(tmp_path: Path, path: Path) -> dict:
    db = tmp_path / "index.sqlite3"
    with sqlite3.connect(db) as conn:  # raw, as another process would see it
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM photos WHERE path = ?", (str(path),)).fetchone()
    return dict(row) if row is not None else {}


def exif_description(path: Path) -> str | None:
    out = subprocess.run(["exiftool", "-j", "-EXIF:ImageDescription", str(path)], capture_output=True, text=True)
    return json.loads(out.stdout)[0].get("ImageDescription")


def test_the_repro_an_emptied_folder_never_costs_a_photo_its_undo_data(config: Path, tmp_path: Path) -> None:
    lib, away = tmp_path / "lib", tmp_path / "away"
    (photo,) = copy_from_corpus([OLYMPUS], lib)
    away.mkdir()
    original = exif_description(photo)
    assert original and original.strip() == "OLYMPUS DIGITAL CAMERA"
    assert "captioned 1" in backfill(config, lib)
    first = row_of(tmp_path, photo)
    assert first["caption_source"] == "model" and first["original_metadata"]
    assert exif_description(photo) == first["caption"]

    photo.rename(away / photo.name)  # the folder's only photo goes: an unmounted share looks like this
    output = backfill(config, lib)
    assert f"{lib} is missing or holds no photos" in output
    assert row_of(tmp_path, photo)["status"] == "done"  # not swept at all

    (away / photo.name).rename(photo)
    output = backfill(config, lib)
    assert "captioned 0" in output and "kept human captions 0" in output, output
    back = row_of(tmp_path, photo)
    assert back["caption_source"] == "model" and back["status"] == "done"
    assert back["original_metadata"] == first["original_metadata"] and back["caption"] == first["caption"]

    restored = run(config, "restore", str(lib), "--no-progress")
    assert restored.exit_code == 0 and "restored 1" in restored.output, restored.output
    assert exif_description(photo) == original


def test_a_photo_back_where_it_was_gets_its_row_back_without_inference(config: Path, tmp_path: Path) -> None:
    lib, away = tmp_path / "lib", tmp_path / "away"
    (photo, other) = copy_from_corpus([OLYMPUS, OTHERS[0]], lib)
    away.mkdir()
    shutil.copyfile(photo, away / "original.jpg")
    assert "captioned 2" in backfill(config, lib)
    first = row_of(tmp_path, photo)
    word = max(first["keywords"].split(), key=len)
    assert str(photo) in run(config, "search", word).output.splitlines()

    photo.rename(away / photo.name)  # the folder keeps another photo: this one is really gone
    assert "marked 1 photos no longer on disk as missing" in backfill(config, lib)
    gone = row_of(tmp_path, photo)
    assert gone["status"] == MISSING and gone["missing_since"] is not None
    assert {
        k: gone[k]
        for k in ("id", "caption", "caption_source", "keywords", "original_metadata", "model_name", "written_to")
    } == {
        k: first[k]
        for k in ("id", "caption", "caption_source", "keywords", "original_metadata", "model_name", "written_to")
    }
    assert str(photo) not in run(config, "search", word).output.splitlines()

    status = json.loads(run(config, "status", "--json").output)
    assert status["counts"] == {"done": 1, "pending": 0, "failed": 0, "missing": 1, "restored": 0}
    assert status["total"] == 2
    text = run(config, "status").output
    assert "done: 1  pending: 0  failed: 0  missing: 1" in text and "phototag prune" in text
    shown = run(config, "show", str(photo))
    assert shown.exit_code == 0 and "status: missing (not on disk since" in shown.output
    assert json.loads(run(config, "show", str(photo), "--json").output)["status"] == "missing"

    (away / photo.name).rename(photo)
    output = backfill(config, lib)
    assert "back from missing 1" in output and "captioned 0" in output and "kept human captions 0" in output
    back = row_of(tmp_path, photo)
    assert back["status"] == "done" and back["missing_since"] is None and back["id"] == first["id"]
    assert back["caption_source"] == "model" and back["original_metadata"] == first["original_metadata"]
    assert str(photo) in run(config, "search", word).output.splitlines()
    assert json.loads(run(config, "status", "--json").output)["counts"]["missing"] == 0
    assert "captioned 0" in backfill(config, lib) and "back from missing" not in backfill(config, lib)

    assert "restored 1" in run(config, "restore", str(photo), "--no-progress").output
    assert exif_description(photo) == exif_description(away / "original.jpg")


def test_a_photo_moved_while_missing_takes_its_row_along(config: Path, tmp_path: Path) -> None:
    lib, away = tmp_path / "lib", tmp_path / "away"
    (photo, _other) = copy_from_corpus([OLYMPUS, OTHERS[0]], lib)
    away.mkdir()
    shutil.copyfile(photo, away / "original.jpg")
    backfill(config, lib)
    first = row_of(tmp_path, photo)
    photo.rename(away / photo.name)
    backfill(config, lib)
    assert row_of(tmp_path, photo)["status"] == MISSING

    (lib / "2001").mkdir()
    target = lib / "2001" / "olympus renamed.jpg"
    (away / photo.name).rename(target)
    output = backfill(config, lib)
    assert "moved 1" in output and "captioned 0" in output and "kept human captions 0" in output, output
    assert row_of(tmp_path, photo) == {}
    moved = row_of(tmp_path, target)
    assert moved["id"] == first["id"] and moved["status"] == "done" and moved["caption"] == first["caption"]
    assert moved["caption_source"] == "model" and moved["original_metadata"] == first["original_metadata"]
    assert "restored 1" in run(config, "restore", str(target), "--no-progress").output
    assert exif_description(target) == exif_description(away / "original.jpg")


def test_a_photo_back_with_a_new_description_keeps_its_undo_data(config: Path, tmp_path: Path) -> None:
    lib, away = tmp_path / "lib", tmp_path / "away"
    (photo, _other) = copy_from_corpus([OLYMPUS, OTHERS[0]], lib)
    away.mkdir()
    backfill(config, lib)
    first = row_of(tmp_path, photo)
    photo.rename(away / photo.name)
    backfill(config, lib)
    # while it was away somebody described it: that description is theirs, the undo data stays phototag's
    subprocess.run(
        [
            "exiftool",
            "-q",
            "-overwrite_original",
            "-EXIF:ImageDescription=our cat asleep",
            "-XMP-dc:Description=our cat asleep",
            str(away / photo.name),
        ],
        check=True,
    )
    (away / photo.name).rename(photo)
    output = backfill(config, lib)
    assert "kept human captions 1" in output and "captioned 0" in output, output
    back = row_of(tmp_path, photo)
    assert (back["id"], back["status"], back["caption"], back["caption_source"]) == (
        first["id"],
        "done",
        "our cat asleep",
        "human",
    )
    assert back["original_metadata"] == first["original_metadata"]


def test_an_empty_or_missing_root_is_never_swept(config: Path, tmp_path: Path) -> None:
    share, away = tmp_path / "share", tmp_path / "away"
    photos = copy_from_corpus([OLYMPUS, *OTHERS], share / "2019")
    away.mkdir()
    backfill(config, share)
    # unmounted: the mount point holds folders and a file, but no photo at all
    for photo in photos:
        photo.rename(away / photo.name)
    (share / "lost+found").mkdir()
    (share / "README.txt").write_text("mount the NAS here\n")
    output = backfill(config, share)
    assert f"{share} is missing or holds no photos" in output and "marked" not in output
    assert {row_of(tmp_path, p)["status"] for p in photos} == {"done"}

    # a root that is not there at all: neither backfill nor the sweep itself touches its rows
    shutil.rmtree(share)
    result = run(config, "backfill", str(share), "--no-progress")
    assert result.exit_code == 1 and "no such file or folder" in result.output
    index = PhotoIndex(tmp_path / "index.sqlite3")
    try:
        swept = sweep(index, [share])
        assert swept.missing == [] and swept.skipped_roots == [share]
        swept = sweep(index, [share], [share / "2019"])  # delete events under a vanished root
        assert swept.missing == [] and swept.skipped_roots == [share]
    finally:
        index.close()
    assert {row_of(tmp_path, p)["status"] for p in photos} == {"done"}

    # mounted again: nothing to do
    for photo in photos:
        photo.parent.mkdir(parents=True, exist_ok=True)
        (away / photo.name).rename(photo)
    output = backfill(config, share)
    assert "captioned 0" in output and "skipped (unchanged) 3" in output, output


def test_search_never_returns_missing_photos(config: Path, tmp_path: Path) -> None:
    lib, away = tmp_path / "lib", tmp_path / "away"
    (photo, _other) = copy_from_corpus([OLYMPUS, OTHERS[0]], lib)
    away.mkdir()
    backfill(config, lib)
    caption = row_of(tmp_path, photo)["caption"]
    queries = [
        ("--mode", "keyword", caption),
        ("--mode", "semantic", caption),
        ("--mode", "hybrid", caption),
        (f"in:{lib}",),
    ]
    for query in queries:
        result = run(config, "search", "-n", "50", *query)
        assert result.exit_code == 0 and str(photo) in result.output.splitlines(), (query, result.output)
    photo.rename(away / photo.name)
    backfill(config, lib)
    assert row_of(tmp_path, photo)["status"] == MISSING
    with sqlite3.connect(tmp_path / "index.sqlite3") as conn:  # its vector is kept for when it is back
        assert conn.execute("SELECT count(*) FROM photo_embeddings").fetchone()[0] == 2
    for query in queries:
        result = run(config, "search", "-n", "50", *query)
        assert result.exit_code == 0 and str(photo) not in result.output, (query, result.output)


def test_prune_forgets_missing_photos_and_says_what_undo_data_goes(config: Path, tmp_path: Path) -> None:
    lib, away = tmp_path / "lib", tmp_path / "away"
    old, recent, kept = copy_from_corpus([OLYMPUS, *OTHERS], lib)
    away.mkdir()
    backfill(config, lib)
    for photo in (old, recent):
        photo.rename(away / photo.name)
    backfill(config, lib)
    with sqlite3.connect(tmp_path / "index.sqlite3") as conn:
        conn.execute("UPDATE photos SET missing_since = ? WHERE path = ?", (time.time() - 40 * 86400, str(old)))
    assert row_of(tmp_path, old)["original_metadata"]  # phototag's caption replaced the camera's junk

    dry = run(config, "prune", "--older-than", "30", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"{old}\tmissing since" in dry.output and str(recent) not in dry.output
    assert "would forget 1 missing photos; 1 of them have undo data (original metadata)" in dry.output
    assert row_of(tmp_path, old)["status"] == MISSING

    pruned = run(config, "-v", "prune", "--older-than", "30")
    assert pruned.exit_code == 0, pruned.output
    assert f"{old}\tmissing since" in pruned.output
    assert "forgot 1 missing photos; the undo data (original metadata) of 1 of them is dropped" in pruned.output
    assert row_of(tmp_path, old) == {} and row_of(tmp_path, recent)["status"] == MISSING

    quiet = run(config, "prune", str(lib))
    assert quiet.exit_code == 0 and "forgot 1 missing photos" in quiet.output
    assert str(recent) not in quiet.output  # one line per photo only with -v or --dry-run
    assert row_of(tmp_path, recent) == {} and row_of(tmp_path, kept)["status"] == "done"
    assert json.loads(run(config, "status", "--json").output)["counts"]["missing"] == 0
    assert "no missing photos to forget" in run(config, "prune").output

    helped = run(config, "prune", "--help")
    assert "Examples:" in helped.output and "--older-than" in helped.output


def test_watch_marks_a_deleted_photo_missing_and_its_return_restores_it(
    watch_settings: Settings, tmp_path: Path
) -> None:
    lib, away = tmp_path / "lib", tmp_path / "away"
    away.mkdir()
    lib.mkdir()
    db = watch_settings.db_path()
    with running_daemon(watch_settings, lib) as harness:
        photo, _other = copy_from_corpus([OLYMPUS, OTHERS[0]], lib)
        wait_for(lambda: done_count(db) == 2, what="2 captions")
        first = photo_rows(db)[str(photo)]
        photo.rename(away / photo.name)  # moved out of the watched folder: a delete, for the daemon
        wait_for(lambda: photo_rows(db)[str(photo)].status == MISSING, what="the row marked missing")
        gone = photo_rows(db)[str(photo)]
        assert (gone.id, gone.caption, gone.caption_source, gone.original_metadata) == (
            first.id,
            first.caption,
            first.caption_source,
            first.original_metadata,
        )

        (away / photo.name).rename(photo)
        wait_for(lambda: photo_rows(db)[str(photo)].status == "done", what="the row back")
        back = photo_rows(db)[str(photo)]
        assert (back.id, back.caption, back.caption_source, back.original_metadata) == (
            first.id,
            first.caption,
            first.caption_source,
            first.original_metadata,
        )
        assert harness.inferred["photos"] == 2  # no new inference
        assert harness.daemon.counts["returned"] == 1 and len(harness.spy.writes) == 2  # and no new write
