"""Where backfill puts captions, per file format: embedded, sidecar (and why), kept, failed (and why).

Copies a folder (default: ../shared/corpus) to a temp dir, runs ``phototag backfill`` on the copy
through the CLI (tiny random BLIP unless --model is given: the table does not depend on the words),
and prints a Markdown table from the index. Originals are never touched.

    python benchmarks/metadata_table.py [FOLDER] [--model PATH_OR_HUB_ID] [--overwrite]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from phototag.formats import RAW_EXTENSIONS  # noqa: E402
from phototag.metadata import ExifToolSession  # noqa: E402


def file_types(folder: Path) -> dict[str, str]:
    out = subprocess.run(
        ["exiftool", "-q", "-q", "-r", "-T", "-Directory", "-FileName", "-FileType", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    types = {}
    for line in out.stdout.splitlines():
        directory, name, kind = line.split("\t")
        types[str(Path(directory) / name)] = kind
    return types


def sidecar_reason(photo: Path, scratch: Path) -> str:
    """Why a non-RAW photo got a sidecar: embed a copy of the original again and ask."""
    if photo.suffix.lower() in RAW_EXTENSIONS:
        return "RAW"
    copy = scratch / photo.name
    shutil.copyfile(photo, copy)
    with ExifToolSession() as session:
        reason = session.write(copy, "probe caption").fallback_reason or "?"
    return reason.split(": ", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--model", help="model for captions (default: a tiny random BLIP)")
    parser.add_argument("--overwrite", action="store_true", help="caption photos with a person's description too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="phototag-table-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            from tests.tiny_blip import build_tiny_blip

            model = str(build_tiny_blip(tmp / "tiny-blip"))
        lib = tmp / "library"
        shutil.copytree(args.folder, lib, ignore=shutil.ignore_patterns("README.md", ".*"))
        for path in lib.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        config = tmp / "config.toml"
        config.write_text(
            f'[model]\nname = "{model}"\ndevice = "cpu"\nmax_new_tokens = 8\nnum_beams = 1\n'
            f'[index]\ndb = "{tmp / "index.sqlite3"}"\n'
        )
        command = [sys.executable, "-m", "phototag", "--config", str(config), "backfill", str(lib), "--no-progress"]
        command += ["--overwrite"] if args.overwrite else []
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        print(f"backfill: {done.stderr.strip().splitlines()[-1]}\n")
        types = file_types(lib)
        scratch = tmp / "scratch"
        scratch.mkdir()
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        reasons: dict[str, Counter[str]] = defaultdict(Counter)
        db = sqlite3.connect(tmp / "index.sqlite3")
        for path, status, source, written_to, failure in db.execute(
            "SELECT path, status, caption_source, written_to, failure_reason FROM photos"
        ):
            kind = types.get(path) or Path(path).suffix.lstrip(".").upper() or "?"
            if status != "done":
                counts[kind]["failed"] += 1
                reasons[kind][f"failed: {failure.split(': ', 1)[-1]}"] += 1
            elif source == "human":
                counts[kind]["kept"] += 1
            elif written_to == "embedded":
                counts[kind]["embedded"] += 1
            else:
                counts[kind]["sidecar"] += 1
                reasons[kind][f"sidecar: {sidecar_reason(Path(path), scratch)}"] += 1
        db.close()
    print("| format | files | embedded | sidecar | kept a person's description | failed | reasons |")
    print("|---|---|---|---|---|---|---|")
    for kind in sorted(counts):
        c = counts[kind]
        why = "; ".join(f"{reason} ({n})" for reason, n in sorted(reasons[kind].items()))
        cells = [kind, sum(c.values()), c["embedded"], c["sidecar"], c["kept"], c["failed"], why]
        print("| " + " | ".join(map(str, cells)) + " |")
    total = Counter()
    for c in counts.values():
        total.update(c)
    print(
        f"| all | {sum(total.values())} | {total['embedded']} | {total['sidecar']} | {total['kept']} | "
        f"{total['failed']} | |"
    )


if __name__ == "__main__":
    main()
