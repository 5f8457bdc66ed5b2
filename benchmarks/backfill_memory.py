"""Backfill memory against library size: RSS must not grow with the number of photos.

Makes synthetic libraries of small, distinct JPEGs (Pillow-generated test data, never the corpus),
runs the real command, ``python -m phototag backfill``, with the tiny random BLIP from the tests, and
samples the resident memory of the command (and its exiftool process) while it runs. A streaming walk
and bounded queues keep the peak flat; something that keeps every photo (a list, a growing session)
shows up as RSS rising through the run and a higher peak for the bigger library.

    python benchmarks/backfill_memory.py                  # libraries of 500 and 3000 photos
    python benchmarks/backfill_memory.py --sizes 1000,10000
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="500,3000", help="library sizes to compare (comma-separated)")
    parser.add_argument("--per-folder", type=int, default=250, help="photos per sub-folder")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between RSS samples")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    from transformers.utils import logging as hf_logging

    from tests.tiny_blip import build_tiny_blip

    hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="phototag-mem-") as tmp:
        model = build_tiny_blip(Path(tmp) / "tiny-blip")
        print(
            "`python -m phototag backfill` with the tiny random BLIP (cpu, batch size 8, 8 tokens); "
            "resident memory (RSS) of the command, and of its exiftool process\n"
        )
        print(
            f"{'photos':>7}  {'seconds':>7}  {'photos/s':>8}  {'RSS at 25%':>10}  {'50%':>6}  {'75%':>6}  "
            f"{'end':>6}  {'peak':>6}  {'exiftool peak':>13}  MiB"
        )
        for size in sizes:
            library = Path(tmp) / f"library-{size}"
            make_library(library, size, args.per_folder)
            db = Path(tmp) / f"index-{size}.sqlite3"
            seconds, samples = run_backfill(library, db, model, Path(tmp), args.interval)
            done = count_done(db)
            if done != size:
                raise SystemExit(f"backfill of {size} photos captioned {done}")
            main_rss = [s[1] for s in samples]
            at = [main_rss[min(len(main_rss) - 1, int(len(main_rss) * q))] for q in (0.25, 0.5, 0.75)]
            print(
                f"{size:>7}  {seconds:>7.1f}  {size / seconds:>8.1f}  {at[0]:>10.0f}  {at[1]:>6.0f}  {at[2]:>6.0f}  "
                f"{main_rss[-1]:>6.0f}  {max(main_rss):>6.0f}  {max(s[2] for s in samples):>13.0f}",
                flush=True,
            )


def make_library(folder: Path, count: int, per_folder: int) -> None:
    """Small distinct JPEGs in nested folders (distinct content: no move detection between copies)."""
    from PIL import Image, ImageDraw

    rng = random.Random(count)
    for i in range(count):
        sub = folder / f"{i // (per_folder * 4):03d}" / f"{i // per_folder:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (256, 192), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randrange(256), rng.randrange(192)
            draw.rectangle(
                (x, y, x + rng.randrange(8, 96), y + rng.randrange(8, 96)),
                fill=tuple(rng.randrange(256) for _ in range(3)),
            )
        draw.text((8, 8), f"photo {i}", fill=(255, 255, 255))
        image.save(sub / f"IMG_{i:06d}.jpg", quality=85)


Samples = list[tuple[float, float, float]]


def run_backfill(library: Path, db: Path, model: Path, tmp: Path, interval: float) -> tuple[float, Samples]:
    """Run the CLI; samples of (elapsed, phototag RSS MiB, exiftool RSS MiB)."""
    config = tmp / "config.toml"
    config.write_text(
        f'[model]\nname = "{model}"\ndevice = "cpu"\nbatch_size = 8\nmax_new_tokens = 8\n'
        f'num_beams = 1\n[index]\ndb = "{db}"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "phototag",
        "--config",
        str(config),
        "-q",
        "backfill",
        str(library),
        "--no-progress",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: Samples = []
    while process.poll() is None:
        rss = rss_mib(process.pid)
        if rss:
            samples.append((time.perf_counter() - started, rss, sum(rss_mib(c) for c in children(process.pid))))
        time.sleep(interval)
    seconds = time.perf_counter() - started
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"backfill failed ({process.returncode}): {stderr.decode()[-2000:]}")
    return seconds, samples


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return found


def count_done(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM photos WHERE status = 'done'").fetchone()[0]


if __name__ == "__main__":
    main()
