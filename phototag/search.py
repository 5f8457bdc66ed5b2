"""Answer a parsed query from the index: by keywords, by meaning, or both.

- **keyword**: FTS5 bm25 over captions and keywords. Photos with every word come first, then photos
  with some of them. A very common word can match a fifth of a big library; scoring all of those is
  what makes a search slow, so bm25 ranks at most :data:`RANK_CAP` matches of one expression, the most
  recently indexed. Short captions are alike: for a word that common, the best of 10,000
  matches score as high as the best of all of them.
- **semantic**: cosine similarity between the query's sentence embedding and each caption's, by a
  chunked scan of a memory-mapped copy of the vectors (:mod:`phototag.vectors`).
- **hybrid**: reciprocal rank fusion of the two lists (each photo scores sum(1 / (60 + rank))).

Filters (``in:``, ``after:``, ``before:``, ``tag:``, ``"phrase"``, ``-word``) restrict every mode.
Plain :mod:`sqlite3`, no SQLAlchemy, torch or numpy at import time, so ``phototag search`` by
keywords starts fast.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from phototag.migrations import upgrade
from phototag.query import Query
from phototag.schema import BUSY_TIMEOUT_S, DONE

if TYPE_CHECKING:
    import numpy as np

    from phototag.vectors import VectorStore

log = logging.getLogger(__name__)

KEYWORD, SEMANTIC, HYBRID = "keyword", "semantic", "hybrid"
MODES = (KEYWORD, SEMANTIC, HYBRID)
RANK_CAP = 10_000
PHRASE_RANK_CAP = 2_000  # a query with a phrase ranks this many of its newest matches (see Finder._shortest)
RANK_CAP_FILTERED = 2_000  # with a filter that keeps many photos (each match costs a row lookup)
FEW_KEPT = 150_000  # a filter keeping fewer photos than this is materialised (from its index alone)
FEW_KEPT_SEMANTIC = 20_000  # ... for search by meaning: more than this pass often enough to check later
RRF_K = 60


class SearchError(Exception):
    """The search cannot run (e.g. no vectors for semantic search); the message says what to do."""


@dataclass(frozen=True)
class SearchHit:
    path: str
    caption: str
    score: float
    caption_source: str | None
    taken_at: str | None = None
    photo_id: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "caption": self.caption,
            "score": self.score,
            "source": self.caption_source,
            "taken_at": self.taken_at,
        }


def _has_search_schema(conn: sqlite3.Connection) -> bool:
    """Whether the index has what this module reads (asked of the schema, not of a version number)."""
    has_vectors = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'photo_embeddings'").fetchone()
    return bool(has_vectors) and any(row[1] == "taken_at" for row in conn.execute("PRAGMA table_info(photos)"))


def connect(db: Path) -> sqlite3.Connection:
    """A connection for searching. An index from an older phototag is upgraded first (once)."""
    conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    if not _has_search_schema(conn):
        upgrade(conn)
    return conn


def _prefix_range(prefix: str) -> tuple[str, str]:
    """Paths starting with ``prefix`` (which ends in a separator) are >= low and < high."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _in_list(values: Iterable[int]) -> str:
    return json.dumps([int(v) for v in values])


StoreT = TypeVar("StoreT")  # where the caption vectors are searched: a VectorStore, or PostgreSQL's copy


class Ranker(ABC, Generic[StoreT]):
    """What every index's search engine shares (SQLite's :class:`Finder`, PostgreSQL's
    :class:`phototag.pg_search.PgFinder`): how a query's mode combines the rankings each engine makes."""

    @abstractmethod
    def keyword_ranking(self, query: Query, want: int) -> list[tuple[int, float]]: ...

    @abstractmethod
    def semantic_ranking(
        self, query: Query, store: StoreT, vector: np.ndarray, want: int, min_similarity: float = -1.0
    ) -> list[tuple[int, float]]: ...

    @abstractmethod
    def filtered(self, query: Query, want: int) -> list[tuple[int, float]]: ...

    @abstractmethod
    def hits(self, ranking: Sequence[tuple[int, float]]) -> list[SearchHit]: ...

    @staticmethod
    def fuse(*rankings: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
        """Reciprocal rank fusion: a photo high in either list, or fairly high in both, wins."""
        scores: dict[int, float] = {}
        for ranking in rankings:
            for rank, (photo_id, _) in enumerate(ranking, start=1):
                scores[photo_id] = scores.get(photo_id, 0.0) + 1.0 / (RRF_K + rank)
        return sorted(scores.items(), key=lambda item: -item[1])

    def search(
        self,
        query: Query,
        *,
        mode: str = KEYWORD,
        limit: int = 20,
        store: StoreT | None = None,
        embed: Callable[[str], np.ndarray] | None = None,
        min_similarity: float = -1.0,
    ) -> list[SearchHit]:
        """Best-first hits. ``store`` and ``embed`` (query text -> unit vector) serve semantic and hybrid;
        captions less similar than ``min_similarity`` to the query are no match by meaning."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if query.is_empty and not query.text:
            if not query.has_filters:
                return []
            return self.hits(self.filtered(query, limit))
        if mode == KEYWORD or not query.text:
            return self.hits(self.keyword_ranking(query, limit))
        if store is None or embed is None:
            raise SearchError("semantic search needs caption vectors and an embedding model")
        vector = embed(query.text)
        if mode == SEMANTIC:
            return self.hits(self.semantic_ranking(query, store, vector, limit, min_similarity))
        depth = max(100, 2 * limit)
        fused = self.fuse(
            self.keyword_ranking(query, depth), self.semantic_ranking(query, store, vector, depth, min_similarity)
        )
        return self.hits(fused[:limit])


class Finder(Ranker["VectorStore"]):
    """Runs queries against one index connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- filters ---------------------------------------------------------------------------------

    @staticmethod
    def _sql_filter(query: Query) -> tuple[str, list[Any]]:
        """Conditions on ``photos p`` for ``in:``, ``-in:``, ``after:``, ``before:`` ("" when none)."""
        clauses: list[str] = []
        params: list[Any] = []
        if query.folders:
            ranges = []
            for prefix in query.folders:
                ranges.append("(p.path >= ? AND p.path < ?)")
                params += _prefix_range(prefix)
            clauses.append("(" + " OR ".join(ranges) + ")")
        for prefix in query.excluded_folders:
            clauses.append("NOT (p.path >= ? AND p.path < ?)")
            params += _prefix_range(prefix)
        if query.after:
            clauses.append("p.taken_at >= ?")
            params.append(query.after)
        if query.before:
            clauses.append("p.taken_at < ?")
            params.append(query.before)
        return " AND ".join(clauses), params

    def _filter_conditions(self, query: Query, *, check_only: bool = False) -> tuple[str, list[Any]]:
        """Conditions on ``photos p``: done, and passing every filter of ``query``; and their parameters.
        ``check_only``: the rows come from elsewhere (a candidate list): never let SQLite drive the
        query by a filter's matches instead."""
        where, params = self._sql_filter(query)
        required, excluded = query.required_expression(), query.excluded_expression()
        sql = "+p.status = ?"  # "+": never drive a search by the status index (nearly every row is done)
        args: list[Any] = [DONE]
        if where:
            sql += " AND " + where
            args += params
        if check_only:  # FTS5 answers "does this photo match" by seeking to its rowid in each word's list
            probe = "EXISTS (SELECT 1 FROM photos_fts WHERE photos_fts MATCH ? AND photos_fts.rowid = p.id)"
            required_sql, excluded_sql = f" AND {probe}", f" AND NOT {probe}"
        else:  # every match listed once, probed per photo
            required_sql = " AND p.id IN (SELECT rowid FROM photos_fts WHERE photos_fts MATCH ?)"
            excluded_sql = " AND p.id NOT IN (SELECT rowid FROM photos_fts WHERE photos_fts MATCH ?)"
        if required:
            sql += required_sql
            args.append(required)
        if excluded:
            sql += excluded_sql
            args.append(excluded)
        return sql, args

    # -- keyword ---------------------------------------------------------------------------------

    def _spans(self, query: Query) -> tuple[int, int, int] | None:
        """(at most how many photos, lowest id, highest id) that the query's ``in:``, ``after:`` and
        ``before:`` filters keep, from the span tables; None when it has none of them or the index
        lacks the tables (made by an older phototag and not yet opened by a writer)."""
        spans: list[tuple[str, str, list[Any]]] = []
        if query.folders:
            ranges = " OR ".join("(folder >= ? AND folder < ?)" for _ in query.folders)
            spans.append(("folder_spans", ranges, [bound for f in query.folders for bound in _prefix_range(f)]))
        days: list[str] = []
        if query.after:
            days.append("day >= ?")
        if query.before:
            days.append("day < ?")
        if days:
            spans.append(("day_spans", " AND ".join(days), [d for d in (query.after, query.before) if d]))
        if not spans:
            return None
        found: list[tuple[int, int, int]] = []
        try:
            for table, where, params in spans:
                count, first, last = self.conn.execute(
                    f"SELECT total(photos), min(low), max(high) FROM {table} WHERE photos > 0 AND ({where})", params
                ).fetchone()
                if not count:
                    return 0, 0, 0
                found.append((int(count), first, last))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        # a photo passing every filter lies in every span: the fewest, inside the intersection
        kept, low, high = min(c for c, _, _ in found), max(f for _, f, _ in found), min(h for _, _, h in found)
        return (kept, low, high) if low <= high else (0, 0, 0)

    def _restriction(self, query: Query) -> tuple[str, list[Any], int]:
        """How an FTS query keeps only photos passing the query's filters, and its rank cap.

        The span tables bound the FTS walk to the id range the photos a filter keeps lie in (FTS5 seeks
        to it). Where they fill much of that range (a folder imported at once, a span of dates), or are
        many, each match is checked by a row lookup, stopping after a smaller cap of ranked matches;
        where they are few and scattered, they are materialised once (from the path or date index) and
        probed per match. A query with only ``-in:`` or ``-word`` filters is checked per match, newest
        first, with the smaller cap. ``+`` keeps SQLite from driving the search by the status index or
        by rowid.
        """
        where, params = self._sql_filter(query)
        if not where:
            return "", [], RANK_CAP_FILTERED if query.excluded_expression() else RANK_CAP
        check = f" AND EXISTS (SELECT 1 FROM photos p WHERE p.id = photos_fts.rowid AND {where})"
        spans = self._spans(query)
        if spans is None:
            return check, params, RANK_CAP_FILTERED
        kept, low, high = spans
        if kept == 0:
            return " AND 0", [], RANK_CAP
        bounded = f" AND rowid BETWEEN {int(low)} AND {int(high)}"
        if kept >= FEW_KEPT or 4 * kept >= high - low + 1:
            return bounded + check, params, RANK_CAP_FILTERED
        # answered from the path or date index alone; status is checked after ranking
        return bounded + f" AND +rowid IN (SELECT p.id FROM photos p WHERE {where})", params, RANK_CAP

    def _bm25(self, expression: str, restriction: tuple[str, list[Any], int], want: int) -> list[tuple[int, float]]:
        """Up to ``want`` done photos matching ``expression``, best bm25 first, among the newest matches
        (at most RANK_CAP of them: see the module docstring). One pass: FTS5 walks the matches newest
        first and scores only those inside the window."""
        restrict, args, cap = restriction
        fetch = want
        while True:
            ranked = self.conn.execute(
                "SELECT rowid, score FROM (SELECT rowid, bm25(photos_fts) AS score FROM photos_fts "
                "WHERE photos_fts MATCH ?" + restrict + " ORDER BY rowid DESC LIMIT ?) "
                "ORDER BY score, rowid DESC LIMIT ?",
                [expression, *args, max(cap, 4 * want), fetch],
            ).fetchall()
            done = self._done_ids(rowid for rowid, _ in ranked)
            hits = [(rowid, -score) for rowid, score in ranked if rowid in done]
            if len(hits) >= want or len(ranked) < fetch:
                return hits[:want]
            fetch *= 4  # pending rows (captions being written) took places: look further

    def _shortest(self, expression: str, restriction: tuple[str, list[Any], int], want: int) -> list[tuple[int, float]]:
        """Up to ``want`` done photos matching ``expression`` (which holds a phrase), shortest caption first,
        among the newest :data:`PHRASE_RANK_CAP` matches.

        bm25 would first count the phrase's matches in the whole index (its IDF: position lists of
        words like "on" and "the" at every photo), costing more than the search; every match shares that
        IDF, so bm25 ranks them by how short the caption is, which is what this does, without it."""
        restrict, args, cap = restriction
        rows = self.conn.execute(
            "SELECT p.id, length(p.caption) + length(p.keywords) AS size FROM photos p WHERE p.id IN "
            "(SELECT rowid FROM photos_fts WHERE photos_fts MATCH ?" + restrict + " ORDER BY rowid DESC LIMIT ?) "
            "AND +p.status = ? ORDER BY size, p.id DESC LIMIT ?",
            [expression, *args, max(min(cap, PHRASE_RANK_CAP), 4 * want), DONE, want],
        ).fetchall()
        return [(photo_id, 100.0 / max(size, 1)) for photo_id, size in rows]

    def _done_ids(self, ids: Iterable[int]) -> set[int]:
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM photos WHERE id IN (SELECT value FROM json_each(?)) AND +status = ?",
                (_in_list(ids), DONE),
            )
        }

    def keyword_ranking(self, query: Query, want: int) -> list[tuple[int, float]]:
        """(photo id, score) best first: photos with every word, then photos with some of them."""
        restriction = self._restriction(query)  # once for both expressions
        ranking: list[tuple[int, float]] = []
        seen: set[int] = set()
        for expression in (query.all_words(), query.any_words()):
            if expression is None or len(ranking) >= want:
                continue
            rank = self._shortest if query.phrases else self._bm25
            for photo_id, score in rank(expression, restriction, want):
                if photo_id not in seen and len(ranking) < want:
                    seen.add(photo_id)
                    ranking.append((photo_id, score))
        return ranking

    # -- semantic --------------------------------------------------------------------------------

    def semantic_ranking(
        self, query: Query, store: VectorStore, vector: np.ndarray, want: int, min_similarity: float = -1.0
    ) -> list[tuple[int, float]]:
        """(photo id, cosine) best first, among photos passing the query's filters, down to ``min_similarity``.

        Candidates come best first in growing windows from the vector index; each window is checked
        against the index in one query (the vector still current, the photo done and passing the
        filters), and the photo id is the table's. A filter that keeps few photos is applied before
        ranking instead (only their rows are scored, exactly), so the windows are not spent on photos it
        rejects; one that keeps many is checked a window at a time, never a photo at a time.
        """
        allowed = self._few_kept_ids(query)
        if allowed is not None and len(allowed) == 0:
            return []
        conditions, args = self._filter_conditions(query, check_only=True)
        ranking: list[tuple[int, float]] = []
        checked = stale = 0
        for window in store.ranked(vector, allowed=allowed, min_score=min_similarity):
            rows = self.conn.execute(
                f"SELECT e.seq, e.photo_id, {conditions} FROM photo_embeddings e "
                "CROSS JOIN photos p ON p.id = e.photo_id "  # e first: driven by the window's seqs
                "WHERE e.seq IN (SELECT value FROM json_each(?))",
                [*args, _in_list(seq for seq, _, _ in window)],
            ).fetchall()
            current = {seq: photo_id for seq, photo_id, _ in rows}
            passing = {seq for seq, _, ok in rows if ok}
            # a vector no longer in the table is stale (a missing or pending photo's vector is not:
            # rebuilding the copy would bring it back)
            checked += len(window)
            stale += len(window) - len(current)
            ranking += [(current[seq], score) for seq, _, score in window if seq in passing]
            if len(ranking) >= want:
                break
        if stale > max(checked // 4, 64):
            store.invalidate()  # so many replaced or deleted vectors met: rebuilt on the next search
        return ranking[:want]

    def _few_kept_ids(self, query: Query) -> np.ndarray | None:
        """The ids of the photos passing the query's filters, when they are few (else None): counted
        first from the path or date index, or from the FTS index for tags and phrases, which is cheap."""
        required = query.required_expression()
        where, params = self._sql_filter(query)
        few = False
        if where:
            few = (
                self.conn.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM photos p WHERE {where} LIMIT ?)",
                    [*params, FEW_KEPT_SEMANTIC],
                ).fetchone()[0]
                < FEW_KEPT_SEMANTIC
            )
        if required and not few:
            few = (
                self.conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM photos_fts WHERE photos_fts MATCH ? LIMIT ?)",
                    [required, FEW_KEPT_SEMANTIC],
                ).fetchone()[0]
                < FEW_KEPT_SEMANTIC
            )
        if not few:
            return None
        import numpy as np

        conditions, args = self._filter_conditions(query)
        return np.array(
            [r[0] for r in self.conn.execute(f"SELECT p.id FROM photos p WHERE {conditions}", args)], dtype=np.int64
        )

    # -- both ------------------------------------------------------------------------------------

    def filtered(self, query: Query, want: int) -> list[tuple[int, float]]:
        """No words to rank by, only filters: the matching photos, most recently taken first."""
        conditions, args = self._filter_conditions(query)
        sql = (
            f"SELECT p.id FROM photos p WHERE {conditions} "
            "ORDER BY p.taken_at IS NULL, p.taken_at DESC, p.id DESC LIMIT ?"
        )
        return [(r[0], 0.0) for r in self.conn.execute(sql, [*args, want])]

    def hits(self, ranking: Sequence[tuple[int, float]]) -> list[SearchHit]:
        if not ranking:
            return []
        rows = {
            r[0]: r
            for r in self.conn.execute(
                "SELECT id, path, caption, caption_source, taken_at FROM photos "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (_in_list(pid for pid, _ in ranking),),
            )
        }
        return [
            SearchHit(rows[pid][1], rows[pid][2] or "", score, rows[pid][3], rows[pid][4], pid)
            for pid, score in ranking
            if pid in rows
        ]


def vectors_cache_dir() -> Path:
    from phototag.config import data_dir

    return data_dir() / "vectors"


def has_vectors(conn: sqlite3.Connection, model: str) -> bool:
    return conn.execute("SELECT 1 FROM photo_embeddings WHERE model = ? LIMIT 1", (model,)).fetchone() is not None


def vector_models(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT model FROM photo_embeddings")]
