"""Files at the library's edges: symbolic links (never written through) and names with line breaks."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import Result

from phototag.config import Settings, WatchSettings
from phototag.metadata import ExifToolSession
from phototag.planning import CAPTIONED, FAILED_OUTCOME, SYMLINK
from tests.conftest import copy_from_corpus, description, photo_rows, rgb_pixels, run_cli, running_daemon, write_config
from tests.conftest import wait_until as wait_for
from tests.metadata_checks import sha256

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")


def backfill(tmp_path: Path, tiny_model: Path, *args: str) -> Result:
    return run_cli(write_config(tmp_path, tiny_model), "backfill", *args)


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """lib/real.jpg, outside/secret.jpg (outside every root), and the folder the links go in."""
    lib, outside = tmp_path / "lib", tmp_path / "outside"
    (real,) = copy_from_corpus(["jpg/gps/DSCN0010.jpg"], lib)
    real = real.rename(lib / "real.jpg")
    (secret,) = copy_from_corpus(["jpg/gps/DSCN0012.jpg"], outside)
    yield lib, real, secret


# -- symbolic links ----------------------------------------------------------------------------------


def test_backfill_never_writes_through_a_link(
    linked: tuple[Path, Path, Path], tmp_path: Path, tiny_model: Path
) -> None:
    lib, real, secret = linked
    (lib / "outside_link.jpg").symlink_to(secret)
    (lib / "inside_link.jpg").symlink_to(real)  # the real file is in the library: captioned once, as itself
    secret_before = sha256(secret)

    result = backfill(tmp_path, tiny_model, str(lib))
    assert result.exit_code == 0, result.output
    assert "captioned 1," in result.output and "failed 0" in result.output
    assert "symbolic links skipped 2" in result.output
    assert f"skipped: {lib / 'outside_link.jpg'}: a symbolic link to {secret}: skipped" in result.output

    assert sha256(secret) == secret_before and description(secret) is None
    assert (lib / "outside_link.jpg").is_symlink() and (lib / "inside_link.jpg").is_symlink()
    found = photo_rows(tmp_path / "index.sqlite3")
    assert list(found) == [str(real)] and found[str(real)].status == "done"
    assert description(real) == found[str(real)].caption
    assert sorted(p.name for p in lib.iterdir()) == ["inside_link.jpg", "outside_link.jpg", "real.jpg"]

    # named on the command line, a link is skipped just the same
    result = backfill(tmp_path, tiny_model, str(lib / "outside_link.jpg"))
    assert result.exit_code == 0 and "symbolic links skipped 1" in result.output
    assert sha256(secret) == secret_before


def test_watch_never_writes_through_a_link(
    linked: tuple[Path, Path, Path], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    lib, real, secret = linked
    settings = replace(settings, watch=WatchSettings(settle_seconds=0.3, rescan_interval=0, stop_timeout=20))
    secret_before = sha256(secret)
    caplog.set_level(logging.INFO, logger="phototag.watch")
    with running_daemon(settings, lib) as run:
        wait_for(
            lambda: (
                settings.db_path().exists()
                and str(real) in photo_rows(settings.db_path())
                and photo_rows(settings.db_path())[str(real)].status == "done"
            ),
            what="the real photo's caption",
        )
        link = lib / "arrived_link.jpg"
        link.symlink_to(secret)  # a link appears while the daemon watches
        wait_for(lambda: run.daemon.counts[SYMLINK] >= 1, what="the link to be seen and skipped")
        secret.write_bytes(secret.read_bytes())  # the target changes: no event in the library, nothing to do
    assert sha256(secret) == secret_before and description(secret) is None and link.is_symlink()
    assert f"{link}: a symbolic link to {secret}: skipped" in caplog.text
    assert list(photo_rows(settings.db_path())) == [str(real)]
    assert run.inferred["photos"] == 1 and dict(run.spy.writes) == {str(real): 1}


# -- names that are not UTF-8 ----------------------------------------------------------------------------


@pytest.fixture
def latin1_named(tmp_path: Path) -> tuple[Path, Path, Path]:
    """lib/real.jpg and lib/café.jpg named in Latin-1 (the byte 0xE9, as an old camera or a Windows share
    writes it), a different photo."""
    lib = tmp_path / "lib"
    (real,) = copy_from_corpus(["jpg/gps/DSCN0010.jpg"], lib)
    real = real.rename(lib / "real.jpg")
    (source,) = copy_from_corpus(["jpg/gps/DSCN0012.jpg"], tmp_path / "src")
    odd = lib / os.fsdecode(b"caf\xe9.jpg")
    shutil.copyfile(source, odd)
    return lib, real, odd


def test_a_name_that_is_not_utf8_fails_alone_and_is_left_untouched(
    latin1_named: tuple[Path, Path, Path], tmp_path: Path, tiny_model: Path
) -> None:
    lib, real, odd = latin1_named
    before = sha256(odd)
    for flags in ([], ["--no-progress"]):  # the rerun too: it fails again, the same way, and the run goes on
        result = backfill(tmp_path, tiny_model, str(lib), *flags)  # no row holds it: always said
        assert result.exit_code == 0, result.output
        assert "failed 1" in result.output and "internal error" not in result.output, result.output
        assert "caf\\udce9.jpg: its name is not valid UTF-8" in result.output, result.output
    found = photo_rows(tmp_path / "index.sqlite3")
    assert list(found) == [str(real)] and found[str(real)].status == "done"
    assert description(real) == found[str(real)].caption
    assert sha256(odd) == before and description(odd) is None
    assert sorted(os.fsencode(p.name) for p in lib.iterdir()) == [b"caf\xe9.jpg", b"real.jpg"]


def test_watch_goes_on_past_a_name_that_is_not_utf8(
    latin1_named: tuple[Path, Path, Path], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    lib, real, odd = latin1_named
    settings = replace(settings, watch=WatchSettings(settle_seconds=0.3, rescan_interval=0, stop_timeout=20))
    odd.rename(lib.parent / odd.name)  # it arrives while the daemon watches
    caplog.set_level(logging.INFO, logger="phototag.watch")
    with running_daemon(settings, lib) as run:
        wait_for(lambda: run.daemon.counts[CAPTIONED] >= 1, what="the real photo's caption")
        (lib.parent / odd.name).rename(odd)
        wait_for(lambda: run.daemon.counts[FAILED_OUTCOME] >= 1, what="the odd name to fail")
        (later,) = copy_from_corpus(["jpg/Canon_40D.jpg"], lib)  # and the daemon goes on
        wait_for(lambda: run.daemon.counts[CAPTIONED] >= 2, what="the next photo's caption")
    assert "its name is not valid UTF-8" in caplog.text
    assert sorted(photo_rows(settings.db_path())) == sorted([str(real), str(later)])
    assert description(odd) is None


# -- names with line breaks --------------------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp folder for this test alone, to see that phototag leaves nothing in it."""
    import tempfile

    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_backfill_captions_a_photo_whose_name_has_a_line_break(
    tmp_path: Path, tiny_model: Path, private_tmp: Path
) -> None:
    lib = tmp_path / "lib"
    (source,) = copy_from_corpus(["jpg/gps/DSCN0010.jpg"], tmp_path / "src")
    odd = lib / "new\nline.jpg"
    odd_folder_raw = lib / "odd\rfolder" / "raw\nshot.dng"
    odd_folder_raw.parent.mkdir(parents=True)
    shutil.copyfile(source, odd)
    (raw,) = copy_from_corpus(["raw/DNG.dng"], tmp_path / "src")
    shutil.copyfile(raw, odd_folder_raw)

    result = backfill(tmp_path, tiny_model, str(lib), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "captioned 2," in result.output and "failed 0" in result.output
    found = photo_rows(tmp_path / "index.sqlite3")
    assert sorted(found) == sorted([str(odd), str(odd_folder_raw)])
    assert description(odd) == found[str(odd)].caption  # exiftool's own argv takes any name
    assert rgb_pixels(odd) == rgb_pixels(source)
    sidecar = odd_folder_raw.with_name(odd_folder_raw.name + ".xmp")  # named after the real name
    assert description(sidecar) == found[str(odd_folder_raw)].caption
    assert odd_folder_raw.read_bytes() == raw.read_bytes()
    assert sorted(p.name for p in lib.rglob("*")) == sorted(
        ["new\nline.jpg", "odd\rfolder", "raw\nshot.dng", "raw\nshot.dng.xmp"]
    )  # no temp copy left
    assert list(private_tmp.iterdir()) == []  # nor an alias


def test_session_reads_writes_and_restores_a_name_with_a_line_break(tmp_path: Path, private_tmp: Path) -> None:
    (photo,) = copy_from_corpus(["jpg/Canon_40D.jpg"], tmp_path)
    odd = photo.rename(tmp_path / "a\nb.jpg")
    with ExifToolSession(mode="both") as session:
        before = session.read(odd)
        assert before.description is None and session.read(odd).original["file"]["path"] == str(odd)
        result = session.write(odd, "a red car", ["car"])
        assert result.kind == "embedded" and result.also_written == (tmp_path / "a\nb.jpg.xmp",)
        assert session.read(odd).description == "a red car"
        assert list(private_tmp.iterdir())  # aliases live while the session does
        restored = session.restore(odd, before.original)
        assert restored.photo and restored.sidecar == "removed"
        assert session.read(odd).description is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a\nb.jpg", "system-tmp"]
    assert list(private_tmp.iterdir()) == []
