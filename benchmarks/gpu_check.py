"""One run on a GPU machine: does phototag keep BLIP-large busy? (issue 11, "A GPU that is never starved")

Reports, on the exact BLIP-large architecture with random weights and every caption forced to
``--new-tokens`` tokens (as ``throughput.py`` does, whose measuring code this reuses):

- decode photos/s per core: the CPU side of phototag's fast input (draft decode to about the model's
  size, a uint8 tensor in pinned memory) and of the exact input (full decode, the processor), on one
  thread and on every core;
- for each batch size (32 and 64 by default): the raw model (inputs ready on the device) and phototag's
  real Pipeline at that batch (plan, decode, caption, exiftool write, throwaway index; embeddings off),
  and their ratio (goal >= 0.9): once with the model in the pipeline's process, once with it in a
  process of its own (``[model] process``, phototag's default on CUDA);
- the model card's seed loop (one photo at a time), and pipeline/seed (goal >= 10).

Every line goes to ``$OUT/gpu.txt`` as soon as it is measured (so a run stopped at its time limit still
returns what it had) and to stdout. Run it through ``benchmarks/gpu_check.sh``, which installs the
carried wheels and ExifTool first; on a CPU, to try it out:

    python benchmarks/gpu_check.py --device cpu --dtype bf16 --batches 2,4 --photos 8 --seed-photos 2 --new-tokens 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's phototag
    sys.path.insert(0, str(REPO))

# phototag.captioner first: it sets the OpenMP wait policy that must be in place before torch loads
import phototag.captioner  # noqa: E402,F401  # isort: skip
from benchmarks import throughput  # noqa: E402

# JPEGs of throughput.py's list (draft decoding applies to JPEGs; no HEIC reader is carried), less the one
# whose description a person wrote ("Der Goalie bin ig"): phototag keeps it and never runs the model on it,
# so the pipeline line would do less work than the raw line it is compared with.
HAS_HUMAN_CAPTION = {"jpg/xmp/no_exif.jpg"}
PHOTOS = [name for name in throughput.PHOTOS if name.lower().endswith(".jpg") and name not in HAS_HUMAN_CAPTION]


class Tee:
    """stdout that also appends each write to a file, flushed at once (a killed run keeps its lines)."""

    def __init__(self, stream: TextIO, path: Path) -> None:
        self.stream = stream
        self.file = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.stream.write(text)
            self.file.write(text)
            self.file.flush()
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="phototag-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    sys.stdout = Tee(sys.stdout, out / "gpu.txt")  # type: ignore[assignment]
    started = time.perf_counter()
    print(f"phototag gpu_check ({throughput.git_rev() or 'no git here'}), output also in {out / 'gpu.txt'}")
    photos = [throughput.CORPUS / PHOTOS[i % len(PHOTOS)] for i in range(args.photos)]
    missing = sorted({str(p) for p in photos if not p.is_file()})
    if missing:
        print(f"photos missing: {missing[:3]} (PHOTOTAG_CORPUS={throughput.CORPUS}); run benchmarks/gpu_prepare.sh")
        return 2
    exiftool_ok = check_environment(photos[0])

    import torch
    from transformers.utils import logging as hf_logging

    from benchmarks.blip_large import build_blip_large, describe
    from phototag.captioner import Captioner, pick_device, pick_dtype
    from phototag.config import ModelSettings

    hf_logging.disable_progress_bar()
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    t0 = time.perf_counter()
    model_dir = Path(args.model) if args.model else build_blip_large(Path(args.model_dir))
    built = time.perf_counter() - t0
    settings = ModelSettings(
        name=str(model_dir),
        device=device,
        dtype=dtype,
        batch_size=max(args.batches),
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        num_beams=1,
    )
    t0 = time.perf_counter()
    captioner = Captioner(settings)
    loaded = time.perf_counter() - t0
    what = describe(model_dir) if (model_dir / "phototag-benchmark.json").is_file() else str(model_dir)
    chip = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else throughput.cpu_name()
    print(f"\nmodel       {what}; built {built:.0f} s, loaded {loaded:.0f} s")
    print(
        f"device      {device} ({chip}); dtype {captioner.dtype_name}; {args.new_tokens} new tokens (forced), "
        f"greedy; phototag: draft decoding {'on' if captioner.draft_decode else 'off'}, input made on the device "
        f"{'yes' if captioner.device_preprocess else 'no'}, pinned memory {'yes' if captioner.pin_memory else 'no'}"
    )
    print(
        f"photos      {len(photos)} per line ({len(set(photos))} distinct corpus JPEGs, "
        f"{sum('big_' in p.name for p in set(photos))} of them 12 MP), seed loop {args.seed_photos}\n"
    )

    if not args.skip_decode:
        section("decode photos/s per core", lambda: decode_rates(args, photos, captioner))
    child = None
    if exiftool_ok and not args.skip_process:
        from dataclasses import replace

        from phototag.model_process import ProcessCaptioner

        t0 = time.perf_counter()
        child = ProcessCaptioner(replace(settings, process=True))  # phototag's default on CUDA
        print(f"model process {child.pid} loaded in {time.perf_counter() - t0:.0f} s\n")
    print(throughput.LINE_HEADER)
    rates: dict[str, float] = {}
    for batch in args.batches:
        throughput.warm_up(captioner, batch)
        section(
            f"raw model, batch {batch}",
            lambda b=batch: line(rates, f"raw {b}", throughput.raw_model(captioner, photos, b, f"raw model b{b}")),
        )
        if exiftool_ok:
            section(
                f"phototag, batch {batch}",
                lambda b=batch: line(
                    rates,
                    f"phototag {b}",
                    throughput.phototag(settings, captioner, photos, f"phototag b{b}", batch_size=b, embeddings=False),
                ),
            )
        ratio(rates, f"phototag {batch}", f"raw {batch}", f"phototag/raw at batch {batch}", 0.9)
        if child is not None:
            section(
                f"phototag, batch {batch}, model in its own process",
                lambda b=batch: line(
                    rates,
                    f"phototag {b} process",
                    throughput.phototag(
                        settings, child, photos, f"phototag b{b} model process", batch_size=b, embeddings=False
                    ),
                ),
            )
            ratio(
                rates, f"phototag {batch} process", f"raw {batch}", f"phototag (model process)/raw, batch {batch}", 0.9
            )
        if exiftool_ok and args.variants:
            variants(args, settings, captioner, photos, batch, rates)
    if child is not None:
        child.close()
    if args.skip_seed:
        print(f"total {time.perf_counter() - started:.0f} s")
        return 0
    throughput.warm_up(captioner, 1)
    seed_ids: dict[Path, list[int]] = {}
    section(
        "seed loop",
        lambda: line(rates, "seed", throughput.seed_script(captioner, model_dir, photos[: args.seed_photos], seed_ids)),
    )
    for batch in args.batches:
        ratio(rates, f"phototag {batch}", "seed", f"phototag/seed at batch {batch}", 10.0)
    if device.startswith("cuda"):
        print(f"\nGPU memory peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu (to try the script out)")
    parser.add_argument("--dtype", default="fp16", choices=["auto", "fp32", "fp16", "bf16"], help="default fp16")
    parser.add_argument(
        "--batches",
        default="32,64",
        type=lambda s: [int(x) for x in s.split(",")],
        help="batch sizes, comma-separated (default 32,64)",
    )
    parser.add_argument("--photos", type=int, default=384, help="photos per raw and phototag line (default 384)")
    parser.add_argument("--seed-photos", type=int, default=48, help="photos for the seed loop (default 48)")
    parser.add_argument("--new-tokens", type=int, default=20, help="exact caption length in tokens (default 20)")
    parser.add_argument("--decode-photos", type=int, default=88, help="photos per decode line (default 88)")
    parser.add_argument("--model", default="", help="a model folder to use instead of building BLIP-large")
    parser.add_argument(
        "--model-dir",
        default=str(Path(tempfile.gettempdir()) / "phototag-bench" / "blip-large"),
        help="where the random BLIP-large is built (1.8 GB)",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also the pipeline with a 0.5 ms GIL switch interval, and with 4 and 8 threads (what limits it)",
    )
    parser.add_argument("--skip-decode", action="store_true", help="leave out the decode lines")
    parser.add_argument("--skip-seed", action="store_true", help="leave out the seed loop")
    parser.add_argument(
        "--skip-process", action="store_true", help="leave out the pipeline with the model in its own process"
    )
    return parser.parse_args(argv)


def variants(
    args: argparse.Namespace, settings: Any, captioner: Any, photos: list[Path], batch: int, rates: dict[str, float]
) -> None:
    """The pipeline line again, changing one thing each time: which of them moves it says what limits it.
    The GIL: the caption thread gives it up at each GPU sync and waits up to the switch interval (5 ms)
    to get it back while decode and write threads run Python; fewer threads: less to wait behind."""
    from phototag.config import PipelineSettings

    default = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.0005)
        section(
            f"phototag, batch {batch}, switch interval 0.5 ms",
            lambda: line(
                rates,
                f"phototag {batch} switch",
                throughput.phototag(
                    settings, captioner, photos, f"b{batch} switch 0.5ms", batch_size=batch, embeddings=False
                ),
            ),
        )
    finally:
        sys.setswitchinterval(default)
    for threads in (4, 8):
        section(
            f"phototag, batch {batch}, {threads} threads",
            lambda n=threads: line(
                rates,
                f"phototag {batch} {n} threads",
                throughput.phototag(
                    settings,
                    captioner,
                    photos,
                    f"b{batch} {n} decode+write",
                    batch_size=batch,
                    embeddings=False,
                    pipeline=PipelineSettings(decode_workers=n, exiftool_processes=n),
                ),
            ),
        )


def section(name: str, run: Callable[[], Any]) -> None:
    """Run one measurement; a failure is printed and the next one still runs (a rented hour is scarce)."""
    try:
        run()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports every failure and goes on
        print(f"{name}: FAILED {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        traceback.print_exc(file=sys.stderr)
    except SystemExit as exc:  # throughput.phototag exits when a photo was not captioned
        print(f"{name}: FAILED {exc}")


def line(rates: dict[str, float], key: str, measured: Any) -> None:
    throughput.print_line(measured)
    rates[key] = measured.rate


def ratio(rates: dict[str, float], top: str, bottom: str, name: str, goal: float) -> None:
    if top in rates and bottom in rates:
        value = rates[top] / rates[bottom]
        verdict = "met" if value >= goal else "NOT met"
        print(f"{name:<28} {value:6.2f}   (goal >= {goal:g}: {verdict})")


def check_environment(photo: Path) -> bool:
    """What the pipeline needs beside torch: SQLite with FTS5, and an ExifTool that can write. Say
    clearly what is missing; the model lines run either way."""
    import PIL
    import sqlalchemy
    import torch
    import transformers

    print(
        f"versions    python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, pillow {PIL.__version__}, sqlalchemy {sqlalchemy.__version__} "
        f"({Path(sqlalchemy.__file__).parent.parent}), sqlite {sqlite3.sqlite_version}, cores {os.cpu_count()}"
    )
    with sqlite3.connect(":memory:") as db:
        try:
            db.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        except sqlite3.OperationalError as exc:
            print(f"SQLite has no FTS5 ({exc}): phototag's index cannot be created; the pipeline lines will fail")
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        print(
            "EXIFTOOL CANNOT RUN HERE: no exiftool on PATH (gpu_check.sh puts .gpu/exiftool there); "
            "the phototag lines are skipped"
        )
        return False
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "probe.jpg"
        shutil.copyfile(photo, copy)
        done = subprocess.run(
            [
                exiftool,
                "-overwrite_original",
                "-XMP-dc:Description=probe",
                "-IPTC:Keywords=probe",
                "-EXIF:ImageDescription=probe",
                str(copy),
            ],
            capture_output=True,
            text=True,
        )
        back = subprocess.run([exiftool, "-s3", "-XMP-dc:Description", str(copy)], capture_output=True, text=True)
        version = subprocess.run([exiftool, "-ver"], capture_output=True, text=True).stdout.strip()
    if done.returncode or back.stdout.strip() != "probe":
        first = (done.stderr or back.stderr or done.stdout).strip().splitlines()
        print(
            f"EXIFTOOL CANNOT RUN HERE ({exiftool}): {first[0] if first else 'the written tag did not read back'}"
            " (a Perl module missing? see .gpu/exiftool); the phototag lines are skipped"
        )
        return False
    print(f"exiftool    {version} at {exiftool}: a test write and read-back worked")
    return True


def decode_rates(args: argparse.Namespace, photos: list[Path], captioner: Any) -> None:
    """Photos/s of the decode threads' work per photo (phototag's own calls), on one thread (= per core)
    and on a thread per core."""
    from phototag.imaging import load_rgb

    size = captioner.input_size
    processor = captioner.processor.image_processor

    def fast(path: Path) -> Any:  # what a decode thread does with draft decoding on
        return captioner.preprocess(load_rgb(path, min_side=size, draft=True))

    def exact(path: Path) -> Any:  # the model card's input: full decode, the processor's preprocessing
        return processor(images=load_rgb(path, min_side=size), return_tensors="pt")["pixel_values"][0]

    if not captioner.device_preprocess:
        print("(the fast input is off at these settings: both lines below measure the processor)")
    n = args.decode_photos or len(photos)
    chosen = [photos[i % len(photos)] for i in range(n)]
    cores = os.cpu_count() or 1
    pinned = " (pinned)" if captioner.pin_memory else ""
    print(f"{'decode path':<46} {'1 thread':>9} {f'{cores} threads':>11}   photos/s ({n} photos)")
    for name, work in (
        (f"fast input: draft decode -> uint8{pinned}", fast),
        ("exact input: full decode -> processor", exact),
    ):
        for path in chosen[: min(4, n)]:
            work(path)  # warm: first calls import and allocate
        rates = []
        for threads in (1, cores):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, chosen))
            rates.append(n / (time.perf_counter() - t0))
        print(f"{name:<46} {rates[0]:>9.1f} {rates[1]:>11.1f}   ({rates[1] / rates[0]:.1f}x on {cores} cores)")
    big = [p for p in photos if "big_" in p.name][:1]
    if big:
        t0 = time.perf_counter()
        for _ in range(5):
            fast(big[0])
        print(f"{'  the 12 MP JPEG alone, fast input':<46} {5 / (time.perf_counter() - t0):>9.1f}")
    print()


if __name__ == "__main__":
    raise SystemExit(main())
