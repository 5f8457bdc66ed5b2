"""The pipeline's ceiling: photos/s when the model costs almost nothing, at 1 and 2 cores, new vs old.

The tiny random BLIP (the one the tests build) captions real small JPEGs (the corpus ``jpg/`` folder,
``--copies`` times), embeddings off, so what is measured is everything around the model: planning,
hashing, decoding, exiftool reads and writes, the verify read, the index. Each run is a fresh
``phototag backfill`` of fresh copies into a fresh index, in its own subprocess pinned with
``taskset`` to 1 core (``-c 0``) or 2 cores (``-c 0,1``), for this checkout ("new") and for an older
revision ("old", ``--baseline``, checked out with ``git worktree add`` into a temp folder and imported
through PYTHONPATH). Runs are interleaved (old, new, old, new ...) so a busy neighbour hurts both alike.

torch gets ``--torch-threads`` intra-op threads (default 1, through ``OMP_NUM_THREADS``) in both
revisions: the tiny model stands for a fast GPU, where the model takes no CPU threads. With torch's
default (one thread per core), its OpenMP team waits on the pipeline's other threads at every one of
the tiny model's many small operations: on a busy 2-core machine the caption thread alone then burned
~60 ms of CPU per photo instead of ~5, in the old and the new code alike (``--torch-threads 0`` shows it).

Per run: photos/s (photos / wall seconds of the backfill command, imports excluded: torch and
transformers' BLIP classes are imported first, as a long run amortizes them), cores used (CPU seconds
of the process and its exiftool children / wall seconds), and CPU ms per photo per stage.
Stages are measured the same way for both revisions, by wrapping the functions each stage calls
(they exist under the same names in both) with thread CPU clocks (``time.thread_time_ns``) and, for
exiftool, the child process's own CPU time (``/proc/PID/schedstat``) around each call; nested stages
are counted once (a hash inside the planner is "hash", not "plan"). "other" is what no stage claims:
startup and model load, torch's worker threads, queues and thread switches, the sweep.

    python benchmarks/ceiling.py                       # 3 repetitions, old = efdbd58
    python benchmarks/ceiling.py --reps 1 --copies 1   # a quick look
    python benchmarks/ceiling.py --baseline main~3
    python benchmarks/ceiling.py --torch-threads 0     # torch's own thread count
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("PHOTOTAG_CORPUS", REPO.parent / "shared" / "corpus"))
STAGES = (
    "plan",
    "plan: exiftool read",
    "hash",
    "decode+preprocess",
    "model",
    "write (python)",
    "write: exiftool read again",
    "exiftool write",
    "verify read",
    "index",
)
CORE_SETS = {1: "0", 2: "0,1"}


# -- the child: one backfill, instrumented -------------------------------------------------------------


class StageClock:
    """CPU time per stage, per thread a stack of stages so nested ones count once."""

    def __init__(self) -> None:
        self.cpu_ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._local = threading.local()

    def _stack(self) -> list[list[Any]]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def current(self) -> str | None:
        stack = self._stack()
        return stack[-1][0] if stack else None

    def add(self, name: str, ns: int) -> None:
        with self._lock:
            self.cpu_ns[name] += ns

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        stack = self._stack()
        frame = [name, time.thread_time_ns(), 0]  # name, start, CPU of nested stages
        stack.append(frame)
        try:
            yield
        finally:
            stack.pop()
            spent = time.thread_time_ns() - frame[1]
            with self._lock:
                self.cpu_ns[name] += spent - frame[2]
                self.calls[name] += 1
            if stack:
                stack[-1][2] += spent


def _child_cpu_ns(pid: int | None) -> int:
    """CPU time the exiftool child has used so far (exact, from the scheduler)."""
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/schedstat") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _wrap(clock: StageClock, owner: Any, attr: str, stage: str | Callable[[], str]) -> bool:
    real = getattr(owner, attr, None)
    if real is None:
        return False

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with clock.stage(stage() if callable(stage) else stage):
            return real(*args, **kwargs)

    setattr(owner, attr, wrapper)
    return True


def instrument(clock: StageClock) -> None:
    """Wrap the functions each stage calls, in whichever revision is on the path."""
    import phototag.exiftool as exiftool_module
    import phototag.metadata as metadata
    import phototag.pipeline as pipeline
    import phototag.planning as planning
    import phototag.stages as stages
    from phototag.captioner import Captioner

    _wrap(clock, planning.Planner, "plan", "plan")
    _wrap(clock, planning.Planner, "read_ahead", "plan")  # several photos' plan reads in one call (new)
    for module in (planning, stages):
        _wrap(clock, module, "content_hash", "hash")
    _wrap(clock, pipeline, "load_rgb", "decode+preprocess")
    _wrap(clock, Captioner, "preprocess", "decode+preprocess")
    _wrap(clock, Captioner, "caption", "model")
    _wrap(clock, stages.MetadataWrites, "handle", "write (python)")
    _wrap(clock, stages.IndexWriter, "_commit", "index")
    for name in ("metadata", "sidecars"):
        module = sys.modules.get(f"phototag.{name}") or metadata
        _wrap(clock, module, "safe_edit", "safe edit")

    real_execute = exiftool_module.ExifTool._execute

    def execute(self: Any, args: Any) -> Any:
        # the locked exchange with one exiftool process: its CPU during the call is this call's alone
        where = clock.current()
        if where == "safe edit":
            writes = any(arg in ("-o", b"-o", "-overwrite_original", b"-overwrite_original") for arg in args)
            stage = "exiftool write" if writes else "verify read"
        elif where == "write (python)":
            stage = "write: exiftool read again"
        elif where == "plan":
            stage = "plan: exiftool read"
        else:
            stage = f"exiftool other ({where})"
        with clock.stage(stage):
            pid = self.pid
            before = _child_cpu_ns(pid)
            try:
                return real_execute(self, args)
            finally:
                if self.pid == pid:  # not restarted meanwhile
                    clock.add(stage, _child_cpu_ns(pid) - before)

    exiftool_module.ExifTool._execute = execute  # type: ignore[method-assign]


def child(args: argparse.Namespace) -> None:
    """One instrumented backfill in this process; prints one JSON line."""
    import torch  # noqa: F401  (imports are not the pipeline's cost, nor are transformers' lazy ones)
    from transformers import BlipForConditionalGeneration, BlipProcessor  # noqa: F401

    import phototag
    import phototag.captioner  # first: it sets torch's OpenMP wait policy before torch loads
    from phototag.cli import main

    clock = StageClock()
    instrument(clock)
    # "safe edit" is the Python around the exiftool write and verify: it belongs to the write
    photos = sum(1 for p in Path(args.lib).rglob("*") if p.is_file())
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    try:
        main(["--config", args.config, "backfill", "--no-progress", args.lib], standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise
    wall = time.perf_counter() - started
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # exiftool, reaped at the command's end
    own = (self_after.ru_utime + self_after.ru_stime) - (self_before.ru_utime + self_before.ru_stime)
    child_cpu = children.ru_utime + children.ru_stime
    stages_ns = dict(clock.cpu_ns)
    stages_ns["write (python)"] = stages_ns.get("write (python)", 0) + stages_ns.pop("safe edit", 0)
    print(
        json.dumps(
            {
                "phototag": str(Path(phototag.__file__).parent),
                "photos": photos,
                "wall": wall,
                "cpu": own + child_cpu,
                "stages_ns": stages_ns,
            }
        )
    )


# -- the parent: checkouts, copies, interleaved runs ------------------------------------------------------


def write_config(folder: Path, model: Path) -> Path:
    config = folder / "config.toml"
    config.write_text(
        f'[model]\nname = "{model}"\ndevice = "cpu"\nbatch_size = 4\nmax_new_tokens = 8\nnum_beams = 1\n'
        f'[index]\ndb = "{folder / "index.sqlite3"}"\n[search]\nembeddings = false\n'
    )
    return config


def one_run(tree: Path, cores: int, source: Path, model: Path, scratch: Path, torch_threads: int) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    try:
        lib = run_dir / "lib"
        shutil.copytree(source, lib)
        config = write_config(run_dir, model)
        env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", PHOTOTAG_CORPUS=str(CORPUS))
        env["XDG_DATA_HOME"] = str(run_dir / "xdg")
        if torch_threads > 0:
            env["OMP_NUM_THREADS"] = str(torch_threads)
        command = ["taskset", "-c", CORE_SETS[cores], sys.executable, str(Path(__file__).resolve()), "--child"]
        command += ["--config", str(config), "--lib", str(lib)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=run_dir)
        if done.returncode != 0:
            raise SystemExit(f"a run of {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        if Path(result["phototag"]).resolve() != (tree / "phototag").resolve():
            raise SystemExit(f"the run imported {result['phototag']}, not {tree}/phototag")
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def baseline_tree(rev: str, scratch: Path) -> Iterator[Path]:
    tree = scratch / "baseline"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True, capture_output=True
    )
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


def build_model(scratch: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.tiny_blip import build_tiny_blip

    return build_tiny_blip(scratch / "tiny-blip")


def make_source(scratch: Path, copies: int) -> Path:
    source = scratch / "source"
    for n in range(copies):
        shutil.copytree(CORPUS / "jpg", source / f"copy{n}")
    for path in source.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return source


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["photos"] / r["wall"] for r in runs]
    cores = [r["cpu"] / r["wall"] for r in runs]
    stages: dict[str, float] = {}
    for name in {*STAGES, *(k for r in runs for k in r["stages_ns"])}:
        stages[name] = statistics.median(r["stages_ns"].get(name, 0) / 1e6 / r["photos"] for r in runs)
    cpu_ms = statistics.median(r["cpu"] * 1e3 / r["photos"] for r in runs)
    return {
        "rate": statistics.median(rates),
        "rates": rates,
        "cores": statistics.median(cores),
        "stages": stages,
        "cpu_ms": cpu_ms,
    }


def parent(args: argparse.Namespace) -> None:
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux)")
    scratch = Path(tempfile.mkdtemp(prefix="phototag-ceiling-"))
    try:
        model = build_model(scratch)
        source = make_source(scratch, args.copies)
        photos = sum(1 for p in source.rglob("*") if p.is_file())
        revision = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        print(
            f"{photos} photos (corpus jpg/ x{args.copies}), tiny BLIP, batch 4, embeddings off, "
            f"{args.reps} repetitions, torch threads {args.torch_threads or 'default'}; "
            f"new = {revision} (+ working tree), old = {args.baseline}",
            flush=True,
        )
        results: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        with baseline_tree(args.baseline, scratch) as old_tree:
            trees = {"old": old_tree, "new": REPO}
            for rep in range(args.reps):
                for cores in (1, 2):
                    for name in ("old", "new") if rep % 2 == 0 else ("new", "old"):
                        run = one_run(trees[name], cores, source, model, scratch, args.torch_threads)
                        results[(name, cores)].append(run)
                        print(
                            f"  rep {rep + 1} {name} {cores} core{'s' if cores > 1 else ''}: "
                            f"{run['photos'] / run['wall']:6.1f} photos/s, {run['cpu'] / run['wall']:.2f} cores",
                            flush=True,
                        )
        summary = {key: summarize(runs) for key, runs in results.items()}
        print("\nceiling (median of the repetitions)")
        print(f"{'':<14}{'photos/s':>10}{'cores used':>12}{'CPU ms/photo':>14}")
        for name in ("old", "new"):
            for cores in (1, 2):
                s = summary[(name, cores)]
                print(
                    f"{name + f' {cores} core' + ('s' if cores > 1 else ''):<14}{s['rate']:>10.1f}"
                    f"{s['cores']:>12.2f}{s['cpu_ms']:>14.1f}"
                )
        print(f"\nceiling new/old (2 cores): {summary[('new', 2)]['rate'] / summary[('old', 2)]['rate']:.2f}x")
        print(f"ceiling new/old (1 core): {summary[('new', 1)]['rate'] / summary[('old', 1)]['rate']:.2f}x")
        print(f"scaling 1->2 cores (new): {summary[('new', 2)]['rate'] / summary[('new', 1)]['rate']:.2f}x")
        print(f"scaling 1->2 cores (old): {summary[('old', 2)]['rate'] / summary[('old', 1)]['rate']:.2f}x")
        print("\nCPU ms per photo per stage (median of the repetitions)")
        columns = [(name, cores) for cores in (1, 2) for name in ("old", "new")]
        print(f"{'stage':<34}" + "".join(f"{f'{n} {c}c':>9}" for n, c in columns))
        found = {k for key in columns for k in summary[key]["stages"]}
        for stage in list(STAGES) + sorted(found - set(STAGES)):
            print(f"{stage:<34}" + "".join(f"{summary[key]['stages'].get(stage, 0):>9.2f}" for key in columns))
        other = [summary[key]["cpu_ms"] - sum(summary[key]["stages"].values()) for key in columns]
        print(f"{'other (startup, torch threads...)':<34}" + "".join(f"{v:>9.2f}" for v in other))
        print(f"{'total':<34}" + "".join(f"{summary[key]['cpu_ms']:>9.2f}" for key in columns))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="efdbd58", help="the old revision (default: efdbd58)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each (revision, cores) run")
    parser.add_argument("--copies", type=int, default=4, help="copies of the corpus jpg/ folder (4: 272 photos)")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch intra-op threads in both revisions (0: torch's default)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
