"""Caption vectors for search: a fast, approximate index over a copy of the ``photo_embeddings`` rows.

The table in the index is the truth; this module keeps a copy in the data dir
(``vectors/<key>/<generation>/``) that answers "the photos nearest this query vector" in milliseconds
at a million photos, without holding the float32 vectors in memory:

- ``bits.<j>.u64``: one sign bit per dimension (bit set where the component is > 0), stored one 64-bit
  word per file so a scan reads each word column contiguously (48 bytes a photo at 384 dimensions);
- ``vectors.i8`` and ``scales.f32``: each row as int8 with its scale (384 bytes a photo), for
  re-scoring the candidates;
- ``vectors.f32``: the float32 rows, read only for the exact scores of the rows handed out;
- ``ids.i64``: ``(seq, photo_id)`` per row.

A search ranks every row by Hamming distance to the query's sign bits, re-ranks the closest twenty
thousand by the query's float components over their bits (an asymmetric estimate, much closer to the
cosine), scores the best two thousand of those from the int8 rows, and hands them out best first with
their exact float32 scores. What stays in memory is the bits, ids and int8 rows (under half a GB at a
million photos); the float32 rows are read a window at a time. ``benchmarks/search.py`` measures
its recall against the exact scan. A filter that keeps few photos ranks only their rows, exactly.

Rows are appended in ``seq`` order; since ``seq`` only grows, catching up is "append what has a higher
seq than the copy's last": as photos are captioned or re-captioned, a search appends the new rows, never
rebuilding. Rows whose vector was dropped or replaced since (re-captioned, pruned) stay in the copy until
it is rebuilt (when a quarter of it is stale); every hit is checked against the table before it is
returned, and its photo id comes from the table, so a stale or damaged row is never shown as a wrong
photo. A rebuild writes a new generation folder and then swaps ``meta.json`` (atomic), so a crash
leaves either the old copy or the new one. A copy that is missing, from another index file or another
model, or fails a spot check against the table is rebuilt. The rows come from a :class:`VectorSource`
(SQLite here; any database with a growing ``seq`` works). numpy is imported here only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

if not hasattr(np, "bitwise_count"):  # pragma: no cover - what an old environment sees
    raise ImportError(f"search by meaning needs numpy 2.0 or newer (found {np.__version__}): pip install 'numpy>=2'")

log = logging.getLogger(__name__)

FORMAT = 2
EXACT_ROWS = 4096  # at most this many rows to rank (a small library, a narrow filter): score them all exactly
FIRST_STAGE = 20_000  # rows kept by Hamming distance for the asymmetric estimate
RESCORED = 2_000  # rows scored from the int8 rows, best estimates first
CHUNK_ROWS = 65536  # rows scored per step by the exact scan: 96 MiB of float32 at 384 dimensions
SPOT_CHECKS = 4  # rows compared with the table when a copy is opened

_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)  # value -> its bits
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


def cache_key(origin: str | Path, model: str) -> str:
    return hashlib.sha256(f"{os.path.abspath(origin)}\0{model}".encode()).hexdigest()[:20]


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


# -- where the rows come from -------------------------------------------------------------------------


class VectorSource(Protocol):
    """The vectors of one model in one index, each with a ``seq`` that only grows (a new or replaced
    vector gets a higher one). ``origin`` names the index (a path, or a database URL) and ``identity``
    changes when the index is replaced under the same name."""

    model: str
    origin: str

    def identity(self) -> str: ...

    def max_seq(self) -> int: ...

    def count(self) -> int: ...

    def rows(self, after: int, up_to: int) -> Iterator[list[tuple[int, int, bytes]]]:
        """Batches of ``(seq, photo_id, float32 bytes)`` with ``after < seq <= up_to``, in seq order."""
        ...

    def lookup(self, seqs: list[int]) -> dict[int, tuple[int, bytes]]:
        """``seq -> (photo_id, float32 bytes)`` for those of ``seqs`` still in the table."""
        ...


class SqliteVectors:
    """:class:`VectorSource` over the SQLite index's ``photo_embeddings`` table."""

    def __init__(self, conn: sqlite3.Connection, db: Path, model: str) -> None:
        self.conn, self.db, self.model = conn, Path(db), model
        self.origin = str(self.db)

    def identity(self) -> str:
        stat = os.stat(self.db)
        return f"{stat.st_dev}:{stat.st_ino}"

    def max_seq(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(seq), 0) FROM photo_embeddings").fetchone()[0])

    def count(self) -> int:
        return int(
            self.conn.execute("SELECT count(*) FROM photo_embeddings WHERE model = ?", (self.model,)).fetchone()[0]
        )

    def rows(self, after: int, up_to: int) -> Iterator[list[tuple[int, int, bytes]]]:
        cursor = self.conn.execute(
            "SELECT seq, photo_id, vector FROM photo_embeddings WHERE seq > ? AND seq <= ? AND model = ? ORDER BY seq",
            (after, up_to, self.model),
        )
        while batch := cursor.fetchmany(4096):
            yield batch

    def lookup(self, seqs: list[int]) -> dict[int, tuple[int, bytes]]:
        return {
            r[0]: (r[1], r[2])
            for r in self.conn.execute(
                "SELECT seq, photo_id, vector FROM photo_embeddings WHERE seq IN (SELECT value FROM json_each(?)) "
                "AND model = ?",
                (json.dumps([int(s) for s in seqs]), self.model),
            )
        }


# -- the copy on disk ---------------------------------------------------------------------------------


@dataclass
class _Meta:
    rows: int = 0
    dim: int = 0
    max_seq: int = 0
    identity: str = ""
    model: str = ""
    generation: str = ""
    format: int = FORMAT


def _words(dim: int) -> int:
    return (dim + 63) // 64


def sign_bits(vectors: np.ndarray) -> np.ndarray:
    """``(rows, words)`` uint64: bit i of a row is set where component i is > 0 (zero-padded to 64s)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    words = _words(vectors.shape[1])
    packed = np.packbits(vectors > 0, axis=1)
    padded = np.zeros((vectors.shape[0], words * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


def int8_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row as int8 (its largest component at +-127) and the scale that turns it back."""
    vectors = np.asarray(vectors, dtype=np.float32)
    scales = np.abs(vectors).max(axis=1) / 127
    scales[scales == 0] = 1
    return np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8), scales.astype(np.float32)


def _all(handles: dict[str, Any]) -> list[Any]:
    return [handle for key, handle in handles.items() if key != "bits"] + list(handles.get("bits", []))


class VectorStore:
    """The vectors of one model in one index, kept current in a copy under ``cache_dir``."""

    def __init__(self, source: VectorSource, cache_dir: Path) -> None:
        self.source = source
        self.model = source.model
        self.dir = Path(cache_dir) / cache_key(source.origin, source.model)
        self._meta = _Meta()
        self._vectors: np.ndarray | None = None
        self._float_file: Any = None
        self._ids: np.ndarray | None = None
        self._bits: list[np.ndarray] = []
        self._int8: np.ndarray = np.zeros((0, 1), dtype=np.int8)
        self._scales: np.ndarray = np.zeros(0, dtype=np.float32)

    @classmethod
    def for_sqlite(cls, conn: sqlite3.Connection, db: Path, model: str, cache_dir: Path) -> VectorStore:
        return cls(SqliteVectors(conn, db, model), cache_dir)

    # -- keeping the copy current ----------------------------------------------------------------

    def count(self) -> int:
        """Vectors of this model in the index (the truth, not the copy)."""
        return self.source.count()

    def sync(self, *, rebuild: bool = False) -> int:
        """Bring the copy up to date with the index (``rebuild``: start afresh); returns its rows."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be appending: one writer at a time
            meta = None if rebuild else self._read_meta()
            identity, max_seq = self.source.identity(), self.source.max_seq()
            if (
                meta is None
                or (meta.identity, meta.model) != (identity, self.model)
                or max_seq < meta.max_seq  # the index was replaced under the same name
                or not self._spot_check(meta)
            ):
                meta = self._rebuild(identity, max_seq)
            elif max_seq > meta.max_seq:
                meta = self._append(meta, max_seq)
                if self.count() < 0.75 * meta.rows:  # much of the copy is stale: start afresh
                    meta = self._rebuild(identity, max_seq)
            self._open(meta)  # under the lock: a rebuild elsewhere removes old generations
        return meta.rows

    def invalidate(self) -> None:
        """Rebuild the copy on the next :meth:`sync` (too many stale rows were met)."""
        with contextlib.suppress(OSError):
            (self.dir / "meta.json").unlink()

    def files(self) -> list[Path]:
        """The files of the current copy (after :meth:`sync`)."""
        folder = self.dir / self._meta.generation
        return [folder / "vectors.f32", folder / "vectors.i8", folder / "scales.f32", folder / "ids.i64"] + [
            folder / f"bits.{j}.u64" for j in range(_words(self._meta.dim))
        ]

    def _paths(self, meta: _Meta) -> tuple[Path, Path, list[Path]]:
        folder = self.dir / meta.generation
        return (
            folder / "vectors.f32",
            folder / "ids.i64",
            [folder / f"bits.{j}.u64" for j in range(_words(meta.dim))],
        )

    def _read_meta(self) -> _Meta | None:
        try:
            meta = _Meta(**json.loads((self.dir / "meta.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if meta.format != FORMAT or not meta.generation or (meta.rows and not meta.dim):
            return None
        # the data files must hold at least what the meta claims (a crash mid-append leaves more)
        vectors, ids, bits = self._paths(meta)
        try:
            if os.path.getsize(vectors) < meta.rows * meta.dim * 4 or os.path.getsize(ids) < meta.rows * 16:
                return None
            if any(os.path.getsize(path) < meta.rows * 8 for path in bits):
                return None
            if (
                os.path.getsize(vectors.with_suffix(".i8")) < meta.rows * meta.dim
                or os.path.getsize(vectors.with_name("scales.f32")) < meta.rows * 4
            ):
                return None
        except OSError:
            return None
        return meta

    def _spot_check(self, meta: _Meta) -> bool:
        """A few rows of the copy (the last one, and some at random) agree with the table where the
        table still has them: catches a damaged or foreign copy for the cost of one small query."""
        if meta.rows == 0:
            return True
        self._open(meta)
        assert self._ids is not None and self._vectors is not None
        picks = sorted({meta.rows - 1, *(random.randrange(meta.rows) for _ in range(SPOT_CHECKS))})
        seqs = [int(self._ids[i, 0]) for i in picks]
        if not all(0 < seq <= meta.max_seq for seq in seqs) or seqs != sorted(set(seqs)):
            log.warning("the search index in %s is damaged: rebuilding it", self.dir)
            return False  # rows are in seq order, every seq above 0
        rows = dict(zip(seqs, picks, strict=True))
        for seq, (photo_id, blob) in self.source.lookup(list(rows)).items():
            i = rows[seq]
            vector = np.frombuffer(blob, dtype="<f4")
            if (
                int(self._ids[i, 1]) != photo_id
                or len(vector) != meta.dim
                or not np.array_equal(self._vectors[i], vector)
                or not np.array_equal(self._int8[i], int8_rows(vector[None, :])[0][0])
                or any(int(self._bits[j][i]) != int(word) for j, word in enumerate(sign_bits(vector)[0]))
            ):
                log.warning("the search index in %s does not match the index: rebuilding it", self.dir)
                return False
        return True

    def _write_meta(self, meta: _Meta) -> None:
        tmp = self.dir / f"meta.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta.__dict__))
        os.replace(tmp, self.dir / "meta.json")

    def _copy_rows(self, meta: _Meta, up_to: int) -> _Meta:
        """Append the source's rows after ``meta.max_seq`` up to ``up_to`` to the generation's files."""
        rows, dim = meta.rows, meta.dim
        handles: dict[str, Any] = {}
        try:
            for batch in self.source.rows(meta.max_seq, up_to):
                if dim == 0:
                    dim = len(batch[0][2]) // 4
                if not handles:
                    handles = self._open_for_append(meta, dim, rows)
                good = [row for row in batch if len(row[2]) == dim * 4]
                if len(good) != len(batch):
                    log.warning("skipped %d vectors of the wrong size in the index", len(batch) - len(good))
                if not good:
                    continue
                raw = b"".join(row[2] for row in good)
                handles["vectors"].write(raw)
                handles["ids"].write(np.array([(row[0], row[1]) for row in good], dtype="<i8").tobytes())
                floats = np.frombuffer(raw, dtype="<f4").reshape(len(good), dim)
                small, scales = int8_rows(floats)
                handles["int8"].write(small.tobytes())
                handles["scales"].write(scales.astype("<f4").tobytes())
                bits = sign_bits(floats)
                for j, handle in enumerate(handles["bits"]):
                    handle.write(np.ascontiguousarray(bits[:, j]).astype("<u8").tobytes())
                rows += len(good)
            for handle in _all(handles):
                handle.flush()
                os.fsync(handle.fileno())  # the data is on disk before the meta vouches for it
        finally:
            for handle in _all(handles):
                handle.close()
        meta.rows, meta.dim, meta.max_seq = rows, dim, up_to
        return meta

    def _open_for_append(self, meta: _Meta, dim: int, rows: int) -> dict[str, Any]:
        """The generation's files open for appending, each cut to the rows the meta vouches for (a crash
        mid-append leaves a longer tail)."""
        folder = self.dir / meta.generation
        folder.mkdir(parents=True, exist_ok=True)

        def opened(name: str, size: int) -> Any:
            handle = open(folder / name, "a+b")
            handle.truncate(size)
            handle.seek(0, os.SEEK_END)
            return handle

        return {
            "vectors": opened("vectors.f32", rows * dim * 4),
            "ids": opened("ids.i64", rows * 16),
            "int8": opened("vectors.i8", rows * dim),
            "scales": opened("scales.f32", rows * 4),
            "bits": [opened(f"bits.{j}.u64", rows * 8) for j in range(_words(dim))],
        }

    def _append(self, meta: _Meta, up_to: int) -> _Meta:
        meta = self._copy_rows(meta, up_to)
        self._write_meta(meta)
        return meta

    def _rebuild(self, identity: str, up_to: int) -> _Meta:
        """A fresh copy in a new generation folder, then swapped in by the meta (open maps keep the old
        files); older generations are removed."""
        meta = _Meta(identity=identity, model=self.model, generation=f"g{uuid.uuid4().hex[:12]}")
        meta = self._copy_rows(meta, up_to)
        (self.dir / meta.generation).mkdir(exist_ok=True)
        self._write_meta(meta)
        for old in self.dir.iterdir():
            if old.is_dir() and old.name != meta.generation:
                shutil.rmtree(old, ignore_errors=True)
        return meta

    def _open(self, meta: _Meta) -> None:
        self._meta = meta
        if meta.rows == 0:
            self._vectors = np.zeros((0, max(meta.dim, 1)), dtype=np.float32)
            self._ids = np.zeros((0, 2), dtype=np.int64)
            self._bits = [np.zeros(0, dtype=np.uint64) for _ in range(_words(max(meta.dim, 1)))]
            self._int8 = np.zeros((0, max(meta.dim, 1)), dtype=np.int8)
            self._scales = np.zeros(0, dtype=np.float32)
            return
        vectors, ids, bits = self._paths(meta)
        self._vectors = np.memmap(vectors, dtype="<f4", mode="r", shape=(meta.rows, meta.dim))
        if self._float_file is not None:
            self._float_file.close()
        self._float_file = open(vectors, "rb")  # noqa: SIM115 - kept open for reading rows; closed on reopen
        self._ids = np.memmap(ids, dtype="<i8", mode="r", shape=(meta.rows, 2))
        self._bits = [np.memmap(path, dtype="<u8", mode="r", shape=(meta.rows,)) for path in bits]
        self._int8 = np.memmap(vectors.with_suffix(".i8"), dtype=np.int8, mode="r", shape=(meta.rows, meta.dim))
        self._scales = np.memmap(vectors.with_name("scales.f32"), dtype="<f4", mode="r", shape=(meta.rows,))

    # -- ranking ---------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._meta.dim

    @property
    def rows(self) -> int:
        return self._meta.rows

    def _query(self, vector: np.ndarray) -> np.ndarray:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self.rows and query.shape[0] != self.dim:
            raise ValueError(f"query vector has {query.shape[0]} dimensions, the index's vectors {self.dim}")
        return query

    def scores(self, vector: np.ndarray) -> np.ndarray:
        """Exact cosine similarity of ``vector`` (unit length) to every row of the copy, chunk by chunk."""
        assert self._vectors is not None, "sync() first"
        query = self._query(vector)
        out = np.empty(self.rows, dtype=np.float32)
        with one_blas_thread():
            for start in range(0, self.rows, CHUNK_ROWS):
                np.dot(self._vectors[start : start + CHUNK_ROWS], query, out=out[start : start + CHUNK_ROWS])
        return out

    def _rows_of(self, allowed: np.ndarray) -> np.ndarray:
        """Row numbers whose photo id is in ``allowed`` (one pass over the ids, no per-row work)."""
        assert self._ids is not None
        photo_ids = np.asarray(self._ids[:, 1])
        allowed = np.asarray(allowed, dtype=np.int64)
        if len(allowed) == 0 or len(photo_ids) == 0:
            return np.zeros(0, dtype=np.int64)
        top = int(max(photo_ids.max(), allowed.max())) + 1
        wanted = np.zeros(top, dtype=bool)
        wanted[allowed[allowed >= 0]] = True
        return np.flatnonzero(wanted[np.clip(photo_ids, 0, top - 1)])

    def _hamming(self, query: np.ndarray) -> np.ndarray:
        """Hamming distance of every row's sign bits to the query's (uint16, one pass per word)."""
        words = sign_bits(query)[0]
        distance = np.zeros(self.rows, dtype=np.uint16)
        scratch = np.empty(self.rows, dtype=np.uint64)
        counts = np.empty(self.rows, dtype=np.uint8)
        for column, word in zip(self._bits, words, strict=True):
            np.bitwise_xor(column, word, out=scratch)
            np.bitwise_count(scratch, out=counts)
            distance += counts
        return distance

    def _candidates(self, query: np.ndarray, first: int, rescored: int, rows: np.ndarray | None) -> np.ndarray:
        """Row numbers, about ``rescored`` of them, most likely to hold the best cosines: the ``first``
        nearest by Hamming distance (among ``rows`` when given), re-ranked by the query's components
        over their sign bits."""
        distance = self._hamming(query)
        if rows is not None:
            limit = np.full(self.rows, np.iinfo(np.uint16).max, dtype=np.uint16)
            limit[rows] = distance[rows]
            distance = limit
        # every row at the threshold distance is kept: copies of one caption stay together
        histogram = np.cumsum(np.bincount(distance, minlength=len(self._bits) * 64 + 1))
        threshold = int(np.searchsorted(histogram, min(first, histogram[-1] if rows is None else len(rows))))
        near = np.flatnonzero(distance <= threshold)
        if rows is not None:
            near = near[distance[near] != np.iinfo(np.uint16).max]
        if len(near) <= rescored:
            return near
        # the query's weight on each row's positive side (monotone in q . sign(x)), a byte at a time:
        # table[b, v] is the sum of the query's components whose bits are set in value v of byte b
        packed = np.ascontiguousarray(np.stack([column[near] for column in self._bits], axis=1), dtype="<u8")
        padded = np.zeros(len(self._bits) * 64, dtype=np.float32)
        padded[: self.dim] = query
        table = padded.reshape(-1, 8) @ _BYTE_BITS.T
        offsets = np.arange(table.shape[0], dtype=np.intp) * 256
        estimate = np.take(table.ravel(), packed.view(np.uint8).astype(np.intp) + offsets).sum(axis=1)
        return near[np.argpartition(-estimate, rescored)[:rescored]]

    def _exact(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact scores of ``rows`` from the float32 copy, read row by row in file order (not through
        the memory map: a page fault maps the cached pages around it too, and the float32 copy would
        soon sit whole in this process's memory)."""
        assert self._float_file is not None
        order = np.argsort(rows, kind="stable")
        size = self.dim * 4
        fd = self._float_file.fileno()
        raw = b"".join(os.pread(fd, size, int(row) * size) for row in rows[order])
        if len(raw) != len(rows) * size:
            raise OSError(f"the search index in {self.dir} is shorter than its meta says")
        scores = np.empty(len(rows), dtype=np.float32)
        with one_blas_thread():
            scores[order] = np.frombuffer(raw, dtype="<f4").reshape(len(rows), self.dim) @ query
        return scores

    def _int8_scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores of ``rows`` from their int8 copies: within about 0.01 of the exact cosine."""
        order = np.argsort(rows, kind="stable")
        scores = np.empty(len(rows), dtype=np.float32)
        with one_blas_thread():
            scores[order] = (self._int8[rows[order]].astype(np.float32) @ query) * self._scales[rows[order]]
        return scores

    def ranked(
        self, vector: np.ndarray, *, allowed: np.ndarray | None = None, min_score: float = -np.inf
    ) -> Iterator[list[tuple[int, int, float]]]:
        """Windows of ``(seq, photo_id, score)``, best first, growing in size, none below ``min_score``;
        the caller checks each window against the index and stops once it has enough. ``allowed``: the
        only photo ids to rank. Scores are exact; which rows are scored is approximate beyond
        :data:`EXACT_ROWS` rows (recall measured by benchmarks/search.py); a caller that wants more
        than the approximate rounds found gets the rest from an exact scan."""
        assert self._ids is not None, "sync() first"
        if self.rows == 0:
            return
        query = self._query(vector)
        rows = self._rows_of(allowed) if allowed is not None else None
        pool = self.rows if rows is None else len(rows)
        yielded = np.zeros(self.rows, dtype=bool)
        rounds: list[tuple[int, int] | None] = []
        if pool > EXACT_ROWS:
            rounds += [(FIRST_STAGE, RESCORED), (8 * FIRST_STAGE, 8 * RESCORED)]
        rounds.append(None)  # the exact scan of whatever is left
        for stage in rounds:
            if stage is None:
                found = rows if rows is not None else np.arange(self.rows)
                found = found[~yielded[found]]
                estimates = self.scores(query)[found] if rows is None else self._exact(query, found)
            else:
                found = self._candidates(query, stage[0], stage[1], rows)
                found = found[~yielded[found]]
                estimates = self._int8_scores(query, found)
            order = np.argsort(-estimates, kind="stable")
            found, estimates = found[order], estimates[order]
            window, start, below = 256, 0, False
            while start < len(found) and not below:
                part = found[start : start + window]
                yielded[part] = True
                scores = self._exact(query, part) if stage is not None else estimates[start : start + window]
                best = np.argsort(-scores, kind="stable")
                part, scores = part[best], scores[best]
                below = bool(len(scores)) and scores[-1] < min_score
                part, scores = part[scores >= min_score], scores[scores >= min_score]
                if len(part):
                    ids = self._ids[part]
                    yield list(zip(ids[:, 0].tolist(), ids[:, 1].tolist(), scores.tolist(), strict=True))
                start += window
                window *= 8
            if below or (stage is not None and len(estimates) and estimates[-1] < min_score):
                return  # the best candidates already fell below min_score: the rest score lower
