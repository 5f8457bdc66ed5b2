"""The exiftool process: phototag's own ``-stay_open`` protocol, with a real exiftool.

(The dying-mid-call test is in tests/test_metadata.py, the terminal Ctrl-C one in tests/test_interrupt.py.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from phototag.exiftool import ExifTool, MetadataError
from tests.conftest import wait_until

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")


@pytest.fixture()
def exiftool() -> Iterator[ExifTool]:
    tool = ExifTool()
    yield tool
    tool.close()


def _jpeg(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie child of this process is reaped here)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_gone(pid: int) -> None:
    wait_until(lambda: _gone(pid), timeout=60, what=f"exiftool {pid} to exit")


def test_each_command_gets_its_own_stdout_stderr_and_status(exiftool: ExifTool, tmp_path: Path) -> None:
    photo = _jpeg(tmp_path / "a b=c.jpg")
    missing = tmp_path / "missing.jpg"
    stdout, stderr, status = exiftool.run(["-s3", "-File:FileType", exiftool.arg(missing)])
    assert status == 1 and stdout == "" and "File not found" in stderr and str(missing) in stderr
    # the next answer is the next command's alone: nothing of the failure bleeds into it
    stdout, stderr, status = exiftool.run(["-s3", "-File:FileType", exiftool.arg(photo)])
    assert (stdout.strip(), stderr, status) == ("JPEG", "", 0)
    # messages holding "=" do not confuse the status that -echo4 prints after them on stderr
    stdout, stderr, status = exiftool.run(["-NoSuchTag=x=y", "-overwrite_original", exiftool.arg(photo)])
    assert (stdout, stderr, status) == ("", "Warning: Tag 'NoSuchTag' is not defined\nNothing to do.\n", 1)
    stdout, stderr, status = exiftool.run(["-Artist=a=b", "-overwrite_original", exiftool.arg(photo)])
    assert (stdout.strip(), stderr, status) == ("1 image files updated", "", 0)
    assert exiftool.version() == subprocess.run(["exiftool", "-ver"], capture_output=True, text=True).stdout.strip()


def test_large_output_is_read_whole(exiftool: ExifTool, tmp_path: Path) -> None:
    photos = [_jpeg(tmp_path / f"p{i:03}.jpg") for i in range(150)]  # well past a pipe's 64 KiB
    records = exiftool.read_json(photos, everything=True)
    assert [r["SourceFile"] for r in records] == [str(p) for p in photos]


def test_exiftool_runs_in_its_own_session(exiftool: ExifTool) -> None:
    """A terminal's Ctrl-C goes to the foreground process group; exiftool must not be in it."""
    pid = exiftool.pid
    assert pid is not None and os.getsid(pid) == pid and os.getsid(pid) != os.getsid(0)


def test_a_process_that_died_between_calls_is_restarted(exiftool: ExifTool, tmp_path: Path) -> None:
    photo = _jpeg(tmp_path / "a.jpg")
    first = exiftool.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    _wait_gone(first)
    stdout, _, status = exiftool.run(["-s3", "-File:FileType", exiftool.arg(photo)])
    assert (stdout.strip(), status) == ("JPEG", 0) and exiftool.pid not in (None, first)


def test_close_stops_exiftool_and_refuses_later_calls(tmp_path: Path) -> None:
    tool = ExifTool()
    pid = tool.pid
    assert pid is not None
    tool.close()
    _wait_gone(pid)
    with pytest.raises(MetadataError, match="closed"):
        tool.run(["-ver"])


def test_a_missing_or_broken_executable_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="exiftool not found"):
        ExifTool(str(tmp_path / "no-exiftool"))
    fake = tmp_path / "exiftool"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(MetadataError, match="cannot start exiftool"):
        ExifTool(str(fake))


def test_phototag_needs_no_exiftool_library(tmp_path: Path) -> None:
    """phototag speaks the protocol itself: with pyexiftool unimportable, a session still reads and writes."""
    photo = _jpeg(tmp_path / "a.jpg")
    code = (
        "import sys\n"
        "sys.modules['exiftool'] = None  # any 'import exiftool' now fails\n"
        "from phototag.metadata import ExifToolSession\n"
        "with ExifToolSession() as session:\n"
        "    session.write(sys.argv[1], 'a red square')\n"
        "    print(session.read(sys.argv[1]).description)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code, str(photo)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "a red square"
