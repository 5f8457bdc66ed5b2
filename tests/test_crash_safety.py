"""kill -9 during metadata writes: the photo is always intact or fully updated, never damaged, and
the next run neither takes the leftover temp files for photos nor keeps them once they are stale."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from phototag.cli import main
from phototag.safe_write import clean_stale_temps, is_temp_name
from tests.conftest import REPO, copy_from_corpus, write_config
from tests.metadata_checks import allowed_changes, changed_tags, exiftool_json, pixels, sha256

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

# Writes captions into one photo as fast as it can, forever (until killed), saying when each is done.
WRITER = """
import itertools, sys
from phototag.metadata import ExifToolSession

with ExifToolSession() as session:
    print("ready", flush=True)
    for i in itertools.count():
        session.write(sys.argv[1], f"caption number {i}", [f"keyword{i % 5}"])
        print("wrote", i, flush=True)
"""
KILLS = 6


def test_sigkill_during_writes_never_damages_the_photo(tmp_path: Path, tiny_model: Path) -> None:
    lib = tmp_path / "lib"
    # the 12-megapixel photo: each write copies 3.8 MB, so kills land inside the copy as well
    (photo,) = copy_from_corpus(["generated/big_4000x3000_q92.jpg"], lib)
    original_digest, original_tags, original_pixels = sha256(photo), exiftool_json(photo), pixels(photo)
    allowed = allowed_changes(original_tags, photo)
    rng = random.Random(4)
    outcomes = []
    for _ in range(KILLS):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(photo)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True,  # its own process group: exiftool dies with it, as in a power cut
        )
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        # a write has completed (so the writer is in its loop however loaded the machine is), then the
        # kill lands at a random point of the writes that follow: inside a copy, a verify or a rename
        assert writer.stdout.readline().startswith(b"wrote ")
        time.sleep(rng.uniform(0.0, 0.6))  # the kill's random moment, not a wait
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()

        if sha256(photo) == original_digest:
            outcomes.append("intact")
            continue
        tags = exiftool_json(photo)
        caption = tags["XMP-dc:Description"]
        assert caption.startswith("caption number ") and tags["IFD0:ImageDescription"] == caption
        assert changed_tags(original_tags, tags) <= allowed
        outcomes.append("updated")
    assert pixels(photo) == original_pixels
    assert outcomes.count("updated") == KILLS  # each run completed a write before its kill

    # the next run: leftovers are never taken for photos ...
    leftovers = [p for p in lib.iterdir() if p != photo]
    assert all(is_temp_name(p.name) for p in leftovers), leftovers
    config = write_config(tmp_path, tiny_model)
    result = CliRunner().invoke(main, ["--config", str(config), "backfill", str(lib), "--no-progress"])
    assert result.exit_code == 0 and "failed 0" in result.output
    status = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])
    assert '"done": 1' in status.output and '"pending": 0' in status.output
    # ... and once stale (older than any write in progress could be), they are removed
    hour_ago = time.time() - 3600
    for path in leftovers:
        if path.exists():
            os.utime(path, (hour_ago, hour_ago))
    clean_stale_temps([lib])
    assert sorted(p.name for p in lib.iterdir()) == [photo.name]
