"""``--ray`` on this machine: photos/s with 1 and 2 Ray CPU nodes, and the bytes per photo on the wire.

Starts a real Ray cluster on loopback (a head, then a second node; one CPU and a small object store
each, token auth as ``ray start --head`` does it), and for 1 node, then 2:

- model on the cluster: uint8 batches (decoded and resized here beforehand) through
  :class:`phototag.cluster.RayCaptioner` after one warm-up batch: the cluster's captioning rate;
- pipeline: phototag's real Pipeline end to end on fresh copies (plan, decode, metadata write and
  index here, the model on the cluster) with the actors already started; actor start printed apart;
- pipeline ``--ray-io``: the same, with decoding and metadata writes on the nodes' PhotoIO actors;
- bytes per photo that cross the driver's link to the cluster in each mode (what Ray pickles: pixels
  or decode requests out, captions back; with ``--ray-io`` also the write jobs out and the reports
  back), and the photo bytes the driver itself reads and writes to decode and safe-write.

Then the paper numbers for 10M photos on 8 GPUs (docs/scale-out.md explains them).

    python benchmarks/ray_throughput.py                 # the tiny test model, 24 photos
    python benchmarks/ray_throughput.py --photos 8      # a short check that it runs
    python benchmarks/ray_throughput.py --photos 48 --model ~/models/blip-base --max-new-tokens 30
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's phototag
    sys.path.insert(0, str(REPO))

from phototag.cluster import RayCaptioner, connect, disconnect  # noqa: E402 - after the path fix above
from phototag.config import ModelSettings  # noqa: E402

CORPUS = Path(os.environ.get("PHOTOTAG_CORPUS", REPO.parent / "shared" / "corpus"))
NODE = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats"]


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="ptbench-", dir="/tmp"))
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=uuid.uuid4().hex,
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "PYTHONPATH")})
    model = args.model or str(tiny_model(work))
    photos = sample_photos(work / "photos", args.photos)
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        address = f"127.0.0.1:{port}"
        nodes.append(
            start_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={work}/ray"], env, work)
        )
        wait_for(lambda: "--block" in (work / "node-0.log").read_text(errors="replace"), "the Ray head")
        print(f"photos {len(photos)} (real corpus photos), model {model}, batch {args.batch_size} per actor")
        print(
            f"{'nodes':>5}  {'model on cluster':>18}  {'pipeline --ray':>16}  {'--ray --ray-io':>16}"
            f"  {'actor start':>11}"
        )
        results = {}
        for count in (1, 2):
            if count == 2:
                nodes.append(start_node([f"--address={address}"], env, work))
                wait_for(lambda: alive_nodes(env, address) == 2, "two Ray nodes")
            results[count] = measure(args, address, model, photos, work / f"run-{count}")
            r = results[count]
            print(
                f"{count:>5}  {r.model_rate:>12.2f} ph/s  {r.ray_rate:>10.2f} ph/s  {r.io_rate:>10.2f} ph/s"
                f"  {r.start_s:>9.1f} s"
            )
        r = results[2]
        size = sum(p.stat().st_size for p in photos) / len(photos)
        print("bytes per photo across the driver's link to the cluster (pickled, as Ray sends them):")
        print(
            f"  --ray:          out {r.ray_bytes[0]:>8,.0f} (uint8 pixels)"
            f"                  back {r.ray_bytes[1]:>6,.0f} (caption)"
        )
        print(
            f"  --ray --ray-io: out {r.io_bytes[0]:>8,.0f} (decode request + write job)  "
            f"back {r.io_bytes[1]:>6,.0f} (caption + write report)"
        )
        print(
            f"photo bytes the driver reads and writes per photo ({size:,.0f}-byte photos, embed mode): "
            f"--ray ~{3 * size:,.0f} (decode read, safe-write copy read + write); --ray --ray-io 0 "
            "(planning's fingerprint and metadata read stay on the driver in both)"
        )
        print(f"  BLIP base/large (384 x 384 x 3 uint8): {384 * 384 * 3:,} bytes of pixels per photo with --ray")
        paper()
    finally:
        for proc in reversed(nodes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Measured:
    model_rate: float  # photos/s of the model alone on the cluster
    ray_rate: float  # photos/s of the pipeline with --ray
    io_rate: float  # photos/s of the pipeline with --ray --ray-io
    start_s: float  # the model actors' start
    ray_bytes: tuple[float, float]  # per photo across the driver's link, out and back, with --ray
    io_bytes: tuple[float, float]  # the same with --ray --ray-io


def measure(args: argparse.Namespace, address: str, model: str, photos: list[Path], folder: Path) -> Measured:
    from phototag.cluster_io import RayIO
    from phototag.config import MetadataSettings
    from phototag.imaging import load_rgb

    settings = ModelSettings(
        name=model, device="cpu", batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=1
    )
    connect(address)
    try:
        started = time.perf_counter()
        captioner = RayCaptioner(settings)
        start_s = time.perf_counter() - started
        pixels = [captioner.preprocess(load_rgb(p, min_side=captioner.input_size)) for p in photos]
        captioner.caption(pixels[: captioner.batch_size])  # warm up every actor
        started = time.perf_counter()
        for first in range(0, len(pixels), captioner.batch_size):
            captioner.caption(pixels[first : first + captioner.batch_size])
        model_rate = len(pixels) / (time.perf_counter() - started)
        ray_rate, ray_bytes = pipeline_rate(settings, captioner, None, photos, folder / "ray")
        captioner.close()
        io = RayIO(MetadataSettings(overwrite=True))
        io_captioner = RayCaptioner(settings, io=io)  # the node actors start with it, before the clock
        io_rate, io_bytes = pipeline_rate(settings, io_captioner, io, photos, folder / "ray-io")
        io_captioner.close()
    finally:
        disconnect()
    return Measured(model_rate, ray_rate, io_rate, start_s, ray_bytes, io_bytes)


def pipeline_rate(
    model: ModelSettings, captioner: RayCaptioner, io: Any, photos: list[Path], folder: Path
) -> tuple[float, tuple[float, float]]:
    """photos/s of phototag's real Pipeline (plan, decode, caption on the cluster, exiftool write, index)
    on fresh copies, with the actors already started (as in a long backfill); with ``io`` (a RayIO),
    decoding and writes on the nodes. Also the bytes per photo out to the cluster and back, as pickled."""
    from phototag.config import IndexSettings, MetadataSettings, SearchSettings, Settings
    from phototag.index import PhotoIndex
    from phototag.metadata import ExifToolSession
    from phototag.pipeline import Pipeline
    from phototag.planning import CAPTIONED, Outcome
    from phototag.scan import walk_photos

    library = folder / "photos"
    shutil.copytree(photos[0].parent, library)
    settings = replace(
        Settings(),
        model=model,
        index=IndexSettings(db=str(folder / "index.sqlite3")),
        search=SearchSettings(embeddings=False),
        metadata=MetadataSettings(overwrite=True),  # corpus photos with a person's caption are captioned too
    )
    wire = {"out": 0, "back": 0}
    lock = threading.Lock()
    caption = captioner.caption

    def counted_caption(items: Any) -> Any:  # pixels (--ray) or decode requests (--ray-io) out, captions back
        captions = caption(items)
        with lock:
            wire["out"] += len(pickle.dumps(list(items)))
            wire["back"] += len(pickle.dumps(list(captions)))
        return captions

    def counted_write(jobs: Any) -> Any:  # write jobs out, reports back (--ray-io)
        reports = io.write(jobs)
        with lock:
            wire["out"] += len(pickle.dumps(list(jobs)))
            wire["back"] += len(pickle.dumps(list(reports)))
        return reports

    captioner.caption = counted_caption  # type: ignore[method-assign]
    index = PhotoIndex(settings.db_path())
    outcomes: list[Outcome] = []
    with ExifToolSession() as exiftool:
        exiftool.version()  # the process is up before the clock starts
        pipeline = Pipeline(
            settings,
            index,
            exiftool,
            captioner_factory=lambda: captioner,
            write_files=counted_write if io is not None else None,
            on_outcome=outcomes.append,
        )
        started = time.perf_counter()
        pipeline.start()
        for path in walk_photos([library]):
            pipeline.submit(path)
        pipeline.close()
        elapsed = time.perf_counter() - started
    index.close()
    failed = [o for o in outcomes if o.kind != CAPTIONED]
    if failed or len(outcomes) != len(photos):
        raise SystemExit(f"the pipeline did not caption every photo: {failed[:3]} ({len(outcomes)} outcomes)")
    return len(photos) / elapsed, (wire["out"] / len(photos), wire["back"] / len(photos))


def paper() -> None:
    """10M photos on 8 GPUs: what limits it (the arithmetic of docs/scale-out.md)."""
    photos, gpus, per_gpu = 10_000_000, 8, 150.0
    photo_mb, sidecar_kb = 5.0, 4.0
    rate = gpus * per_gpu
    hours = photos / rate / 3600
    print(
        f"\n10M photos, {gpus} GPUs at {per_gpu:.0f} photos/s each: {rate:,.0f} photos/s, {hours:.1f} h of captioning"
    )
    embed = rate * photo_mb * 3  # read to decode, read to copy, write the copy (safe write) per photo
    sidecar = rate * (photo_mb + 2 * sidecar_kb / 1024)  # read to decode; the sidecar written beside it
    print(f"  storage, embed mode ({photo_mb:g} MB photos, read + copy + rewrite): {embed:,.0f} MB/s")
    print(f"  storage, sidecar mode (read once, {sidecar_kb:g} KB XMP written): {sidecar:,.0f} MB/s")
    print(f"  network to the GPUs: {rate * 384 * 384 * 3 / 1e6:,.0f} MB/s of uint8 pixels (384 x 384 x 3)")
    rows_gb, vectors_gb = photos * 1500 / 1e9, photos * 384 * 4 / 1e9  # ~1.5 KB row + FTS; 384 float32
    print(f"  index: ~{rows_gb:.0f} GB rows and keyword index, {vectors_gb:.1f} GB caption vectors (MiniLM, float32)")


def tiny_model(work: Path) -> Path:
    from tests.tiny_blip import build_tiny_blip

    return build_tiny_blip(work / "tiny-blip")


def sample_photos(folder: Path, count: int) -> list[Path]:
    """``count`` distinct real JPEGs from the corpus (flat copies)."""
    folder.mkdir(parents=True)
    found = sorted(p for p in CORPUS.rglob("*.jpg") if p.stat().st_size > 10_000 and "corrupt" not in p.name)
    if len(found) < count:
        raise SystemExit(f"only {len(found)} JPEGs in {CORPUS}: use --photos {len(found)} or fewer")
    copies = []
    for i, source in enumerate(found[:count]):
        target = folder / f"{i:03d}-{source.name}"
        shutil.copyfile(source, target)
        target.chmod(0o644)
        copies.append(target)
    return copies


def start_node(args: list[str], env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    log = work / f"node-{len(list(work.glob('node-*.log')))}.log"
    with open(log, "ab") as out:
        return subprocess.Popen(
            [ray, "start", *args, *NODE, "--block"], env=env, stdout=out, stderr=out, start_new_session=True
        )


def alive_nodes(env: dict[str, str], address: str) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip() or 0)


def wait_for(condition, what: str, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24, help="real corpus JPEGs per run (default 24)")
    parser.add_argument("--model", help="BLIP folder (default: the tiny test model, built in a temp folder)")
    parser.add_argument("--batch-size", type=int, default=4, help="photos per model call on each actor")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    return parser.parse_args()


if __name__ == "__main__":
    main()
