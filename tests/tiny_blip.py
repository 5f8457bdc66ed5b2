"""Build a tiny random BLIP captioning model + WordPiece tokenizer, saved like a real checkpoint.

Loaded back through phototag's own ``Captioner`` (``from_pretrained`` on a folder), it exercises the
real loading and generation code in a fraction of a second. Its captions are gibberish made of real
words, and they differ from photo to photo (weights are drawn wider than the library's init).
"""

from __future__ import annotations

from pathlib import Path

WORDS = """a an the of on in with at and is are
dog dogs cat cats bird horse cow sheep man woman men women child children boy girl baby people person
beach sea ocean lake river water wave sand sky cloud clouds sun sunset mountain mountains hill snow tree
trees forest grass field flower flowers garden park road street car cars bus train bicycle boat city
building house church bridge tower window door table chair plate food pizza cake coffee cup book
red blue green white black yellow brown orange pink dark night light old small large
running sitting standing walking playing riding flying swimming eating holding looking lying
""".split()


# BLIP-large's artifact words, as whole words of a test vocabulary (bert-base-uncased, BLIP's real
# tokenizer, splits them: "arafed" is "ara" + "##fed"; tests check those splits with the real vocab).
ARTIFACT_WORDS = ["arafed", "araffe", "arafe", "araf"]


def build_tiny_blip(
    folder: Path, seed: int = 0, *, extra_vocab: list[str] | None = None, boost: dict[str, float] | None = None
) -> Path:
    """``extra_vocab``: more WordPiece entries; ``boost``: add to the output bias of those tokens, so the
    model prefers them (a model that says "arafed" unless generation forbids it)."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + list(dict.fromkeys(WORDS + (extra_vocab or [])))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    vocab_size = len(vocab) + 1  # + the decoder's [DEC] bos token, outside the tokenizer, as in BLIP
    config = BlipConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": vocab_size,
            "bos_token_id": vocab_size - 1,
            "sep_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "max_position_embeddings": 64,
        },
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
        for token, amount in (boost or {}).items():
            model.text_decoder.cls.predictions.bias[vocab.index(token)] += amount
    model.save_pretrained(folder)
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    return folder
