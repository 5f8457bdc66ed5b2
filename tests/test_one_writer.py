"""One writing phototag per index, across processes: refusals beside a running daemon (or another
writer), restored photos that stay restored through the daemon's rescans and restarts, temp files that
belong to one writer each, and taken dates from before phototag's own write.

Real processes throughout: a `phototag watch` daemon, lock holders in child processes, the tiny BLIP,
a real exiftool and SQLite file.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from PIL import Image

from phototag.daemon_state import read_state
from phototag.metadata import ExifToolSession
from phototag.safe_write import clean_stale_temps, temp_path
from tests.conftest import REPO, copy_from_corpus, description, index_rows, start_daemon, write_config
from tests.conftest import run_cli as run
from tests.conftest import wait_until as wait_for

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

PHOTOS = ["jpg/gps/DSCN0010.jpg", "jpg/gps/DSCN0012.jpg", "jpg/Canon_40D.jpg"]


def make_config(tmp_path: Path, tiny_model: Path, rescan: float = 0) -> Path:
    return write_config(
        tmp_path, tiny_model, extra=f"[watch]\nsettle_seconds = 0.3\nrescan_interval = {rescan}\nstop_timeout = 20\n"
    )


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever happens, none outlives it."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def scans_done(db: Path, proc: subprocess.Popen[bytes], log: Path) -> int:
    """Finished scans (catch-up, rescans) of the daemon ``proc``, as its state file says."""
    assert proc.poll() is None, f"the daemon exited with {proc.returncode}:\n{log.read_text()}"
    state = read_state(db) or {}
    return int(state.get("scans_done", 0)) if state.get("pid") == proc.pid else 0


def hold_writer_lock(db: Path, command: str, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A child process that holds the index's writer lock as ``command`` until killed."""
    code = (
        "import sys; from pathlib import Path; from phototag.daemon_state import WriterLock; "
        f"lock = WriterLock(Path(sys.argv[1]), {command!r}); lock.acquire(); print('locked', flush=True); "
        "sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(db)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    return proc


def refusal_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.timeout(900)  # daemon processes: minutes on a loaded machine
def test_writers_are_refused_beside_a_running_daemon(
    tmp_path: Path, tiny_model: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    lib, db, log = tmp_path / "lib", tmp_path / "index.sqlite3", tmp_path / "daemon.log"
    photos = copy_from_corpus(PHOTOS[:2], lib)
    config = make_config(tmp_path, tiny_model)
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    before = {photo: (photo.read_bytes(), description(photo)) for photo in photos}
    index_before = {path: tuple(row) for path, row in index_rows(db).items()}

    daemon = start_daemon(config, lib, log, daemons)
    wait_for(lambda: scans_done(db, daemon, log) >= 1, timeout=300, what="the daemon's catch-up scan")
    for args in (
        ["backfill", str(lib)],
        ["restore", "--all"],
        ["restore", str(photos[0])],
        ["reindex"],
        ["reindex", "--dates"],
        ["backfill", str(lib), "--include-restored"],
    ):
        line = refusal_line(run(config, *args, "--no-progress"))
        assert f"phototag watch (pid {daemon.pid}) is already running on the index {db}" in line, line
        assert f"systemctl --user stop phototag, or kill {daemon.pid}" in line, line
    assert f"phototag watch (pid {daemon.pid}) is already running" in refusal_line(run(config, "prune"))
    # a second daemon too, as a process of its own
    second = subprocess.run(
        [sys.executable, "-m", "phototag", "--config", str(config), "watch", str(lib)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1 and f"phototag watch (pid {daemon.pid}) is already running" in second.stderr
    # reading needs no lock: a dry run, status and search work beside the daemon
    assert run(config, "backfill", str(lib), "--dry-run", "--no-progress").exit_code == 0
    assert run(config, "prune", "--dry-run").exit_code == 0
    assert run(config, "status").exit_code == 0
    # nothing was written by the refused commands
    assert {photo: (photo.read_bytes(), description(photo)) for photo in photos} == before
    assert {path: tuple(row) for path, row in index_rows(db).items()} == index_before

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert run(config, "restore", str(photos[0]), "--no-progress").exit_code == 0  # the daemon is gone


@pytest.mark.timeout(900)  # several processes: minutes on a loaded machine
def test_two_backfills_and_a_daemon_beside_a_backfill_are_refused(
    tmp_path: Path, tiny_model: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    lib, db = tmp_path / "lib", tmp_path / "index.sqlite3"
    (photo,) = copy_from_corpus(PHOTOS[:1], lib)
    config = make_config(tmp_path, tiny_model)
    holder = hold_writer_lock(db, "phototag backfill", daemons)
    line = refusal_line(run(config, "backfill", str(lib), "--no-progress"))
    assert line == (
        f"Error: phototag backfill (pid {holder.pid}) is already running on the index {db}; "
        f"wait for it to finish or stop it (kill {holder.pid}), then run this again"
    )
    daemon = subprocess.run(
        [sys.executable, "-m", "phototag", "--config", str(config), "watch", str(lib)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert daemon.returncode == 1 and f"phototag backfill (pid {holder.pid}) is already running" in daemon.stderr
    assert description(photo) is None and not [p for p in lib.iterdir() if p != photo]
    holder.kill()  # the kernel drops the lock of a killed holder: the next writer goes ahead
    holder.wait(10)
    result = run(config, "backfill", str(lib), "--no-progress")
    assert result.exit_code == 0 and "captioned 1" in result.output, result.output


# -- restored photos stay restored -----------------------------------------------------------------


@pytest.mark.timeout(900)  # daemon processes: minutes on a loaded machine
def test_restored_photos_stay_restored_through_rescans_and_restarts(
    tmp_path: Path, tiny_model: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    lib, db, log = tmp_path / "lib", tmp_path / "index.sqlite3", tmp_path / "daemon.log"
    photos = copy_from_corpus(PHOTOS, lib)
    config = make_config(tmp_path, tiny_model, rescan=0.5)
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    assert all(description(photo) for photo in photos)
    restored = run(config, "restore", "--all", "--no-progress")
    assert restored.exit_code == 0 and "restored 3," in restored.output, restored.output
    assert all(description(photo) is None for photo in photos)
    as_restored = {photo: photo.read_bytes() for photo in photos}

    # the daemon's catch-up scan and two rescans leave them alone
    first = start_daemon(config, lib, log, daemons)
    wait_for(lambda: scans_done(db, first, log) >= 3, timeout=300, what="the daemon's catch-up and two rescans")
    assert {photo: description(photo) for photo in photos} == {photo: None for photo in photos}
    assert {row["status"] for row in index_rows(db).values()} == {"restored"}
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0

    # a restart too; but a photo a person changed since is a photo like any other
    edited = photos[2]
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-xmp:Label=edited", str(edited)], check=True)
    second = start_daemon(config, lib, log, daemons)
    wait_for(lambda: index_rows(db)[str(edited)]["status"] == "done", timeout=300, what="the edited photo captioned")
    wait_for(lambda: scans_done(db, second, log) >= 2, timeout=300, what="the restarted daemon's scans")
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert description(edited) == index_rows(db)[str(edited)]["caption"]
    for photo in photos[:2]:
        assert description(photo) is None and photo.read_bytes() == as_restored[photo], photo
        assert index_rows(db)[str(photo)]["status"] == "restored"
    logged = {
        line.split(" INFO captioned ")[1].split(": ")[0]
        for line in log.read_text().splitlines()
        if " INFO captioned " in line
    }
    assert logged == {str(edited)}, log.read_text()

    # asked for explicitly, backfill captions them again
    again = run(config, "backfill", str(lib), "--include-restored", "--no-progress")
    assert again.exit_code == 0 and "captioned 2" in again.output, again.output
    assert all(description(photo) for photo in photos)


def test_a_restored_photo_that_is_away_for_a_while_stays_restored(tmp_path: Path, tiny_model: Path) -> None:
    lib, db = tmp_path / "lib", tmp_path / "index.sqlite3"
    photo, other = copy_from_corpus(PHOTOS[:2], lib)
    config = make_config(tmp_path, tiny_model)
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    assert run(config, "restore", str(photo), "--no-progress").exit_code == 0
    away = tmp_path / "away.jpg"
    os.rename(photo, away)  # e.g. on a drive that is unplugged for a while
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0  # its sweep sees it gone
    assert index_rows(db)[str(photo)]["status"] == "restored"
    os.rename(away, photo)
    again = run(config, "backfill", str(lib), "--no-progress")
    assert again.exit_code == 0 and "captioned 0" in again.output, again.output
    assert description(photo) is None and index_rows(db)[str(photo)]["status"] == "restored"


# -- temp files: one writer each -------------------------------------------------------------------


def test_a_live_writers_temp_is_never_removed_and_a_dead_ones_is(
    tmp_path: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    (photo,) = copy_from_corpus(PHOTOS[:1], tmp_path / "lib")
    writer = subprocess.Popen(["sleep", "600"])  # another live process of this machine
    daemons.append(writer)  # type: ignore[arg-type]
    young, old = temp_path(photo, pid=writer.pid), temp_path(tmp_path / "lib" / "b.jpg", pid=writer.pid)
    for path in (young, old):
        path.write_bytes(b"being written")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert clean_stale_temps([tmp_path / "lib"]) == []
    # our own write of the same photo beside it: it uses a temp of its own and leaves the other alone
    with ExifToolSession() as exiftool:
        exiftool.write(photo, "a caption of this writer", ["caption"])
    assert description(photo) == "a caption of this writer"
    assert young.read_bytes() == b"being written" and old.exists()
    writer.kill()
    writer.wait(10)
    assert sorted(clean_stale_temps([tmp_path / "lib"])) == sorted([young, old])


# -- taken dates -----------------------------------------------------------------------------------


def test_reindex_dates_uses_the_time_before_phototags_write(tmp_path: Path, tiny_model: Path) -> None:
    """A 2010 scan without EXIF date keeps 2010, although phototag's write made its mtime today."""
    lib, db = tmp_path / "lib", tmp_path / "index.sqlite3"
    lib.mkdir()
    scans = [lib / "scan.jpg", lib / "old-index.jpg"]
    for n, scan in enumerate(scans):
        Image.new("RGB", (64, 48), (120 + n, 90, 60)).save(scan, quality=90)
    in_2010 = time.mktime((2010, 6, 15, 12, 0, 0, 0, 0, -1))
    for scan in scans:
        os.utime(scan, (in_2010, in_2010))
    config = make_config(tmp_path, tiny_model)
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    assert all(scan.stat().st_mtime > in_2010 + 86400 for scan in scans)  # the write changed the mtime
    assert all(row["taken_at"] == "2010-06-15T12:00:00" for row in index_rows(db).values())
    # an index whose dates were never recorded
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE photos SET taken_at = NULL WHERE path = ?", (str(scans[0]),))
    result = run(config, "reindex", "--dates", "--no-progress")
    assert result.exit_code == 0 and "dates: recorded 1 of 1" in result.output, result.output
    assert index_rows(db)[str(scans[0])]["taken_at"] == "2010-06-15T12:00:00"
    # a row from before phototag recorded the pre-write time: that time is unknown (its mtime now is
    # phototag's write), so it gets no date rather than a wrong one
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE photos SET taken_at = NULL, mtime_before_write_ns = NULL WHERE path = ?", (str(scans[1]),))
    result = run(config, "reindex", "--dates", "--no-progress")
    assert result.exit_code == 0 and "dates: recorded 0 of 1 (1 have no EXIF date" in result.output, result.output
    assert index_rows(db)[str(scans[1])]["taken_at"] is None
