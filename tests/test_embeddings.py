"""The embedding model: sentence-transformers and the torch-free query path agree; the pipeline's
helper thread; loading errors are one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from phototag import query_encoder
from phototag.embeddings import Embedder, EmbeddingError, EmbedWorker, load_embedder, model_id
from phototag.index import DONE, Photo, PhotoIndex
from phototag.query_encoder import query_vector

TEXTS = [
    "puppy at the seaside",
    "food",
    "a dog running on the beach",
    "Ünïcødé 海 犬 🐶",
    "",
    "x" * 3000,
    "there is a man sitting on a bench in a park with a red car and a dog",
]


def test_numpy_query_vectors_equal_sentence_transformers(minilm: Path) -> None:
    light = query_encoder.load(str(minilm))
    assert light is not None
    reference = load_embedder(str(minilm)).encode(TEXTS)
    for text, expected in zip(TEXTS, reference, strict=True):
        vector = light.encode(text)
        assert vector.dtype == np.float32 and vector.shape == (384,)
        assert np.abs(vector - expected).max() < 1e-5, text
    assert np.allclose(query_vector(str(minilm), "food"), reference[1], atol=1e-5)


def test_numpy_query_weights_are_mapped_not_copied(minilm: Path, tmp_path: Path) -> None:
    """float32 weights are views of one memory map of model.safetensors (a cold search does not copy
    90 MB); a model stored in another dtype still loads, through safetensors, to the same vectors."""
    from safetensors.numpy import load_file, save_file

    light = query_encoder.load(str(minilm))
    assert light is not None
    expected = light.encode(TEXTS[2])
    assert len(light._weights) > 50
    for name, weight in light._weights.items():
        assert not weight.flags.owndata and not weight.flags.writeable, name
    half = tmp_path / "half"
    shutil.copytree(minilm, half, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(minilm / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, str(half / "model.safetensors"))
    light_half = query_encoder.load(str(half))
    assert light_half is not None
    vector = light_half.encode(TEXTS[2])
    assert all(w.dtype == np.float32 and w.flags.owndata for w in light_half._weights.values())
    assert float(vector @ expected) > 0.999


def test_only_bert_mean_pooling_models_take_the_numpy_path(minilm: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(minilm, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    (copy / "model.safetensors").symlink_to(minilm / "model.safetensors")
    assert query_encoder.supported(copy)
    pooling = copy / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(json.dumps(config | {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    assert not query_encoder.supported(copy) and query_encoder.load(str(copy)) is None
    assert query_encoder.model_folder("nobody/no-such-model") is None
    assert query_encoder.model_folder(str(copy)) == copy


def test_loading_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match="does not exist"):
        Embedder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbeddingError, match="cannot load embedding model") as caught:
        Embedder(str(tmp_path / "empty"))
    assert "\n" not in str(caught.value)
    assert model_id(str(tmp_path / "empty")) == str(tmp_path / "empty")
    assert model_id("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def _photo(index: PhotoIndex, path: str, caption: str) -> int:
    with index.transaction() as session:
        row = Photo(path=path, size=1, mtime_ns=1, status=DONE, caption=caption, keywords="")
        session.add(row)
        session.flush()
        return row.id


def test_worker_embeds_batches_and_skips_changed_captions(minilm: Path, tmp_path: Path) -> None:
    index = PhotoIndex(tmp_path / "index.sqlite3")
    ids = [_photo(index, f"/p/{i}.jpg", f"caption number {i}") for i in range(5)]
    worker = EmbedWorker(index, str(minilm)).start()
    worker.submit([(ids[0], "caption number 0"), (ids[1], "caption number 1")])
    worker.submit([(ids[2], "an older caption that changed meanwhile")])  # must not be stored
    worker.submit([(ids[0], "caption number 0")])  # already embedded: skipped
    worker.close()
    worker.thread.join(60)
    assert not worker.thread.is_alive() and worker.disabled_reason is None and worker.saved == 2
    with index.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT photo_id, model, vector FROM photo_embeddings ORDER BY photo_id").all()
    assert [r[0] for r in rows] == ids[:2] and {r[1] for r in rows} == {str(minilm)}
    stored = np.frombuffer(rows[0][2], dtype="<f4")
    assert np.allclose(stored, load_embedder(str(minilm)).encode(["caption number 0"])[0], atol=1e-6)


def test_worker_without_a_model_turns_itself_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    index = PhotoIndex(tmp_path / "index.sqlite3")
    photo = _photo(index, "/p/a.jpg", "a caption")
    worker = EmbedWorker(index, str(tmp_path / "no-model")).start()
    worker.submit([(photo, "a caption")])
    worker.submit([(photo, "a caption")])
    worker.close()
    worker.thread.join(30)
    assert not worker.thread.is_alive() and worker.saved == 0
    assert "does not exist" in (worker.disabled_reason or "")
    assert sum("reindex --embeddings" in r.message for r in caplog.records) == 1
