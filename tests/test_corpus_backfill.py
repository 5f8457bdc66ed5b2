"""The whole real-camera corpus through ``phototag backfill`` and ``phototag restore`` (the CLI, the
tiny model, a real exiftool), checked file by file with an independent exiftool and Pillow.

For every file: the tags before and after differ only in fields phototag owns, the decoded pixels are
equal, ``exiftool -validate -warning`` reports no new warning, and ``restore`` brings back every value.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from phototag.cli import main
from phototag.formats import RAW_EXTENSIONS
from phototag.safe_write import is_temp_name
from tests.conftest import CORPUS, index_rows, write_config
from tests.metadata_checks import allowed_changes, changed_tags, exiftool_json, pixels, sha256

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed"),
]

# What exiftool reveals on any rewrite of this file (see tests/test_metadata.py: allowed_changes).
KNOWN_REWRITE_EFFECTS = {"Panasonic_DMC-FZ30.jpg": {"Panasonic:DataDump"}}


def validation_warnings(folder: Path) -> dict[str, set[str]]:
    """``exiftool -validate -warning -a`` per file (-G1:4 keeps every warning, not only the last)."""
    out = subprocess.run(
        ["exiftool", "-q", "-q", "-r", "-j", "-validate", "-warning", "-a", "-G1:4", str(folder)],
        capture_output=True, text=True,
    )  # fmt: skip
    records = json.loads(out.stdout) if out.stdout.strip() else []
    return {
        str(Path(r["SourceFile"]).relative_to(folder)): {str(v) for k, v in r.items() if k.endswith("Warning")}
        for r in records
    }


def decoded(path: Path) -> object:
    try:
        return pixels(path)
    except Exception as exc:  # noqa: BLE001 - a file Pillow cannot decode must stay that way
        return type(exc).__name__


@pytest.mark.timeout(900)  # several processes and runs: minutes on a loaded machine
def test_corpus_backfill_then_restore(tmp_path: Path, tiny_model: Path) -> None:
    lib = tmp_path / "corpus"
    shutil.copytree(CORPUS, lib, ignore=shutil.ignore_patterns("README.md"))
    for path in lib.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    photos = sorted(p for p in lib.rglob("*") if p.is_file())
    assert len(photos) >= 90
    before = {p: exiftool_json(p) for p in photos}
    digests = {p: sha256(p) for p in photos}
    before_pixels = {p: decoded(p) for p in photos if p.suffix.lower() not in RAW_EXTENSIONS}
    warnings_before = validation_warnings(lib)
    config = write_config(tmp_path, tiny_model, batch_size=8)

    result = CliRunner().invoke(main, ["--config", str(config), "backfill", str(lib), "--no-progress"])
    assert result.exit_code == 0, result.output
    index = index_rows(tmp_path / "index.sqlite3")
    table: Counter[tuple[str, str]] = Counter()
    for photo in photos:
        row = index[str(photo)]
        kind = str(before[photo].get("File:FileType"))
        assert row["status"] == "done", (photo, row["failure_reason"])
        if row["caption_source"] == "human":
            table[kind, "kept a person's description"] += 1
            assert sha256(photo) == digests[photo], photo
            continue
        if row["written_to"] == "embedded":
            table[kind, "embedded"] += 1
            after = exiftool_json(photo)
            assert after["XMP-dc:Description"] == after["IFD0:ImageDescription"] == row["caption"], photo
            changed = changed_tags(before[photo], after)
            assert changed <= allowed_changes(before[photo], photo), (photo, changed)
            assert decoded(photo) == before_pixels[photo], photo
        else:
            table[kind, "sidecar"] += 1
            assert row["written_to"] == f"{photo}.xmp"
            assert sha256(photo) == digests[photo], photo
            assert exiftool_json(Path(row["written_to"]))["XMP-dc:Description"] == row["caption"]
    warnings_after = validation_warnings(lib)
    for name, found in warnings_after.items():
        assert found <= warnings_before.get(name, set()), (name, found - warnings_before.get(name, set()))
    assert not any(is_temp_name(p.name) for p in lib.rglob("*"))
    sidecars = sorted(str(p.relative_to(lib)) for p in lib.rglob("*.xmp"))
    assert sidecars == ["generated/gen_tiff.tif.xmp", "raw/DNG.dng.xmp"]  # Nikon.nef has a person's caption
    print("\n" + "\n".join(f"{kind:>14} {how}: {n}" for (kind, how), n in sorted(table.items())))

    restored = CliRunner().invoke(main, ["--config", str(config), "restore", "--all", "--no-progress"])
    assert restored.exit_code == 0, restored.output
    assert "failed 0" in restored.output and "removed sidecars 2" in restored.output
    assert sorted(p for p in lib.rglob("*") if p.is_file()) == photos
    for photo in photos:
        changed = changed_tags(before[photo], exiftool_json(photo))
        assert changed <= KNOWN_REWRITE_EFFECTS.get(photo.name, set()), (photo, changed)
    # kept as restored, so that no later backfill or daemon captions them again
    indexed = index_rows(tmp_path / "index.sqlite3")
    assert sorted(indexed) == sorted(str(p) for p in photos)
    assert {row["status"] for row in indexed.values()} == {"restored"}
    assert all(row["caption"] is None for row in indexed.values())
