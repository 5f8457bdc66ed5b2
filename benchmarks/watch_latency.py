"""Watch daemon: latency from "photo copied in" to "caption in the index", and the daemon's memory.

Runs ``python -m phototag watch`` as a real process on an empty temp folder, then copies photos in one
at a time (each after the previous one is done) and polls the index every 5 ms for the photo's row to
become ``done`` (its caption is then in the file and in the index). Latency is measured from the end
of the copy (the file is closed) to that moment; it includes ``settle_seconds`` by design, so the
output also shows latency minus the settle time. RSS is read from /proc/PID/status (VmRSS) once the
daemon has caught up with the empty folder (the model is loaded lazily, so not yet), and again after
the first photo (model loaded). Without ``--model`` the tiny random BLIP from the tests is used.

    python benchmarks/watch_latency.py                 # tiny model, settle 2 s (the default)
    python benchmarks/watch_latency.py --settle 0.3 --photos 12
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPUS = Path(os.environ.get("PHOTOTAG_CORPUS", REPO.parent / "shared" / "corpus"))
PHOTOS = sorted((CORPUS / "jpg" / "gps").glob("*.jpg")) + sorted((CORPUS / "jpg" / "exif-org").glob("*.jpg"))


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def wait(condition, timeout: float, what: str, interval: float = 0.005):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def row_done(db: Path, path: Path) -> bool:
    if not db.exists():
        return False
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT status FROM photos WHERE path = ?", (str(path),)).fetchone()
    return row is not None and row[0] == "done"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or hub id (default: build the tiny test BLIP)")
    parser.add_argument("--photos", type=int, default=10, help="photos copied in, one after another")
    parser.add_argument("--settle", type=float, default=2.0, help="[watch] settle_seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="phototag-watch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            from tests.tiny_blip import build_tiny_blip

            model = str(build_tiny_blip(tmp / "tiny-blip"))
        lib, db, config = tmp / "lib", tmp / "index.sqlite3", tmp / "config.toml"
        lib.mkdir()
        config.write_text(
            f'[model]\nname = "{model}"\ndevice = "cpu"\nbatch_size = 4\nmax_new_tokens = 8\nnum_beams = 1\n'
            f'[index]\ndb = "{db}"\n[watch]\nsettle_seconds = {args.settle}\nrescan_interval = 0\n'
        )
        state = db.with_name(db.name + ".daemon.json")
        started = time.monotonic()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "phototag", "-q", "--config", str(config), "watch", str(lib)], cwd=REPO
        )
        try:
            wait(lambda: state.exists() and json.loads(state.read_text()).get("caught_up"), 60, "the daemon")
            print(f"daemon up and caught up in {time.monotonic() - started:.2f} s (pid {daemon.pid})")
            time.sleep(1.0)
            idle = rss_mib(daemon.pid)
            print(f"idle RSS before the model is loaded: {idle[0]:.0f} MiB")
            latencies = []
            for i, source in enumerate(PHOTOS[: args.photos]):
                target = lib / f"{i:03d}_{source.name}"
                shutil.copyfile(source, target)
                copied = time.monotonic()
                wait(lambda target=target: row_done(db, target), 120, f"{target.name} to be captioned")
                latencies.append(time.monotonic() - copied)
                if i == 0:
                    time.sleep(1.0)
                    loaded = rss_mib(daemon.pid)
                    print(f"first photo (includes loading the model): {latencies[0]:.3f} s")
                    print(f"RSS with the model loaded: {loaded[0]:.0f} MiB (peak {loaded[1]:.0f} MiB)")
            rest = latencies[1:]
            if rest:
                print(
                    f"latency over {len(rest)} more photos (settle {args.settle:g} s): "
                    f"median {statistics.median(rest):.3f} s, min {min(rest):.3f} s, max {max(rest):.3f} s; "
                    f"minus settle: median {statistics.median(rest) - args.settle:.3f} s"
                )
            stop = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(60)
            print(f"SIGTERM while idle: exit {code} after {time.monotonic() - stop:.2f} s")
        finally:
            if daemon.poll() is None:
                daemon.kill()


if __name__ == "__main__":
    main()
