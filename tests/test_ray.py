"""``--ray ADDRESS``: the model on a real two-node Ray cluster on loopback, started once for this module.

The head and the worker node are each a ``ray start ... --block`` in their own process group (killing
the group kills raylet and object store; Ray gives each worker a group of its own, so ``stop_node`` kills
those too, and the node dies whole), with token authentication as
``ray start --head`` turns it on since Ray 2.52: the token reaches the nodes and phototag through
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``. One CPU and a small object store per node: the machine
is shared. The photos, the index and exiftool stay in this process's tmp folders (the driver).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from phototag.imaging import ImageError, load_rgb
from tests.conftest import REPO, WriteSpy, copy_from_corpus, description, run_cli, wait_until, write_config
from tests.metadata_checks import allowed_changes, changed_tags, exiftool_json, pixels

pytestmark = pytest.mark.timeout(600)

RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
NODE = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats"]
PHOTOS = [
    "jpg/Canon_40D.jpg",  # EXIF only
    "jpg/Nikon_D70.jpg",
    "jpg/Pentax_K10D.jpg",
    "jpg/Sony_HDR-HC3.jpg",
    "jpg/XMP.jpg",  # a person's XMP description: kept
    "jpg/IPTC.jpg",  # an IPTC caption: kept
]


@dataclass
class Cluster:
    address: str
    env: dict[str, str]  # what a driver needs: the token, and this checkout first on the path
    head: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    logs: Path

    def stop_node(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """Signal the node's whole process group (``ray start --block`` and everything it started), and
        with SIGKILL every process below it too: a worker that left the group (its own session) would
        otherwise live on for a moment after its raylet and still answer the driver, so the node would
        not die whole, as a machine that loses power does."""
        if proc.poll() is None:
            below = _descendants(proc.pid) if sig == signal.SIGKILL else []
            os.killpg(proc.pid, sig)
            for pid in below:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` now (read from /proc: children name their parent in ``stat``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "(command)": state, then the parent's pid
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _free_port() -> int:
    with closing(socket.socket()) as sock:  # the kernel's ephemeral range: above Ray's worker ports
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive_nodes(cluster_env: dict[str, str], address: str) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False); "
        "print('alive nodes:', sum(1 for n in ray.nodes() if n['Alive']))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=cluster_env, capture_output=True, text=True, timeout=120)
    # Ray may print its own lines too (a node marked dead, from an earlier test): read only ours
    found = re.search(r"^alive nodes: (\d+)$", out.stdout, re.MULTILINE)
    return int(found[1]) if found else 0


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    assert RAY is not None, "ray is not installed: contrib/setup.sh --test installs phototag[ray]"
    with open(log, "ab") as out:
        return subprocess.Popen(
            [RAY, "start", *args, *NODE, "--block"], env=env, stdout=out, stderr=out, start_new_session=True
        )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    temp = Path(tempfile.mkdtemp(prefix="ptray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=uuid.uuid4().hex,
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        RAY_USAGE_STATS_ENABLED="0",
    )
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _start_node(
        ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp / 'ray'}"], env, temp / "head.log"
    )
    worker = None
    try:
        wait_until(lambda: "--block" in (temp / "head.log").read_text(errors="replace"), 180, "the Ray head")
        worker = _start_node([f"--address={address}"], env, temp / "worker.log")
        wait_until(lambda: _alive_nodes(env, address) == 2, 180, "two live Ray nodes", poll=1)
        yield Cluster(address, env, head, worker, temp)
    finally:
        cluster = Cluster(address, env, head, worker or head, temp)
        if worker is not None:
            cluster.stop_node(worker)
        cluster.stop_node(head)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def two_nodes(ray_cluster: Cluster) -> Cluster:
    """The module's cluster with both nodes alive: a worker node a node-kill test took is started again."""
    if ray_cluster.worker.poll() is not None or _alive_nodes(ray_cluster.env, ray_cluster.address) < 2:
        ray_cluster.worker = _start_node(
            [f"--address={ray_cluster.address}"], ray_cluster.env, ray_cluster.logs / "worker.log"
        )
        wait_until(lambda: _alive_nodes(ray_cluster.env, ray_cluster.address) == 2, 180, "two live Ray nodes", poll=1)
    return ray_cluster


def _phototag(cluster: Cluster, config: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phototag", "--config", str(config), *args],
        env=cluster.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,
        **kwargs,  # type: ignore[call-overload]
    )


def _rows(db: Path) -> dict[str, tuple[str, str | None]]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {Path(p).name: (s, c) for p, s, c in conn.execute("SELECT path, status, caption FROM photos")}


def test_backfill_on_ray_captions_like_the_local_model_and_damages_nothing(
    ray_cluster: Cluster, tiny_model: Path, tmp_path: Path
) -> None:
    on_ray = copy_from_corpus(PHOTOS, tmp_path / "on-ray")
    here = copy_from_corpus(PHOTOS, tmp_path / "here")
    before = {p.name: (exiftool_json(p), pixels(p)) for p in on_ray}
    config = write_config(tmp_path, tiny_model, db=tmp_path / "ray.sqlite3", batch_size=2)
    local_config = write_config(tmp_path / "here", tiny_model, db=tmp_path / "here.sqlite3", batch_size=2)

    # a dry run on the cluster says what it would write and changes nothing
    dry = _phototag(
        ray_cluster, config, "backfill", str(tmp_path / "on-ray"), "--ray", ray_cluster.address, "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would caption 4" in dry.stderr
    would = {Path(line.split("\t")[0]).name: line.split("\t")[2] for line in dry.stdout.splitlines()}
    assert all(changed_tags(before[p.name][0], exiftool_json(p)) == set() for p in on_ray)

    result = _phototag(ray_cluster, config, "backfill", str(tmp_path / "on-ray"), "--ray", ray_cluster.address)
    assert result.returncode == 0, result.stderr
    assert "captioned 4, kept human captions 2" in result.stderr and "failed 0" in result.stderr
    assert run_cli(local_config, "backfill", str(tmp_path / "here")).exit_code == 0

    # the same model settings and the same resize: the actors caption exactly as this machine does
    rows, local_rows = _rows(tmp_path / "ray.sqlite3"), _rows(tmp_path / "here.sqlite3")
    assert rows == local_rows and all(status == "done" for status, _ in rows.values())
    assert would == {name: caption for name, (_, caption) in rows.items() if name not in ("XMP.jpg", "IPTC.jpg")}
    for photo in on_ray:
        after = exiftool_json(photo)
        assert changed_tags(before[photo.name][0], after) <= allowed_changes(before[photo.name][0], photo)
        assert pixels(photo) == before[photo.name][1], f"{photo.name}: pixels changed"
        if photo.name not in ("XMP.jpg", "IPTC.jpg"):  # a person's words stay as they were written
            assert description(photo) == rows[photo.name][1]
    assert len(here) == len(on_ray)

    # a rerun has nothing to caption: it neither starts actors nor changes a file
    stamps = {p.name: p.stat().st_mtime_ns for p in on_ray}
    again = _phototag(ray_cluster, config, "backfill", str(tmp_path / "on-ray"), "--ray", ray_cluster.address)
    assert again.returncode == 0, again.stderr
    assert "captioned 0" in again.stderr and "skipped (unchanged) 6" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in on_ray} == stamps


def test_ray_is_never_imported_without_ray(tiny_model: Path, tmp_path: Path) -> None:
    copy_from_corpus(PHOTOS[:2], tmp_path / "lib")
    config = write_config(tmp_path, tiny_model)
    code = (
        "import sys\n"
        "from phototag.cli import main\n"
        f"main(['--config', {str(config)!r}, 'backfill', {str(tmp_path / 'lib')!r}], standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "captioned 2" in out.stderr and out.stdout.strip() == "[]"


def test_without_ray_installed_the_error_says_which_extra(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is missing
    copy_from_corpus(PHOTOS[:1], tmp_path / "lib")
    result = run_cli(write_config(tmp_path, tiny_model), "backfill", str(tmp_path / "lib"), "--ray", "auto")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: Ray is not installed: install phototag[ray] (pip install 'phototag[ray]')"
    assert not (tmp_path / "index.sqlite3").exists() or _rows(tmp_path / "index.sqlite3") == {}


def test_an_address_nobody_listens_at_fails_at_once_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    copy_from_corpus(PHOTOS[:1], tmp_path / "lib")
    address = f"127.0.0.1:{_free_port()}"
    result = run_cli(write_config(tmp_path, tiny_model), "backfill", str(tmp_path / "lib"), "--ray", address)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: cannot connect to the Ray cluster at {address}: Connection refused "
        "(is `ray start --head` running there?)\n"
    )


def test_a_cluster_with_token_auth_and_no_token_here_says_so(
    ray_cluster: Cluster, tiny_model: Path, tmp_path: Path
) -> None:
    copy_from_corpus(PHOTOS[:1], tmp_path / "lib")
    config = write_config(tmp_path, tiny_model, extra=f'[cluster]\nray_address = "{ray_cluster.address}"\n')
    env = {k: v for k, v in ray_cluster.env.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    out = subprocess.run(
        [sys.executable, "-m", "phototag", "--config", str(config), "watch", str(tmp_path / "lib")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"Error: the Ray cluster at {ray_cluster.address} needs an auth token: set RAY_AUTH_MODE=token"
    )


@pytest.mark.parametrize("ray_io", [False, True], ids=["ray", "ray-io"])
def test_watch_on_ray_captions_a_new_photo_and_stops_on_sigterm(
    ray_cluster: Cluster, tiny_model: Path, tmp_path: Path, ray_io: bool
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    db = tmp_path / "index.sqlite3"
    extra = f'[watch]\nsettle_seconds = 0.3\nrescan_interval = 0\n[cluster]\nray_address = "{ray_cluster.address}"\n'
    extra += f"ray_io = {'true' if ray_io else 'false'}\n"
    config = write_config(tmp_path, tiny_model, db=db, extra=extra)  # the address from the config this time
    log = tmp_path / "watch.log"
    with open(log, "w") as stderr:  # -vv: who decoded and wrote the photo
        daemon = subprocess.Popen(
            [sys.executable, "-m", "phototag", "--config", str(config), "-vv", "watch", str(lib)],
            env=ray_cluster.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        wait_until(lambda: "watching" in log.read_text() or daemon.poll() is not None, 120, "the daemon to start")
        assert daemon.poll() is None, log.read_text()
        [photo] = copy_from_corpus(PHOTOS[:1], tmp_path / "incoming")
        photo = Path(shutil.move(photo, lib / photo.name))
        wait_until(
            lambda: db.exists() and _rows(db).get(photo.name, ("",))[0] == "done", 300, "the new photo captioned"
        )
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0, log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert description(photo) == _rows(db)[photo.name][1]
    output = log.read_text()
    assert "stopped" in output
    decoded, wrote = _log_pids(output, "decoded"), _log_pids(output, "wrote")
    if ray_io:  # a node decoded and wrote it, not the daemon
        assert decoded.keys() == wrote.keys() == {photo.name}, output
        assert daemon.pid not in (decoded[photo.name], wrote[photo.name])
    else:
        assert decoded == wrote == {}, output


def _distinct_jpegs(folder: Path, count: int) -> list[Path]:
    """Photos that differ in content (so none looks like a moved copy of another)."""
    from PIL import Image

    folder.mkdir(parents=True)
    photos = []
    for i in range(count):
        path = folder / f"photo-{i:03d}.jpg"
        Image.effect_noise((96, 72), 40 + i).convert("RGB").save(path, quality=85)
        photos.append(path)
    return photos


def _slow_config(tmp_path: Path, tiny_model: Path, db: Path) -> Path:
    """One photo per model call and slow generation: a run lasts long enough to interrupt."""
    config = write_config(tmp_path, tiny_model, db=db, batch_size=1)
    text = config.read_text().replace("max_new_tokens = 8\nnum_beams = 1", "max_new_tokens = 24\nnum_beams = 4")
    config.write_text(text)
    return config


def _backfill(
    cluster: Cluster, config: Path, lib: Path, log: Path, *extra: str, verbose: str = "-v"
) -> subprocess.Popen[bytes]:
    args = ["-m", "phototag", "--config", str(config), verbose, "backfill", str(lib), "--ray", cluster.address, *extra]
    with open(log, "a") as stderr:  # its own session: a Ctrl-C goes to it alone, as in a terminal
        return subprocess.Popen(
            [sys.executable, *args], env=cluster.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip


@pytest.mark.parametrize("io_flags", [(), ("--ray-io",)], ids=["ray", "ray-io"])
def test_ctrl_c_on_ray_stops_cleanly_and_the_rerun_captions_only_the_rest(
    two_nodes: Cluster, tiny_model: Path, tmp_path: Path, io_flags: tuple[str, ...]
) -> None:
    ray_cluster = two_nodes
    lib = tmp_path / "lib"
    photos = _distinct_jpegs(lib, 30)
    db = tmp_path / "index.sqlite3"
    config = _slow_config(tmp_path, tiny_model, db)
    spy = WriteSpy(lib)
    try:
        run = _backfill(ray_cluster, config, lib, tmp_path / "first.log", *io_flags)
        try:
            wait_until(lambda: sum(spy.writes.values()) >= 3 or run.poll() is not None, 300, "the first captions")
            assert run.poll() is None, "the backfill ended before Ctrl-C: give it more photos"
            os.killpg(run.pid, signal.SIGINT)
            assert run.wait(timeout=300) == 130, (tmp_path / "first.log").read_text()
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
        first = (tmp_path / "first.log").read_text()
        assert "stopping: finishing the batch in flight" in first
        done = {name for name, (status, _) in _rows(db).items() if status == "done"}
        assert 3 <= len(done) < len(photos) and all(status in ("done", "pending") for status, _ in _rows(db).values())
        rerun = _backfill(ray_cluster, config, lib, tmp_path / "rerun.log", *io_flags)
        assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()
        assert f"captioned {len(photos) - len(done)}," in (tmp_path / "rerun.log").read_text()
        wait_until(lambda: sum(spy.writes.values()) >= len(photos), 30, "every write seen")
    finally:
        spy.stop()
    assert spy.writes == {str(p): 1 for p in photos}  # the index is the checkpoint: nothing captioned twice
    assert all(status == "done" for status, _ in _rows(db).values())


# -- --ray-io: decoding and metadata writes on the cluster's nodes --------------------------------------


def _log_pids(output: str, verb: str) -> dict[str, int]:
    """Photo name -> the pid that did ``verb`` ("decoded", "wrote") it, from the driver's -vv log."""
    found = {}
    for match in re.finditer(rf"{verb} (\S+) on [^:\s]+:(\d+)", output):
        found[Path(match.group(1)).name] = int(match.group(2))
    return found


def test_ray_io_decodes_and_writes_on_the_nodes_and_a_rerun_changes_nothing(
    two_nodes: Cluster, tiny_model: Path, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    photos = copy_from_corpus(PHOTOS, lib)
    cut = lib / "cut.jpg"  # plans fine (its metadata reads), fails to decode on the node
    data = photos[0].read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ImageError) as local:
        load_rgb(cut, min_side=32)
    before = {p.name: (exiftool_json(p), pixels(p)) for p in photos}
    db = tmp_path / "index.sqlite3"
    config = write_config(tmp_path, tiny_model, db=db, batch_size=2)

    dry = _phototag(two_nodes, config, "backfill", str(lib), "--ray", two_nodes.address, "--ray-io", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would caption 4" in dry.stderr and "failed 1" in dry.stderr, dry.stderr
    assert all(changed_tags(before[p.name][0], exiftool_json(p)) == set() for p in photos)

    spy = WriteSpy(lib)
    try:
        log = tmp_path / "run.log"
        run = _backfill(two_nodes, config, lib, log, "--ray-io", verbose="-vv")  # -vv: who decoded and wrote each
        assert run.wait(timeout=480) == 0, log.read_text()
        wait_until(lambda: sum(spy.writes.values()) >= 4, 30, "every write seen")
    finally:
        spy.stop()
    output = log.read_text()
    assert "captioned 4, kept human captions 2" in output and "failed 1" in output, output
    rows = _rows(db)
    assert all(status == "done" for name, (status, _) in rows.items() if name != "cut.jpg")
    with closing(sqlite3.connect(db)) as conn:
        [(status, reason)] = conn.execute("SELECT status, failure_reason FROM photos WHERE path LIKE '%cut.jpg'")
    assert (status, reason) == ("failed", str(local.value))  # the same reason as this machine's decode gives
    # the four photos the model captioned were decoded and written by node actors, not by the driver
    captioned = {p.name for p in photos if p.name not in ("XMP.jpg", "IPTC.jpg")}
    decoded, wrote = _log_pids(output, "decoded"), _log_pids(output, "wrote")
    assert captioned | {"cut.jpg"} <= decoded.keys() and captioned == wrote.keys(), output
    assert run.pid not in set(decoded.values()) | set(wrote.values())
    assert spy.writes == {str(lib / name): 1 for name in captioned}
    for photo in photos:  # a real exiftool read: the caption is there, nothing else changed, pixels intact
        after = exiftool_json(photo)
        assert changed_tags(before[photo.name][0], after) <= allowed_changes(before[photo.name][0], photo)
        assert pixels(photo) == before[photo.name][1], f"{photo.name}: pixels changed"
        if photo.name in captioned:
            assert description(photo) == rows[photo.name][1] and rows[photo.name][1]

    # a rerun has nothing to caption: no file changes, no new caption
    stamps = {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in photos}
    again = _phototag(two_nodes, config, "backfill", str(lib), "--ray", two_nodes.address, "--ray-io")
    assert again.returncode == 0, again.stderr
    assert "captioned 0" in again.stderr and "skipped (unchanged) 7" in again.stderr, again.stderr  # cut.jpg: failed
    assert {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in photos} == stamps
    assert _rows(db) == rows


# A driver of its own (the token is read when Ray is first imported, and this process may have imported it
# without one): it plans a write, has a node's writer do it, loses that writer before hearing back, and
# sends the write again as the pipeline's write stage does. It prints what each step returned.
LOST_WRITER = """
import json, os, sys
from pathlib import Path
import ray
from phototag.cluster import connect, disconnect
from phototag.cluster_io import RayIO
from phototag.config import MetadataSettings
from phototag.metadata import ExifToolSession
from phototag.photo_write import WriteJob

photo, address = Path(sys.argv[1]), sys.argv[2]
with ExifToolSession() as local:
    job = WriteJob(photo, "a red bicycle against a wall", ("bicycle",), local.snapshot(photo))  # the plan's read
connect(address)
io = RayIO(MetadataSettings())
io.start()
first, other = io.actors
[report] = ray.get(first.write.remote([job]))  # the first try renames its copy over the photo ...
print(json.dumps({"first": [report.ok, report.written_to, report.already, report.writer]}), flush=True)
sys.stdin.readline()  # the test has seen that rename
ray.kill(first)  # ... and is lost before its report reaches the driver
while True:  # ray.kill only asks: a task sent at once could still reach it
    try:
        ray.get(first.describe.remote(), timeout=10)
    except ray.exceptions.RayActorError:
        break
    except ray.exceptions.GetTimeoutError:
        pass
io.drop(other)  # so the actor the driver picks first is the lost one
[retried] = io.write([job])
print(json.dumps({"retried": [retried.ok, retried.written_to, retried.already, retried.writer, retried.stat]}))
io.close()
disconnect()
"""


def test_a_write_retried_after_its_writer_was_lost_past_the_rename_writes_nothing_again(
    two_nodes: Cluster, tmp_path: Path
) -> None:
    [photo] = copy_from_corpus(PHOTOS[:1], tmp_path / "lib")
    spy = WriteSpy(photo.parent)
    try:
        driver = subprocess.Popen(
            [sys.executable, "-c", LOST_WRITER, str(photo), two_nodes.address],
            env=two_nodes.env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert driver.stdout is not None and driver.stdin is not None
        first = json.loads(driver.stdout.readline() or "{}").get("first")
        assert first is not None, driver.communicate(timeout=120)
        ok, written_to, already, writer = first
        assert ok and written_to == "embedded" and not already and int(writer.rsplit(":", 1)[1]) != driver.pid
        wait_until(lambda: spy.writes[str(photo)] == 1, 30, "the first write seen")
        written = (photo.stat().st_ino, photo.stat().st_mtime_ns, hashlib.sha256(photo.read_bytes()).hexdigest())
        out, err = driver.communicate("go\n", timeout=300)
    finally:
        spy.stop()
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err
    assert "sending it again" in err  # the lost writer's chunk went to a live one
    ok, written_to, already, writer, stat = json.loads(out.splitlines()[-1])["retried"]
    # that one saw the photo changed since the plan's read and carrying this caption: done, not written again
    assert ok and already and written_to == "embedded"
    assert stat[:2] == [photo.stat().st_size, photo.stat().st_mtime_ns]
    assert spy.writes[str(photo)] == 1
    assert (photo.stat().st_ino, photo.stat().st_mtime_ns, hashlib.sha256(photo.read_bytes()).hexdigest()) == written
    assert description(photo) == "a red bicycle against a wall"


def test_ray_io_without_ray_is_a_usage_error(tiny_model: Path, tmp_path: Path) -> None:
    copy_from_corpus(PHOTOS[:1], tmp_path / "lib")
    result = run_cli(write_config(tmp_path, tiny_model), "backfill", str(tmp_path / "lib"), "--ray-io")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: --ray-io needs --ray ADDRESS (or [cluster] ray_address): the cluster to use"
    )
    assert not (tmp_path / "index.sqlite3").exists() or _rows(tmp_path / "index.sqlite3") == {}


@pytest.mark.parametrize("io_flags", [(), ("--ray-io",)], ids=["ray", "ray-io"])
def test_a_worker_node_killed_mid_backfill_loses_nothing(
    two_nodes: Cluster, tiny_model: Path, tmp_path: Path, io_flags: tuple[str, ...]
) -> None:
    """With --ray-io the lost node also held a decoder and a writer: their chunks go to the head's."""
    ray_cluster = two_nodes
    lib = tmp_path / "lib"
    photos = _distinct_jpegs(lib, 40)
    db = tmp_path / "index.sqlite3"
    config = _slow_config(tmp_path, tiny_model, db)
    spy = WriteSpy(lib)
    log = tmp_path / "run.log"
    try:
        run = _backfill(ray_cluster, config, lib, log, *io_flags)
        try:
            wait_until(lambda: sum(spy.writes.values()) >= 4 or run.poll() is not None, 300, "the first captions")
            assert run.poll() is None, "the backfill ended before a node could be lost: give it more photos"
            ray_cluster.stop_node(ray_cluster.worker, signal.SIGKILL)  # the node dies: no goodbye to the head
            assert run.wait(timeout=300) == 0, log.read_text()
        finally:
            if run.poll() is None:
                run.kill()
        wait_until(lambda: sum(spy.writes.values()) >= len(photos), 30, "every write seen")
    finally:
        spy.stop()
    output = log.read_text()
    assert "sending it again" in output, output  # a batch was in the lost node's hands (or sent to it)
    assert f"captioned {len(photos)}," in output and "failed 0" in output, output
    assert spy.writes == {str(p): 1 for p in photos}  # every photo written once, none twice
    rows = _rows(db)
    assert all(status == "done" and caption for status, caption in rows.values()) and len(rows) == len(photos)
    for photo in photos:  # none damaged: each decodes, and carries the caption its row has
        assert description(photo) == rows[photo.name][1]
        load_rgb(photo)
