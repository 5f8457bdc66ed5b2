"""Every command enters one context and leaves it on every exit path: no open index, exiftool child
process or held writer lock outlives a command, whether it ends well or fails midway.

The commands run in this process (Click's runner) so what they leave behind is visible here: the
index's files among this process's open descriptors, a -wal file not checkpointed away, exiftool
among its children, the writer lock still held. Garbage collection is off while a command runs and is
checked: a handle must be closed by the command, not by a collection that may come much later (and
the runner's result keeps the failing command's frames alive anyway)."""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import Result

from phototag.daemon_state import WriterLock
from tests.conftest import child_processes, copy_from_corpus, index_rows, open_handles, run_cli, write_config

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

PHOTOS = ["jpg/gps/DSCN0010.jpg", "jpg/Canon_40D.jpg", "raw/Nikon.nef"]


class Indexed:
    def __init__(self, root: Path, config: Path, db: Path, photos: list[Path]) -> None:
        self.root, self.config, self.db, self.photos = root, config, db, photos


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Indexed:
    """A small library, backfilled once, searched and shown by the tests (what they add is never looked for)."""
    root = tmp_path_factory.mktemp("context")
    photos = copy_from_corpus(PHOTOS, root / "lib")
    config = write_config(root, tiny_model)
    result = run_cli(config, "backfill", str(root / "lib"), "--no-progress")
    assert result.exit_code == 0 and "failed 0" in result.output, result.output
    return Indexed(root, config, root / "index.sqlite3", photos)


@contextmanager
def collection_off() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def assert_left_nothing(db: Path, result: Result) -> None:
    """No file of the index open here, its WAL checkpointed away (closed by its last connection), no
    child process (exiftool) alive, and the writer lock free for the next command."""
    assert open_handles(db) == [], f"the index is still open after: {result.output}"
    assert not Path(f"{db}-wal").exists(), "a connection to the index was left open (its WAL is still there)"
    assert child_processes() == [], "a child process outlived the command"
    lock = WriterLock(db, "the test")
    lock.acquire()  # raises AlreadyRunning while the command still holds it
    lock.release()


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["show", "{photo}"], ["show", "{photo}", "--json"]])
def test_status_and_show_close_the_index(indexed: Indexed, args: list[str]) -> None:
    with collection_off():
        result = run_cli(indexed.config, *[a.format(photo=indexed.photos[0]) for a in args])
        assert result.exit_code == 0, result.output
        assert_left_nothing(indexed.db, result)


def test_show_of_a_photo_not_in_the_index_closes_the_index(indexed: Indexed) -> None:
    with collection_off():
        result = run_cli(indexed.config, "show", str(indexed.root / "elsewhere.jpg"))
        assert result.exit_code == 1 and "is not in the index" in result.output
        assert_left_nothing(indexed.db, result)


def test_search_closes_its_connection_and_contact_sheet_exiftool(indexed: Indexed) -> None:
    sheet = indexed.root / "sheet.html"
    with collection_off():
        # a filter alone finds the whole library, the RAW among it: its thumbnail starts exiftool
        result = run_cli(
            indexed.config, "search", "--mode", "keyword", "--in", str(indexed.root / "lib"), "--html", str(sheet)
        )
        assert result.exit_code == 0, result.output
        assert sorted(result.output.split("\n")[:3]) == sorted(map(str, indexed.photos)), result.output
        assert "Nikon.nef" in sheet.read_text()
        assert_left_nothing(indexed.db, result)


def test_search_failing_after_the_index_opened_closes_it(indexed: Indexed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOTAG_EMBEDDING_MODEL", "no-such/embedding-model")  # the index has none of its vectors
    with collection_off():
        result = run_cli(indexed.config, "search", "--mode", "semantic", "dog")
        assert result.exit_code == 1 and "has no caption embeddings from no-such/embedding-model" in result.output
        assert_left_nothing(indexed.db, result)


def test_watch_without_exiftool_closes_the_index_and_frees_the_lock(
    indexed: Indexed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no exiftool on the PATH
    with collection_off():
        result = run_cli(indexed.config, "watch", str(indexed.root / "lib"))
        assert result.exit_code == 1 and "exiftool" in result.output, result.output
        assert_left_nothing(indexed.db, result)


def test_backfill_failing_midway_stops_exiftool_and_closes_the_index(indexed: Indexed, tmp_path: Path) -> None:
    # an empty model folder passes the early checks: exiftool and the index are open (and the photo
    # queued) when the model turns out not to load
    lib, model = tmp_path / "lib", tmp_path / "empty-model"
    model.mkdir()
    copy_from_corpus(["jpg/exif-org/nikon-e950.jpg"], lib)
    with collection_off():
        result = run_cli(indexed.config, "backfill", str(lib), "--no-progress", "--model", str(model))
        assert result.exit_code == 1 and "empty-model" in result.output, result.output
        assert_left_nothing(indexed.db, result)
    assert str(lib / "nikon-e950.jpg") in index_rows(indexed.db)  # it got as far as the index


def test_restore_of_nothing_closes_the_index_and_frees_the_lock(indexed: Indexed, tmp_path: Path) -> None:
    # the bad argument (a folder the index knows nothing of) shows only once the index is open
    with collection_off():
        result = run_cli(indexed.config, "restore", str(tmp_path / "not-indexed"))
        assert result.exit_code == 1 and "no photos to restore" in result.output
        assert_left_nothing(indexed.db, result)
