from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from phototag.captioner import Captioner, ExactInput, ModelLoadError, bad_words_ids, pick_draft, pick_dtype
from phototag.config import ModelSettings, Settings
from phototag.imaging import ImageError, load_rgb
from tests.conftest import UPRIGHT_PHOTOS, copy_from_corpus, plain_model_settings
from tests.tiny_blip import ARTIFACT_WORDS, build_tiny_blip

UPRIGHT = UPRIGHT_PHOTOS


@pytest.fixture(scope="module")
def model_settings(tiny_model: Path) -> ModelSettings:
    # generation controls off: these tests compare phototag's tokens with the model card's plain loop
    return plain_model_settings(tiny_model)


@pytest.fixture(scope="module")
def captioner(model_settings: ModelSettings) -> Captioner:
    return Captioner(model_settings)


def seed_script_ids(model_dir: Path, path: Path, prompt: str | None, max_new_tokens: int) -> list[int]:
    """The model card's loop: open, convert, processor(...), generate. The reference for fidelity."""
    from transformers import BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil

    processor = BlipProcessor.from_pretrained(
        model_dir, image_processor=BlipImageProcessorPil.from_pretrained(model_dir)
    )
    model = BlipForConditionalGeneration.from_pretrained(model_dir)
    raw_image = Image.open(path).convert("RGB")
    if prompt:
        inputs = processor(raw_image, prompt, return_tensors="pt")
    else:
        inputs = processor(raw_image, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1)
    return out[0].tolist()


def test_token_ids_equal_seed_script(captioner: Captioner, tiny_model: Path, corpus: Path) -> None:
    photos = [corpus / name for name in UPRIGHT]
    pixels = [captioner.preprocess(load_rgb(p)) for p in photos]
    batched = captioner.generate_ids(pixels)
    for photo, ids in zip(photos, batched, strict=True):
        reference = seed_script_ids(tiny_model, photo, None, 10)
        assert ids == reference[1:], photo.name  # phototag strips the [DEC] bos token
    one_by_one = [captioner.generate_ids([p])[0] for p in pixels]
    assert one_by_one == batched


def test_exact_input_is_the_processors_tensor_bit_for_bit(captioner: Captioner, corpus: Path) -> None:
    """The fast exact input (ExactInput) against BLIP's own processor, for the tiny model's processor
    and BLIP-large's (384 px, bicubic, CLIP's mean and std): every decodable corpus photo, plus shapes
    the corpus lacks (1 px, very thin, already at the input size)."""
    import numpy as np
    import torch
    from transformers.models.blip import BlipImageProcessorPil

    large = BlipImageProcessorPil(size={"height": 384, "width": 384})
    photos = []
    for path in sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix.lower() not in (".md", ".xmp")):
        try:
            photos.append(load_rgb(path))
        except ImageError:
            continue  # the corpus's broken files
    assert len(photos) >= 60
    rng = np.random.default_rng(7)
    for h, w in ((1, 1), (3, 2000), (2000, 5), (384, 384), (32, 32)):
        photos.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    processors = [captioner.processor.image_processor, large]
    assert captioner._exact == ExactInput.of(processors[0]) and captioner._exact is not None
    for processor in processors:
        exact = ExactInput.of(processor)
        assert exact is not None
        for image in photos:
            expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
            got = exact.pixels(image)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert torch.equal(got, expected), image.size
    # the phototag path takes it, and the tensor is the processor's
    assert torch.equal(
        captioner.preprocess(photos[0]), processors[0](images=photos[0], return_tensors="pt")["pixel_values"][0]
    )
    # a processor set up otherwise (cropping, no normalisation) is left to the processor itself
    assert ExactInput.of(BlipImageProcessorPil(do_normalize=False)) is None
    assert ExactInput.of(BlipImageProcessorPil(size={"shortest_edge": 384}, do_resize=True)) is None


def test_captions_differ_between_photos(captioner: Captioner, corpus: Path) -> None:
    pixels = [captioner.preprocess(load_rgb(corpus / name)) for name in UPRIGHT]
    captions = captioner.caption(pixels)
    assert len(captions) == len(UPRIGHT)
    assert all(isinstance(c, str) for c in captions)
    assert len(set(captions)) >= 3


def test_conditional_prompt_is_stripped(model_settings: ModelSettings, tiny_model: Path, corpus: Path) -> None:
    prompted = Captioner(replace(model_settings, prompt="a dog on the"))
    photo = corpus / UPRIGHT[0]
    ids = prompted.generate_ids([prompted.preprocess(load_rgb(photo))])[0]
    reference = seed_script_ids(tiny_model, photo, "a dog on the", 10)
    prompt_ids = prompted.processor.tokenizer("a dog on the").input_ids[1:-1]
    assert reference[1 : 1 + len(prompt_ids)] == prompt_ids
    assert ids == reference[1 + len(prompt_ids) :]
    caption = prompted.decode(ids)
    assert not caption.startswith("a dog on the")


def test_missing_model_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        Captioner(ModelSettings(name=str(tmp_path / "no-such-model"), device="cpu"))


def test_unreachable_hub_model_names_model_and_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    # no network here anyway; offline mode makes the failure immediate instead of retried
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError) as info:
        Captioner(ModelSettings(name="Salesforce/blip-image-captioning-large", device="cpu"))
    message = str(info.value)
    assert "Salesforce/blip-image-captioning-large" in message and "--model" in message
    assert "\n" not in message


def test_dtype_defaults() -> None:
    assert pick_dtype("auto", "cuda") == "fp16"
    assert pick_dtype("auto", "cpu") == "fp32"
    assert pick_dtype("bf16", "cpu") == "bf16"


def test_draft_decoding_follows_precision() -> None:
    assert pick_draft("auto", "fp32") is False
    assert pick_draft("auto", "fp16") is True and pick_draft("auto", "bf16") is True
    assert pick_draft(True, "fp32") is True and pick_draft(False, "fp16") is False


@pytest.mark.parametrize("prompt", ["", "a dog on the"])
def test_pipeline_captions_equal_seed_script(
    prompt: str, settings: Settings, tiny_model: Path, corpus: Path, tmp_path: Path
) -> None:
    """End to end, speed options off: the pipeline's captions are the seed script's tokens, decoded."""
    from phototag.index import PhotoIndex
    from phototag.metadata import ExifToolSession
    from phototag.pipeline import Pipeline
    from phototag.planning import WOULD_WRITE, Outcome

    photos = copy_from_corpus(UPRIGHT, tmp_path / "photos")
    model = replace(
        settings.model, prompt=prompt, draft_decode=False, max_new_tokens=10, no_repeat_ngram_size=0, suppress_words=()
    )
    metadata = replace(settings.metadata, overwrite=True)  # caption photos that carry a description too
    outcomes: list[Outcome] = []
    with ExifToolSession() as exiftool:
        pipeline = Pipeline(
            replace(settings, model=model, metadata=metadata),
            PhotoIndex(settings.db_path()),
            exiftool,
            dry_run=True,
            on_outcome=outcomes.append,
        ).start()
        for photo in photos:
            pipeline.submit(photo)
        assert pipeline.close(timeout=120)
    assert pipeline.captioner is not None
    got = {o.path.name: o.caption if o.kind == WOULD_WRITE else o.reason for o in outcomes}
    prefix = 1 + len(pipeline.captioner.processor.tokenizer(prompt).input_ids[1:-1]) if prompt else 1
    expected = {}
    for photo in photos:
        caption = pipeline.captioner.decode(seed_script_ids(tiny_model, photo, prompt, 10)[prefix:])
        expected[photo.name] = caption or "the model produced an empty caption"
    assert got == expected


@pytest.mark.parametrize("minimum", [0, 10])
def test_min_new_tokens_holds_back_the_end_of_caption(
    minimum: int, model_settings: ModelSettings, corpus: Path
) -> None:
    import torch

    captioner = Captioner(replace(model_settings, min_new_tokens=minimum))
    end = captioner.processor.tokenizer.sep_token_id  # BLIP ends a caption with [SEP]
    with torch.no_grad():  # make [SEP] the model's first choice at every step
        captioner.model.text_decoder.cls.predictions.bias[end] += 1e4
    ids = captioner.generate_ids([captioner.preprocess(load_rgb(corpus / name)) for name in UPRIGHT[:3]])
    if minimum:
        assert all(len(row) == 10 and end not in row for row in ids)
    else:
        assert all(row[0] == end for row in ids)


@pytest.mark.parametrize(("given", "seen"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_wait_passively_unless_the_user_chose(given: str | None, seen: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, phototag.captioner; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == seen


# -- BLIP-large's artifacts ---------------------------------------------------------------------------

ARTIFACT_RE = re.compile(r"\bar+af+\w*", re.IGNORECASE)


@pytest.fixture(scope="module")
def artifact_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP whose vocabulary holds the artifact words, biased to say them."""
    return build_tiny_blip(
        tmp_path_factory.mktemp("artifact-blip"), extra_vocab=ARTIFACT_WORDS, boost=dict.fromkeys(ARTIFACT_WORDS, 4.0)
    )


def test_bad_words_are_the_artifact_words_as_blips_tokenizer_splits_them(minilm: Path) -> None:
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(str(minilm / "vocab.txt"))  # bert-base-uncased: BLIP's tokenizer vocabulary
    ids = bad_words_ids(tokenizer, ModelSettings().suppress_words)
    pieces = [tokenizer.convert_ids_to_tokens(seq) for seq in ids]
    for expected in (["ara", "##fed"], ["ara", "##ffe"], ["ara", "##fe"], ["ara", "##f"]):
        assert expected in pieces
    assert ["ara"] not in pieces  # "ara" alone starts real words too: only the artifact spellings are banned


@pytest.mark.parametrize("num_beams", [1, 3])
def test_artifact_words_never_appear_in_a_caption(num_beams: int, artifact_model: Path, corpus: Path) -> None:
    plain = ModelSettings(
        name=str(artifact_model), device="cpu", batch_size=4, max_new_tokens=12, num_beams=num_beams, draft_decode=False
    )
    photos = [corpus / name for name in UPRIGHT]
    # The control: without suppression this model does say them, so the test has teeth.
    unsuppressed = Captioner(replace(plain, suppress_words=(), no_repeat_ngram_size=0))
    pixels = [unsuppressed.preprocess(load_rgb(p)) for p in photos]
    raw = [unsuppressed.processor.decode(ids, skip_special_tokens=True) for ids in unsuppressed.generate_ids(pixels)]
    assert any(ARTIFACT_RE.search(text) for text in raw), raw
    captioner = Captioner(plain)  # the defaults: suppressed at generation, cleaned after
    ids = captioner.generate_ids(pixels)
    raw = [captioner.processor.decode(row, skip_special_tokens=True) for row in ids]
    assert not any(ARTIFACT_RE.search(text) for text in raw), raw  # not even before the cleanup
    captions = captioner.caption(pixels)
    assert not any(ARTIFACT_RE.search(text) for text in captions), captions


def test_no_three_words_repeat_within_a_caption(tiny_model: Path, corpus: Path) -> None:
    settings = ModelSettings(
        name=str(tiny_model), device="cpu", batch_size=4, max_new_tokens=30, num_beams=1, draft_decode=False
    )
    pixels = [Captioner(settings).preprocess(load_rgb(corpus / name)) for name in UPRIGHT]

    def repeated_trigrams(captioner: Captioner) -> int:
        count = 0
        for ids in captioner.generate_ids(pixels):
            trigrams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
            count += len(trigrams) - len(set(trigrams))
        return count

    assert repeated_trigrams(Captioner(replace(settings, no_repeat_ngram_size=0))) > 0  # this model does repeat
    assert repeated_trigrams(Captioner(settings)) == 0
