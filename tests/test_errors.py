"""Errors that are not a photo's fault: model loads that take turns, a full disk that is retried, an index
error or a bug that stops the run with one line, a daemon scanner that outlives an error."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import phototag.migrations
from phototag.captioner import Captioner, ModelLoadError
from phototag.cli import main
from phototag.config import Settings, WatchSettings
from phototag.daemon_state import daemon_status
from phototag.embeddings import Embedder
from phototag.failures import MAX_TRIES
from phototag.index import PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.pipeline import Pipeline
from phototag.watch import WatchDaemon
from tests.conftest import REPO, copy_from_corpus, read_only_folder, wait_until
from tests.conftest import run_cli as run
from tests.conftest import write_config as config_file

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

SMALL = [f"jpg/gps/DSCN00{n}.jpg" for n in ("10", "12", "21", "25", "27", "29", "38", "40", "42")]


def write_config(tmp_path: Path, tiny_model: Path, extra: str = "") -> tuple[Path, Path]:
    """The config (one photo per batch, one batch queued) and its index."""
    db = tmp_path / "index.sqlite3"
    return config_file(tmp_path, tiny_model, db=db, batch_size=1, extra=f"[pipeline]\nqueue_batches = 1\n{extra}"), db


def db_rows(db: Path, table: str = "photos") -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return {
            row[0]: row[1:]
            for row in conn.execute(f"SELECT path, status, failure_reason, failure_kind, tries FROM {table}")
        }


# -- 3. model loads take turns ----------------------------------------------------------------------


def test_caption_and_embedding_models_load_one_at_a_time(
    settings: Settings, minilm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The captioner and the embedding worker load on their own threads, often at once; the loads
    (and the heavy imports inside them) must take turns. Each real load is wrapped to record how many
    run at the same moment; the first one in gives the other a few seconds to come in beside it."""
    import sentence_transformers

    import phototag.captioner

    lock = threading.Lock()
    inside = {"captioner": 0, "embedder": 0}
    entered = {"captioner": threading.Event(), "embedder": threading.Event()}
    most_at_once = [0]

    def recorded(who: str, other: str, load: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock:
                inside[who] += 1
                most_at_once[0] = max(most_at_once[0], (inside["captioner"] > 0) + (inside["embedder"] > 0))
            entered[who].set()
            entered[other].wait(3.0)  # an overlap, if loads may overlap, shows within this
            try:
                return load(*args, **kwargs)
            finally:
                with lock:
                    inside[who] -= 1

        return wrapper

    monkeypatch.setattr(
        phototag.captioner, "_from_pretrained", recorded("captioner", "embedder", phototag.captioner._from_pretrained)
    )
    monkeypatch.setattr(
        sentence_transformers,
        "SentenceTransformer",
        recorded("embedder", "captioner", sentence_transformers.SentenceTransformer),
    )
    start = threading.Barrier(2)
    loaded: dict[str, Any] = {}

    def load(name: str, factory: Callable[[], Any]) -> None:
        start.wait()
        loaded[name] = factory()

    threads = [
        threading.Thread(target=load, args=("captioner", lambda: Captioner(settings.model))),
        threading.Thread(target=load, args=("embedder", lambda: Embedder(str(minilm)))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(loaded) == {"captioner", "embedder"}, "a load failed"
    assert entered["captioner"].is_set() and entered["embedder"].is_set()
    assert most_at_once[0] == 1, "the two models were loading at the same time"


def test_a_model_load_error_says_its_cause(settings: Settings, tmp_path: Path) -> None:
    """The failure from the issue, an ImportError inside the load: the line names it, the cause is chained."""

    def broken_install() -> Captioner:
        from transformers import NoSuchModelForPhototag  # type: ignore[attr-defined]  # noqa: F401

        raise AssertionError("unreachable")

    photo = copy_from_corpus(SMALL[:1], tmp_path / "lib")[0]
    index = PhotoIndex(settings.db_path())
    with ExifToolSession() as exiftool:
        pipeline = Pipeline(
            replace(settings, search=replace(settings.search, embeddings=False)),
            index,
            exiftool,
            captioner_factory=broken_install,
        ).start()
        pipeline.submit(photo)
        assert pipeline.close(60)
    index.close()
    error = pipeline.error
    assert isinstance(error, ModelLoadError)
    assert "ImportError: cannot import name 'NoSuchModelForPhototag'" in str(error), str(error)
    assert isinstance(error.__cause__, ImportError)


# -- 4. transient and permanent failures -------------------------------------------------------------


@contextmanager
def small_disk(folder: Path, size_kib: int) -> Iterator[Path]:
    """A real, tiny file system (tmpfs) at ``folder``; unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill_up(folder: Path) -> Path:
    """Fill ``folder``'s file system to the last byte; the returned file frees it again when deleted."""
    filler = folder / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 4096, 1):  # big blocks, then the crumbs
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(folder).free == 0
    return filler


@pytest.mark.timeout(900)  # several runs or processes: minutes on a loaded machine
def test_a_full_disk_is_retried_by_the_next_backfills_up_to_a_bound(
    tmp_path: Path, tiny_model: Path, corpus: Path
) -> None:
    config, db = write_config(tmp_path, tiny_model, "[search]\nembeddings = false\n")
    with small_disk(tmp_path / "disk", 1024) as disk:
        photo = copy_from_corpus(["jpg/gps/DSCN0010.jpg"], disk / "lib")[0]  # 160 KB
        (disk / "lib" / "notes.jpg").write_text("this is not a photo\n")  # fails for good
        original = photo.read_bytes()
        filler = fill_up(disk)

        for attempt in range(1, MAX_TRIES + 1):  # the disk stays full: each run tries the photo again
            result = run(config, "backfill", str(disk / "lib"), "--no-progress")
            assert result.exit_code == 0, result.output
            rows = db_rows(db)
            status, reason, kind, tries = rows[str(photo)]
            assert (status, kind, tries) == ("failed", "transient", attempt), rows[str(photo)]
            assert reason.startswith(f"{photo}: disk full"), reason
            assert rows[str(disk / "lib" / "notes.jpg")][2:] == ("permanent", 1)  # never retried by itself
            assert photo.read_bytes() == original
            assert not [p for p in photo.parent.iterdir() if p.name.startswith(".")]  # no temp copy left

        text = run(config, "status").output
        assert f"{photo}: {photo}: disk full" in text and f"failed {MAX_TRIES} tries in a row" in text, text
        filler.unlink()
        result = run(config, "backfill", str(disk / "lib"), "--no-progress")  # the bound is reached: it waits
        assert result.exit_code == 0 and "captioned 0" in result.output, result.output
        assert db_rows(db)[str(photo)][0] == "failed"

        result = run(config, "backfill", str(disk / "lib"), "--no-progress", "--retry-failed")
        assert result.exit_code == 0 and "captioned 1" in result.output, result.output
        assert db_rows(db)[str(photo)] == ("done", None, None, 0)


@pytest.mark.timeout(900)  # several runs or processes: minutes on a loaded machine
def test_a_photo_that_failed_transiently_is_captioned_once_the_disk_has_room(
    tmp_path: Path, tiny_model: Path, corpus: Path
) -> None:
    config, db = write_config(tmp_path, tiny_model, "[search]\nembeddings = false\n")
    with small_disk(tmp_path / "disk", 1024) as disk:
        photo = copy_from_corpus(["jpg/gps/DSCN0012.jpg"], disk / "lib")[0]
        filler = fill_up(disk)
        assert run(config, "backfill", str(disk / "lib"), "--no-progress").exit_code == 0
        assert db_rows(db)[str(photo)][0::2] == ("failed", "transient")
        assert "the next run retries it" in run(config, "status").output
        filler.unlink()
        result = run(config, "backfill", str(disk / "lib"), "--no-progress")  # no --retry-failed needed
        assert result.exit_code == 0 and "captioned 1" in result.output, result.output
        assert db_rows(db)[str(photo)] == ("done", None, None, 0)


# -- 4. the run's errors stop the run, with one line ---------------------------------------------------


@pytest.fixture
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    originals = copy_from_corpus(SMALL, tmp_path / "src")
    for i in range(3):  # 27 photos
        for photo in originals:
            target = lib / f"set{i}" / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, target)
    return lib


@pytest.mark.timeout(900)  # several runs or processes: minutes on a loaded machine
def test_an_index_error_mid_run_stops_the_backfill_with_one_line(
    tmp_path: Path, tiny_model: Path, library: Path
) -> None:
    config, db = write_config(tmp_path, tiny_model)
    proc = subprocess.Popen(
        [sys.executable, "-m", "phototag", "--config", str(config), "backfill", str(library), "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:

        def captioned() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                with sqlite3.connect(db) as conn:
                    return conn.execute("SELECT count(*) FROM photos WHERE status = 'done'").fetchone()[0] >= 3
            except sqlite3.OperationalError:
                return False

        wait_until(captioned, what="the first captions")
        with sqlite3.connect(db, timeout=30) as conn:  # the index breaks under the running backfill
            conn.execute("ALTER TABLE photos RENAME TO photos_elsewhere")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert lines == ["Error: index error: no such table: photos"], err
    rows = db_rows(db, "photos_elsewhere")
    assert len(rows) < 27, "the run finished before the index broke"
    assert not [row for row in rows.values() if row[0] == "failed"]  # no photo blamed for the index


def test_a_bug_stops_the_run_with_one_line(
    tmp_path: Path, tiny_model: Path, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import phototag.pipeline

    def buggy_decode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in decoding")

    monkeypatch.setattr(phototag.pipeline, "load_rgb", buggy_decode)
    config, db = write_config(tmp_path, tiny_model, "[search]\nembeddings = false\n")
    result = run(config, "backfill", str(library), "--no-progress")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: internal error: RuntimeError: a bug in decoding (a bug; -vv shows where)"
    ], result.output
    assert not [row for row in db_rows(db).values() if row[0] == "failed"]


# -- 4. the daemon ------------------------------------------------------------------------------------


@pytest.mark.timeout(900)  # several runs or processes: minutes on a loaded machine
def test_the_scanner_outlives_an_error_and_status_clears_it(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another program holds the index's write lock: a rescan cannot sweep a deleted photo's row. The
    scanner says so (status shows it), tries again each interval, and the error goes once it works."""
    monkeypatch.setattr(phototag.index, "BUSY_TIMEOUT_S", 0.3)
    settings = replace(
        settings,
        watch=WatchSettings(settle_seconds=0.2, rescan_interval=0.5, stop_timeout=20),
        search=replace(settings.search, embeddings=False),
    )
    lib = tmp_path / "lib"
    photos = copy_from_corpus(SMALL[:2], lib)
    db = settings.db_path()
    assert run_backfill_in_process(settings, lib) == 2
    index = PhotoIndex(db)
    with ExifToolSession() as exiftool:
        daemon = WatchDaemon(settings, [lib], index=index, exiftool=exiftool).start()
        try:
            assert daemon.ready.wait(30) and daemon.last_error is None
            blocker = sqlite3.connect(db, timeout=10)
            blocker.execute("BEGIN IMMEDIATE")  # a writer that does not let go
            photos[0].unlink()
            error = wait_until(
                lambda: (daemon_status(db).get("last_error") or {}).get("message", ""),
                what="the scan error in the state file",
            )
            assert "database is locked" in error, error
            wait_until(
                lambda: sum("rescan scan failed" in r.getMessage() for r in caplog.records) >= 2,
                what="the scanner to try again",
            )
            assert daemon.error is None
            text = CliRunner().invoke(main, ["--db", str(db), "status"]).output
            assert "last error" in text and "database is locked" in text, text
            blocker.rollback()
            blocker.close()
            wait_until(
                lambda: daemon_status(db).get("last_error") is None and _paths(db)[str(photos[0])] == "missing",
                what="the error cleared and the deleted photo's row swept",
            )
        finally:
            assert daemon.shutdown(20)
    index.close()


def _paths(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT path, status FROM photos").fetchall())


def run_backfill_in_process(settings: Settings, lib: Path) -> int:
    index = PhotoIndex(settings.db_path())
    from phototag.scan import walk_photos

    with ExifToolSession() as exiftool:
        pipeline = Pipeline(settings, index, exiftool).start()
        for path in walk_photos([lib]):
            pipeline.submit(path)
        assert pipeline.close(120) and pipeline.error is None
    index.close()
    return sum(1 for row in db_rows(settings.db_path()).values() if row[0] == "done")


def test_a_stop_that_times_out_exits_non_zero(tmp_path: Path, tiny_model: Path) -> None:
    lib = tmp_path / "lib"
    copy_from_corpus(SMALL[:1], lib)
    config, db = write_config(
        tmp_path, tiny_model, "[watch]\nsettle_seconds = 0.2\nrescan_interval = 0\nstop_timeout = 0\n"
    )
    log = tmp_path / "daemon.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "phototag", "--config", str(config), "watch", str(lib)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        wait_until(lambda: proc.poll() is None and daemon_status(db).get("caught_up"), what="the daemon to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 1, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert "did not finish within 0s" in log.read_text()


def test_an_index_folder_the_daemon_cannot_write_is_one_line(tmp_path: Path, tiny_model: Path) -> None:
    lib, folder = tmp_path / "lib", tmp_path / "data"
    copy_from_corpus(SMALL[:1], lib)
    folder.mkdir()
    config, _ = write_config(tmp_path, tiny_model)
    with read_only_folder(folder):
        for args in (["watch", str(lib)], ["backfill", str(lib), "--no-progress"]):
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "phototag",
                    "--config",
                    str(config),
                    "--db",
                    str(folder / "index.sqlite3"),
                    *args,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 1, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "Traceback" not in result.stderr and str(folder) in result.stderr, result.stderr


def test_an_index_from_before_failure_kinds_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    PhotoIndex(db).close()
    raw = sqlite3.connect(db)  # make it a version 2 index, with a photo that failed back then
    raw.executescript(
        "ALTER TABLE photos DROP COLUMN failure_kind; ALTER TABLE photos DROP COLUMN tries; PRAGMA user_version=2;"
    )
    raw.execute(
        "INSERT INTO photos (path, size, mtime_ns, status, failure_reason, keywords, created_at, "
        "updated_at) VALUES ('/p/a.jpg', 1, 1, 'failed', 'cannot decode', '', 0, 0)"
    )
    raw.commit()
    raw.close()
    index = PhotoIndex(db)
    index.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == phototag.migrations.SCHEMA_VERSION
    assert db_rows(db) == {"/p/a.jpg": ("failed", "cannot decode", None, 0)}  # an old failure waits, as before
