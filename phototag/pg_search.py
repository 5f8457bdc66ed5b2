"""Search a PostgreSQL index: by keywords, by meaning, or both, with the same filters as on SQLite.

- **keyword**: ``photos.search_vector`` (a generated ``tsvector``, see :mod:`phototag.pg_schema`) matched
  through its GIN index by ``websearch_to_tsquery`` (English stemming; stop words ignored), ranked by
  ``ts_rank``. The text handed to it is rebuilt from phototag's own parse of the query
  (:mod:`phototag.query`: words of letters and digits, phrases, exclusions), so any text a person types
  is a valid query, and words mean the same as on SQLite. Photos with every word come first, then photos
  with some; as on SQLite at most :data:`~phototag.search.RANK_CAP` matches of one expression, the most
  recently indexed, are ranked.
- **semantic**: the caption vectors live in the database (``photo_embeddings.vector``, float32 bytes);
  each machine keeps a local copy (:class:`PgVectorCopy`, caught up by ``seq`` like the SQLite one) and
  scans it with numpy; every candidate is checked against the database before it is shown.
- **hybrid**: reciprocal rank fusion, as on SQLite (:meth:`phototag.search.Finder.fuse`).

psycopg only, no SQLAlchemy or torch: ``phototag search`` by keywords starts fast.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phototag.database import IndexLocation, IndexUnreachable
from phototag.query import Query
from phototag.schema import DONE
from phototag.search import (
    FEW_KEPT_SEMANTIC,
    RANK_CAP,
    Ranker,
    SearchError,
    SearchHit,
)

if TYPE_CHECKING:
    import numpy as np

PAGE = 20_000  # vectors fetched per query while copying
TEXT_CONFIG = "english"  # the same as phototag.pg_schema.TEXT_CONFIG (not imported: that module needs SQLAlchemy)


def conninfo(location: IndexLocation) -> str:
    """The URL as libpq takes it: ``postgresql+psycopg://...`` without SQLAlchemy's driver name."""
    assert location.url is not None
    scheme, rest = location.url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def connect(location: IndexLocation) -> Any:
    """An autocommit psycopg connection to the index; a database phototag has not set up yet gets its
    schema first (that needs SQLAlchemy, once)."""
    import psycopg

    try:
        conn = psycopg.connect(conninfo(location), autocommit=True, application_name="phototag search")
        # never a prepared statement: its generic plan cannot see how rare a word is, and scans by id
        # instead of the GIN index (a rare word took 100 ms instead of 0.3 ms)
        conn.prepare_threshold = None
        ready = conn.execute("SELECT to_regclass('phototag_schema') IS NOT NULL").fetchone() == (True,)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IndexUnreachable(f"cannot reach the index {location}: {first}") from None
    if not ready:
        from phototag.index import PhotoIndex

        PhotoIndex(location).close()
    return conn


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _phrase(words: Sequence[str]) -> str:
    return '"' + " ".join(words) + '"'


def _tags(tags: Sequence[str], joiner: str) -> str:
    """to_tsquery text for keywords only (weight B); words are letters and digits (phototag.text.words)."""
    return f" {joiner} ".join(f"'{tag}':B" for tag in tags)


class PgFinder(Ranker["PgVectorCopy"]):
    """Runs queries against one PostgreSQL index connection (psycopg, autocommit)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    # -- conditions on ``photos p`` --------------------------------------------------------------

    @staticmethod
    def _filters(query: Query) -> tuple[list[str], list[Any]]:
        """``in:``, ``-in:``, ``after:``, ``before:``."""
        clauses: list[str] = []
        params: list[Any] = []
        if query.folders:
            clauses.append("(" + " OR ".join("p.path LIKE %s ESCAPE '\\'" for _ in query.folders) + ")")
            params += [_like_prefix(prefix) for prefix in query.folders]
        for prefix in query.excluded_folders:
            clauses.append("p.path NOT LIKE %s ESCAPE '\\'")
            params.append(_like_prefix(prefix))
        if query.after:
            clauses.append("p.taken_at >= %s")
            params.append(query.after)
        if query.before:
            clauses.append("p.taken_at < %s")
            params.append(query.before)
        return clauses, params

    @staticmethod
    def _required(query: Query) -> tuple[list[str], list[Any]]:
        """Phrases and ``tag:`` (every result has them), ``-word`` and ``-tag:`` (no result has them)."""
        clauses: list[str] = []
        params: list[Any] = []
        if query.phrases:
            clauses.append(f"p.search_vector @@ websearch_to_tsquery('{TEXT_CONFIG}', %s)")
            params.append(" ".join(_phrase(p) for p in query.phrases if p))
        if query.tags:
            clauses.append(f"p.search_vector @@ to_tsquery('{TEXT_CONFIG}', %s)")
            params.append(_tags(query.tags, "&"))
        if query.excluded:
            clauses.append(f"NOT p.search_vector @@ websearch_to_tsquery('{TEXT_CONFIG}', %s)")
            params.append(" or ".join(query.excluded))
        if query.excluded_tags:
            clauses.append(f"NOT p.search_vector @@ to_tsquery('{TEXT_CONFIG}', %s)")
            params.append(_tags(query.excluded_tags, "|"))
        return clauses, params

    def _conditions(self, query: Query) -> tuple[str, list[Any]]:
        """Done, and passing every filter of ``query``."""
        filters, params = self._filters(query)
        required, more = self._required(query)
        return " AND ".join(["p.status = %s", *filters, *required]), [DONE, *params, *more]

    # -- keyword ---------------------------------------------------------------------------------

    def _ranked(self, text: str, query: Query, want: int) -> list[tuple[int, float]]:
        """Up to ``want`` done photos matching the websearch ``text`` and the query's filters, best
        ``ts_rank`` first, among the newest RANK_CAP matches."""
        where, params = self._conditions(query)
        sql = (
            "SELECT id, ts_rank(search_vector, q) AS rank FROM ("
            f"  SELECT p.id, p.search_vector, q FROM photos p, websearch_to_tsquery('{TEXT_CONFIG}', %s) q"
            f"  WHERE p.search_vector @@ q AND {where} ORDER BY p.id DESC LIMIT %s"
            ") matches ORDER BY rank DESC, id DESC LIMIT %s"
        )
        rows = self.conn.execute(sql, [text, *params, max(RANK_CAP, 4 * want), want]).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    def keyword_ranking(self, query: Query, want: int) -> list[tuple[int, float]]:
        """(photo id, score) best first: photos with every word, then photos with some of them."""
        positives = [_phrase(p) for p in query.phrases if p]
        texts: list[str] = []
        if query.terms or positives:
            texts.append(" ".join([*positives, *query.terms]))
        if len(query.terms) >= 2:
            texts.append(" or ".join(query.terms))  # the phrases and tags stay required (conditions)
        if not texts and query.tags:
            return self.filtered(query, want)  # tags alone: every photo with them, newest taken first
        ranking: list[tuple[int, float]] = []
        seen: set[int] = set()
        for text in texts:
            if len(ranking) >= want:
                break
            for photo_id, score in self._ranked(text, query, want):
                if photo_id not in seen and len(ranking) < want:
                    seen.add(photo_id)
                    ranking.append((photo_id, score))
        return ranking

    def filtered(self, query: Query, want: int) -> list[tuple[int, float]]:
        """No words to rank by, only filters: the matching photos, most recently taken first."""
        where, params = self._conditions(query)
        sql = (
            f"SELECT p.id FROM photos p WHERE {where} ORDER BY p.taken_at IS NULL, p.taken_at DESC, p.id DESC LIMIT %s"
        )
        return [(int(r[0]), 0.0) for r in self.conn.execute(sql, [*params, want])]

    # -- semantic --------------------------------------------------------------------------------

    def semantic_ranking(
        self, query: Query, copy: PgVectorCopy, vector: np.ndarray, want: int, min_similarity: float = -1.0
    ) -> list[tuple[int, float]]:
        """(photo id, cosine) best first among photos passing the query's filters, down to ``min_similarity``.
        Candidates come best first in growing windows, each checked against the database."""
        where, params = self._conditions(query)
        allowed = None
        if query.has_filters:
            kept = [
                r[0]
                for r in self.conn.execute(
                    f"SELECT p.id FROM photos p WHERE {where} LIMIT %s", [*params, FEW_KEPT_SEMANTIC]
                )
            ]
            if not kept:
                return []
            if len(kept) < FEW_KEPT_SEMANTIC:
                allowed = kept
        ranking: list[tuple[int, float]] = []
        for window in copy.ranked(vector, allowed=allowed, min_score=min_similarity):
            live = {
                r[0]
                for r in self.conn.execute(
                    "SELECT e.seq FROM photo_embeddings e JOIN photos p ON p.id = e.photo_id "
                    f"WHERE e.seq = ANY(%s) AND {where}",
                    [[seq for seq, _, _ in window], *params],
                )
            }
            ranking += [(photo_id, score) for seq, photo_id, score in window if seq in live]
            if len(ranking) >= want:
                break
        return ranking[:want]

    # -- hits ------------------------------------------------------------------------------------

    def hits(self, ranking: Sequence[tuple[int, float]]) -> list[SearchHit]:
        if not ranking:
            return []
        rows = {
            r[0]: r
            for r in self.conn.execute(
                "SELECT id, path, caption, caption_source, taken_at FROM photos WHERE id = ANY(%s)",
                [[pid for pid, _ in ranking]],
            )
        }
        return [
            SearchHit(rows[pid][1], rows[pid][2] or "", score, rows[pid][3], rows[pid][4], pid)
            for pid, score in ranking
            if pid in rows
        ]

    # -- what the index holds --------------------------------------------------------------------

    def has_vectors(self, model: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM photo_embeddings WHERE model = %s LIMIT 1", [model]).fetchone() is not None
        )

    def vector_models(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT model FROM photo_embeddings ORDER BY model")]


# -- this machine's copy of the vectors ---------------------------------------------------------------


@dataclass
class _Meta:
    database: int  # the database's oid: a database dropped and made again is another index
    model: str
    max_seq: int = 0
    rows: int = 0
    dim: int = 0


class PgVectorCopy:
    """The vectors of one model, copied from the database into ``folder`` (two flat files), caught up by
    ``seq`` on every search and scanned with numpy. A vector replaced or deleted in the database stays
    in the copy until it is rebuilt (when a quarter of it is stale); the search checks every candidate."""

    def __init__(self, conn: Any, model: str, folder: Path) -> None:
        self.conn = conn
        self.model = model
        self.dir = folder
        self._meta: _Meta | None = None
        self._vectors: Any = None
        self._ids: Any = None

    def sync(self) -> int:
        """Bring the copy up to date; returns its rows."""
        self.dir.mkdir(parents=True, exist_ok=True)
        database = self.conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        max_seq = self.conn.execute(
            "SELECT coalesce(max(seq), 0) FROM photo_embeddings WHERE model = %s", [self.model]
        ).fetchone()[0]
        with open(self.dir / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another search on this machine may be appending
            meta = self._read_meta()
            if meta is None or (meta.database, meta.model) != (database, self.model) or max_seq < meta.max_seq:
                meta = self._copy(_Meta(database, self.model), max_seq, fresh=True)
            elif max_seq > meta.max_seq:
                meta = self._copy(meta, max_seq, fresh=False)
                live = self.conn.execute(
                    "SELECT count(*) FROM photo_embeddings WHERE model = %s", [self.model]
                ).fetchone()[0]
                if live < 0.75 * meta.rows:
                    meta = self._copy(_Meta(database, self.model), max_seq, fresh=True)
        self._open(meta)
        return meta.rows

    def _read_meta(self) -> _Meta | None:
        try:
            meta = _Meta(**json.loads((self.dir / "meta.json").read_text()))
            if meta.rows and os.path.getsize(self.dir / "vectors.f32") < meta.rows * meta.dim * 4:
                return None
            if os.path.getsize(self.dir / "ids.i64") < meta.rows * 16:
                return None
        except (OSError, ValueError, TypeError):
            return None
        return meta

    def _copy(self, meta: _Meta, up_to: int, *, fresh: bool) -> _Meta:
        import numpy as np

        suffix = ".tmp" if fresh else ""
        vectors_path, ids_path = self.dir / f"vectors.f32{suffix}", self.dir / f"ids.i64{suffix}"
        if fresh:
            vectors_path.write_bytes(b"")
            ids_path.write_bytes(b"")
        with open(vectors_path, "r+b") as vec_file, open(ids_path, "r+b") as id_file:
            vec_file.truncate(meta.rows * meta.dim * 4)  # drop a tail a crash left beyond what meta vouches for
            id_file.truncate(meta.rows * 16)
            vec_file.seek(0, os.SEEK_END)
            id_file.seek(0, os.SEEK_END)
            last = meta.max_seq
            while True:  # a page at a time: a million vectors never sit in memory at once
                batch = self.conn.execute(
                    "SELECT seq, photo_id, vector FROM photo_embeddings WHERE seq > %s AND seq <= %s AND model = %s "
                    "ORDER BY seq LIMIT %s",
                    [last, up_to, self.model, PAGE],
                ).fetchall()
                if not batch:
                    break
                last = batch[-1][0]
                if meta.dim == 0:
                    meta.dim = len(batch[0][2]) // 4
                good = [row for row in batch if len(row[2]) == meta.dim * 4]
                vec_file.write(b"".join(bytes(row[2]) for row in good))
                id_file.write(np.array([(row[0], row[1]) for row in good], dtype="<i8").tobytes())
                meta.rows += len(good)
        meta.max_seq = up_to
        if fresh:
            os.replace(vectors_path, self.dir / "vectors.f32")
            os.replace(ids_path, self.dir / "ids.i64")
        tmp = self.dir / "meta.json.tmp"
        tmp.write_text(json.dumps(asdict(meta)))
        os.replace(tmp, self.dir / "meta.json")
        return meta

    def _open(self, meta: _Meta) -> None:
        import numpy as np

        self._meta = meta
        if meta.rows == 0:
            self._vectors = np.zeros((0, max(meta.dim, 1)), dtype=np.float32)
            self._ids = np.zeros((0, 2), dtype=np.int64)
            return
        self._vectors = np.memmap(self.dir / "vectors.f32", dtype="<f4", mode="r", shape=(meta.rows, meta.dim))
        self._ids = np.memmap(self.dir / "ids.i64", dtype="<i8", mode="r", shape=(meta.rows, 2))

    @property
    def rows(self) -> int:
        return self._meta.rows if self._meta else 0

    def ranked(
        self, vector: np.ndarray, *, allowed: Sequence[int] | None = None, min_score: float = -1.0
    ) -> Iterator[list[tuple[int, int, float]]]:
        """Windows of ``(seq, photo_id, score)``, best first, growing, none below ``min_score``."""
        import numpy as np

        if not self.rows:
            return
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self._meta.dim:  # type: ignore[union-attr]
            raise SearchError(f"the query vector has {query.shape[0]} dimensions, the index's vectors {self._meta.dim}")  # type: ignore[union-attr]
        scores = np.asarray(self._vectors @ query, dtype=np.float32)
        ids = np.asarray(self._ids)
        if allowed is not None:
            scores[~np.isin(ids[:, 1], np.asarray(allowed, dtype=np.int64))] = -np.inf
        done, window = 0, 256
        while done < self.rows:
            top = min(self.rows, done + window)
            best = np.argpartition(-scores, top - 1)[:top] if top < self.rows else np.arange(self.rows)
            best = best[np.argsort(-scores[best], kind="stable")][done:top]
            best = best[np.isfinite(scores[best]) & (scores[best] >= min_score)]
            if len(best) == 0:
                return
            yield [(int(ids[i, 0]), int(ids[i, 1]), float(scores[i])) for i in best]
            if len(best) < top - done:
                return
            done = top
            window *= 8


def vector_copy_dir(location: IndexLocation, model: str) -> Path:
    """Where this machine keeps its copy of a server index's vectors of ``model``."""
    import hashlib

    from phototag.search import vectors_cache_dir

    return vectors_cache_dir() / location.path.name / hashlib.sha256(model.encode()).hexdigest()[:12]
