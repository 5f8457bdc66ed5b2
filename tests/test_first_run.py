"""A new user's first minutes: a missing model fails fast and says what to do, flags that cannot work
are refused before torch loads, -q is quiet, show reads like a person's page, the index is private."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from phototag.cli import main
from phototag.hub import missing_model_reason, unreachable_reason
from phototag.index import PhotoIndex
from phototag.safe_write import temp_path
from tests.conftest import REPO, copy_from_corpus, write_config

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

PHOTOS = ["jpg/gps/DSCN0010.jpg", "jpg/Canon_40D.jpg", "jpg/exif-org/nikon-e950.jpg"]


@pytest.fixture
def closed_endpoint() -> Iterator[str]:
    """A loopback address nothing listens on: a socket bound but not listening refuses connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def fresh_user_env(home: Path, endpoint: str) -> dict[str, str]:
    """A new user's environment: empty home and caches, the hub at ``endpoint``, no offline mode."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "PHOTOTAG_EMBEDDING_MODEL",
            "PHOTOTAG_DB",
            "PHOTOTAG_CONFIG",
            "HF_HOME",
            "HF_HUB_CACHE",
            "XDG_CONFIG_HOME",
        }
    }
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CACHE_HOME=str(home / "cache"),
        HF_ENDPOINT=endpoint,
        PYTHONPATH=str(REPO),
    )
    return env


def phototag(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "phototag", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    return done, time.monotonic() - start


def test_first_backfill_without_the_hub_fails_fast_and_says_what_to_do(tmp_path: Path, closed_endpoint: str) -> None:
    failed_first_run(tmp_path, closed_endpoint)


def failed_first_run(tmp_path: Path, closed_endpoint: str) -> tuple[dict[str, str], Path]:
    """A new user's first backfill with no model and no hub; checks its output and status, returns
    the user's environment and photo folder."""
    photos = tmp_path / "photos"
    copy_from_corpus(PHOTOS, photos)
    env = fresh_user_env(tmp_path / "home", closed_endpoint)
    done, elapsed = phototag(env, "backfill", str(photos))
    lines = done.stderr.splitlines() + done.stdout.splitlines()
    assert done.returncode == 1, done.stderr
    assert elapsed <= 15, (elapsed, lines)  # huggingface_hub alone retried for over a minute
    assert len(lines) <= 4, lines
    assert "Retrying" not in done.stderr
    last = lines[-1]
    assert "Salesforce/blip-image-captioning-large" in last and "cannot be reached" in last
    assert "--model" in last and "HF_HUB_OFFLINE=1" in last  # what to do

    # status says why photos wait instead of listing them pending with no reason
    status, _ = phototag(env, "status")
    assert status.returncode == 0, status.stderr
    assert "pending because the last backfill" in status.stdout and "cannot be reached" in status.stdout
    report = json.loads(phototag(env, "status", "--json")[0].stdout)
    assert report["counts"]["pending"] > 0 and "cannot be reached" in report["last_run_error"]["error"]
    return env, photos


def test_a_completed_backfill_clears_the_reason(tmp_path: Path, closed_endpoint: str, tiny_model: Path) -> None:
    env, photos = failed_first_run(tmp_path, closed_endpoint)
    done, _ = phototag(env, "backfill", str(photos), "--model", str(tiny_model), "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads(phototag(env, "status", "--json")[0].stdout)
    assert report["counts"]["pending"] == 0 and report["last_run_error"] is None


def test_local_model_without_a_cached_embedding_model_warns_once_without_stalling(
    tmp_path: Path, closed_endpoint: str, tiny_model: Path
) -> None:
    photos = tmp_path / "photos"
    copy_from_corpus(PHOTOS, photos)
    env = fresh_user_env(tmp_path / "home", closed_endpoint)
    done, _ = phototag(env, "backfill", str(photos), "--model", str(tiny_model), "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "without embeddings" in warnings[0], done.stderr
    assert "cannot be reached" in warnings[0] and "reindex --embeddings" in warnings[0]
    assert "Retrying" not in done.stderr  # huggingface_hub's retries took ~70 s before this warning


def test_embedding_model_not_cached_and_no_hub_is_refused_at_once(
    closed_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    from phototag.embeddings import Embedder, EmbeddingError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.monotonic()
    with pytest.raises(EmbeddingError, match="cannot be reached"):
        Embedder("sentence-transformers/all-MiniLM-L6-v2")
    assert time.monotonic() - start < 5  # the retries of one file alone took 23 s


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "cuda"], "cuda"),
        (["--model", "/no/such/blip-folder"], "does not exist"),
    ],
)
def test_impossible_model_flags_are_refused_before_torch_loads(flags: list[str], message: str, tmp_path: Path) -> None:
    if flags[0] == "--device" and os.path.exists("/proc/driver/nvidia"):
        pytest.skip("this machine has an NVIDIA driver")
    photos = tmp_path / "photos"
    copy_from_corpus(PHOTOS[:1], photos)
    code = (
        "import sys\n"
        "from phototag.cli import main\n"
        "try:\n"
        f"    main.main({['--db', str(tmp_path / 'i.sqlite3'), 'backfill', str(photos), *flags]!r})\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    elapsed = time.monotonic() - start
    assert done.stdout.split() == ["exit", "1", "False", "False"], (done.stdout, done.stderr)
    assert message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert elapsed < 9, elapsed  # it took 9-12 s of imports before


def test_hub_checks_answer_at_once(closed_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    start = time.monotonic()
    assert unreachable_reason(closed_endpoint)  # connection refused
    assert time.monotonic() - start < 3
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in (missing_model_reason("Salesforce/blip-image-captioning-large") or "")
    assert missing_model_reason(str(tmp_path)) is None  # a local folder is not the hub's business


def make_config(tmp_path: Path, tiny_model: Path) -> Path:
    return write_config(tmp_path, tiny_model)


def test_quiet_prints_no_progress_only_errors(tmp_path: Path, tiny_model: Path) -> None:
    photos = tmp_path / "photos"
    copy_from_corpus(PHOTOS, photos)
    (photos / "broken.jpg").write_bytes(b"not a photo")
    config = make_config(tmp_path, tiny_model)
    loud = CliRunner().invoke(main, ["--config", str(config), "backfill", str(photos)], catch_exceptions=False)
    assert "photos " in loud.stderr and "captioned" in loud.stderr  # the control: progress and summary
    (tmp_path / "index.sqlite3").unlink()
    quiet = CliRunner().invoke(main, ["--config", str(config), "-q", "backfill", str(photos)], catch_exceptions=False)
    assert quiet.exit_code == 0
    lines = quiet.stderr.splitlines()
    assert lines and all(line.startswith("failed: ") for line in lines), lines  # the broken photo, nothing else


def test_quiet_keeps_the_sweep_and_cleanup_lines_to_itself(tmp_path: Path, tiny_model: Path) -> None:
    """-q means errors only: a photo gone missing and a dead writer's temp are news, not errors."""
    photos = tmp_path / "photos"
    first, second = copy_from_corpus(PHOTOS[:2], photos)
    config = make_config(tmp_path, tiny_model)
    args = ["--config", str(config), "backfill", str(photos)]
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0

    def leave_news() -> None:
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        )
        temp_path(first, pid=int(dead.stdout)).write_bytes(b"left by a killed writer")
        if second.exists():
            second.rename(tmp_path / second.name)
        else:
            (tmp_path / second.name).rename(second)

    leave_news()
    loud = CliRunner().invoke(main, args, catch_exceptions=False)
    assert "removed 1 temp files" in loud.stderr and "marked 1 photos" in loud.stderr  # the control
    leave_news()  # the photo comes back; a new temp is left
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    leave_news()
    quiet = CliRunner().invoke(main, ["--config", str(config), "-q", "backfill", str(photos)], catch_exceptions=False)
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    assert not [p for p in photos.iterdir() if p.name.startswith(".")]  # the cleanup still happened


def test_show_gives_dates_and_what_restore_puts_back(tmp_path: Path, tiny_model: Path) -> None:
    photos = tmp_path / "photos"
    (photo,) = copy_from_corpus(["jpg/Canon_40D.jpg"], photos)
    subprocess.run(
        ["exiftool", "-q", "-overwrite_original", "-IFD0:ImageDescription=OLYMPUS DIGITAL CAMERA", str(photo)],
        check=True,
    )
    config = make_config(tmp_path, tiny_model)
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(config), "backfill", str(photos), "--no-progress"]).exit_code == 0
    shown = runner.invoke(main, ["--config", str(config), "show", str(photo)], catch_exceptions=False).stdout
    assert "mtime_ns" not in shown and "original_metadata" not in shown and "{" not in shown
    fields = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in shown.splitlines() if ":" in line
    }
    assert fields["taken"].startswith("2008-05-30 15:56:01")  # the photo's DateTimeOriginal
    assert time.strptime(fields["captioned"], "%Y-%m-%d %H:%M:%S")
    assert "IFD0:ImageDescription = OLYMPUS DIGITAL CAMERA" in fields["restore"]
    data = json.loads(runner.invoke(main, ["--config", str(config), "show", str(photo), "--json"]).stdout)
    assert isinstance(data["mtime_ns"], int) and data["original_metadata"]["file"]["tags"]  # --json keeps it all


def test_new_index_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = tmp_path / "data" / "phototag" / "index.sqlite3"
        index = PhotoIndex(db)
        with sqlite3.connect(db) as conn:  # a second connection keeps the WAL files in place
            conn.execute("SELECT count(*) FROM photos").fetchall()
            index.counts()
            made = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in made if p.exists()}
        index.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert modes[db.name] == 0o600 and len(modes) == 3 and set(modes.values()) == {0o600}, modes


def test_every_file_a_backfill_makes_beside_a_new_index_is_private(tmp_path: Path, tiny_model: Path) -> None:
    """The writer lock is taken before the index opens: the folder it makes must be private too, and
    the lock and state files (pids, watched folders, photo paths in errors) owner-only."""
    copy_from_corpus(["jpg/Canon_40D.jpg"], tmp_path / "lib")
    db = tmp_path / "data" / "phototag" / "index.sqlite3"
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(
            main,
            [
                "--config",
                str(make_config(tmp_path, tiny_model)),
                "--db",
                str(db),
                "-q",
                "backfill",
                str(tmp_path / "lib"),
            ],
            catch_exceptions=False,
        )
        from phototag.daemon_state import write_state

        write_state(db, {"pid": os.getpid(), "folders": [str(tmp_path / "lib")]})
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    made = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir()}
    assert any(name.endswith(".writer.lock") for name in made) and any(name.endswith(".daemon.json") for name in made)
    assert set(made.values()) == {0o600}, made


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]
    assert len(commands) == 2 and commands[0].startswith("contrib/setup.sh ") and "backfill" in block
    assert "HF_HUB_OFFLINE=1" in section and "pipx install" in section and "3.11" in section
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert commands[1] in ci  # CI runs the README's test command, as a user would
    assert os.access(REPO / "contrib" / "setup.sh", os.X_OK)


def test_setup_script_refuses_a_python_older_than_311_before_installing_anything(tmp_path: Path) -> None:
    old_python = tmp_path / "python3.10"
    old_python.write_text("#!/bin/sh\nexit 1\n")  # what `sys.version_info < (3, 11)` answers on 3.10
    old_python.chmod(0o755)
    done = subprocess.run(
        ["bash", str(REPO / "contrib" / "setup.sh"), "--test"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PHOTOTAG_PYTHON": str(old_python), "PHOTOTAG_VENV": str(tmp_path / "venv")},
    )
    assert done.returncode == 1 and "is not a Python 3.11 or newer" in done.stderr, done.stderr
    assert not (tmp_path / "venv").exists()
