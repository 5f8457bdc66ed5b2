"""The batch size each device defaults to sizes the pipeline's queues (CUDA's 32 meets queues for 32)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from phototag.captioner import Captioner
from phototag.config import DEFAULT_BATCH_SIZE, PipelineSettings, Settings, default_batch_size
from phototag.index import PhotoIndex
from phototag.metadata import ExifToolSession
from phototag.pipeline import Pipeline
from tests.conftest import copy_from_corpus


def test_default_batch_size_per_device() -> None:
    assert default_batch_size("cuda") == default_batch_size("cuda:1") == 32
    assert default_batch_size("mps") == 8 and default_batch_size("cpu") == 4
    assert default_batch_size("auto") == DEFAULT_BATCH_SIZE["cpu"]  # until torch has picked a device


@pytest.mark.parametrize(
    ("device", "batch_size", "batch"),
    [
        ("cuda", 0, 32),
        ("cuda:0", 0, 32),
        ("mps", 0, 8),
        ("cpu", 0, 4),
        ("auto", 0, 4),
        ("cuda", 6, 6),
    ],
)
def test_queues_are_sized_from_the_effective_batch(
    settings: Settings, device: str, batch_size: int, batch: int
) -> None:
    """No GPU needed: constructing a pipeline loads neither torch nor the model."""
    settings = replace(
        settings,
        model=replace(settings.model, device=device, batch_size=batch_size),
        pipeline=PipelineSettings(queue_batches=3),
    )
    index = PhotoIndex(settings.db_path())
    with ExifToolSession() as exiftool:
        pipeline = Pipeline(settings, index, exiftool)
        assert pipeline.queue_depths == (batch * 6, batch * 3, batch * 6)
    index.close()


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_queues_follow_the_loaded_models_batch(settings: Settings, tmp_path: Path) -> None:
    """With device "auto" the device (and so its default) is known once the model has loaded."""
    settings = replace(
        settings, model=replace(settings.model, device="auto", batch_size=0), pipeline=PipelineSettings(queue_batches=2)
    )
    (photo,) = copy_from_corpus(["jpg/gps/DSCN0010.jpg"], tmp_path / "lib")
    loaded: list[Captioner] = []

    def factory() -> Captioner:  # the real tiny model, as if "auto" had found a device batching 16
        loaded.append(Captioner(replace(settings.model, batch_size=16)))
        return loaded[-1]

    index = PhotoIndex(settings.db_path())
    with ExifToolSession() as exiftool:
        pipeline = Pipeline(settings, index, exiftool, captioner_factory=factory).start()
        assert pipeline.queue_depths == (16, 8, 16)
        pipeline.submit(photo)
        assert pipeline.close(120)
        assert pipeline.error is None and loaded
        assert pipeline.queue_depths == (64, 32, 64)
    index.close()
    assert Captioner(replace(settings.model, device="cpu", batch_size=0)).batch_size == 4
