"""Shared fixtures: the tiny BLIP, corpus copies, settings pointing at a temp index."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from phototag.config import IndexSettings, ModelSettings, Settings
from tests.tiny_blip import build_tiny_blip

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("PHOTOTAG_CORPUS", REPO.parent / "shared" / "corpus"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not CORPUS.is_dir():
        raise pytest.UsageError(f"test corpus not found at {CORPUS}: put shared/ beside the repo "
                                "or set PHOTOTAG_CORPUS")


@pytest.fixture(scope="session")
def corpus() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture
def settings(tiny_model: Path, tmp_path: Path) -> Settings:
    return replace(
        Settings(),
        model=ModelSettings(name=str(tiny_model), device="cpu", batch_size=4, max_new_tokens=8, num_beams=1),
        index=IndexSettings(db=str(tmp_path / "index.sqlite3")),
    )


def copy_from_corpus(names: list[str], dest: Path) -> list[Path]:
    """Copy corpus files (relative names) into ``dest``, flat, writable. Never touch the originals."""
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in names:
        target = dest / Path(name).name
        shutil.copyfile(CORPUS / name, target)
        os.chmod(target, 0o644)
        copies.append(target)
    return copies
