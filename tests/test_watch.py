"""The watch daemon with real watchdog, real files, a real exiftool and the tiny BLIP.

Completed caption writes are counted the way the filesystem sees them: phototag's hidden temp copy
moved over the photo (a second watchdog observer, independent of the daemon's). Inference is counted
by a Captioner subclass that only tallies what it captions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from phototag.cli import main
from phototag.config import Settings
from phototag.daemon_state import AlreadyRunning, DaemonLock, daemon_status
from phototag.index import Photo, PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.pipeline import Pipeline
from phototag.stages import apply_decision
from phototag.watch import Settler, WatchDaemon, distinct_roots, is_ignored_name
from tests.conftest import (
    REPO,
    SETTLE,
    WriteSpy,
    description,
    done_count,
    photo_rows,
    rgb_pixels,
    running_daemon,
    start_daemon,
    write_config,
)
from tests.conftest import wait_until as wait_for

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

SOURCES = [f"jpg/gps/DSCN00{n}.jpg" for n in (10, 12, 21, 25, 27, 29, 38, 40, 42)] + [
    f"jpg/exif-org/{name}.jpg" for name in (
        "canon-ixus", "fujifilm-dx10", "fujifilm-finepix40i", "fujifilm-mx1700", "kodak-dc210", "kodak-dc240",
        "nikon-e950", "olympus-c960", "olympus-d320l", "ricoh-rdc5300", "sanyo-vpcg250", "sanyo-vpcsx550",
        "sony-cybershot", "sony-d700", "sony-powershota5",
    )
]  # fmt: skip


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> list[Path]:
    """50 distinct small JPEGs outside any watched folder: corpus copies, each stamped with its own file
    name (XMP label) so that no two share content (moves are matched by content hash)."""
    folder = tmp_path_factory.mktemp("staged")
    for i in range(50):
        source = corpus / SOURCES[i % len(SOURCES)]
        target = folder / f"p{i:02d}_{source.name}"
        shutil.copyfile(source, target)
        os.chmod(target, 0o644)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP-xmp:Label<FileName", str(folder)], check=True)
    return sorted(folder.iterdir())


# -- pure parts ------------------------------------------------------------------------------------


def test_ignored_names_and_roots(tmp_path: Path) -> None:
    for name in (
        ".DS_Store",
        "._IMG_1.jpg",
        ".IMG_1.jpg.phototag-tmp.jpg",
        "IMG_1.jpg.part",
        "IMG_1.jpg~",
        "IMG_1.JPG.TMP",
        ".IMG_1.jpg.phototag-tmp.jpg_exiftool_tmp",
        "x.jpg.crdownload",
    ):
        assert is_ignored_name(name), name
    assert not is_ignored_name("IMG_1.jpg") and not is_ignored_name("holiday ~ 2019.jpg")
    assert distinct_roots([tmp_path / "a" / "b", tmp_path / "a", tmp_path / "c", tmp_path / "a/"]) == [
        tmp_path / "a",
        tmp_path / "c",
    ]


def test_settler_waits_for_a_stable_old_enough_file(tmp_path: Path) -> None:
    now = [100.0]
    settler = Settler(2.0, clock=lambda: now[0])
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x" * 10)
    os.utime(photo, (time.time() - 60, time.time() - 60))
    settler.note(str(photo))
    now[0] += 1.9
    assert settler.ready() == []
    with open(photo, "ab") as handle:  # still being written, no event seen: the size change resets the clock
        handle.write(b"y")
    os.utime(photo, (time.time() - 60, time.time() - 60))
    now[0] += 0.2
    assert settler.ready() == []
    now[0] += 1.9
    assert settler.ready() == []
    now[0] += 0.2
    assert settler.ready() == [str(photo)]
    assert settler.ready() == [] and settler.settling() == 0
    young = tmp_path / "b.jpg"
    young.write_bytes(b"z")  # mtime now: too young even when unchanged for the settle time
    settler.note(str(young))
    now[0] += 5
    assert settler.ready() == []
    os.utime(young, (time.time() - 3, time.time() - 3))
    settler.note(str(young))
    now[0] += 2
    assert settler.ready() == [str(young)]


def test_settler_drops_deleted_rows_only_when_quiet(tmp_path: Path) -> None:
    now = [0.0]
    settler = Settler(1.0, clock=lambda: now[0])
    (tmp_path / "new.jpg").write_bytes(b"x")
    settler.note(str(tmp_path / "new.jpg"))
    settler.gone(str(tmp_path / "old.jpg"))
    assert settler.deletions(quiet=True) == []  # a path is still settling: maybe the move's destination
    assert settler.deletions(quiet=False, max_wait=10) == []
    now[0] += 11
    assert settler.deletions(quiet=False, max_wait=10) == [str(tmp_path / "old.jpg")]
    settler.gone(str(tmp_path))  # a folder deleted: what settled inside it is forgotten
    assert settler.settling() == 0 and settler.deletions(quiet=True) == [str(tmp_path)]


def test_one_daemon_per_index(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite3"
    assert daemon_status(db) == {"running": False}
    first = DaemonLock(db)
    first.acquire()
    try:
        assert daemon_status(db)["running"]
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            DaemonLock(db).acquire(wait=0.1)
    finally:
        first.release()
    assert not daemon_status(db)["running"]


# -- the daemon in-process -------------------------------------------------------------------------


def test_burst_of_50_each_captioned_and_written_once(
    watch_settings: Settings, staged: list[Path], tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    db = watch_settings.db_path()
    with running_daemon(watch_settings, lib) as run:
        assert run.daemon.pipeline.captioner is None  # nothing to caption yet: the model is not loaded
        for photo in staged:
            shutil.copyfile(photo, lib / photo.name)
        wait_for(lambda: done_count(db) == 50, what="50 captions")
        run.own_writes_settled(lib)  # a self-trigger would now show in the counts
        submitted, writes, inferred = dict(run.submitted), dict(run.spy.writes), run.inferred["photos"]
    found = photo_rows(db)
    assert sorted(found) == sorted(str(lib / p.name) for p in staged)
    for path, row in found.items():
        assert row.status == "done" and row.caption_source == "model", (path, row.failure_reason)
        assert description(Path(path)) == row.caption
    assert submitted == {path: 1 for path in found}  # each photo queued once: no self-trigger
    assert writes == {path: 1 for path in found}  # each photo's metadata written once
    assert inferred == 50
    for photo in staged[:10]:
        assert rgb_pixels(lib / photo.name) == rgb_pixels(photo)


def test_slow_copy_is_captioned_once_after_the_last_chunk(
    watch_settings: Settings, staged: list[Path], tmp_path: Path
) -> None:
    settings = replace(watch_settings, watch=replace(watch_settings.watch, settle_seconds=2.0))
    lib = tmp_path / "lib"
    lib.mkdir()
    source = staged[0]
    data = source.read_bytes()
    target = lib / "slow.jpg"
    with running_daemon(settings, lib) as run:
        with open(target, "wb") as handle:
            for start in range(0, len(data), len(data) // 10 + 1):  # 10 chunks, >= 0.1 s apart
                events = run.dispatched[str(target)]
                handle.write(data[start : start + len(data) // 10 + 1])
                handle.flush()
                # the daemon has seen this chunk (its settle clock restarted) before the next one comes
                wait_for(lambda: run.dispatched[str(target)] > events, what="the chunk's event")  # noqa: B023
                time.sleep(0.1)  # stimulus, not a wait: the copy is slow
        last_chunk_at = time.time()
        wait_for(lambda: done_count(settings.db_path()) == 1, what="the slow photo's caption")
        submitted, writes, inferred = dict(run.submitted), dict(run.spy.writes), run.inferred["photos"]
        written_at = run.spy.times[str(target)]
    assert submitted == {str(target): 1} and writes == {str(target): 1} and inferred == 1
    assert written_at > last_chunk_at
    assert rgb_pixels(target) == rgb_pixels(source)
    assert description(target) == photo_rows(settings.db_path())[str(target)].caption


def test_moves_renames_and_deletes_keep_rows_or_mark_them_missing(
    watch_settings: Settings, staged: list[Path], tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    (lib / "trip").mkdir(parents=True)
    (lib / "old").mkdir()
    db = watch_settings.db_path()
    names = ["a.jpg", "b.jpg", "c.jpg", "trip/d.jpg", "old/e.jpg"]
    with running_daemon(watch_settings, lib) as run:
        for photo, name in zip(staged, names, strict=False):
            shutil.copyfile(photo, lib / name)
        wait_for(lambda: done_count(db) == 5, what="5 captions")
        before = {Path(path).relative_to(lib).as_posix(): (row.id, row.caption) for path, row in photo_rows(db).items()}
        (lib / "a.jpg").rename(lib / "a renamed.jpg")  # rename
        (lib / "new").mkdir()
        (lib / "b.jpg").rename(lib / "new" / "b.jpg")  # move into a new subfolder
        (lib / "c.jpg").unlink()  # delete
        (lib / "trip").rename(lib / "trip-2019")  # rename a folder
        shutil.rmtree(lib / "old")  # delete a folder
        expected = {
            "a renamed.jpg": (*before["a.jpg"], "done"),
            "new/b.jpg": (*before["b.jpg"], "done"),
            "trip-2019/d.jpg": (*before["trip/d.jpg"], "done"),
            "c.jpg": (*before["c.jpg"], "missing"),
            "old/e.jpg": (*before["old/e.jpg"], "missing"),
        }

        def settled() -> bool:
            now = {Path(p).relative_to(lib).as_posix(): (r.id, r.caption, r.status) for p, r in photo_rows(db).items()}
            return now == expected

        wait_for(settled, what=f"rows {expected}")
        run.own_writes_settled(lib)
        assert run.inferred["photos"] == 5  # no new inference
        assert set(run.spy.writes.values()) == {1} and len(run.spy.writes) == 5  # no new writes
    assert settled()


def test_restart_resumes_pending_work_without_new_inference(
    watch_settings: Settings, staged: list[Path], tmp_path: Path
) -> None:
    """The state a crash leaves: one photo's caption committed but not yet written to the file, one
    photo deleted while the daemon was down. The restart writes the planned caption without running the
    model (which it does not even load), and marks the deleted photo's row missing."""
    lib = tmp_path / "lib"
    lib.mkdir()
    db = watch_settings.db_path()
    planned, vanished = lib / "planned.jpg", lib / "vanished.jpg"
    shutil.copyfile(staged[0], planned)
    shutil.copyfile(staged[1], vanished)
    os.utime(planned, (time.time() - 60, time.time() - 60))  # arrived long ago: no settling needed
    index = PhotoIndex(db)
    with ExifToolSession() as exiftool:
        pipeline = Pipeline(watch_settings, index, exiftool)
        for photo in (planned, vanished):
            decision = pipeline.planner.plan(photo)  # what it needs; nothing written yet
            assert decision.task is not None and decision.pending  # queued work, as the record stage marks it
            with index.transaction() as session:
                apply_decision(session, decision)
    with index.transaction() as session:  # what the write stage commits just before writing the file
        row = session.scalar(select(Photo).where(Photo.path == str(planned)))
        row.caption, row.caption_source, row.keywords = "planned words here", "model", "planned words"
        row.model_name, row.prompt = watch_settings.model.name, watch_settings.model.prompt
    index.close()
    vanished.unlink()
    assert {r.status for r in photo_rows(db).values()} == {"pending"}

    with running_daemon(watch_settings, lib) as run:
        wait_for(
            lambda: photo_rows(db)[str(vanished)].status == "missing" and done_count(db) == 1, what="resume and sweep"
        )
        assert run.daemon.pipeline.captioner is None and run.inferred["photos"] == 0
        run.own_writes_settled(lib)  # the index says done before the spy's observer has seen the write
        assert dict(run.spy.writes) == {str(planned): 1}
        shutil.copyfile(staged[2], lib / "new.jpg")  # a new photo loads the model
        wait_for(lambda: done_count(db) == 2, what="the new photo's caption")
        assert run.inferred == {"loads": 1, "photos": 1}
    assert description(planned) == "planned words here"
    assert rgb_pixels(planned) == rgb_pixels(staged[0])


def test_a_model_that_cannot_load_stops_the_daemon_with_the_reason(
    watch_settings: Settings, staged: list[Path], tmp_path: Path
) -> None:
    settings = replace(watch_settings, model=replace(watch_settings.model, name=str(tmp_path / "no-such-model")))
    lib = tmp_path / "lib"
    lib.mkdir()
    index = PhotoIndex(settings.db_path())
    with ExifToolSession() as exiftool:
        daemon = WatchDaemon(settings, [lib], index=index, exiftool=exiftool).start()
        assert daemon.ready.wait(30) and daemon.error is None  # nothing needed the model yet
        shutil.copyfile(staged[0], lib / "a.jpg")
        error = wait_for(lambda: daemon.error, what="the model load error")
        assert "no-such-model" in str(error)
        assert daemon.shutdown(20)
    index.close()
    state = daemon_status(settings.db_path())
    assert not state["running"] and not state["died"] and "no-such-model" in state["last_error"]["message"]
    assert photo_rows(settings.db_path())[str(lib / "a.jpg")].status == "pending"  # resumes after a fix


# -- the daemon as a process -----------------------------------------------------------------------


def status(config: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["--config", str(config), "status", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def caught_up(db: Path, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, f"the daemon exited with {proc.returncode}:\n{log.read_text()}"
    daemon = daemon_status(db)  # not `phototag status`: it must not race the daemon creating the index
    return daemon["running"] and daemon.get("pid") == proc.pid and daemon.get("caught_up")


@pytest.mark.timeout(900)  # several processes and runs: minutes on a loaded machine
def test_sigkill_restart_sigterm_and_double_sigint(tmp_path: Path, tiny_model: Path, staged: list[Path]) -> None:
    lib, db, log = tmp_path / "lib", tmp_path / "data" / "index.sqlite3", tmp_path / "daemon.log"
    lib.mkdir()
    config = write_config(
        tmp_path,
        tiny_model,
        db=db,
        # stop_timeout: what a SIGTERM may wait for (a batch, the embedding model's load) on a loaded
        # machine; the test is about a clean stop, not its speed
        extra=f"[watch]\nsettle_seconds = {SETTLE}\nrescan_interval = 0\nstop_timeout = 120\n",
    )
    burst, late, later = staged[:30], staged[30:33], staged[33:36]
    everything = burst + late + later
    spy = WriteSpy(lib)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # 1. a burst arrives; the daemon is killed with SIGKILL part-way through
        first = start_daemon(config, lib, log)
        procs.append(first)
        wait_for(lambda: caught_up(db, first, log), what="the first daemon to start")
        for photo in burst:
            shutil.copyfile(photo, lib / photo.name)
        wait_for(lambda: done_count(db) >= 4, what="the first captions")
        first.kill()
        assert first.wait(10) == -signal.SIGKILL
        done_at_kill = done_count(db)
        assert done_at_kill < len(burst), "the burst finished before the kill; nothing was interrupted"
        dead = status(config)["daemon"]
        assert dead["running"] is False and dead["died"] is True and dead["pid"] == first.pid
        text = CliRunner().invoke(main, ["--config", str(config), "status"]).output
        assert f"daemon: not running; pid {first.pid} died without stopping" in text
        for photo in late:  # photos that arrive while no daemon runs
            shutil.copyfile(photo, lib / photo.name)

        # 2. restart: resumes, catches up; a second daemon on the same index refuses; SIGTERM mid-work
        second = start_daemon(config, lib, log)
        procs.append(second)
        wait_for(lambda: daemon_status(db).get("pid") == second.pid, what="the second daemon's state")
        refused = subprocess.run(
            [sys.executable, "-m", "phototag", "--config", str(config), "watch", str(lib)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1 and "already running" in refused.stderr, refused.stderr
        wait_for(lambda: done_count(db) > done_at_kill, what="progress after the restart")
        second.send_signal(signal.SIGTERM)
        assert second.wait(120 + 60) == 0, log.read_text()  # stop_timeout plus the interpreter's exit
        for path, row in photo_rows(db).items():  # the index never claims what is not on disk
            if row.status == "done":
                assert description(Path(path)) == row.caption, path
        assert status(config)["daemon"]["running"] is False and status(config)["daemon"]["died"] is False

        # 3. Ctrl-C twice while work is in flight: quit at once (exit 130), no photo damaged
        for photo in later:
            shutil.copyfile(photo, lib / photo.name)
        done_before = done_count(db)
        third = start_daemon(config, lib, log)
        procs.append(third)
        wait_for(lambda: done_count(db) > done_before, what="the third daemon at work")
        third.send_signal(signal.SIGINT)
        wait_for(lambda: "SIGINT: finishing the batch in flight" in log.read_text(), what="the first SIGINT")
        third.send_signal(signal.SIGINT)
        assert third.wait(60) == 130, log.read_text()

        # 4. a fourth start finishes the rest, then stops on SIGTERM while idle
        fourth = start_daemon(config, lib, log)
        procs.append(fourth)
        wait_for(lambda: done_count(db) == len(everything), timeout=300, what=f"{len(everything)} captions")
        # before stopping it, let any event from its own writes come back (a rewrite would then show):
        # the spy's sentinel comes after those events; a state the daemon wrote after that shows an
        # empty queue
        sentinel = lib / ".sentinel"
        sentinel.write_bytes(b"")
        wait_for(lambda: str(sentinel) in spy.seen, what="the sentinel's event")
        sentinel.unlink()
        seen_at = time.time()
        wait_for(
            lambda: daemon_status(db).get("updated_at", 0) > seen_at and daemon_status(db)["queue"] == 0,
            what="an idle daemon",
        )
        fourth.send_signal(signal.SIGTERM)
        assert fourth.wait(120 + 60) == 0, log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        spy.stop()
    final = photo_rows(db)
    assert sorted(final) == sorted(str(lib / p.name) for p in everything), log.read_text()
    assert all(row.status == "done" and row.caption_source == "model" for row in final.values())
    assert dict(spy.writes) == {path: 1 for path in final}  # none written twice, across kill and restarts
    for photo in everything:
        target = lib / photo.name
        assert description(target) == final[str(target)].caption
        assert rgb_pixels(target) == rgb_pixels(photo)  # none damaged
    assert sorted(p.name for p in lib.iterdir() if not p.name.startswith(".")) == sorted(p.name for p in everything)
    # one log line per captioned photo; none twice (a kill may cost a line, never add one)
    logged = Counter(
        line.split(" INFO captioned ")[1].split(": ")[0]
        for line in log.read_text().splitlines()
        if " INFO captioned " in line
    )
    assert logged and set(logged) <= set(final) and max(logged.values()) == 1


def test_daemon_answers_query_embeddings_for_search(tmp_path: Path, tiny_model: Path, minilm: Path) -> None:
    """While `phototag watch` runs, `phototag search` gets query vectors from it over an owner-only socket."""
    from phototag.embed_socket import ask, default_socket_path
    from phototag.embeddings import model_id

    lib, db, log = tmp_path / "lib", tmp_path / "index.sqlite3", tmp_path / "daemon.log"
    lib.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nname = "{tiny_model}"\n[index]\ndb = "{db}"\n[watch]\nrescan_interval = 0\n')
    socket_path = default_socket_path()
    proc = start_daemon(config, lib, log)
    try:
        wait_for(lambda: caught_up(db, proc, log), what="the daemon to start")
        answers: list[Any] = []

        def answered() -> bool:
            answers.append(ask(socket_path, model_id(str(minilm)), "a dog on the beach", timeout=10))
            return answers[-1] is not None

        wait_for(answered, what="a query vector from the daemon")
        assert answers[-1].shape == (384,)
        assert oct(socket_path.stat().st_mode & 0o777) == oct(0o600)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not socket_path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
