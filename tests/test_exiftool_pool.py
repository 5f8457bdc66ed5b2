"""Metadata work side by side: the pool of exiftool processes, writes that overlap (never two on one
file), and the plan's read serving the write unless the photo or its sidecar changed since.

The spy (:class:`tests.metadata_checks.WriteSpy`) wraps the protocol exchange of every exiftool
process with a real exiftool behind it. Overlap is observed, never assumed: the first writes wait
(with a deadline) for another to begin."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from phototag.exiftool import ExifTool, ExifToolPool, MetadataError
from phototag.metadata import ExifToolSession
from phototag.sidecars import sidecar_path
from tests.conftest import wait_until
from tests.metadata_checks import CAPTION, DATA, WriteSpy, copy_one, exiftool_json

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")


@pytest.fixture()
def pool() -> Iterator[ExifToolPool]:
    pool = ExifToolPool(size=3)
    yield pool
    pool.close()


def lend_all_at_once(pool: ExifToolPool, n: int, inside: Callable[[ExifTool], object] = lambda tool: None) -> None:
    """``n`` threads each borrow a process (and call ``inside`` with it), and keep it until all ``n`` are
    lent at once: a barrier that passes only then."""
    all_lent = threading.Barrier(n, timeout=60)

    def borrow() -> None:
        with pool.borrow() as tool:
            inside(tool)
            all_lent.wait()

    threads = [threading.Thread(target=borrow) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def test_the_pool_lends_up_to_its_size_at_once_and_starts_them_as_needed(pool: ExifToolPool) -> None:
    with pool.borrow() as first:
        assert first is pool.primary
    with pool.borrow() as again:  # one caller at a time: the one process serves it
        assert again is pool.primary
    assert len(pool.processes) == 1
    pids: list[int | None] = []

    def note(tool: ExifTool) -> None:
        pids.append(tool.pid)
        assert tool.version()

    lend_all_at_once(pool, 3, inside=note)
    assert len(set(pids)) == 3 and len(pool.processes) == 3
    assert all(tool.running for tool in pool.processes)


def test_a_process_started_by_a_worker_thread_outlives_that_thread(pool: ExifToolPool) -> None:
    """Linux's parent-death signal follows the thread that started a child: a pool process started by a
    pipeline thread must not die with that thread while others still use it."""
    started: list[tuple[int, int | None]] = []

    def start_two() -> None:
        with pool.borrow(), pool.borrow() as second:  # the second must be started, by this thread
            started.append((threading.get_native_id(), second.pid))

    worker = threading.Thread(target=start_two)
    worker.start()
    worker.join(60)
    (task, pid) = started[0]
    wait_until(lambda: not Path(f"/proc/self/task/{task}").exists(), what="the worker thread to end")
    second = next(tool for tool in pool.processes if tool.pid == pid)
    assert second.running
    assert second.version() and second.pid == pid  # the same process answers: it was never killed


def test_close_stops_every_process(pool: ExifToolPool) -> None:
    lend_all_at_once(pool, 2)
    processes = [tool._process for tool in pool.processes]
    assert len(processes) == 2
    pool.close()
    assert all(process is None or process.poll() is not None for process in processes)
    with pytest.raises(MetadataError, match="closed"):
        with pool.borrow():
            pass


def test_writes_of_different_photos_run_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = [copy_one(tmp_path, name) for name in ("jpg/Canon_40D.jpg", "jpg/Nikon_D70.jpg")]
    spy = WriteSpy(monkeypatch)
    with ExifToolSession(processes=2) as session:
        threads = [threading.Thread(target=session.write, args=(photo, CAPTION, ["dog"])) for photo in photos]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len({tool.pid for tool in session.pool.processes}) == 2
    assert spy.max_active == 2 and not spy.same_file_at_once
    for photo in photos:
        assert exiftool_json(photo)["XMP-dc:Description"] == CAPTION


def test_two_writes_of_one_photo_never_run_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline holds each photo once at a time; the session holds each file too (a restore and a
    write, two callers), so the later write sees the earlier one's keywords and keeps them."""
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    spy = WriteSpy(monkeypatch, wait_s=3)  # an overlap would begin within seconds; none must
    with ExifToolSession(processes=2) as session:
        writes = [(photo, "one", ["first"]), (photo, "two", ["second"])]
        threads = [threading.Thread(target=session.write, args=args) for args in writes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert not spy.same_file_at_once and spy.max_active == 1
    assert len([call for call in spy.calls if spy._target(call) == str(photo)]) == 2
    assert {"first", "second"} <= set(exiftool_json(photo)["XMP-dc:Subject"])


def test_the_plans_read_serves_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    with ExifToolSession() as session:
        snapshot = session.snapshot(photo)
        spy = WriteSpy(monkeypatch, overlap=1)
        session.write(photo, CAPTION, ["dog"], snapshot=snapshot)
    # the edit of the temp copy and the verify read: nothing reads the photo a second time first
    assert len(spy.calls) == 2
    assert "-o" in spy.calls[0] and "-struct" in spy.calls[1]
    assert exiftool_json(photo)["XMP-dc:Description"] == CAPTION


def _add_keyword(photo: Path, keyword: str) -> None:
    """Another program edits the photo (an independent exiftool)."""
    subprocess.run(["exiftool", "-q", "-overwrite_original", f"-XMP-dc:Subject+={keyword}", str(photo)], check=True)


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_photo_changed_since_its_plan_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_mtime: bool
) -> None:
    """``keep_mtime``: the other program even put the old mtime back; the change still shows (ctime)."""
    photo = copy_one(tmp_path, "jpg/Canon_40D.jpg")
    with ExifToolSession() as session:
        snapshot = session.snapshot(photo)
        before = os.stat(photo)
        _add_keyword(photo, "added-meanwhile")
        if keep_mtime:
            os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
        spy = WriteSpy(monkeypatch, overlap=1)
        session.write(photo, CAPTION, ["dog"], snapshot=snapshot)
    assert len(spy.calls) == 3 and "-o" in spy.calls[1]  # read again, then the edit and the verify
    tags = exiftool_json(photo)
    assert tags["XMP-dc:Description"] == CAPTION
    assert {"added-meanwhile", "dog"} <= set(tags["XMP-dc:Subject"])


def test_a_sidecar_that_appeared_since_the_plan_is_read_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = copy_one(tmp_path, "raw/Nikon.nef")
    with ExifToolSession() as session:
        snapshot = session.snapshot(photo)
        assert snapshot.sidecar_tags is None
        shutil.copyfile(DATA / "darktable_sidecar.xmp", sidecar_path(photo))  # darktable wrote one meanwhile
        session.write(photo, CAPTION, ["dog"], snapshot=snapshot)
    tags = exiftool_json(sidecar_path(photo))
    assert tags["XMP-dc:Description"] == CAPTION
    assert {"holiday", "dog"} <= set(tags["XMP-dc:Subject"])
