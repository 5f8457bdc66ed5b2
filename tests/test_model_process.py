"""The model in a child process (``[model] process``, phototag.model_process): the same captions as the
model in phototag's own process, a child that dies is replaced, one that cannot load says why in one
line, and none outlives phototag."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from phototag.caption_backend import CaptionFailure
from phototag.captioner import Captioner, ModelLoadError
from phototag.config import ConfigError, Settings, settings_from_dict
from phototag.imaging import load_rgb
from phototag.model_process import ModelProcessError, ProcessCaptioner, local_captioner, uses_process
from tests.conftest import UPRIGHT_PHOTOS, copy_from_corpus, dry_run, plain_model_settings, wait_until


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def children_of(pid: int, marker: str) -> list[int]:
    """Processes whose parent is ``pid`` and whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if parent == pid and marker in command:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("draft", [False, True], ids=["exact input", "fast input"])
def test_the_child_captions_what_the_model_here_does(tiny_model: Path, corpus: Path, draft: bool) -> None:
    model = plain_model_settings(tiny_model, draft_decode=draft)
    here = Captioner(model)
    child = ProcessCaptioner(replace(model, process=True))
    try:
        assert child.pid is not None and child.pid != os.getpid() and alive(child.pid)
        assert (child.batch_size, child.input_size, child.draft_decode) == (here.batch_size, here.input_size, draft)
        images = [load_rgb(corpus / name, min_side=here.input_size, draft=draft) for name in UPRIGHT_PHOTOS]
        expected = here.caption([here.preprocess(image) for image in images])
        got = child.caption([child.preprocess(image) for image in images])
        # the child gets uint8 pixels (resized here for the exact input, as the processor resizes)
        # and normalizes them as the processor does: a level apart could flip a token of a random model
        same = sum(a == b for a, b in zip(got, expected, strict=True))
        assert same >= len(images) - 1, (got, expected)
        assert len(set(got)) >= 3
    finally:
        pid = child.pid
        child.close()
    assert pid is not None and not alive(pid)


def test_a_child_that_dies_is_replaced_and_a_second_loss_fails_the_batch(tiny_model: Path, corpus: Path) -> None:
    folder = tiny_model.parent / "tiny-copy"
    shutil.copytree(tiny_model, folder)
    child = ProcessCaptioner(replace(plain_model_settings(folder), process=True))
    try:
        pixels = [child.preprocess(load_rgb(corpus / name, min_side=child.input_size)) for name in UPRIGHT_PHOTOS[:3]]
        first = child.caption(pixels)
        assert all(isinstance(c, str) and c for c in first)
        killed = child.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: not alive(killed), timeout=30, what="the model process to die")
        assert child.caption(pixels) == first  # sent again to a fresh child
        assert child.pid not in (None, killed)
        # lost again, and the model is gone, so no child can start: the batch fails, the run goes on
        shutil.rmtree(folder)
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        failed = child.caption(pixels)
        assert all(isinstance(f, CaptionFailure) and f.transient for f in failed), failed
        reason = failed[0].reason  # type: ignore[union-attr]
        assert reason.startswith("the model process ended while captioning (killed by signal 9); starting it again")
        assert "failed: model folder" in reason and "does not exist" in reason, reason
    finally:
        child.close()


def test_a_child_that_cannot_load_the_model_says_why(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as error:
        ProcessCaptioner(replace(plain_model_settings(broken), process=True))
    message = str(error.value)
    assert str(broken) in message and "\n" not in message


def test_the_setting_picks_the_backend(tiny_model: Path) -> None:
    model = plain_model_settings(tiny_model)
    assert not uses_process(model)  # auto: a child only for CUDA, and this is the CPU
    assert uses_process(replace(model, process=True)) and not uses_process(replace(model, process=False))
    assert isinstance(local_captioner(model), Captioner)
    with pytest.raises(ConfigError, match="model.process"):
        settings_from_dict({"model": {"process": "sometimes"}})
    assert settings_from_dict({"model": {"process": True}}).model.process is True


def config_file(path: Path, tiny_model: Path, db: Path, process: bool) -> Path:
    path.write_text(
        f'[model]\nname = "{tiny_model}"\ndevice = "cpu"\nbatch_size = 4\nmax_new_tokens = 8\nnum_beams = 1\n'
        f'process = {str(process).lower()}\n[index]\ndb = "{db}"\n'
    )
    return path


def test_a_backfill_with_the_model_in_a_child_captions_every_photo_and_leaves_no_process(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Through the command, as a user runs it: every photo captioned by the child, the same captions
    as in-process; and a phototag killed mid-run takes its model process with it."""
    photos = copy_from_corpus(list(UPRIGHT_PHOTOS), tmp_path / "photos")
    captions = {}
    for process in (False, True):
        folder = tmp_path / f"run-{process}"
        shutil.copytree(tmp_path / "photos", folder)
        config = config_file(tmp_path / f"config-{process}.toml", tiny_model, tmp_path / f"index-{process}.db", process)
        result = subprocess.run(
            [sys.executable, "-m", "phototag", "--config", str(config), "backfill", str(folder), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        with closing(sqlite3.connect(tmp_path / f"index-{process}.db")) as conn:
            rows = conn.execute("SELECT path, status, caption FROM photos").fetchall()
        captions[process] = {Path(p).name: (s, c) for p, s, c in rows}
    assert len(captions[True]) == len(photos) and all(s == "done" for s, _ in captions[True].values())
    assert captions[True] == captions[False]

    many = tmp_path / "many"
    for n in range(8):
        shutil.copytree(tmp_path / "photos", many / str(n))
    config = config_file(tmp_path / "config-kill.toml", tiny_model, tmp_path / "index-kill.db", True)
    run = subprocess.Popen(
        [sys.executable, "-m", "phototag", "--config", str(config), "backfill", str(many), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: children_of(run.pid, "phototag.model_process"), timeout=120, what="the model process")
        (model_pid,) = children_of(run.pid, "phototag.model_process")
        run.kill()
        run.wait(timeout=30)
        wait_until(lambda: not alive(model_pid), timeout=30, what="the model process to end with phototag")
    finally:
        if run.poll() is None:
            run.kill()


def test_the_pipeline_stops_its_model_process_when_the_run_ends(settings: Settings, tmp_path: Path) -> None:
    from phototag.planning import WOULD_WRITE

    photos = copy_from_corpus(list(UPRIGHT_PHOTOS[:3]), tmp_path / "photos")
    full = replace(settings, model=replace(settings.model, process=True))
    pipeline, outcomes = dry_run(
        full,
        photos,
        while_running=lambda: wait_until(
            lambda: children_of(os.getpid(), "phototag.model_process"), timeout=120, what="the model process"
        ),
    )
    assert isinstance(pipeline.captioner, ProcessCaptioner)
    assert sorted(o.kind for o in outcomes) == [WOULD_WRITE] * len(photos)
    assert children_of(os.getpid(), "phototag.model_process") == []


def test_a_batch_the_child_cannot_caption_fails_alone_and_the_child_goes_on(tiny_model: Path, corpus: Path) -> None:
    """Whatever goes wrong inside the child for one batch (here an empty one, which the model cannot
    take: an IndexError) fails that batch with its reason, as in phototag's own process; the child
    and its model stay, and the next batch is captioned by it."""
    child = ProcessCaptioner(replace(plain_model_settings(tiny_model), process=True))
    try:
        pid = child.pid
        assert child.caption([]) == []  # nothing to send
        with pytest.raises(ModelProcessError, match="IndexError"):
            child._ask([])
        pixels = [child.preprocess(load_rgb(corpus / UPRIGHT_PHOTOS[0], min_side=child.input_size))]
        assert isinstance(child.caption(pixels)[0], str)
        assert child.pid == pid
    finally:
        child.close()
