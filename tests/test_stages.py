"""The pipeline's shape: planning writes nothing, one thread writes the index, a dry run swaps the
side-effect stages, and every thread ends on close or stop (the embedding backlog included)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import event, func, select

from phototag.config import PipelineSettings, Settings
from phototag.embeddings import QUEUE_BATCHES, EmbedWorker
from phototag.index import DONE, PENDING, Photo, PhotoEmbedding, PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.pipeline import Pipeline
from phototag.planning import CAPTIONED, MOVED, WOULD_WRITE, Outcome, Planner
from phototag.stages import apply_decision
from tests.conftest import copy_from_corpus, wait_until

PHOTOS = ["jpg/gps/DSCN0010.jpg", "jpg/Canon_40D.jpg", "jpg/IPTC.jpg"]
# about 250,000 captions waiting: minutes of work for the embedding model, a second's worth per batch
BACKLOG = [
    [(1_000_000 + b * 256 + i, f"caption number {b} {i}") for i in range(256)] for b in range(QUEUE_BATCHES - 24)
]


def _index_writers(index: PhotoIndex) -> set[str]:
    """The names of the threads that write to ``index`` from now on (filled in as they do)."""
    writers: set[str] = set()

    @event.listens_for(index.engine, "before_cursor_execute")
    def spy(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().split()[0].upper() in {"INSERT", "UPDATE", "DELETE", "REPLACE"}:
            writers.add(threading.current_thread().name)

    return writers


def _run(settings: Settings, index: PhotoIndex, photos: list[Path], **options: Any) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with ExifToolSession() as exiftool:
        pipeline = Pipeline(settings, index, exiftool, on_outcome=outcomes.append, **options).start()
        for photo in photos:
            assert pipeline.submit(photo)
        assert pipeline.close(600)
    assert pipeline.error is None
    return outcomes


def test_planning_decides_and_writes_nothing(settings: Settings, tmp_path: Path) -> None:
    (photo,) = copy_from_corpus(PHOTOS[:1], tmp_path / "lib")
    index = PhotoIndex(settings.db_path())
    writers = _index_writers(index)
    with ExifToolSession() as exiftool:
        decision = Planner(settings, index, exiftool).plan(photo)
    assert decision.task is not None and decision.task.needs_model and decision.pending
    assert decision.outcome is None and index.get(photo) is None and writers == set()
    with index.transaction() as session:  # the record stage's work
        apply_decision(session, decision)
    row = index.get(photo)
    assert row is not None and row.status == PENDING and row.content_hash == decision.task.digest
    index.close()


def test_one_thread_writes_the_index(settings: Settings, tmp_path: Path) -> None:
    """Plans (a new row, a move), captions, a person's description and the embeddings all reach the
    index through the one index thread."""
    photos = copy_from_corpus(PHOTOS, tmp_path / "lib")
    index = PhotoIndex(settings.db_path())
    writers = _index_writers(index)
    outcomes = _run(settings, index, photos)
    assert len(outcomes) == len(photos) and {o.kind for o in outcomes} <= {CAPTIONED, "human"}
    with index.session() as session:
        assert session.scalar(select(func.count()).where(Photo.status == DONE)) == len(photos)
        # close() lets the embedding thread finish: every caption has its vector
        assert session.scalar(select(func.count()).select_from(PhotoEmbedding)) == len(photos)
    moved = photos[0].rename(tmp_path / "lib" / "moved.jpg")
    assert [o.kind for o in _run(settings, index, [moved])] == [MOVED]
    assert index.get(moved) is not None
    assert writers == {"phototag-index"}
    index.close()


def test_a_dry_run_swaps_the_side_effect_stages(settings: Settings, tmp_path: Path) -> None:
    photos = copy_from_corpus(PHOTOS[:2], tmp_path / "lib")
    index = PhotoIndex(settings.db_path())
    writers = _index_writers(index)
    with ExifToolSession() as exiftool:
        names = Pipeline(settings, index, exiftool, dry_run=True).thread_names
    assert "phototag-index" not in names and "phototag-embed" not in names
    outcomes = _run(settings, index, photos, dry_run=True)
    assert sorted(o.kind for o in outcomes) == [WOULD_WRITE] * len(photos)
    assert writers == set() and index.counts()[PENDING] == 0 and index.get(photos[0]) is None
    index.close()


def test_close_posts_exactly_the_stop_markers_needed(settings: Settings, tmp_path: Path) -> None:
    """One marker per decode worker; the embedding thread ends by the chain, not by a marker of its own."""
    settings = replace(settings, pipeline=PipelineSettings(decode_workers=3))
    (photo,) = copy_from_corpus(PHOTOS[:1], tmp_path / "lib")
    index = PhotoIndex(settings.db_path())
    with ExifToolSession() as exiftool:
        pipeline = Pipeline(settings, index, exiftool).start()
        assert "phototag-embed" in pipeline.thread_names
        assert pipeline.submit(photo)
        assert pipeline.close(600)
        assert pipeline._inbox.qsize() == 0  # no marker left over for a thread that never reads the inbox
    index.close()


def test_stop_does_not_wait_for_the_embedding_backlog(settings: Settings, tmp_path: Path) -> None:
    """Ctrl-C stops the embedding thread after the batch in hand; the rest is left for
    ``reindex --embeddings``."""
    index = PhotoIndex(settings.db_path())
    with ExifToolSession() as exiftool:
        pipeline = Pipeline(settings, index, exiftool).start()
        worker = pipeline.embeddings
        assert worker is not None
        for batch in BACKLOG:
            worker.submit(batch)
        wait_until(lambda: worker._embedder is not None, timeout=300, what="the embedding model")
        pipeline.stop()
        started = time.monotonic()
        assert pipeline.join(60), "a thread is still running"
        took = time.monotonic() - started
    assert took < 30 and worker.saved < sum(len(batch) for batch in BACKLOG) / 2
    index.close()


def test_embed_worker_stop_leaves_its_backlog(minilm: Path, tmp_path: Path) -> None:
    index = PhotoIndex(tmp_path / "index.sqlite3")
    stored: list[int] = []

    def store(model: str, items: Any, vectors: np.ndarray) -> None:
        assert model == str(minilm) and len(vectors) == len(items)
        stored.append(len(items))

    worker = EmbedWorker(index, str(minilm), store=store)
    for batch in BACKLOG:
        worker.submit(batch)
    worker.start()
    wait_until(lambda: stored, timeout=300, what="the first embedded batch")
    worker.stop()
    worker.thread.join(30)
    assert not worker.thread.is_alive() and sum(stored) < sum(len(batch) for batch in BACKLOG) / 2
    assert worker.saved == sum(stored)
    left = worker._queue.qsize()
    worker.submit(BACKLOG[0])  # a stopped worker takes nothing more
    assert worker._queue.qsize() == left > 0
    index.close()
