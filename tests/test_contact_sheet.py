"""Contact sheets: thumbnails from real photos (orientation, RAW previews, cache), self-contained HTML,
and a real browser that loads every thumbnail."""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from phototag.contact_sheet import Thumbnails, write_contact_sheet
from phototag.metadata import ExifToolSession
from phototag.search import SearchHit
from tests.conftest import copy_from_corpus


def hit(path: Path, caption: str = "a caption", taken_at: str | None = "2024-06-01T10:00:00") -> SearchHit:
    return SearchHit(str(path), caption, 0.5, "model", taken_at)


def test_thumbnails_are_upright_small_and_cached(tmp_path: Path) -> None:
    upright, turned = copy_from_corpus(
        ["jpg/orientation/portrait_1.jpg", "jpg/orientation/portrait_6.jpg"], tmp_path / "photos"
    )
    thumbs = Thumbnails(tmp_path / "cache", size=64)
    sizes = []
    for photo in (upright, turned):
        data = thumbs.get(photo)
        assert data is not None
        with Image.open(io.BytesIO(data)) as image:
            sizes.append(image.size)
            assert image.format == "JPEG" and max(image.size) == 64
    assert sizes[0] == sizes[1] and sizes[0][0] < sizes[0][1]  # portrait_6 is stored sideways
    cached = list((tmp_path / "cache").rglob("*.jpg"))
    assert len(cached) == 2
    cached[0].write_bytes(b"cached bytes")  # the cache is read, not remade
    assert {thumbs.get(upright), thumbs.get(turned)} >= {b"cached bytes"}
    turned.touch()  # a changed photo gets a new thumbnail
    assert thumbs.get(turned) not in (None, b"cached bytes") and len(list((tmp_path / "cache").rglob("*.jpg"))) == 3


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_raw_files_ask_for_their_preview_and_unreadable_files_get_a_placeholder(tmp_path: Path) -> None:
    nef, dng, broken, jpeg = copy_from_corpus(
        ["raw/Nikon.nef", "raw/DNG.dng", "jpg/corrupted.jpg", "jpg/gps/DSCN0010.jpg"], tmp_path / "photos"
    )
    (tmp_path / "photos" / "empty.jpg").write_bytes(b"")
    asked: list[str] = []
    with ExifToolSession() as exiftool:

        def preview(path: Path) -> bytes | None:
            asked.append(path.name)
            return exiftool.preview(path)

        thumbs = Thumbnails(tmp_path / "cache", size=96, raw_preview=preview)
        assert thumbs.get(jpeg) is not None
        # the corpus RAW files had their image data stripped: the NEF has nothing to show, the DNG a tiny one
        assert thumbs.get(nef) is None
        dng_thumb = thumbs.get(dng)
        assert dng_thumb is not None and Image.open(io.BytesIO(dng_thumb)).format == "JPEG"
        assert asked == ["Nikon.nef", "DNG.dng"]
        assert thumbs.get(tmp_path / "photos" / "empty.jpg") is None
        assert thumbs.get(tmp_path / "photos" / "gone.jpg") is None
        damaged = thumbs.get(broken)  # never raises: a thumbnail, or None and a log line
        assert damaged is None or Image.open(io.BytesIO(damaged)).format == "JPEG"
        sheet = write_contact_sheet([hit(jpeg), hit(nef)], tmp_path / "s.html", thumbs, query="raw", mode="keyword")
    page = sheet.read_text()
    assert page.count("<figure>") == 2
    assert page.count("data:image/jpeg;base64,") == 1 and page.count("data:image/svg+xml;base64,") == 1


def test_sheet_is_self_contained_and_escaped(tmp_path: Path) -> None:
    (photo,) = copy_from_corpus(["jpg/gps/DSCN0010.jpg"], tmp_path / "we <b>&'\" photos")
    thumbs = Thumbnails(tmp_path / "cache", size=64)
    sheet = write_contact_sheet(
        [hit(photo, caption="<script>alert(1)</script> & a dog")],
        tmp_path / "out" / "s.html",
        thumbs,
        query='dog "<b>"',
        mode="hybrid",
    )
    page = sheet.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; a dog" in page
    assert photo.as_uri() in page  # the link to the file, percent-encoded
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/jpeg;base64,")
    Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1]))).verify()
    assert not re.search(r'(src|href)="(?!data:|file:)', page)  # nothing to fetch from anywhere
    empty = write_contact_sheet([], tmp_path / "empty.html", thumbs, query="nothing", mode="keyword").read_text()
    assert "No photos matched." in empty


# -- a real browser ---------------------------------------------------------------------------------
