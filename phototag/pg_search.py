"""Search a PostgreSQL index: by keywords, by meaning, or both, with the same filters as on SQLite.

- **keyword**: ``photos.search_vector`` (a generated ``tsvector``, see :mod:`phototag.pg_schema`) matched
  through its GIN index by ``websearch_to_tsquery`` (English stemming; stop words ignored), ranked by
  ``ts_rank``. The text handed to it is rebuilt from phototag's own parse of the query
  (:mod:`phototag.query`: words of letters and digits, phrases, exclusions), so any text a person types
  is a valid query, and words mean the same as on SQLite. Photos with every word come first, then photos
  with some; as on SQLite at most :data:`~phototag.search.RANK_CAP` matches of one expression, the most
  recently indexed, are ranked.
- **semantic**: the caption vectors live in the database (``photo_embeddings.vector``, float32 bytes);
  each machine keeps the same vector index a SQLite index gets (:class:`phototag.vectors.VectorStore`:
  sign bits, int8 rows, exact re-scoring), copied from the database through :class:`PgVectors` and
  caught up by ``seq``; every candidate is checked against the database before it is shown.
- **hybrid**: reciprocal rank fusion, as on SQLite (:meth:`phototag.search.Finder.fuse`).

psycopg only, no SQLAlchemy or torch: ``phototag search`` by keywords starts fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from phototag.database import IndexLocation, IndexUnreachable
from phototag.query import Query
from phototag.schema import DONE
from phototag.search import FEW_KEPT_SEMANTIC, RANK_CAP, Ranker, SearchHit

if TYPE_CHECKING:
    import numpy as np

    from phototag.vectors import VectorStore

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


class PgFinder(Ranker["VectorStore"]):
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
        self, query: Query, store: VectorStore, vector: np.ndarray, want: int, min_similarity: float = -1.0
    ) -> list[tuple[int, float]]:
        """(photo id, cosine) best first among photos passing the query's filters, down to ``min_similarity``.
        Candidates come best first in growing windows from the vector index, each checked against the
        database in one query (the vector still current, the photo done and passing the filters)."""
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
                import numpy as np

                allowed = np.asarray(kept, dtype=np.int64)
        ranking: list[tuple[int, float]] = []
        checked = stale = 0
        for window in store.ranked(vector, allowed=allowed, min_score=min_similarity):
            rows = self.conn.execute(
                f"SELECT e.seq, ({where}) FROM photo_embeddings e JOIN photos p ON p.id = e.photo_id "
                "WHERE e.seq = ANY(%s)",
                [*params, [seq for seq, _, _ in window]],
            ).fetchall()
            passing = {seq for seq, ok in rows if ok}
            checked += len(window)
            stale += len(window) - len(rows)  # replaced or deleted since the copy was made
            ranking += [(photo_id, score) for seq, photo_id, score in window if seq in passing]
            if len(ranking) >= want:
                break
        if stale > max(checked // 4, 64):
            store.invalidate()  # so many stale vectors met: rebuilt on the next search
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


# -- the vectors, for this machine's vector index ---------------------------------------------------


class PgVectors:
    """:class:`phototag.vectors.VectorSource` over a PostgreSQL index's ``photo_embeddings``: what
    :class:`~phototag.vectors.VectorStore` copies into this machine's vector index."""

    def __init__(self, conn: Any, location: IndexLocation, model: str) -> None:
        self.conn, self.model = conn, model
        self.origin = str(location.path)  # the local name of the server index's side files

    def identity(self) -> str:
        """The database's oid: a database dropped and made again under the same name is another index."""
        return str(self.conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0])

    def max_seq(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(seq), 0) FROM photo_embeddings").fetchone()[0])

    def count(self) -> int:
        return int(
            self.conn.execute("SELECT count(*) FROM photo_embeddings WHERE model = %s", [self.model]).fetchone()[0]
        )

    def rows(self, after: int, up_to: int) -> Iterator[list[tuple[int, int, bytes]]]:
        while True:  # a page at a time: a million vectors never sit in memory at once
            batch = self.conn.execute(
                "SELECT seq, photo_id, vector FROM photo_embeddings WHERE seq > %s AND seq <= %s AND model = %s "
                "ORDER BY seq LIMIT %s",
                [after, up_to, self.model, PAGE],
            ).fetchall()
            if not batch:
                return
            after = batch[-1][0]
            yield [(seq, photo_id, bytes(vector)) for seq, photo_id, vector in batch]

    def lookup(self, seqs: list[int]) -> dict[int, tuple[int, bytes]]:
        return {
            seq: (photo_id, bytes(vector))
            for seq, photo_id, vector in self.conn.execute(
                "SELECT seq, photo_id, vector FROM photo_embeddings WHERE seq = ANY(%s) AND model = %s",
                [[int(s) for s in seqs], self.model],
            )
        }


def vector_store(conn: Any, location: IndexLocation, model: str) -> VectorStore:
    """This machine's vector index of a server index's vectors of ``model`` (call ``sync`` first)."""
    from phototag.search import vectors_cache_dir
    from phototag.vectors import VectorStore

    return VectorStore(PgVectors(conn, location, model), vectors_cache_dir())
