"""BLIP captioning: load the model, pick device and dtype, preprocess, batched generate.

This is the only module that imports torch and transformers, and it does so lazily, so commands that
never caption (``search``, ``status``, ``show``) start fast.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phototag.caption_text import tidy_caption
from phototag.config import ModelSettings, default_batch_size
from phototag.hub import looks_local, missing_model_reason, quiet_hub_logging
from phototag.loading import heavy_loading

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

# torch's OpenMP threads spin after every parallel region (libgomp: 300,000 spins) before they sleep.
# Beside phototag's own decode and exiftool threads, or any other busy program, the spinning takes the
# cores those need, and the model's threads then wait on each other at every operation: on a busy
# 2-core machine BLIP-large ran 2.5x slower than with passive waiting. It must be set before torch
# loads; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class ModelLoadError(Exception):
    """The captioning model could not be loaded; the message says which and how to fix it."""


# torch dtype the weights load in; int8 loads fp32 weights, then quantizes the Linear layers
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "float32"}


HUB_HINT = (
    "connect once so it can be downloaded (~1.9 GB, kept in ~/.cache/huggingface), or copy the model folder "
    "over and pass --model /path/to/folder; HF_HUB_OFFLINE=1 skips the network for good"
)


def _torch_has_cuda() -> bool | None:
    """Whether the installed torch is a CUDA build, read from its version file without importing it
    (seconds); None when that cannot be told."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^cuda[^=]*=\s*(.+)$", text, re.MULTILINE)
    return None if match is None else match.group(1).strip() != "None"


def check_settings(settings: ModelSettings) -> None:
    """Refuse, before seconds of torch imports, what cannot work: a model folder that does not exist,
    CUDA without an NVIDIA driver or with a CPU-only torch, MPS off macOS. Raises ModelLoadError."""
    name = settings.name
    if looks_local(name) and not Path(name).expanduser().exists():
        raise ModelLoadError(f"model folder {name!r} does not exist; check [model] name or --model")
    device = settings.device
    if settings.dtype == "int8" and device not in ("auto", "cpu"):
        raise ModelLoadError(
            f"dtype 'int8' runs on the CPU only, not on {device!r}; use --device cpu, or --dtype fp16 on a GPU"
        )
    if device.startswith("cuda"):
        if not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidia0")) and sys.platform == "linux":
            raise ModelLoadError(f"device {device!r} requested but this machine has no NVIDIA driver; use --device cpu")
        if _torch_has_cuda() is False:
            raise ModelLoadError(
                f"device {device!r} requested but the installed torch is a CPU-only build; "
                "use --device cpu, or install torch with CUDA"
            )
    if device == "mps" and sys.platform != "darwin":
        raise ModelLoadError("device 'mps' requested but MPS exists only on macOS; use --device cpu")


def check_available(settings: ModelSettings) -> None:
    """``check_settings``, then: a hub model that is not cached needs the hub; say so at once when it
    cannot be reached (huggingface_hub alone retries for a minute)."""
    check_settings(settings)
    reason = missing_model_reason(settings.name)
    if reason is not None:
        raise ModelLoadError(f"cannot load model {settings.name!r}: {reason}; {HUB_HINT}")


def pick_device(requested: str, dtype: str = "auto") -> str:
    import torch

    if requested == "auto" and dtype == "int8":
        return "cpu"  # int8 kernels exist for the CPU only
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested!r} requested but CUDA is not available; use --device cpu")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("device 'mps' requested but MPS is not available; use --device cpu")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str, device: str) -> str:
    """fp16 on CUDA, fp32 elsewhere, unless asked otherwise."""
    if requested != "auto":
        return requested
    return "fp16" if device.startswith("cuda") else "fp32"


def pick_draft(requested: str | bool, dtype: str) -> bool:
    """Draft decoding follows precision: off with fp32 (the model card's exact captions), on once
    bf16/fp16/int8 already trade exactness for speed (and on GPUs, where decoding limits throughput).

    With draft decoding on, the model's input is made on the device too (``Captioner.preprocess``):
    both are the "fast input" side of one trade, exact captions against speed."""
    if requested == "auto":
        return dtype != "fp32"
    return bool(requested)


def pins_memory(device: str) -> bool:
    """Whether inputs for ``device`` are staged in pinned (page-locked) host memory: a CUDA copy from
    there runs asynchronously (``non_blocking``) by DMA; from pageable memory it is a blocking copy
    through a driver buffer. Elsewhere there is no copy to overlap (CPU) or no such memory (MPS)."""
    return device.startswith("cuda")


def clean_caption(text: str) -> str:
    """The model's decoded text -> the caption: whitespace normalised, BLIP's known artifacts removed."""
    return tidy_caption(re.sub(r"\s+", " ", text))


@dataclass(frozen=True)
class CaptionerInfo:
    model: str
    device: str
    dtype: str
    batch_size: int
    prompt: str
    max_new_tokens: int
    num_beams: int


class Captioner:
    """Holds a BLIP model. ``preprocess`` is thread-safe; ``caption`` runs on one thread at a time."""

    def __init__(self, settings: ModelSettings) -> None:
        check_available(settings)  # before the imports: a missing model fails in seconds, not minutes
        with heavy_loading():  # the embedding thread may be importing transformers right now
            quiet_hub_logging()
            self._load(settings)

    def _load(self, settings: ModelSettings) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor
        from transformers.models.blip import BlipImageProcessorPil
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.settings = settings
        self.device = pick_device(settings.device, settings.dtype)
        self.dtype_name = pick_dtype(settings.dtype, self.device)
        self.torch_dtype = getattr(torch, _DTYPES[self.dtype_name])
        self.batch_size = settings.batch_size or default_batch_size(self.device)
        self.draft_decode = pick_draft(settings.draft_decode, self.dtype_name)
        # fast input: the decode threads only decode, resize and normalize run batched on the device
        self.device_preprocess = self.draft_decode
        self.pin_memory = pins_memory(self.device)
        name = settings.name
        local = Path(name).expanduser()
        source = str(local) if local.exists() else name
        try:
            image_processor = _from_pretrained(BlipImageProcessorPil, source)
            self.processor = _from_pretrained(BlipProcessor, source, image_processor=image_processor)
            model = _from_pretrained(BlipForConditionalGeneration, source, dtype=self.torch_dtype)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(_load_hint(name, exc)) from exc
        if self.dtype_name == "int8":
            model = quantize_int8(model)
        self.model = model.to(self.device).eval()
        image_processor = self.processor.image_processor
        size = image_processor.size
        self.input_size = int(min(size.get("height", 384), size.get("width", 384)))
        self._input_hw = (int(size.get("height", 384)), int(size.get("width", 384)))
        # the processor's own rescale and normalisation, applied on the device to batches of decoded photos
        self._rescale = float(image_processor.rescale_factor) if image_processor.do_rescale else 1.0
        mean = image_processor.image_mean if image_processor.do_normalize else [0.0, 0.0, 0.0]
        std = image_processor.image_std if image_processor.do_normalize else [1.0, 1.0, 1.0]
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._exact = ExactInput.of(image_processor)
        self._lock = threading.Lock()
        self._prompt_ids: torch.Tensor | None = None
        self._prefix_len = 1  # the [DEC] bos token the decoder starts from
        self._pad_id = self.processor.tokenizer.pad_token_id
        self._bad_words_ids = bad_words_ids(self.processor.tokenizer, settings.suppress_words)
        if settings.prompt:
            ids = self.processor.tokenizer(settings.prompt, return_tensors="pt").input_ids
            self._prompt_ids = ids
            # generate() keeps [bos] + prompt tokens (without [CLS]/[SEP]) before the new tokens.
            self._prefix_len = 1 + ids.shape[1] - 2

    @property
    def info(self) -> CaptionerInfo:
        s = self.settings
        return CaptionerInfo(
            s.name, self.device, self.dtype_name, self.batch_size, s.prompt, s.max_new_tokens, s.num_beams
        )

    def preprocess(self, image: Image.Image) -> Any:
        """PIL image -> what ``generate_ids`` takes for it. Safe to call from many threads.

        Exact input (draft decoding off): the processor's own pixel tensor (3 x H x W, float32), as the
        model card makes it. Fast input (``device_preprocess``): the decoded photo as it is (H x W x 3,
        uint8, in pinned memory on CUDA), so this thread only decodes; ``model_inputs`` resizes and
        normalizes a whole batch on the device."""
        if not self.device_preprocess:
            if self._exact is not None and image.mode == "RGB":
                return self._exact.pixels(image)
            return self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        import numpy as np
        import torch

        array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
        pixels = torch.empty(array.shape, dtype=torch.uint8, pin_memory=self.pin_memory)
        pixels.numpy()[...] = array  # one copy, straight into the (pinned) buffer
        return pixels

    def model_inputs(self, pixels: Sequence[Any]) -> torch.Tensor:
        """``preprocess`` results -> one batch on the device, in the model's dtype.

        Decoded photos (uint8) are copied to the device (asynchronously from pinned memory), resized
        to the model's input as the processor does (bicubic, antialiased, rounded and clipped to 0..255
        like its 8-bit result), then rescaled and normalized as one batch."""
        import torch

        if pixels[0].dtype != torch.uint8:
            batch = torch.stack(list(pixels), out=self._staging(pixels[0], len(pixels)))
            return batch.to(self.device, non_blocking=self.pin_memory).to(self.torch_dtype)
        resized = [self._resize(photo.to(self.device, non_blocking=self.pin_memory)) for photo in pixels]
        batch = torch.cat(resized)
        batch = (batch * self._rescale - self._mean) / self._std
        return batch.to(self.torch_dtype)

    def _staging(self, first: torch.Tensor, n: int) -> torch.Tensor:
        import torch

        return torch.empty((n, *first.shape), dtype=first.dtype, pin_memory=self.pin_memory)

    def _resize(self, photo: torch.Tensor) -> torch.Tensor:
        """H x W x 3 uint8 on the device -> 1 x 3 x h x w float32 in 0..255 at the model's input size."""
        import torch.nn.functional as F

        image = photo.permute(2, 0, 1).unsqueeze(0).float()
        if tuple(image.shape[-2:]) != self._input_hw:
            image = F.interpolate(image, size=self._input_hw, mode="bicubic", align_corners=False, antialias=True)
        return image.round_().clamp_(0, 255)

    def generate_ids(self, pixels: Sequence[Any]) -> list[list[int]]:
        """Token ids of the new caption tokens (prompt and bos stripped) for each ``preprocess`` result."""
        import torch

        with self._lock, torch.inference_mode():
            batch = self.model_inputs(pixels)
            kwargs: dict[str, Any] = {
                "pixel_values": batch,
                "max_new_tokens": self.settings.max_new_tokens,
                "num_beams": self.settings.num_beams,
            }
            if self.settings.min_new_tokens:
                kwargs["min_new_tokens"] = self.settings.min_new_tokens
            if self.settings.no_repeat_ngram_size:
                kwargs["no_repeat_ngram_size"] = self.settings.no_repeat_ngram_size
            if self._bad_words_ids:
                kwargs["bad_words_ids"] = self._bad_words_ids
            if self._prompt_ids is not None:
                # a real copy per row: generate() writes the bos id into column 0 in place
                ids = self._prompt_ids.to(self.device).repeat(batch.shape[0], 1)
                kwargs["input_ids"] = ids
                kwargs["attention_mask"] = torch.ones_like(ids)
            out = self.model.generate(**kwargs)
        return [_strip_padding(row[self._prefix_len :].tolist(), self._pad_id) for row in out.cpu()]

    def decode(self, ids: Sequence[int]) -> str:
        return clean_caption(self.processor.decode(ids, skip_special_tokens=True))

    def caption(self, pixels: Sequence[Any]) -> list[str]:
        return [self.decode(ids) for ids in self.generate_ids(pixels)]

    def close(self) -> None:
        """Nothing to stop: the model lives in this process and goes with the object."""


@dataclass(frozen=True)
class ExactInput:
    """BLIP's image processor, the same numbers for a fraction of its CPU: resize (PIL, the processor's
    filter), rescale in float64 and cast to float32, normalize in float32, channels first.

    The processor does exactly these steps for an RGB photo, but first copies it (``convert("RGB")``
    of an image that is RGB already), turns it into an array, back into an image to resize it, and
    back again: on the corpus photos that was about half of its 7.6 ms a photo. The tensors are
    bit-identical (``tests/test_captioner.py`` compares them on every corpus photo); a processor
    configured otherwise (a crop, padding, a size by shortest edge, no rescale or normalisation) is
    not mirrored (:meth:`of`)."""

    height: int
    width: int
    resample: int
    rescale: float
    mean: tuple[float, ...]  # per channel, as the processor's float32 values
    std: tuple[float, ...]

    @classmethod
    def of(cls, processor: Any) -> ExactInput | None:
        """The mirror of ``processor``; None when it does anything this class does not do."""
        import numpy as np

        size = processor.size
        height, width = size.get("height"), size.get("width")
        other_sizes = [key for key, value in dict(size).items() if value and key not in ("height", "width")]
        plain = (
            processor.do_resize
            and not other_sizes  # a shortest edge or maximum would decide the resize instead
            and height
            and width
            and not getattr(processor, "do_center_crop", False)
            and not getattr(processor, "do_pad", False)
            and getattr(processor, "do_convert_rgb", True) is not False
            and processor.resample is not None
        )
        if not plain or not processor.do_rescale or not processor.do_normalize:
            return None
        mean = np.array(processor.image_mean, dtype=np.float32)
        std = np.array(processor.image_std, dtype=np.float32)
        if mean.shape != (3,) or std.shape != (3,):
            return None
        rescale = float(processor.rescale_factor)
        return cls(int(height), int(width), int(processor.resample), rescale, tuple(mean.tolist()), tuple(std.tolist()))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """An RGB photo -> the processor's ``pixel_values[0]`` (3 x H x W, float32)."""
        import numpy as np
        import torch

        from phototag.imaging import resize_for_model

        resized = resize_for_model(image, (self.height, self.width), self.resample)
        # transformers' order and precisions: rescale in float64, cast, normalize in float32
        scaled = (resized.astype(np.float64) * self.rescale).astype(np.float32)
        normalized = (scaled - np.array(self.mean, dtype=np.float32)) / np.array(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of every Linear layer (weights int8 per output channel, activations
    quantized at each call): the CPU's integer matrix kernels, a quarter of the Linear weights' memory.

    ``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of the torchao package, but in
    torch 2.13 it is still there, works, and needs no further dependency; its deprecation warnings
    are for developers, not for a person captioning photos, so they are silenced here."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.ao\.quantization")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*quantize_per_tensor")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # a scale per output row of each weight: closer to fp32 than one per matrix, at the same speed
        spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)  # inplace: no second copy


def bad_words_ids(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """Token id sequences for ``generate(bad_words_ids=...)``: each word as the tokenizer splits it, with
    and without a leading space (the same for BLIP's WordPiece, different for byte-level tokenizers).
    Words the vocabulary cannot spell (unknown pieces) are left out: banning [UNK] would ban others."""
    unknown = tokenizer.unk_token_id
    found: list[list[int]] = []
    for word in words:
        for text in (word, " " + word):
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if ids and unknown not in ids and ids not in found:
                found.append(ids)
    return found


def _strip_padding(ids: list[int], pad_id: int | None) -> list[int]:
    """Drop the padding a batch adds after a caption that ended early (a lone run is not padded)."""
    end = len(ids)
    while pad_id is not None and end > 0 and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]


def _from_pretrained(cls: Any, source: str, **kwargs: Any) -> Any:
    """Use the local cache without asking the hub first; go online only when it is not cached."""
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        return cls.from_pretrained(source, **kwargs)


def _load_hint(name: str, exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if Path(name).expanduser().exists():
        return f"cannot load model from folder {name!r}: {first}"
    return f"cannot load model {name!r}: it is not in the local cache and could not be downloaded ({first}); {HUB_HINT}"
