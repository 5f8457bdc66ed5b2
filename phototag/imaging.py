"""Open a photo for the model: decode, apply EXIF orientation, draft-decode big JPEGs, refuse junk.

Every failure is an :class:`ImageError` whose message is one line a person can act on. Which names are
photos is decided in :mod:`phototag.formats` (re-exported here).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from phototag.failures import first_line, is_transient_os_error
from phototag.formats import IMAGE_EXTENSIONS, RAW_EXTENSIONS, is_image_path, is_raw_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "RAW_EXTENSIONS",
    "ImageError",
    "is_image_path",
    "is_raw_path",
    "load_rgb",
]

try:
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORT = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency; kept for odd installs
    HEIF_SUPPORT = False

# Large enough for 100+ megapixel medium-format cameras and panoramas, small enough to stop a
# decompression bomb before it eats the machine's memory.
MAX_PIXELS = 400_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """A photo that cannot be decoded; the message is a one-line reason."""


def _open(source: Path | io.BytesIO, min_side: int, draft: bool) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(source)
        if draft and min_side and image.format == "JPEG":
            # draft() picks the largest DCT scale that keeps both sides >= the requested size.
            width, height = image.size
            short = min(width, height)
            if short >= 2 * min_side:
                factor = short / min_side
                image.draft("RGB", (int(width / factor), int(height / factor)))
        image.load()
    return image


def load_rgb(path: Path, *, min_side: int = 0, draft: bool = False, preview: bytes | None = None) -> Image.Image:
    """Decode ``path`` (or a RAW file's embedded ``preview``) to an upright RGB image.

    ``min_side`` is the model's input resolution; draft decoding may shrink a JPEG on decode but never
    below it on either side.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageError("empty file (0 bytes)")
        source: Path | io.BytesIO = io.BytesIO(preview) if preview is not None else path
        image = _open(source, min_side, draft)
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright photo
        if image.mode != "RGB":
            image = _to_rgb(image)
        return image
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("file vanished before it could be read") from None
    except PermissionError:
        raise ImageError("permission denied reading the file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large to decode safely ({first_line(exc)})") from None
    except UnidentifiedImageError:
        raise ImageError("not a readable image (unknown or damaged format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, OSError) and is_transient_os_error(exc):
            raise  # the disk's trouble (I/O error), not the photo's: the caller retries it later
        raise ImageError(f"damaged or truncated image: {first_line(exc)}") from None


def resize_for_model(image: Image.Image, size: int | tuple[int, int], resample: int) -> np.ndarray:
    """A decoded photo -> uint8 pixels at the model's input, ``size`` x ``size`` (or ``(height, width)``)
    x 3, resized as BLIP's processor does (what crosses the network to a Ray model actor or a model
    process, and what the exact input is made from)."""
    height, width = (size, size) if isinstance(size, int) else size
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb.resize((width, height), resample=Image.Resampling(resample)), dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda v: v / 256).convert("RGB")
    return image.convert("RGB")
