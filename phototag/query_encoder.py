"""A search query -> its unit vector, the fastest way at hand, torch-free where the model allows.

:func:`query_vector` asks a running daemon first (:mod:`phototag.embed_socket`), else runs the
model here in numpy, else loads it with sentence-transformers (:mod:`phototag.embeddings`).

``phototag search`` by meaning needs one short query embedded. Importing torch and
sentence-transformers for that takes seconds; :class:`NumpyBert` reads the same model files
(``config.json``, ``tokenizer.json``, ``model.safetensors``) and runs the same arithmetic in numpy in
well under a second from a cold start. It serves only the shape all-MiniLM-L6-v2 has (BertModel, mean
pooling, normalisation: checked in :func:`supported`); any other model goes to sentence-transformers.
Its vectors equal sentence-transformers' to about 1e-6 (a test compares them), so they rank against
caption vectors made by sentence-transformers exactly as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

_MODULES = [
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
]


def model_folder(name: str) -> Path | None:
    """The local folder of ``name``: the folder itself, or the hub cache's snapshot of a hub id."""
    expanded = Path(os.path.expanduser(name))
    if expanded.is_dir():
        return expanded
    if name.count("/") != 1:
        return None
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub"
    )
    repo = Path(hub) / ("models--" + name.replace("/", "--"))
    try:
        revision = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / revision
    return snapshot if snapshot.is_dir() else None


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def supported(folder: Path) -> bool:
    """True for a BERT model with mean pooling and normalisation, in safetensors, with a fast tokenizer."""
    try:
        modules = _json(folder / "modules.json")
        config = _json(folder / "config.json")
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
        pooling = _json(folder / pooling_dir / "config.json")
    except (OSError, ValueError, KeyError, StopIteration):
        return False
    pooling_modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    return (
        [m["type"] for m in modules] == _MODULES
        and modules[0].get("path", "") == ""
        and pooling_modes == {"pooling_mode_mean_tokens"}
        and config.get("model_type") == "bert"
        and config.get("hidden_act") == "gelu"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer.json").is_file()
    )


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, and scipy is slow to import."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _map_float32_tensors(path: Path) -> dict[str, np.ndarray]:
    """The float32 tensors of a safetensors file as read-only views of one memory map of it.

    Copying the weights out (``safe_open(...).get_tensor``) cost a cold ``phototag search`` about
    60 ms of its CPU time, a fresh 90 MB to fill; a map only touches the pages a query uses, from the
    page cache. Tensors of another dtype (or a file this cannot read) are left to safetensors."""
    import mmap

    try:
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return {}
    start = 8 + header_size
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict) or info.get("dtype") != "F32":
            continue
        begin, end = info["data_offsets"]
        count = (end - begin) // 4
        tensors[name] = np.frombuffer(mapped, dtype="<f4", count=count, offset=start + begin).reshape(info["shape"])
    return tensors


class NumpyBert:
    """A sentence embedder for one text at a time (queries), torch-free."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        config = _json(self.folder / "config.json")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        try:
            max_len = int(_json(self.folder / "sentence_bert_config.json").get("max_seq_length", 512))
        except (OSError, ValueError):
            max_len = 512
        self.max_len = min(max_len, int(config.get("max_position_embeddings", 512)))
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_len)
        self._mapped = _map_float32_tensors(self.folder / "model.safetensors")
        self._file = safe_open(str(self.folder / "model.safetensors"), framework="np")
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in self._file.keys() else ""
        self._prefix = prefix
        self._weights: dict[str, np.ndarray] = {}

    def _w(self, name: str) -> np.ndarray:
        if name not in self._weights:  # read on first use (the word embeddings never whole)
            mapped = self._mapped.get(self._prefix + name)
            if mapped is not None:  # float32 as stored: a view of the mapped file, no copy
                self._weights[name] = mapped
            else:
                self._weights[name] = self._file.get_tensor(self._prefix + name).astype(np.float32, copy=False)
        return self._weights[name]

    def encode(self, text: str) -> np.ndarray:
        """The unit-length embedding of ``text`` (mean of the last hidden states, normalised)."""
        from phototag.vectors import one_blas_thread

        with one_blas_thread():  # matrices this small: BLAS threads only get in each other's way
            return self._encode(text)

    def _encode(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text).ids
        mapped = self._mapped.get(self._prefix + "embeddings.word_embeddings.weight")
        if mapped is not None:
            x = mapped[ids].astype(np.float32)
        else:
            words = self._file.get_slice(self._prefix + "embeddings.word_embeddings.weight")
            x = np.stack([words[i : i + 1][0] for i in ids]).astype(np.float32)
        x = x + self._w("embeddings.position_embeddings.weight")[: len(ids)]
        x = x + self._w("embeddings.token_type_embeddings.weight")[0]
        x = _layer_norm(x, self._w("embeddings.LayerNorm.weight"), self._w("embeddings.LayerNorm.bias"), self.eps)
        n, hidden = x.shape
        size = hidden // self.heads
        for i in range(self.layers):
            layer = f"encoder.layer.{i}."

            def dense(v: np.ndarray, name: str, layer: str = layer) -> np.ndarray:
                return v @ self._w(layer + name + ".weight").T + self._w(layer + name + ".bias")

            q, k, v = (
                dense(x, f"attention.self.{p}").reshape(n, self.heads, size).transpose(1, 0, 2)
                for p in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(size)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, hidden)
            x = _layer_norm(
                x + dense(context, "attention.output.dense"),
                self._w(layer + "attention.output.LayerNorm.weight"),
                self._w(layer + "attention.output.LayerNorm.bias"),
                self.eps,
            )
            h = dense(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
            x = _layer_norm(
                x + dense(h, "output.dense"),
                self._w(layer + "output.LayerNorm.weight"),
                self._w(layer + "output.LayerNorm.bias"),
                self.eps,
            )
        pooled = x.mean(axis=0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)


def load(name: str) -> NumpyBert | None:
    """A torch-free embedder for ``name``, or None when its files are not here or not of that shape."""
    folder = model_folder(name)
    if folder is None or not supported(folder):
        return None
    try:
        return NumpyBert(folder)
    except Exception:  # an odd file: let sentence-transformers deal with it (and explain)
        return None


_loaded: dict[str, NumpyBert | None] = {}  # model id -> its numpy encoder (None: not of that shape)


def query_vector(model_name: str, query: str, *, socket_path: Path | None = None) -> np.ndarray:
    """The unit vector of ``query``, by the fastest way at hand: a running daemon that answers on
    ``socket_path``; else a torch-free numpy pass when the model is a local BERT sentence embedder
    (all-MiniLM-L6-v2 is); else sentence-transformers (seconds to import and load)."""
    from phototag.embeddings import load_embedder, model_id

    if socket_path is not None:
        from phototag.embed_socket import ask

        vector = ask(socket_path, model_id(model_name), query)
        if vector is not None:
            return vector
    key = model_id(model_name)
    if key not in _loaded:
        _loaded[key] = load(model_name)
    light = _loaded[key]
    if light is not None:
        return light.encode(query)
    return load_embedder(model_name).encode([query])[0]
