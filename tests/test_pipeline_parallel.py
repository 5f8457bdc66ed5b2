"""The pipeline's stages scale with the cores: decode and write threads sized from them, metadata
writes side by side on a pool of exiftool processes (one photo never twice at once), the plan's
read serving the write, and the index writer sharing transactions between photos.

Real photos, the tiny BLIP, a real exiftool and a real SQLite index."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import phototag.config
from phototag.config import PipelineSettings, Settings
from phototag.index import DONE, SOURCE_HUMAN, PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.pipeline import Pipeline
from phototag.planning import CAPTIONED, FAILED_OUTCOME, Outcome, Planner
from tests.conftest import CORPUS, copy_from_corpus
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


def _run(
    settings: Settings,
    photos: list[Path],
    *,
    submit_twice: bool = False,
    waiting: bool = False,
    then: Callable[[], object] | None = None,
) -> list[Outcome]:
    """A real pipeline over ``photos``: its outcomes. ``waiting``: every photo is submitted before the
    workers start, so they find them all waiting; ``then`` runs once every photo is submitted."""
    outcomes: list[Outcome] = []
    index = PhotoIndex(settings.db_path())
    with ExifToolSession(processes=settings.pipeline.effective_exiftool_processes) as exiftool:
        pipeline = Pipeline(settings, index, exiftool, on_outcome=outcomes.append)
        if not waiting:
            pipeline.start()
        for photo in photos:
            assert pipeline.submit(photo)
            if submit_twice:  # a watcher's second event for a photo in flight
                assert pipeline.submit(photo)
        if then is not None:
            then()
        assert pipeline.start().close(600)
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


def _plan_reads(spy: WriteSpy, photos: list[Path]) -> list[list[str]]:
    """The plan-time reads among the spied exiftool calls: the owned tags, not the verify's everything."""
    names = {str(photo) for photo in photos}
    return [call for call in spy.calls if "-XMP-dc:all" in call and "-struct" not in call and names & set(call)]


def test_waiting_photos_are_planned_from_one_exiftool_read(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Photos already waiting when a decode worker takes one are read in one exiftool call (up to
    READ_AHEAD), each still exactly once, and captioned as before."""
    photos = copy_from_corpus(PHOTOS[:8], tmp_path / "lib")
    spy = WriteSpy(monkeypatch, overlap=1)
    outcomes = _run(_parallel(settings), photos, waiting=True)
    assert {o.path for o in outcomes if o.kind == CAPTIONED} == set(photos)
    reads = _plan_reads(spy, photos)
    per_photo = Counter(name for call in reads for name in call if name in {str(p) for p in photos})
    assert per_photo == Counter({str(photo): 1 for photo in photos})
    assert len(reads) < len(photos)
    assert max(sum(1 for name in call if name in per_photo) for call in reads) >= 2


def _describe(photo: Path, text: str) -> None:
    for field in ("-EXIF:ImageDescription", "-XMP-dc:Description"):
        subprocess.run(["exiftool", "-q", "-overwrite_original", f"{field}={text}", str(photo)], check=True)


def test_read_ahead_reads_only_what_the_plan_needs_and_the_plan_reads_again_what_changed(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = copy_from_corpus(PHOTOS[:4], tmp_path / "lib")
    _run(settings, photos)
    index = PhotoIndex(settings.db_path())
    with ExifToolSession() as exiftool:
        planner = Planner(settings, index, exiftool)
        spy = WriteSpy(monkeypatch, overlap=1)
        assert planner.read_ahead(photos) == {} and spy.calls == []  # all done and unchanged: nothing to read
        changed = photos[:2]
        for photo in changed:  # a person describes two of them (in place, as another program would)
            _describe(photo, "a person's words")
        reads = planner.read_ahead(photos)
        assert set(reads) == set(changed) and len(spy.calls) == 1
        _describe(changed[0], "newer words")  # changed again after the read-ahead
        first = planner.plan(changed[0], reads[changed[0]]).task
        second = planner.plan(changed[1], reads[changed[1]]).task
        assert first is not None and second is not None
        assert (first.caption, first.source) == ("newer words", SOURCE_HUMAN)
        assert (second.caption, second.source) == ("a person's words", SOURCE_HUMAN)
        # the plan sees the newest words, not the early read: only the photo changed since was read again
        assert len(spy.calls) == 2
    index.close()


def test_an_early_read_of_another_photos_sidecar_is_not_used(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With "base" sidecar naming, IMG_1.xmp belongs to IMG_1.jpg only until a RAW of that name lands:
    a read made before then (the JPEG with that sidecar's words) must not plan the JPEG after."""
    settings = replace(settings, metadata=replace(settings.metadata, sidecar_naming="base"))
    lib = tmp_path / "lib"
    photo, other = copy_from_corpus(PHOTOS[:2], lib)
    photo = photo.rename(lib / "IMG_1.jpg")
    (lib / "IMG_1.xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt>'
        '<rdf:li xml:lang="x-default">words for the raw file</rdf:li></rdf:Alt></dc:description>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    index = PhotoIndex(settings.db_path())
    with ExifToolSession(sidecar_naming="base") as exiftool:
        planner = Planner(settings, index, exiftool)
        reads = planner.read_ahead([photo, other])
        assert reads[photo].existing.description == "words for the raw file"  # IMG_1.xmp is the JPEG's, for now
        shutil.copyfile(CORPUS / "raw/Nikon.nef", lib / "IMG_1.nef")  # now the RAW owns IMG_1.xmp
        task = planner.plan(photo, reads[photo]).task
        assert task is not None and task.source != SOURCE_HUMAN and task.existing.description is None
    index.close()


def test_waiting_photos_are_shared_between_the_decode_workers(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker reads ahead only its share of what waits: eight photos and four workers are decoded on
    more than one thread, never eight in a row on the first one that woke."""
    import phototag.pipeline as pipeline_module

    photos = copy_from_corpus(PHOTOS[:8], tmp_path / "lib")
    decoded_by: dict[str, str] = {}
    real = pipeline_module.load_rgb

    def load_rgb(path: Path, **kwargs: Any) -> Any:
        decoded_by[Path(path).name] = threading.current_thread().name
        return real(path, **kwargs)

    monkeypatch.setattr(pipeline_module, "load_rgb", load_rgb)
    settings = replace(settings, pipeline=PipelineSettings(decode_workers=4, exiftool_processes=2))
    outcomes = _run(settings, photos, waiting=True)
    assert {o.path for o in outcomes if o.kind == CAPTIONED} == set(photos)
    assert decoded_by.keys() == {p.name for p in photos}
    assert max(Counter(decoded_by.values()).values()) <= 4, decoded_by
    assert len(set(decoded_by.values())) >= 2, decoded_by


def test_a_chunk_read_ahead_with_a_broken_and_a_vanished_photo_fails_only_those(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One chunk: good photos, a truncated JPEG (its metadata reads, its decode fails), a text file named
    .jpg and a photo deleted after it was queued. Each fails or is dropped alone; the rest are captioned."""
    lib = tmp_path / "lib"
    photos = copy_from_corpus(PHOTOS[:4], lib)
    cut = lib / "cut.jpg"
    data = photos[0].read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    (text := lib / "notes.jpg").write_text("not a photo")
    gone = copy_from_corpus(PHOTOS[4:5], lib)[0]
    waiting = [*photos[:2], cut, text, gone, *photos[2:]]  # all waiting: one or two chunks
    outcomes = _run(_parallel(settings, 1), waiting, waiting=True, then=gone.unlink)
    kinds = {o.path.name: o.kind for o in outcomes}
    assert kinds == {**{p.name: CAPTIONED for p in photos}, "cut.jpg": FAILED_OUTCOME, "notes.jpg": FAILED_OUTCOME}


def test_a_read_ahead_out_of_step_with_its_files_is_not_used(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records that do not name the files asked for, in order, are thrown away: each photo reads alone."""
    photos = copy_from_corpus(PHOTOS[:3], tmp_path / "lib")
    with ExifToolSession() as exiftool:
        real = exiftool.exiftool.read_json
        monkeypatch.setattr(exiftool.exiftool, "read_json", lambda paths, *a, **k: real(paths, *a, **k)[::-1])
        assert exiftool.snapshots(photos) == {}
        monkeypatch.undo()
        assert set(exiftool.snapshots(photos)) == set(photos)
