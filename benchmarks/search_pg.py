"""Search latency on a PostgreSQL index beside SQLite's, on the same photos, at library scale.

Builds (or reuses) the SQLite index of ``benchmarks/search.py`` for each size (N synthetic captions and
their real MiniLM vectors), copies it into a PostgreSQL database of its own with phototag's
``reindex --copy-to`` code (timed: that is the migration), then times the same queries on both,
in-process (one open connection, warm caches), p50/p95 of wall time:

- keyword query classes (common word, rare word, multi-word, phrase, with filters);
- search by meaning and hybrid (query vector given; PostgreSQL's vectors go through this machine's vector
  index, as SQLite's do);
- the cold command ``python -m phototag --db URL search --mode keyword beach``.

The server is the local one by default (``--pg-url postgresql:///postgres``: a superuser's connection,
used to create the ``phototag_bench_N`` databases, which are kept and reused). Run from the repository root:

    python benchmarks/search_pg.py --sizes 100000            # about 2 minutes to build, then the timings
    python benchmarks/search_pg.py                           # 100k and 1M rows
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import search as sqlite_bench  # noqa: E402  (benchmarks/search.py: the SQLite side and its query sets)
from captions import caption_pool  # noqa: E402

from phototag.database import IndexLocation  # noqa: E402
from phototag.index import PhotoIndex  # noqa: E402


def with_database(url: str, name: str) -> str:
    scheme, rest = url.split("://", 1)
    netloc = rest.split("/", 1)[0]
    return f"{scheme}://{netloc}/{name}"


def build_pg(admin_url: str, size: int, sqlite_db: Path, rebuild: bool) -> str:
    """A database holding a copy of ``sqlite_db``, made unless a finished one is there."""
    import psycopg

    from phototag.copy_index import copy_index

    name = f"phototag_bench_{size}"
    url = with_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None
        if exists and not rebuild:
            with psycopg.connect(url) as conn:
                done = conn.execute("SELECT to_regclass('bench_built') IS NOT NULL").fetchone()[0]
            if done:
                return url
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    print(f"copying {sqlite_db.name} into {url} ...", flush=True)
    start = time.perf_counter()
    source, target = PhotoIndex(sqlite_db), PhotoIndex(IndexLocation(sqlite_db.with_suffix(".pg"), url))
    copied = copy_index(source, target)
    elapsed = time.perf_counter() - start
    print(
        f"  reindex --copy-to: {copied.photos} photos + {copied.vectors} vectors in {elapsed:.0f} s "
        f"({(copied.photos + copied.vectors) / elapsed:.0f} rows/s)",
        flush=True,
    )
    source.close()
    target.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CREATE TABLE bench_built ()")
        size_mb = conn.execute("SELECT pg_database_size(current_database()) / 1048576").fetchone()[0]
    print(f"  database size: {size_mb} MiB", flush=True)
    return url


def side_by_side(label: str, lite: list[tuple[float, float]], pg: list[tuple[float, float]]) -> str:
    def p(times: list[tuple[float, float]], q: float) -> float:
        wall = [w for w, _ in times]
        return statistics.median(wall) if q == 0.5 else sqlite_bench.percentile(wall, q)

    return (
        f"  {label:<28} SQLite p50 {p(lite, 0.5):7.1f} p95 {p(lite, 0.95):7.1f} ms"
        f"   PostgreSQL p50 {p(pg, 0.5):7.1f} p95 {p(pg, 0.95):7.1f} ms"
    )


def bench(sqlite_db: Path, url: str, model: str | None, repeat: int, folder: Path) -> None:
    from phototag.config import SearchSettings
    from phototag.embeddings import model_id
    from phototag.pg_search import PgFinder, vector_store
    from phototag.pg_search import connect as pg_connect
    from phototag.query import parse_query
    from phototag.search import HYBRID, KEYWORD, SEMANTIC, Finder, vectors_cache_dir
    from phototag.search import connect as sqlite_connect
    from phototag.vectors import VectorStore

    lite_conn = sqlite_connect(sqlite_db)
    pg_location = IndexLocation(sqlite_db.with_suffix(".pg"), url)
    pg_conn = pg_connect(pg_location)
    finders: dict[str, Any] = {"sqlite": Finder(lite_conn), "pg": PgFinder(pg_conn)}

    def timed(which: str, call: Callable[[Any], Any]) -> list[tuple[float, float]]:
        return sqlite_bench.time_calls(lambda: call(finders[which]), repeat)

    print("keyword search, in-process, limit 20:")
    classes = dict(sqlite_bench.QUERIES)
    classes["with filters"] = sqlite_bench.FILTERED
    for label, queries in classes.items():
        lite: list[tuple[float, float]] = []
        pg: list[tuple[float, float]] = []
        for text in queries:
            query = parse_query(text)
            lite += timed("sqlite", lambda f, q=query: f.search(q, mode=KEYWORD, limit=20))
            pg += timed("pg", lambda f, q=query: f.search(q, mode=KEYWORD, limit=20))
        print(side_by_side(label, lite, pg), flush=True)

    if model is not None:
        from phototag.query_encoder import query_vector

        key = model_id(model)
        store = VectorStore.for_sqlite(lite_conn, sqlite_db, key, vectors_cache_dir())
        store.sync()
        copy = vector_store(pg_conn, pg_location, key)
        start = time.perf_counter()
        rows = copy.sync()
        print(
            f"  PostgreSQL vectors into this machine's vector index: {time.perf_counter() - start:.1f} s "
            f"({rows} rows; once)"
        )
        threshold = SearchSettings().min_similarity
        vectors = {text: query_vector(model, text) for text in sqlite_bench.SEMANTIC_QUERIES}
        print("search by meaning, in-process, limit 20 (query vector given):")
        for mode in (SEMANTIC, HYBRID):
            lite, pg = [], []
            for text in sqlite_bench.SEMANTIC_QUERIES:
                query, vector = parse_query(text), vectors[text]
                for which, stored in (("sqlite", store), ("pg", copy)):
                    times = timed(
                        which,
                        lambda f, q=query, v=vector, s=stored, m=mode: f.search(
                            q, mode=m, limit=20, store=s, embed=lambda _t, v=v: v, min_similarity=threshold
                        ),
                    )
                    (lite if which == "sqlite" else pg).extend(times)
            print(side_by_side(mode, lite, pg), flush=True)

    print("cold command (a new process per search):")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for name, db in (("SQLite", str(sqlite_db)), ("PostgreSQL", url)):
        argv = [sys.executable, "-m", "phototag", "--db", db, "search", "--mode", "keyword", "beach"]
        times = []
        for _ in range(max(3, repeat // 2)):
            start = time.perf_counter()
            done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=folder)
            times.append((time.perf_counter() - start) * 1000)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        print(f"  {name:<12} search --mode keyword beach   median {statistics.median(times):6.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/phototag-search-bench"))
    parser.add_argument("--pg-url", default="postgresql:///postgres", help="a superuser's URL on the server")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each query (after one warm-up)")
    parser.add_argument("--no-semantic", action="store_true", help="keyword search only (no vectors)")
    parser.add_argument("--rebuild", action="store_true", help="build the indexes and databases again")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_DATA_HOME"] = str(args.dir / "data")
    (args.dir / "data").mkdir(exist_ok=True)
    import psycopg

    with psycopg.connect(args.pg_url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    print(f"PostgreSQL {server} at {args.pg_url}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    model = None if args.no_semantic else sqlite_bench.embedding_model()
    pool = caption_pool(sqlite_bench.POOL_SIZE)
    vectors = sqlite_bench.pool_vectors(pool, args.dir, model) if model else None
    for size in args.sizes:
        db = args.dir / f"index-{size}.sqlite3"
        if args.rebuild:
            db.with_suffix(".built").unlink(missing_ok=True)
        sqlite_bench.build(db, size, pool, vectors, model)
        url = build_pg(args.pg_url, size, db, args.rebuild)
        print(f"\n== {size:,} photos (load average {os.getloadavg()[0]:.1f})")
        bench(db, url, model, args.repeat, args.dir)


if __name__ == "__main__":
    main()
