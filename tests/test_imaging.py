from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from phototag.imaging import ImageError, is_image_path, load_rgb


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims a huge size: the classic decompression bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_with_a_reason(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 40000, 40000)
    with pytest.raises(ImageError, match="too large"):
        load_rgb(bomb)


@pytest.mark.parametrize(
    ("content", "reason"), [(b"", "empty file"), (b"hello, not a photo\n", "not a readable image")]
)
def test_junk_files_fail_with_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        load_rgb(path)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_fails(tmp_path: Path, corpus: Path) -> None:
    data = (corpus / "jpg/gps/DSCN0010.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated|damaged"):
        load_rgb(path)


def _distance(a: Image.Image, b: Image.Image) -> float:
    a, b = a.resize((16, 12)), b.resize((16, 12))
    return sum(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes(), strict=True)) / len(a.tobytes())


def test_every_orientation_comes_out_upright(corpus: Path) -> None:
    # the eight files hold one picture stored in the eight EXIF orientations (plus a different digit each)
    reference = load_rgb(corpus / "jpg/orientation/landscape_1.jpg")
    for n in range(2, 9):
        path = corpus / f"jpg/orientation/landscape_{n}.jpg"
        as_stored = Image.open(path).convert("RGB").resize(reference.size)
        assert _distance(load_rgb(path), reference) < 20 < _distance(as_stored, reference), n


def test_draft_decode_never_goes_below_the_model_input(corpus: Path) -> None:
    big = corpus / "generated/big_4000x3000_q92.jpg"
    drafted = load_rgb(big, min_side=384, draft=True)
    assert min(drafted.size) >= 384 and drafted.size[0] < 4000
    assert load_rgb(big, min_side=384, draft=False).size == (4000, 3000)
    assert load_rgb(corpus / "jpg/gps/DSCN0010.jpg", min_side=384, draft=True).size == (640, 480)


def test_modes_become_rgb(tmp_path: Path) -> None:
    for mode in ("RGBA", "LA", "P", "I;16", "L", "CMYK"):
        path = tmp_path / f"{mode.replace(';', '')}.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
        Image.new(mode, (40, 30)).save(path)
        assert load_rgb(path).mode == "RGB"


def test_heic_and_avif_decode(corpus: Path) -> None:
    assert load_rgb(corpus / "generated/gen_heic.heic").size == (640, 480)
    assert load_rgb(corpus / "generated/gen_avif.avif").size == (640, 480)


def test_image_paths() -> None:
    assert is_image_path("a/IMG_1.JPG") and is_image_path("x.heic") and is_image_path("r.NEF")
    assert not is_image_path("a/.hidden.jpg") and not is_image_path("a.jpg.xmp") and not is_image_path("notes.txt")
