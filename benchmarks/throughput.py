"""Captioning throughput: phototag's pipeline against the raw model and the model card's seed script.

Builds (once) the exact BLIP-large architecture with random weights (see ``blip_large.py``), forces every
caption to exactly ``--new-tokens`` tokens (``min_new_tokens == max_new_tokens``), and measures in one
run, on the same real photos from ``../shared/corpus``:

- raw model: pixel tensors made beforehand and already on the device, batched ``generate`` (the ceiling);
- seed script: the model card's loop, one photo at a time (``Image.open(...).convert('RGB')``,
  ``processor(raw_image, return_tensors='pt')``, ``model.generate``, ``processor.decode``);
- phototag: the real ``Pipeline`` end to end (plan, decode, caption, metadata write with exiftool,
  index) on copies of the photos with a throwaway index.

The model is loaded once, through phototag's ``Captioner``, and shared by the three lines (the seed
script would load the same weights); load time is printed apart. Then, unless ``--fidelity-photos 0``,
it reports for each speed option the share of photos whose caption is token-identical to the fp32
reference (batch 1, full decode), and that option's speed.

    python benchmarks/throughput.py                          # CPU: fp32, batch 4, 12 photos
    python benchmarks/throughput.py --dtype bf16
    python benchmarks/throughput.py --dtype int8 --fidelity-photos 0   # CPU only
    python benchmarks/throughput.py --device cuda --dtype fp16   # batch size chosen for the device
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: import this checkout's phototag
    sys.path.insert(0, str(REPO))

CORPUS = Path(os.environ.get("PHOTOTAG_CORPUS", REPO.parent / "shared" / "corpus"))
# Upright photos (no EXIF rotation, so the seed script sees what phototag sees), mixed formats and
# sizes; the big JPEGs are where draft decoding applies.
PHOTOS = [
    "generated/big_4000x3000_q92.jpg",
    "jpg/gps/DSCN0010.jpg",
    "jpg/mobile/jolla.jpg",
    "jpg/exif-org/nikon-e950.jpg",
    "jpg/mobile/HMD_Nokia_8.3_5G.jpg",
    "generated/gen_png.png",
    "jpg/Reconyx_HC500_Hyperfire.jpg",
    "jpg/gps/DSCN0021.jpg",
    "jpg/exif-org/fujifilm-dx10.jpg",
    "generated/gen_heic.heic",
    "jpg/exif-org/kodak-dc240.jpg",
    "tiff/BSG1.tiff",
    "jpg/xmp/no_exif.jpg",
    "generated/gen_webp_lossy.webp",
    "jpg/gps/DSCN0027.jpg",
    "jpg/Canon_PowerShot_S40.jpg",
]
DEFAULT_PHOTOS = {"cpu": 12, "cuda": 256, "mps": 64}
DEFAULT_FIDELITY_PHOTOS = {"cpu": 12, "cuda": 16, "mps": 16}


@dataclass
class Line:
    name: str
    photos: int
    seconds: float
    cpu_seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.photos / self.seconds


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # phototag.captioner first: it sets the OpenMP wait policy that must be in place before torch loads
    from phototag.captioner import Captioner, pick_device, pick_dtype  # isort: skip
    import torch
    from transformers.utils import logging as hf_logging

    from benchmarks.blip_large import build_blip_large, describe
    from phototag.config import ModelSettings
    from phototag.imaging import HEIF_SUPPORT  # registers pillow-heif's opener: Image.open reads HEIC too

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    assert HEIF_SUPPORT, "pillow-heif is needed for the HEIC photo"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    kind = device.split(":")[0]
    dtype = pick_dtype(args.dtype, device)
    model_dir = build_blip_large(Path(args.model_dir))
    settings = ModelSettings(
        name=str(model_dir),
        device=device,
        dtype=dtype,
        batch_size=args.batch_size,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        num_beams=args.num_beams,
        draft_decode={"on": True, "off": False}.get(args.draft, "auto"),
    )
    started = time.perf_counter()
    captioner = Captioner(settings)
    load_s = time.perf_counter() - started
    batch = captioner.batch_size
    n_photos = args.photos or DEFAULT_PHOTOS.get(kind, 12)
    photos = [CORPUS / PHOTOS[i % len(PHOTOS)] for i in range(n_photos)]

    header(args, captioner, model_dir, describe(model_dir), load_s, n_photos)
    seed_ids: dict[Path, list[int]] = {}
    if not args.fidelity_only:
        throughput(settings, captioner, model_dir, photos, seed_ids)
    n_fidelity = DEFAULT_FIDELITY_PHOTOS.get(kind, 12) if args.fidelity_photos is None else args.fidelity_photos
    if n_fidelity:
        fp16_photos = args.fp16_photos if args.fp16_photos is not None else (n_fidelity if kind != "cpu" else 0)
        del captioner
        same_dtype_ids = seed_ids if dtype == "fp32" else {}
        fidelity(settings, [CORPUS / p for p in PHOTOS[:n_fidelity]], batch, fp16_photos, same_dtype_ids)
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def throughput(
    settings: Any, captioner: Any, model_dir: Path, photos: list[Path], seed_ids: dict[Path, list[int]]
) -> None:
    """The three lines, in the order raw, phototag, seed, phototag, raw."""
    batch = captioner.batch_size
    warm_up(captioner, batch, 1)
    print(LINE_HEADER, flush=True)
    lines: list[Line] = []
    # raw, phototag, seed, phototag, raw: a load on the machine that rises or falls steadily during the
    # run weighs the same on each line's average
    for measure in (
        lambda: raw_model(captioner, photos, batch),
        lambda: phototag(settings, captioner, photos),
        lambda: seed_script(captioner, model_dir, photos, seed_ids),
        lambda: phototag(settings, captioner, photos, "phototag, again"),
        lambda: raw_model(captioner, photos, batch, "raw model, again"),
    ):
        lines.append(measure())
        print_line(lines[-1])
    print_ratios(lines, batch, captioner.dtype_name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16", "int8"],
        help="model precision for the three lines (auto: fp16 on cuda, fp32 elsewhere; int8: CPU only)",
    )
    parser.add_argument("--batch-size", type=int, default=0, help="0: phototag's default for the device")
    parser.add_argument(
        "--photos", type=int, default=0, help="photos per line (0: 12 on cpu, 256 on cuda); the corpus list repeats"
    )
    parser.add_argument(
        "--draft",
        default="auto",
        choices=["auto", "on", "off"],
        help="phototag's JPEG draft decoding (auto: phototag's default, off with fp32)",
    )
    parser.add_argument("--new-tokens", type=int, default=20, help="exact caption length in tokens")
    parser.add_argument("--num-beams", type=int, default=1, help="1: greedy, as the model card's example")
    parser.add_argument(
        "--fidelity-photos",
        type=int,
        default=None,
        help="photos for the fidelity table (default 12 on cpu, 16 on cuda; 0: skip)",
    )
    parser.add_argument(
        "--fp16-photos",
        type=int,
        default=None,
        help="photos for the fp16 fidelity row (default: all on cuda, 0 on cpu where fp16 takes ~40 s a photo)",
    )
    parser.add_argument("--fidelity-only", action="store_true", help="skip the three throughput lines")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument(
        "--model-dir",
        default=str(Path(tempfile.gettempdir()) / "phototag-bench" / "blip-large"),
        help="where the random BLIP-large is built once and cached (1.8 GB)",
    )
    return parser.parse_args(argv)


# -- the three lines ---------------------------------------------------------------------------------


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generate_kwargs(captioner: Any) -> dict[str, int]:
    s = captioner.settings
    return {"max_new_tokens": s.max_new_tokens, "min_new_tokens": s.min_new_tokens, "num_beams": s.num_beams}


def warm_up(captioner: Any, *batches: int) -> None:
    """First calls build kernels and caches: pay that for each batch size before timing."""
    import torch

    size = captioner.input_size
    for n in sorted(set(batches)):
        pixels = torch.zeros(n, 3, size, size, device=captioner.device, dtype=captioner.torch_dtype)
        with torch.inference_mode():
            captioner.model.generate(pixel_values=pixels, **generate_kwargs(captioner))
    sync(captioner.device)


def raw_model(captioner: Any, photos: list[Path], batch: int, name: str = "raw model") -> Line:
    """The model alone: the processor's pixel tensors, made beforehand, batched and already on the device."""
    import torch
    from PIL import Image

    processor = captioner.processor.image_processor
    pixels = []
    for path in photos:
        with Image.open(path) as image:
            pixels.append(processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0])
    batches = [
        torch.stack(pixels[i : i + batch]).to(captioner.device, captioner.torch_dtype)
        for i in range(0, len(pixels), batch)
    ]
    tokens = 0
    sync(captioner.device)
    clock = Clock()
    with torch.inference_mode():
        for chunk in batches:
            out = captioner.model.generate(pixel_values=chunk, **generate_kwargs(captioner))
            tokens += out.shape[0] * (out.shape[1] - 1)
    sync(captioner.device)
    return clock.line(name, len(photos), f"{tokens / len(photos):.0f} new tokens/photo")


def seed_script(captioner: Any, model_dir: Path, photos: list[Path], ids: dict[Path, list[int]]) -> Line:
    """The model card's loop. Shares phototag's loaded model object (same weights, same dtype)."""
    import torch
    from PIL import Image
    from transformers import BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil

    image_processor = BlipImageProcessorPil.from_pretrained(model_dir)
    processor = BlipProcessor.from_pretrained(model_dir, image_processor=image_processor)
    model, device, dtype = captioner.model, captioner.device, captioner.torch_dtype
    kwargs = generate_kwargs(captioner)
    sync(device)
    clock = Clock()
    with torch.inference_mode():
        for path in photos:
            raw_image = Image.open(path).convert("RGB")
            inputs = processor(raw_image, return_tensors="pt").to(device, dtype)
            out = model.generate(**inputs, **kwargs)
            processor.decode(out[0], skip_special_tokens=True)
            ids[path] = out[0, 1:].tolist()  # without the [DEC] bos token, as phototag returns them
    sync(device)
    return clock.line("seed script", len(photos), "one photo at a time")


def phototag(
    settings: Any,
    captioner: Any,
    photos: list[Path],
    name: str = "phototag",
    *,
    batch_size: int = 0,
    pipeline: Any = None,
    embeddings: bool = True,
) -> Line:
    """The real Pipeline: copies of the photos, a throwaway index, exiftool writes; model already loaded.
    ``batch_size``: the batch the pipeline fills for the model (0: the captioner's own); ``embeddings``:
    also embed the captions for search by meaning (phototag's default; needs the embedding model)."""
    from phototag.config import IndexSettings, SearchSettings, Settings
    from phototag.index import PhotoIndex
    from phototag.metadata import ExifToolSession
    from phototag.pipeline import Pipeline
    from phototag.planning import CAPTIONED, Outcome
    from phototag.scan import walk_photos

    with tempfile.TemporaryDirectory(prefix="phototag-bench-") as tmp:
        library = Path(tmp) / "library"
        library.mkdir()
        for i, photo in enumerate(photos):
            target = library / f"{i:05d}_{photo.name}"
            shutil.copyfile(photo, target)
            os.chmod(target, 0o644)
        if batch_size:
            settings = replace(settings, batch_size=batch_size)
        full = replace(
            Settings(),
            model=settings,
            index=IndexSettings(db=str(Path(tmp) / "index.sqlite3")),
            search=SearchSettings(embeddings=embeddings),
        )
        if pipeline is not None:
            full = replace(full, pipeline=pipeline)
        index = PhotoIndex(full.db_path())
        outcomes: list[Outcome] = []
        # as many exiftool processes (and write threads) as the CLI gives the pipeline
        with ExifToolSession(processes=full.pipeline.effective_exiftool_processes) as exiftool:
            exiftool.version()  # the process is up before the clock starts
            counting = CountingCaptioner(captioner)
            counting.batch_size = batch_size or captioner.batch_size  # what the pipeline batches by
            pipeline = Pipeline(full, index, exiftool, captioner_factory=lambda: counting, on_outcome=outcomes.append)
            clock = Clock()
            pipeline.start()
            for path in walk_photos([library]):
                pipeline.submit(path)
            pipeline.close()
            sizes = ",".join(map(str, counting.batches))
            line = clock.line(name, len(photos), f"decode + caption + exiftool write + index; batches {sizes}")
            line.note += f"; in the model {counting.model_s:.1f} s"
        index.close()
        failed = [o for o in outcomes if o.kind != CAPTIONED]
        if failed or len(outcomes) != len(photos):
            raise SystemExit(f"phototag line did not caption every photo: {failed[:3]} ({len(outcomes)} outcomes)")
    return line


class CountingCaptioner:
    """phototag's Captioner, unchanged, noting the size of each batch the pipeline sends it."""

    def __init__(self, captioner: Any) -> None:
        self._captioner = captioner
        self.batches: list[int] = []
        self.batch_size: int = captioner.batch_size
        self.model_s = 0.0  # wall seconds inside the model: near the line's wall time, the model is the limit

    def caption(self, pixels: Sequence[Any]) -> list[str]:
        self.batches.append(len(pixels))
        started = time.perf_counter()
        try:
            return self._captioner.caption(pixels)
        finally:
            self.model_s += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._captioner, name)


def header(args: argparse.Namespace, captioner: Any, model_dir: Path, model: str, load_s: float, n: int) -> None:
    import PIL
    import torch
    import transformers

    device = captioner.device
    if device.startswith("cuda"):
        chip = torch.cuda.get_device_name(torch.device(device))
    else:
        chip = cpu_name()
    exiftool = subprocess.run(["exiftool", "-ver"], capture_output=True, text=True).stdout.strip()
    print(f"model       {model} ({model_dir})")
    print(
        f"device      {device} ({chip}), torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY "
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"settings    dtype {captioner.dtype_name}, batch size {captioner.batch_size}, "
        f"{args.new_tokens} new tokens (forced), num_beams {args.num_beams}, draft decoding "
        f"{'on' if captioner.draft_decode else 'off'} (phototag line)"
    )
    if not args.fidelity_only:
        print(f"photos      {n} per line, from {len(PHOTOS)} corpus files incl. the 12 MP big_4000x3000_q92.jpg")
    print(
        f"versions    python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, pillow {PIL.__version__}, exiftool {exiftool}, phototag {git_rev()}"
    )
    print(f"model load  {load_s:.1f} s through phototag's Captioner (not in the lines below)\n")


LINE_HEADER = f"{'line':<16}  photos  seconds  photos/s  s/photo  cpu-s/photo  note"


def print_line(line: Line) -> None:
    print(
        f"{line.name:<16}  {line.photos:>6}  {line.seconds:>7.1f}  {line.rate:>8.3f}  "
        f"{line.seconds / line.photos:>7.2f}  {line.cpu_seconds / line.photos:>11.2f}  {line.note}",
        flush=True,
    )


def print_ratios(lines: list[Line], batch: int, dtype: str) -> None:
    def rate(prefix: str) -> tuple[float, float]:
        runs = [line for line in lines if line.name.startswith(prefix)]
        mean = sum(line.photos for line in runs) / sum(line.seconds for line in runs)
        return mean, (max(r.rate for r in runs) - min(r.rate for r in runs)) / mean

    (raw, raw_spread), (tag, tag_spread), (seed, _) = rate("raw model"), rate("phototag"), rate("seed script")
    print(
        f"\nphototag/raw  {tag / raw:.2f}   (same dtype {dtype}, batch size {batch}; each the mean of its two runs, "
        f"which differ by {raw_spread:.0%} (raw) and {tag_spread:.0%} (phototag))"
    )
    print(f"phototag/seed {tag / seed:.2f}")
    print(
        "cpu-s/photo: CPU seconds of this process and its exiftool per photo; wall time above it is waiting "
        "(or other load on the machine)"
    )


class Clock:
    """Wall time and the CPU time of this process tree (threads and the exiftool child)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), tree_cpu_seconds()

    def line(self, name: str, photos: int, note: str) -> Line:
        wall, cpu = time.perf_counter() - self.wall, tree_cpu_seconds() - self.cpu
        return Line(name, photos, wall, cpu, f"{note}; load average {os.getloadavg()[0]:.1f}")


def tree_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            for child in (task / "children").read_text().split():
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:  # not Linux, or a child just ended
        pass
    return total


# -- fidelity -------------------------------------------------------------------------------------------


@dataclass
class Option:
    name: str
    dtype: str
    batch: int
    draft: bool
    photos: int


def fidelity(settings: Any, photos: list[Path], batch: int, fp16_photos: int, seed_ids: dict[Path, list[int]]) -> None:
    """Token-identity of each speed option against the fp32 reference (batch 1, full decode)."""
    from phototag.imaging import is_raw_path, load_rgb

    print(
        f"\nfidelity on {len(photos)} photos: captions token-identical to the fp32 reference "
        "(phototag's Captioner, batch 1, full decode)."
    )
    print(
        "Random weights make captions arbitrary but deterministic, so token identity still measures what an "
        "option changes;\ntheir near-flat logits flip on smaller changes than a trained model's, so the shares "
        "are a lower bound.\n"
    )
    int8 = 0 if settings.device != "cpu" else len(photos)  # int8 kernels exist for the CPU only
    options = [
        Option("fp32 reference", "fp32", 1, False, len(photos)),
        Option("draft decoding", "fp32", 1, True, len(photos)),
        Option(f"batch {batch}", "fp32", batch, False, len(photos)),
        Option("bf16", "bf16", 1, False, len(photos)),
        Option(f"bf16 + batch {batch} + draft", "bf16", batch, True, len(photos)),
        Option("int8", "int8", 1, False, int8),
        Option(f"int8 + batch {batch} + draft", "int8", batch, True, int8),
        Option("fp16", "fp16", 1, False, min(fp16_photos, len(photos))),
    ]
    assert not any(is_raw_path(p) for p in photos)
    images = {draft: [load_rgb(p, min_side=384, draft=draft) for p in photos] for draft in (False, True)}
    reference: list[list[int]] = []
    print(
        "draft: JPEGs draft-decoded and the model's input made on the device (phototag's fast input, on by default "
        "with bf16/fp16/int8);\nwithout it: full decode and the processor's own preprocessing (the model card's).\n"
    )
    print(f"{'option':<26} identical  share  same-prefix tokens  photos/s  note", flush=True)
    for dtype in ("fp32", "bf16", "int8", "fp16"):
        chosen = [o for o in options if o.dtype == dtype and o.photos]
        if not chosen:
            continue
        slow = dtype == "fp16" and settings.device == "cpu"  # ~40 s a photo: a warm-up adds nothing
        captioner = load(settings, dtype, batch, *(() if slow else {o.batch for o in chosen}))
        for option in chosen:
            subset = range(option.photos)
            captioner.device_preprocess = option.draft  # read at each call: the fast input, or the exact one
            pixels = [captioner.preprocess(images[option.draft][i]) for i in subset]
            changed = list(subset)
            ids, seconds = timed_ids(captioner, [pixels[i] for i in changed], option.batch)
            got = dict(zip(changed, ids, strict=True))
            note = ""
            if option.name == "fp32 reference":
                reference = [got[i] for i in subset]
                compared = [i for i, p in enumerate(photos) if p in seed_ids]
                same_as_seed = sum(seed_ids[photos[i]] == reference[i] for i in compared)
                if compared:
                    note = f"= the seed script's ids for {same_as_seed}/{len(compared)} photos"
            elif option.photos < len(photos):
                note = f"first {option.photos} photos only"
            same = sum(got[i] == reference[i] for i in changed)
            prefix = sum(common_prefix(got[i], reference[i]) for i in changed) / max(1, len(changed))
            rate = f"{len(changed) / seconds:8.3f}" if changed else "       -"
            share = f"{same / len(changed):5.0%}" if changed else "    -"
            print(f"{option.name:<26} {same:>4}/{len(changed):<4} {share}  {prefix:>18.1f}  {rate}  {note}", flush=True)
        del captioner
    skipped = [o.name for o in options if not o.photos]
    if skipped:
        print(f"not measured: {', '.join(skipped)} (~40 s a photo on CPU; --fp16-photos N to include)")


def load(settings: Any, dtype: str, batch: int, *warm: int) -> Any:
    from phototag.captioner import Captioner

    captioner = Captioner(replace(settings, dtype=dtype, batch_size=batch))
    warm_up(captioner, *warm)
    return captioner


def timed_ids(captioner: Any, pixels: list[Any], batch: int) -> tuple[list[list[int]], float]:
    ids: list[list[int]] = []
    sync(captioner.device)
    started = time.perf_counter()
    for i in range(0, len(pixels), batch):
        ids.extend(captioner.generate_ids(pixels[i : i + batch]))
    sync(captioner.device)
    return ids, time.perf_counter() - started


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# -- environment ------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores"


def git_rev() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "")
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
