"""Caption vectors for search: the index's ``photo_embeddings`` table, scanned through a memory map.

The table in the index is the truth. Queries scan a copy in the data dir (``vectors/<key>/``): raw
float32 rows in one file and ``(seq, photo_id)`` pairs in another, appended in ``seq`` order. Since
``seq`` only grows, catching up is "append what has a higher seq than the copy's last". Rows whose
vector was dropped or replaced since stay in the copy until it is rebuilt (when a quarter of it is
stale); every hit is checked against the table before it is returned, so a stale row is never shown.

The scan is chunked, so memory stays bounded at any library size: the copy is read through the page
cache, never loaded whole. numpy is imported here only (search by keywords never imports it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CHUNK_ROWS = 65536  # rows scored per step: 96 MiB of float32 at 384 dimensions
FORMAT = 1


_blas: list[Any] = []  # one threadpoolctl controller per process (finding the libraries costs ~1 ms)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread: the products here are memory-bound or tiny, and BLAS threads on a busy
    machine are several times slower than one (threadpoolctl comes with sentence-transformers)."""
    if not _blas:
        try:
            from threadpoolctl import ThreadpoolController

            _blas.append(ThreadpoolController())
        except ImportError:
            _blas.append(None)
    if _blas[0] is None:
        yield
        return
    with _blas[0].limit(limits=1, user_api="blas"):
        yield


def cache_key(db: Path, model: str) -> str:
    return hashlib.sha256(f"{os.path.abspath(db)}\0{model}".encode()).hexdigest()[:20]


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


@dataclass
class _Meta:
    rows: int = 0
    dim: int = 0
    max_seq: int = 0
    db_ino: int = 0
    db_dev: int = 0
    model: str = ""
    format: int = FORMAT


class VectorStore:
    """The vectors of one model in one index, kept current in a memory-mapped copy under ``cache_dir``."""

    def __init__(self, conn: sqlite3.Connection, db: Path, model: str, cache_dir: Path) -> None:
        self.conn = conn
        self.db = Path(db)
        self.model = model
        self.dir = Path(cache_dir) / cache_key(self.db, model)
        self._meta = _Meta()
        self._vectors: np.ndarray | None = None
        self._ids: np.ndarray | None = None

    # -- keeping the copy current ----------------------------------------------------------------

    def count(self) -> int:
        """Vectors of this model in the index (the truth, not the copy)."""
        return self.conn.execute("SELECT count(*) FROM photo_embeddings WHERE model = ?", (self.model,)).fetchone()[0]

    def sync(self) -> int:
        """Bring the copy up to date with the index; returns the rows in the copy."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be appending: one writer at a time
            meta = self._read_meta()
            stat = os.stat(self.db)
            max_seq = self.conn.execute("SELECT coalesce(max(seq), 0) FROM photo_embeddings").fetchone()[0]
            if (
                meta is None
                or (meta.db_ino, meta.db_dev, meta.model) != (stat.st_ino, stat.st_dev, self.model)
                or max_seq < meta.max_seq  # the index was replaced under the same name
            ):
                meta = self._rebuild(stat, max_seq)
            elif max_seq > meta.max_seq:
                meta = self._append(meta, max_seq)
                if self.count() < 0.75 * meta.rows:  # much of the copy is stale: start afresh
                    meta = self._rebuild(stat, max_seq)
        self._open(meta)
        return meta.rows

    def invalidate(self) -> None:
        """Rebuild the copy on the next :meth:`sync` (too many stale rows were met)."""
        with contextlib.suppress(OSError):
            (self.dir / "meta.json").unlink()

    def _read_meta(self) -> _Meta | None:
        try:
            raw = json.loads((self.dir / "meta.json").read_text())
            meta = _Meta(**raw)
        except (OSError, ValueError, TypeError):
            return None
        if meta.format != FORMAT:
            return None
        # the data files must hold at least what the meta claims (a crash mid-append leaves more)
        try:
            if meta.rows and (
                os.path.getsize(self.dir / "vectors.f32") < meta.rows * meta.dim * 4
                or os.path.getsize(self.dir / "ids.i64") < meta.rows * 16
            ):
                return None
        except OSError:
            return None
        return meta

    def _write_meta(self, meta: _Meta) -> None:
        tmp = self.dir / "meta.json.tmp"
        tmp.write_text(json.dumps(meta.__dict__))
        os.replace(tmp, self.dir / "meta.json")

    def _copy_rows(self, meta: _Meta, vectors_path: Path, ids_path: Path, up_to: int) -> _Meta:
        with open(vectors_path, "r+b") as vec_file, open(ids_path, "r+b") as id_file:
            # drop any tail a crash left beyond what the meta vouches for
            vec_file.truncate(meta.rows * meta.dim * 4)
            id_file.truncate(meta.rows * 16)
            vec_file.seek(0, os.SEEK_END)
            id_file.seek(0, os.SEEK_END)
            cursor = self.conn.execute(
                "SELECT seq, photo_id, vector FROM photo_embeddings WHERE seq > ? AND seq <= ? AND model = ? "
                "ORDER BY seq",
                (meta.max_seq, up_to, self.model),
            )
            while batch := cursor.fetchmany(4096):
                dim = len(batch[0][2]) // 4
                if meta.dim == 0:
                    meta.dim = dim
                good = [row for row in batch if len(row[2]) == meta.dim * 4]
                if len(good) != len(batch):
                    log.warning("skipped %d vectors of the wrong size in the index", len(batch) - len(good))
                vec_file.write(b"".join(row[2] for row in good))
                id_file.write(np.array([(row[0], row[1]) for row in good], dtype="<i8").tobytes())
                meta.rows += len(good)
        meta.max_seq = up_to
        return meta

    def _append(self, meta: _Meta, up_to: int) -> _Meta:
        meta = self._copy_rows(meta, self.dir / "vectors.f32", self.dir / "ids.i64", up_to)
        self._write_meta(meta)
        return meta

    def _rebuild(self, stat: os.stat_result, up_to: int) -> _Meta:
        """A fresh copy written beside the old one, then swapped in (open maps keep the old files)."""
        meta = _Meta(db_ino=stat.st_ino, db_dev=stat.st_dev, model=self.model)
        vectors_tmp, ids_tmp = self.dir / "vectors.f32.tmp", self.dir / "ids.i64.tmp"
        for tmp in (vectors_tmp, ids_tmp):
            tmp.write_bytes(b"")
        meta = self._copy_rows(meta, vectors_tmp, ids_tmp, up_to)
        os.replace(vectors_tmp, self.dir / "vectors.f32")
        os.replace(ids_tmp, self.dir / "ids.i64")
        self._write_meta(meta)
        return meta

    def _open(self, meta: _Meta) -> None:
        self._meta = meta
        if meta.rows == 0:
            self._vectors = np.zeros((0, max(meta.dim, 1)), dtype=np.float32)
            self._ids = np.zeros((0, 2), dtype=np.int64)
            return
        self._vectors = np.memmap(self.dir / "vectors.f32", dtype="<f4", mode="r", shape=(meta.rows, meta.dim))
        self._ids = np.memmap(self.dir / "ids.i64", dtype="<i8", mode="r", shape=(meta.rows, 2))

    # -- scanning --------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._meta.dim

    @property
    def rows(self) -> int:
        return self._meta.rows

    def scores(self, vector: np.ndarray) -> np.ndarray:
        """Cosine similarity of ``vector`` (unit length) to every row of the copy, chunk by chunk."""
        assert self._vectors is not None, "sync() first"
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self.rows and query.shape[0] != self.dim:
            raise ValueError(f"query vector has {query.shape[0]} dimensions, the index's vectors {self.dim}")
        out = np.empty(self.rows, dtype=np.float32)
        with one_blas_thread():
            for start in range(0, self.rows, CHUNK_ROWS):
                np.dot(self._vectors[start : start + CHUNK_ROWS], query, out=out[start : start + CHUNK_ROWS])
        return out

    def ranked(
        self, vector: np.ndarray, *, allowed: np.ndarray | None = None, min_score: float = -np.inf
    ) -> Iterator[list[tuple[int, int, float]]]:
        """Windows of ``(seq, photo_id, score)``, best first, growing in size, none below ``min_score``;
        the caller checks each window against the index and stops once it has enough. ``allowed``: the
        only photo ids to rank."""
        scores = self.scores(vector)
        if self.rows == 0:
            return
        assert self._ids is not None
        if allowed is not None:
            scores[~np.isin(np.asarray(self._ids[:, 1]), allowed)] = -np.inf
        done = 0
        window = 256
        while done < self.rows:
            top = min(self.rows, done + window)
            best = np.argpartition(-scores, top - 1)[:top] if top < self.rows else np.arange(self.rows)
            best = best[np.argsort(-scores[best], kind="stable")][done:top]
            best = best[np.isfinite(scores[best]) & (scores[best] >= min_score)]
            if len(best) == 0:
                return
            ids = self._ids[np.sort(best)]  # one gather from the map, in file order
            order = np.searchsorted(np.sort(best), best)
            yield list(zip(ids[order, 0].tolist(), ids[order, 1].tolist(), scores[best].tolist(), strict=True))
            if len(best) < top - done:  # the rest scored too low
                return
            done = top
            window *= 8
