"""Fast input: with draft decoding on, the decode threads only decode, and the model's device resizes and
normalizes whole batches (``Captioner.preprocess`` / ``Captioner.model_inputs``). Run here on the CPU,
the same code the GPU runs, with device "cpu"; the exact path (the processor's own preprocessing)
stays what it was."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from phototag.captioner import Captioner, pins_memory
from phototag.config import ModelSettings, Settings
from phototag.imaging import load_rgb
from tests.conftest import copy_from_corpus, dry_run, plain_model_settings

PHOTOS = [
    "jpg/gps/DSCN0010.jpg",  # 640 x 480: a mild downscale
    "jpg/Canon_40D.jpg",
    "jpg/exif-org/nikon-e950.jpg",
    "generated/gen_png.png",
    "jpg/xmp/BlueSquare.jpg",  # 360 x 216: upscaled to the model card's 384
    "tiff/BSG1.tiff",
    "generated/big_4000x3000_q92.jpg",  # 12 MP: a strong downscale
]

# How far the device's resize may land from the processor's, in 8-bit pixel levels. Both are bicubic
# with PIL's kernel (a = -0.5) widened to antialias on a downscale, but PIL resamples in two passes and
# rounds to 8 bits after the first, while torch keeps floats until the end: measured, the two differ by
# 0.2 levels on average and by up to 8 levels at a few sharp edges. A wrong filter (bilinear, no
# antialias, a wrong mean or std, channels swapped) lands tens of levels away.
MEAN_LEVELS = 0.5
MAX_LEVELS = 10.0


@pytest.fixture(scope="module")
def exact_settings(tiny_model: Path) -> ModelSettings:
    return plain_model_settings(tiny_model)


def level_differences(exact: Captioner, fast: Captioner, images: list) -> tuple[list[float], list[float]]:
    """Mean and max difference per photo, in pixel levels (0..255), between the processor's pixel
    tensors and the device path's batch for the same decoded images."""
    reference = torch.stack([exact.preprocess(image) for image in images])
    decoded = [fast.preprocess(image) for image in images]
    assert all(d.dtype == torch.uint8 and d.shape[-1] == 3 for d in decoded)  # the CPU only decoded
    batch = fast.model_inputs(decoded)
    assert batch.shape == reference.shape and batch.dtype == torch.float32
    std = torch.tensor(exact.processor.image_processor.image_std).view(1, 3, 1, 1)
    levels = (batch - reference).abs() * std * 255
    return levels.mean(dim=(1, 2, 3)).tolist(), levels.amax(dim=(1, 2, 3)).tolist()


def test_device_pixels_match_the_processors(exact_settings: ModelSettings, corpus: Path) -> None:
    exact = Captioner(exact_settings)
    fast = Captioner(replace(exact_settings, draft_decode=True))
    images = [load_rgb(corpus / name) for name in PHOTOS]  # the same decoded pixels into both paths
    means, maxes = level_differences(exact, fast, images)
    assert max(means) <= MEAN_LEVELS, means
    assert max(maxes) <= MAX_LEVELS, maxes


def test_device_pixels_match_at_the_model_cards_384_px(
    exact_settings: ModelSettings, tiny_model: Path, tmp_path: Path, corpus: Path
) -> None:
    """The tiny model reads 32 px; BLIP reads 384, where most photos are only mildly resized (or even
    enlarged): the same bounds hold there."""
    folder = tmp_path / "tiny-384"
    shutil.copytree(tiny_model, folder)
    config = folder / "processor_config.json"  # transformers 5 keeps the image processor's settings here
    data = json.loads(config.read_text())
    data["image_processor"]["size"] = {"height": 384, "width": 384}
    config.write_text(json.dumps(data))
    settings = replace(exact_settings, name=str(folder))
    exact = Captioner(settings)
    fast = Captioner(replace(settings, draft_decode=True))
    assert exact.input_size == 384
    images = [load_rgb(corpus / name, min_side=384, draft=True) for name in PHOTOS]
    means, maxes = level_differences(exact, fast, images)
    assert max(means) <= MEAN_LEVELS, means
    assert max(maxes) <= MAX_LEVELS, maxes


def test_captions_from_the_device_path_equal_the_processor_paths(exact_settings: ModelSettings, corpus: Path) -> None:
    exact = Captioner(exact_settings)
    fast = Captioner(replace(exact_settings, draft_decode=True))
    images = [load_rgb(corpus / name) for name in PHOTOS]
    expected = exact.generate_ids([exact.preprocess(image) for image in images])
    got = fast.generate_ids([fast.preprocess(image) for image in images])
    # pixels a level or two apart could flip a token of a random model; measured: all equal
    same = sum(a == b for a, b in zip(got, expected, strict=True))
    assert same >= len(PHOTOS) - 1, (got, expected)
    assert len({tuple(ids) for ids in got}) >= 3  # real captions, not one for every photo


@pytest.mark.parametrize(
    ("dtype", "draft", "on_device"),
    [
        ("fp32", "auto", False),  # the CPU default: the model card's exact preprocessing
        ("bf16", "auto", True),
        ("int8", "auto", True),
        ("fp32", True, True),
        ("bf16", False, False),
    ],
)
def test_which_path_follows_the_settings(
    dtype: str, draft: str | bool, on_device: bool, exact_settings: ModelSettings, corpus: Path
) -> None:
    captioner = Captioner(replace(exact_settings, dtype=dtype, draft_decode=draft))
    assert captioner.device_preprocess is on_device
    pixels = captioner.preprocess(load_rgb(corpus / PHOTOS[0]))
    if on_device:
        assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (480, 640, 3)
    else:
        size = captioner.input_size
        assert pixels.dtype == torch.float32 and tuple(pixels.shape) == (3, size, size)
    assert captioner.caption([pixels])[0] is not None


def test_pinned_memory_and_asynchronous_copies_only_for_cuda(exact_settings: ModelSettings, corpus: Path) -> None:
    assert pins_memory("cuda") and pins_memory("cuda:1")
    assert not pins_memory("cpu") and not pins_memory("mps")
    captioner = Captioner(replace(exact_settings, draft_decode=True))
    assert captioner.pin_memory is False  # pinning on the CPU would only cost a copy
    assert not captioner.preprocess(load_rgb(corpus / PHOTOS[0])).is_pinned()


def test_pipeline_with_fast_input_captions_what_the_captioner_does(
    settings: Settings, tmp_path: Path, corpus: Path
) -> None:
    """End to end through the real Pipeline (dry run): decoded uint8 photos reach the model in batches
    and come back as the same captions the fast path gives one photo at a time."""
    from phototag.planning import WOULD_WRITE

    photos = copy_from_corpus(PHOTOS, tmp_path / "photos")
    model = replace(settings.model, draft_decode=True, max_new_tokens=10, no_repeat_ngram_size=0, suppress_words=())
    full = replace(settings, model=model, metadata=replace(settings.metadata, overwrite=True))
    pipeline, outcomes = dry_run(full, photos)
    captioner = pipeline.captioner
    assert captioner is not None and captioner.device_preprocess
    got = {o.path.name: o.caption if o.kind == WOULD_WRITE else o.reason for o in outcomes}
    expected = {}
    for photo in photos:
        image = load_rgb(photo, min_side=captioner.input_size, draft=True)
        expected[photo.name] = captioner.caption([captioner.preprocess(image)])[0] or (
            "the model produced an empty caption"
        )
    assert got == expected
