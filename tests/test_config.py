from __future__ import annotations

from pathlib import Path

import pytest

from phototag.config import ConfigError, Settings, load_settings, override

REPO = Path(__file__).resolve().parents[1]


def test_example_config_documents_every_key_with_the_defaults() -> None:
    loaded = load_settings(REPO / "config.example.toml")
    assert loaded == Settings()


def test_values_are_typed_and_errors_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[model]\nbatch_size = 8\nprompt = "a photography of"\n[watch]\nfolders = ["/p"]\n')
    settings = load_settings(config)
    assert settings.model.batch_size == 8 and settings.model.prompt == "a photography of"
    assert settings.watch.folders == ("/p",)
    for body, key in [
        ("[model]\nbatch_size = 'x'\n", "model.batch_size"),
        ("[model]\nbatchsize = 2\n", "model.batchsize"),
        ("[metadata]\nmode = 'inplace'\n", "metadata.mode"),
        ("[nope]\n", "[nope]"),
    ]:
        config.write_text(body)
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load_settings(config)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_flags_override_file_and_none_means_unset() -> None:
    settings = override(Settings(), "model", batch_size=16, prompt=None)
    assert settings.model.batch_size == 16 and settings.model.prompt == ""
    with pytest.raises(ConfigError, match="model.device"):
        override(Settings(), "model", device="tpu")


def test_db_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PHOTOTAG_DB", str(tmp_path / "env.db"))
    assert Settings().db_path() == tmp_path / "env.db"
    assert override(Settings(), "index", db=str(tmp_path / "x.db")).db_path() == tmp_path / "x.db"
    monkeypatch.delenv("PHOTOTAG_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Settings().db_path() == tmp_path / "data" / "phototag" / "index.sqlite3"


def test_draft_decode_is_auto_or_a_boolean(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    for text, value in [("true", True), ("false", False), ('"auto"', "auto")]:
        config.write_text(f"[model]\ndraft_decode = {text}\n")
        assert load_settings(config).model.draft_decode == value
    for text in ['"yes"', "1"]:
        config.write_text(f"[model]\ndraft_decode = {text}\n")
        with pytest.raises(ConfigError, match="model.draft_decode"):
            load_settings(config)


def test_stages_that_scale_with_the_cores_are_validated(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[pipeline]\nexiftool_processes = 3\ndecode_workers = 5\n")
    pipeline = load_settings(config).pipeline
    assert (pipeline.effective_exiftool_processes, pipeline.effective_decode_workers) == (3, 5)
    for value, error in [
        ("-1", "must not be negative"),
        ("2.5", "expected a whole number"),
        ('"four"', "expected a number"),
        ("true", "expected a number"),
        ("65", "at most 64"),
    ]:
        config.write_text(f"[pipeline]\nexiftool_processes = {value}\n")
        with pytest.raises(ConfigError, match=f"pipeline.exiftool_processes: {error}"):
            load_settings(config)
    config.write_text("[pipeline]\ndecode_workers = 1.5\n")
    with pytest.raises(ConfigError, match="pipeline.decode_workers: expected a whole number"):
        load_settings(config)
    assert Settings().pipeline.exiftool_processes == 0  # one per core: see test_pipeline_parallel
