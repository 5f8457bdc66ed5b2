"""``--dtype int8``: dynamic int8 quantization of the model's Linear layers, on the CPU only."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from phototag.captioner import Captioner, ModelLoadError, check_settings, pick_device
from phototag.config import ConfigError, ModelSettings, load_settings
from phototag.imaging import load_rgb
from tests.conftest import UPRIGHT_PHOTOS, run_cli, write_config

PHOTOS = UPRIGHT_PHOTOS


@pytest.fixture(scope="module")
def int8_settings(tiny_model: Path) -> ModelSettings:
    return ModelSettings(name=str(tiny_model), device="cpu", dtype="int8", batch_size=4, max_new_tokens=10, num_beams=1)


def test_int8_quantizes_every_linear_layer_and_captions(int8_settings: ModelSettings, corpus: Path) -> None:
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's deprecation notices are for developers, not users
        captioner = Captioner(int8_settings)
    assert captioner.dtype_name == "int8" and captioner.device == "cpu"
    modules = list(captioner.model.modules())
    quantized = [m for m in modules if isinstance(m, DynamicQuantizedLinear)]
    plain = [m for m in modules if type(m) is torch.nn.Linear]
    assert len(quantized) >= 20 and not plain  # vision, text and LM head: all of them
    pixels = [captioner.preprocess(load_rgb(corpus / name)) for name in PHOTOS]
    captions = captioner.caption(pixels)
    assert len(captions) == len(PHOTOS) and all(isinstance(c, str) for c in captions)
    assert len({c for c in captions if c}) >= 3  # real, differing captions


def test_int8_is_cpu_only_with_one_clear_line(int8_settings: ModelSettings) -> None:
    for device in ("cuda", "cuda:1", "mps"):
        with pytest.raises(ModelLoadError) as info:
            check_settings(replace(int8_settings, device=device))
        message = str(info.value)
        assert "int8" in message and "CPU only" in message and "\n" not in message
    check_settings(replace(int8_settings, device="auto"))  # auto: the CPU
    assert pick_device("auto", "int8") == "cpu"


def test_int8_from_the_config_file_and_the_command_line(tiny_model: Path, tmp_path: Path, corpus: Path) -> None:
    config = write_config(tmp_path, tiny_model, extra="")
    text = config.read_text().replace("[model]\n", '[model]\ndtype = "int8"\n', 1)
    config.write_text(text)
    assert load_settings(config).model.dtype == "int8"
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\ndtype = "int4"\n')
    with pytest.raises(ConfigError, match=r"model\.dtype.*int8"):
        load_settings(bad)

    helped = run_cli(config, "backfill", "--help")
    assert helped.exit_code == 0 and "int8" in helped.output

    refused = run_cli(config, "backfill", str(tmp_path), "--device", "cuda", "--no-progress")
    assert refused.exit_code != 0 and "int8" in refused.output and "CPU only" in refused.output

    # the real loading path end to end: a backfill with [model] dtype = "int8" captions and writes
    library = tmp_path / "photos"
    library.mkdir()
    (library / "a.jpg").write_bytes((corpus / PHOTOS[0]).read_bytes())
    result = run_cli(config, "backfill", str(library), "--no-progress")
    assert result.exit_code == 0, result.output
    from phototag.index import PhotoIndex

    index = PhotoIndex(tmp_path / "index.sqlite3")
    try:
        row = index.get(library / "a.jpg")
        assert row is not None and row.status == "done" and row.caption
    finally:
        index.close()
