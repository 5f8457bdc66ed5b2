"""Caption embeddings: a sentence-transformers model turns captions (and queries) into unit vectors.

The only module importing sentence-transformers (and through it torch), lazily, so keyword search
never pays for it. The model is a hub id or a local folder (``[search] embedding_model`` or
``$PHOTOTAG_EMBEDDING_MODEL``); its name is stored with every vector so a model change is noticed.

- :class:`Embedder` loads a model and encodes texts (batched, float32, unit length).
- :class:`EmbedWorker` is the pipeline's helper thread: it embeds captions right after they are
  indexed, in batches, so the captioning model never waits for it.
- :func:`embed_missing` fills in vectors for an existing index (``phototag reindex --embeddings``).

A search query is embedded by :mod:`phototag.query_encoder` (a running daemon, else torch-free, else
the model loaded here).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from phototag.loading import heavy_loading
from phototag.schema import DONE

if TYPE_CHECKING:
    import numpy as np

    from phototag.index import PhotoIndex

log = logging.getLogger(__name__)

BATCH_SIZE = 64
QUEUE_BATCHES = 1024  # writer batches waiting for the embedding thread (the model may still be loading)


class EmbeddingError(Exception):
    """The embedding model cannot be loaded or run; the message is one line a person can act on."""


def model_id(name: str) -> str:
    """The name vectors are stored under: a local folder as an absolute path, a hub id as given."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    return name


class Embedder:
    """One loaded sentence-embedding model."""

    def __init__(self, name: str, device: str | None = None) -> None:
        self.name = model_id(name)
        from phototag.hub import looks_local, missing_model_reason, quiet_hub_logging

        if looks_local(name) and not os.path.isdir(self.name):
            raise EmbeddingError(f"embedding model folder {self.name} does not exist")
        # not cached and no hub: say so now, instead of a minute of download retries
        reason = missing_model_reason(name)
        if reason is not None:
            raise EmbeddingError(f"cannot load embedding model {self.name!r}: {reason}")
        with heavy_loading():  # the captioner may be importing transformers right now, on another thread
            quiet_hub_logging()
            self.model = self._load(device)
        # renamed in sentence-transformers 5.x; the old name warns
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim()
        self.dim = int(dim) if dim else len(self.encode(["x"])[0])

    def _load(self, device: str | None) -> Any:
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise EmbeddingError(
                f"sentence-transformers is not installed ({exc}): pip install sentence-transformers"
            ) from exc
        hf_logging.disable_progress_bar()
        try:
            return SentenceTransformer(self.name, device=device)
        except Exception as exc:  # hub unreachable, not a sentence-transformers folder, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EmbeddingError(f"cannot load embedding model {self.name!r}: {first}") from exc

    def encode(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        import numpy as np

        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


_loaded: dict[str, Embedder] = {}
_load_lock = threading.Lock()


def load_embedder(name: str) -> Embedder:
    """The model named ``name``, loaded once per process (the daemon and tests reuse it)."""
    key = model_id(name)
    with _load_lock:
        if key not in _loaded:
            _loaded[key] = Embedder(name)
        return _loaded[key]


# -- storage --------------------------------------------------------------------------------------


def _sql(statement: str) -> Any:
    from sqlalchemy import text  # not at import time: a query embedded by the daemon needs no SQLAlchemy

    return text(statement)


def store_vectors(index: PhotoIndex, model: str, items: Sequence[tuple[int, str]], vectors: np.ndarray) -> int:
    """Save one vector per (photo id, caption); skipped where the caption changed meanwhile. Returns saved."""
    with index.engine.begin() as conn:
        return save_vectors(conn, model, items, vectors)


# Save a vector, replacing the photo's old one; a replaced vector gets a new (higher) seq, as on SQLite.
_UPSERT = {
    "sqlite": "INSERT OR REPLACE INTO photo_embeddings (photo_id, model, vector) "
    "SELECT id, :model, :vector FROM photos WHERE id = :id AND caption = :caption",
    "postgresql": "INSERT INTO photo_embeddings (photo_id, model, vector) "
    "SELECT id, :model, :vector FROM photos WHERE id = :id AND caption = :caption "
    "ON CONFLICT (photo_id) DO UPDATE SET model = EXCLUDED.model, vector = EXCLUDED.vector, "
    "seq = nextval(pg_get_serial_sequence('photo_embeddings', 'seq'))",
}


def _dialect(conn: Any) -> str:
    """``sqlite`` or ``postgresql``, for a connection or a session."""
    bind = conn.get_bind() if hasattr(conn, "get_bind") else conn
    return str(bind.dialect.name)


def save_vectors(conn: Any, model: str, items: Sequence[tuple[int, str]], vectors: np.ndarray) -> int:
    """:func:`store_vectors` inside the caller's transaction (a connection or a session)."""
    from phototag.vectors import vector_bytes

    saved = 0
    statement = _sql(_UPSERT[_dialect(conn)])
    for (photo_id, caption), vector in zip(items, vectors, strict=True):
        result = conn.execute(
            statement,
            {"model": model, "vector": vector_bytes(vector), "id": photo_id, "caption": caption},
        )
        saved += result.rowcount or 0
    return saved


def without_vectors(index: PhotoIndex, model: str, ids: Sequence[int]) -> set[int]:
    """Those of ``ids`` that have no vector from ``model``."""
    import json

    with index.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            rows = conn.execute(
                _sql("SELECT photo_id FROM photo_embeddings WHERE model = :model AND photo_id = ANY(:ids)"),
                {"model": model, "ids": [int(i) for i in ids]},
            )
            return set(ids) - {row[0] for row in rows}
        have = {
            row[0]
            for row in conn.execute(
                _sql(
                    "SELECT photo_id FROM photo_embeddings WHERE model = :model "
                    "AND photo_id IN (SELECT value FROM json_each(:ids))"
                ),
                {"model": model, "ids": json.dumps(list(ids))},
            )
        }
    return set(ids) - have


def missing_count(index: PhotoIndex, model: str) -> int:
    with index.engine.connect() as conn:
        statement = _sql(_MISSING.format(select="count(*)", after="", limit=""))
        return conn.execute(statement, {"model": model, "status": DONE}).scalar_one()


_MISSING = (
    "SELECT {select} FROM photos p LEFT JOIN photo_embeddings e ON e.photo_id = p.id AND e.model = :model "
    "WHERE p.status = :status AND p.caption IS NOT NULL AND p.caption != '' AND e.photo_id IS NULL {after} {limit}"
)


def _missing_batches(index: PhotoIndex, model: str, size: int) -> Iterator[list[tuple[int, str]]]:
    last = 0
    while True:
        with index.engine.connect() as conn:
            rows = conn.execute(
                _sql(
                    _MISSING.format(select="p.id, p.caption", after="AND p.id > :last", limit="ORDER BY p.id LIMIT :n")
                ),
                {"model": model, "status": DONE, "last": last, "n": size},
            ).all()
        if not rows:
            return
        yield [(row[0], row[1]) for row in rows]
        last = rows[-1][0]


def embed_missing(
    index: PhotoIndex,
    embedder: Embedder,
    *,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Embed every done caption without a vector from ``embedder``'s model. Returns how many were saved."""
    saved = 0
    for batch in _missing_batches(index, embedder.name, batch_size):
        if should_stop is not None and should_stop():
            break
        vectors = embedder.encode([caption for _, caption in batch])
        saved += store_vectors(index, embedder.name, batch, vectors)
        if on_batch is not None:
            on_batch(len(batch))
    return saved


# -- the pipeline's helper thread -------------------------------------------------------------------

Store = Callable[[str, Sequence[tuple[int, str]], "np.ndarray"], None]


class EmbedWorker:
    """Embeds freshly indexed captions on its own thread. A model that will not load turns it off
    for the run with one warning: captions are still indexed, and ``reindex --embeddings`` adds the
    vectors later.

    :meth:`close` lets it finish what is queued; :meth:`stop` ends it after the batch in hand (Ctrl-C
    does not wait for a backlog: captions left without a vector are filled in by ``phototag reindex
    --embeddings``). ``store`` saves a batch of vectors (default: straight into the index; the
    pipeline hands them to its one index-writing thread)."""

    def __init__(
        self,
        index: PhotoIndex,
        model_name: str,
        *,
        loader: Callable[[str], Embedder] = load_embedder,
        batch_size: int = BATCH_SIZE,
        on_index_error: Callable[[BaseException], None] | None = None,
        store: Store | None = None,
    ) -> None:
        self.index = index
        self._on_index_error = on_index_error
        self.model_name = model_name
        self._loader = loader
        self._batch_size = batch_size
        self._store = store
        self._queue: queue.Queue[list[tuple[int, str]]] = queue.Queue(maxsize=QUEUE_BATCHES)
        self._closing = threading.Event()  # no more input: finish the queue
        self._stopping = threading.Event()  # stop now: drop the queue
        self.dropped = 0
        self._embedder: Embedder | None = None
        self.disabled_reason: str | None = None
        self.saved = 0  # vectors saved (with ``store``: handed to it)
        self.thread = threading.Thread(target=self.run, name="phototag-embed", daemon=True)

    def start(self) -> EmbedWorker:
        self.thread.start()
        return self

    def submit(self, items: Sequence[tuple[int, str]]) -> None:
        """Queue (photo id, caption) pairs. Never blocks the caller (the pipeline's writer): if the
        model is still loading and the queue is full, the captions are left for ``reindex``."""
        if not items or self.disabled_reason is not None or self._stopping.is_set():
            return
        try:
            self._queue.put_nowait(list(items))
        except queue.Full:
            if not self.dropped:
                log.warning(
                    "embeddings are falling behind captioning; some captions of this run are left without "
                    "one: run 'phototag reindex --embeddings' afterwards"
                )
            self.dropped += len(items)

    def close(self) -> None:
        """No more input: embed what is queued, then end the thread. Never blocks."""
        self._closing.set()

    def stop(self) -> None:
        """End after the batch in hand; what is queued is left for ``reindex --embeddings``."""
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                batch = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            while len(batch) < self._batch_size:
                try:
                    batch.extend(self._queue.get_nowait())
                except queue.Empty:
                    break
            if self.disabled_reason is None and not self._stopping.is_set():
                self._embed(batch)

    def _embed(self, batch: list[tuple[int, str]]) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            if self._embedder is None:
                self._embedder = self._loader(self.model_name)
            latest = dict(batch)  # a photo queued twice: its last caption
            todo_ids = without_vectors(self.index, self._embedder.name, list(latest))
            todo = [(photo_id, caption) for photo_id, caption in latest.items() if photo_id in todo_ids and caption]
            if todo:
                vectors = self._embedder.encode([caption for _, caption in todo])
                if self._store is not None:
                    self._store(self._embedder.name, todo, vectors)
                    self.saved += len(todo)
                else:
                    self.saved += store_vectors(self.index, self._embedder.name, todo, vectors)
        except SQLAlchemyError as exc:
            if self._on_index_error is None:
                log.warning("embedding %d captions failed: %s", len(batch), str(getattr(exc, "orig", exc)))
                return
            # the index is broken or busy: the run stops with one line saying so (not one per batch)
            self.disabled_reason = "index error"
            self._on_index_error(exc)
        except EmbeddingError as exc:
            self.disabled_reason = str(exc)
            log.warning(
                "captions are indexed without embeddings (search by meaning needs them): %s; "
                "run 'phototag reindex --embeddings' once the model is available",
                exc,
            )
        except Exception as exc:  # one failed batch must not stop captioning
            log.warning("embedding %d captions failed: %s", len(batch), exc)
