"""Ctrl-C and kill -9 during a backfill: finished photos stay finished, nothing half-written, resume works."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, copy_from_corpus, wait_until, write_config

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

SMALL = [f"jpg/gps/DSCN00{n}.jpg" for n in ("10", "12", "21", "25", "27", "29", "38", "40", "42")]


@pytest.fixture
def setup(tmp_path: Path, tiny_model: Path) -> tuple[Path, Path, Path]:
    lib = tmp_path / "lib"
    originals = copy_from_corpus(SMALL, tmp_path / "src")
    for i in range(3):  # 27 photos
        for photo in originals:
            target = lib / f"set{i}" / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, target)
    db = tmp_path / "index.sqlite3"
    config = write_config(tmp_path, tiny_model, db=db, batch_size=1, extra="[pipeline]\nqueue_batches = 1\n")
    return lib, db, config


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """A failed assertion or timeout must not leave a backfill running (they run in their own session)."""
    yield
    for proc in _started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    _started.clear()


_started: list[subprocess.Popen[str]] = []


def start_backfill(config: Path, lib: Path) -> subprocess.Popen[str]:
    _started.append(_popen(config, lib))
    return _started[-1]


def _popen(config: Path, lib: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "phototag", "--config", str(config), "backfill", str(lib), "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def done_rows(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT path, caption FROM photos WHERE status = 'done'").fetchall())


def wait_for_done(db: Path, proc: subprocess.Popen[str], at_least: int, timeout: float = 120) -> None:
    def done() -> bool:
        assert proc.poll() is None, f"the backfill ended (exit {proc.returncode}) before {at_least} captions"
        try:
            return len(done_rows(db)) >= at_least
        except sqlite3.OperationalError:  # the index is being created
            return False

    wait_until(done, timeout, what=f"{at_least} captions from the backfill")


def check_library(lib: Path, db: Path, *, killed: bool = False) -> dict[str, str]:
    """Every photo decodes; every done row's caption is in its file; no temp files are left."""
    done = done_rows(db)
    photos = sorted(p for p in lib.rglob("*.jpg") if not p.name.startswith("."))
    described = json.loads(
        subprocess.run(
            ["exiftool", "-j", "-XMP-dc:Description", *map(str, photos)], capture_output=True, text=True
        ).stdout
    )
    by_path = {item["SourceFile"]: item.get("Description") for item in described}
    for photo in photos:
        with Image.open(photo) as image:
            image.load()
        if str(photo) in done:
            assert by_path[str(photo)] == done[str(photo)], photo
    # a kill can leave a hidden temp copy (a later run deletes it once stale); it is never a photo
    leftovers = [p for p in lib.rglob("*") if "phototag-tmp" in p.name or p.name.endswith("_exiftool_tmp")]
    assert all(p.name.startswith(".") for p in leftovers) if killed else leftovers == []
    with sqlite3.connect(db) as conn:
        indexed = {row[0] for row in conn.execute("SELECT path FROM photos")}
    assert indexed <= {str(p) for p in photos}
    return done


@pytest.mark.timeout(900)  # several processes and runs: minutes on a loaded machine
def test_ctrl_c_stops_cleanly_and_a_rerun_finishes(setup: tuple[Path, Path, Path]) -> None:
    lib, db, config = setup
    proc = start_backfill(config, lib)
    wait_for_done(db, proc, at_least=3)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: to the whole process group
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "stopping" in err
    with sqlite3.connect(db) as conn:  # exiftool did not die with it: no write in flight failed
        assert conn.execute("SELECT count(*) FROM photos WHERE status = 'failed'").fetchone()[0] == 0
    before = check_library(lib, db)
    assert 3 <= len(before) < 27
    mtimes = {p: Path(p).stat().st_mtime_ns for p in before}

    rerun = start_backfill(config, lib)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    after = check_library(lib, db)
    assert len(after) == 27
    assert f"captioned {27 - len(before)}," in err
    assert {p: after[p] for p in before} == before  # finished photos were not captioned again
    assert {p: Path(p).stat().st_mtime_ns for p in before} == mtimes


@pytest.mark.timeout(900)  # several processes and runs: minutes on a loaded machine
def test_kill_9_mid_run_then_resume(setup: tuple[Path, Path, Path]) -> None:
    lib, db, config = setup
    proc = start_backfill(config, lib)
    wait_for_done(db, proc, at_least=5)
    proc.kill()
    proc.wait(timeout=30)
    before = check_library(lib, db, killed=True)
    mtimes = {p: Path(p).stat().st_mtime_ns for p in before}

    rerun = start_backfill(config, lib)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    after = check_library(lib, db, killed=True)
    assert len(after) == 27
    assert {p: after[p] for p in before} == before
    assert {p: Path(p).stat().st_mtime_ns for p in before} == mtimes
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM photos WHERE status != 'done'").fetchone()[0] == 0
