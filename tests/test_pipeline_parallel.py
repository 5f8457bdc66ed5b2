"""The pipeline's stages scale with the cores: decode and write threads sized from them, metadata
writes side by side on a pool of exiftool processes (one photo never twice at once), the plan's
read serving the write, and the index writer sharing transactions between photos.

Real photos, the tiny BLIP, a real exiftool and a real SQLite index."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections import Counter
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import phototag.config
from phototag.config import PipelineSettings, Settings
from phototag.index import DONE, PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.pipeline import Pipeline
from phototag.planning import CAPTIONED, Outcome
from tests.conftest import copy_from_corpus
from tests.metadata_checks import WriteSpy

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

# Real camera JPEGs without a description of their own: each one is captioned and written.
PHOTOS = [
    "jpg/Canon_40D.jpg",
    "jpg/Canon_DIGITAL_IXUS_400.jpg",
    "jpg/Canon_PowerShot_S40.jpg",
    "jpg/Fujifilm_FinePix6900ZOOM.jpg",
    "jpg/Fujifilm_FinePix_E500.jpg",
    "jpg/Kodak_CX7530.jpg",
    "jpg/Konica_Minolta_DiMAGE_Z3.jpg",
    "jpg/Nikon_COOLPIX_P1.jpg",
    "jpg/Nikon_D70.jpg",
    "jpg/Olympus_C8080WZ.jpg",
    "jpg/Panasonic_DMC-FZ30.jpg",
    "jpg/Pentax_K10D.jpg",
]


def _parallel(settings: Settings, processes: int = 2) -> Settings:
    return replace(settings, pipeline=PipelineSettings(decode_workers=2, exiftool_processes=processes))


def _run(settings: Settings, photos: list[Path], *, submit_twice: bool = False) -> list[Outcome]:
    outcomes: list[Outcome] = []
    index = PhotoIndex(settings.db_path())
    with ExifToolSession(processes=settings.pipeline.effective_exiftool_processes) as exiftool:
        pipeline = Pipeline(settings, index, exiftool, on_outcome=outcomes.append).start()
        for photo in photos:
            assert pipeline.submit(photo)
            if submit_twice:  # a watcher's second event for a photo in flight
                assert pipeline.submit(photo)
        assert pipeline.close(600)
    assert pipeline.error is None
    index.close()
    return outcomes


def test_stages_are_sized_from_the_cores(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phototag.config, "usable_cores", lambda: 5)
    auto = PipelineSettings()
    assert (auto.effective_decode_workers, auto.effective_exiftool_processes) == (5, 5)
    monkeypatch.setattr(phototag.config, "usable_cores", lambda: 1)
    assert (auto.effective_decode_workers, auto.effective_exiftool_processes) == (2, 2)  # one waits, one works
    fixed = PipelineSettings(decode_workers=3, exiftool_processes=4)
    assert (fixed.effective_decode_workers, fixed.effective_exiftool_processes) == (3, 4)
    monkeypatch.setattr(phototag.config, "usable_cores", lambda: 6)
    index = PhotoIndex(settings.db_path())
    with ExifToolSession(processes=settings.pipeline.effective_exiftool_processes) as exiftool:
        names = Pipeline(settings, index, exiftool).thread_names
        assert len(exiftool.pool.processes) == 1  # the others start when there is work for them
    index.close()
    kinds = Counter(name.rsplit("-", 1)[0] for name in names)
    assert kinds["phototag-decode"] == 6 and kinds["phototag-write"] == 6 and "phototag-caption" in names


def test_writes_overlap_on_several_processes_and_one_photo_is_written_once(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch as big as the library (a GPU's 32, here 12) is written by several threads, not one."""
    photos = copy_from_corpus(PHOTOS, tmp_path / "lib")
    spy = WriteSpy(monkeypatch)
    settings = replace(settings, model=replace(settings.model, batch_size=len(photos)))
    outcomes = _run(_parallel(settings), photos, submit_twice=True)
    assert sorted(o.path for o in outcomes if o.kind == CAPTIONED) == sorted(photos)
    assert spy.max_active == 2 and not spy.same_file_at_once
    writes = Counter(spy._target(call) for call in spy.calls if spy._target(call))
    assert writes == Counter({str(photo): 1 for photo in photos})


def test_each_captioned_photo_costs_three_exiftool_calls(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan's read, the edit of the temp copy, the verify read: no second read at write time."""
    photos = copy_from_corpus(PHOTOS[:6], tmp_path / "lib")
    spy = WriteSpy(monkeypatch, overlap=1)
    outcomes = _run(_parallel(settings), photos)
    assert {o.path for o in outcomes if o.kind == CAPTIONED} == set(photos)
    for photo in photos:
        calls = spy.calls_naming(photo)
        assert len(calls) == 3, [call[:6] for call in calls]
        assert "-o" in calls[1] and "-struct" in calls[2]


def test_the_index_writer_shares_transactions_between_photos(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each photo's plan is recorded (a new row, pending) by a job nobody waits for: it waits a
    moment for the others, so a run's new rows come in a few transactions, not one each."""
    monkeypatch.setattr("phototag.stages.WRITER_LINGER_S", 2.0, raising=False)  # room on a loaded machine
    photos = copy_from_corpus(PHOTOS, tmp_path / "lib")
    settings = _parallel(settings)
    index = PhotoIndex(settings.db_path())
    inserting: dict[int, int] = {}  # per connection: rows inserted in the open transaction
    transactions: list[int] = []  # rows inserted by each committed transaction that inserted any
    lock = threading.Lock()

    @event.listens_for(index.engine, "before_cursor_execute")
    def on_execute(conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO PHOTOS"):
            rows = len(parameters) if isinstance(parameters, list) else 1
            with lock:
                inserting[id(conn)] = inserting.get(id(conn), 0) + rows

    @event.listens_for(index.engine, "commit")
    def on_commit(conn: Any) -> None:
        with lock:
            rows = inserting.pop(id(conn), 0)
            if rows:
                transactions.append(rows)

    outcomes: list[Outcome] = []
    with ExifToolSession(processes=2) as exiftool:
        pipeline = Pipeline(settings, index, exiftool, on_outcome=outcomes.append).start()
        for photo in photos:
            assert pipeline.submit(photo)
        assert pipeline.close(600)
    assert pipeline.error is None
    assert sum(transactions) == len(photos)
    assert len(transactions) <= len(photos) // 4, transactions
    index.close()
    with closing(sqlite3.connect(settings.db_path())) as db:
        assert db.execute("SELECT count(*) FROM photos WHERE status = ?", (DONE,)).fetchone() == (len(photos),)
