"""Search results you can look at: a self-contained HTML contact sheet.

Each hit becomes a small thumbnail (EXIF orientation applied, RAW files from their embedded preview)
embedded as a data URI, with its caption, date, score and a link to the file. Thumbnails are cached
in the data dir, keyed by path, size and mtime, so a second sheet of the same photos is instant. The
file has no external references: it can be mailed or moved and still shows every photo.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from phototag.search import SearchHit

log = logging.getLogger(__name__)

THUMB_SIZE = 320  # longest side, pixels; shown at half size, sharp on high-density screens
JPEG_QUALITY = 82
_MISSING = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120"><rect width="160" height="120" '
        b'fill="#ddd"/><text x="80" y="64" font-family="sans-serif" font-size="13" text-anchor="middle" '
        b'fill="#555">no preview</text></svg>'
    ).decode()
)


def thumbnails_dir() -> Path:
    from phototag.config import data_dir

    return data_dir() / "thumbnails"


class Thumbnails:
    """JPEG thumbnails, made once per (photo, size, mtime) and kept under ``cache_dir``."""

    def __init__(
        self, cache_dir: Path, size: int = THUMB_SIZE, raw_preview: Callable[[Path], bytes | None] | None = None
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.size = size
        self._raw_preview = raw_preview

    def _cache_path(self, path: Path, stat: os.stat_result) -> Path:
        key = hashlib.sha256(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{self.size}".encode())
        digest = key.hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.jpg"

    def get(self, path: Path) -> bytes | None:
        """The thumbnail's JPEG bytes, or None when the photo cannot be read (one log line why)."""
        from phototag.imaging import ImageError, is_raw_path, load_rgb

        try:
            stat = os.stat(path)
        except OSError as exc:
            log.warning("no thumbnail for %s: %s", path, exc.strerror or exc)
            return None
        cached = self._cache_path(path, stat)
        try:
            return cached.read_bytes()
        except OSError:
            pass
        try:
            preview = self._raw_preview(path) if self._raw_preview and is_raw_path(path) else None
            image = load_rgb(path, min_side=self.size, draft=True, preview=preview)
        except ImageError as exc:
            log.warning("no thumbnail for %s: %s", path, exc)
            return None
        except Exception as exc:  # a RAW preview read can fail in many ways; the sheet goes on
            log.warning("no thumbnail for %s: %s", path, exc)
            return None
        from PIL import Image

        image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
        data = buffer.getvalue()
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        except OSError as exc:  # a read-only data dir only costs speed
            log.debug("cannot cache thumbnail %s: %s", cached, exc)
        return data


_STYLE = """
:root { color-scheme: light dark; --fg: #222; --bg: #fafafa; --muted: #666; --card: #fff; }
@media (prefers-color-scheme: dark) { :root { --fg: #eee; --bg: #181818; --muted: #aaa; --card: #242424; } }
body { font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 1.5em; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } header p { color: var(--muted); margin: 0 0 1.2em; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 14px; }
figure { margin: 0; background: var(--card); border-radius: 6px; padding: 8px; box-shadow: 0 1px 3px #0003; }
figure a.photo { display: flex; align-items: center; justify-content: center; height: 170px; }
figure img { max-width: 100%; max-height: 170px; width: auto; height: auto; border-radius: 3px; }
figcaption { margin-top: 6px; } figcaption .caption { display: block; }
figcaption .meta { display: block; color: var(--muted); font-size: 12px; margin-top: 3px; overflow-wrap: anywhere; }
figcaption .rank { font-weight: 600; }
"""


def render(hits: Sequence[SearchHit], thumbnails: Thumbnails, *, title: str, subtitle: str = "") -> str:
    """The contact sheet's HTML for ``hits`` (best first)."""
    figures = []
    for rank, hit in enumerate(hits, start=1):
        data = thumbnails.get(Path(hit.path))
        src = "data:image/jpeg;base64," + base64.b64encode(data).decode() if data else _MISSING
        link = html.escape(Path(hit.path).as_uri(), quote=True)
        caption = html.escape(hit.caption or "(no caption)")
        date = html.escape(hit.taken_at.replace("T", " ")[:16]) if hit.taken_at else "no date"
        name = html.escape(hit.path)
        figures.append(
            f'<figure><a class="photo" href="{link}"><img src="{src}" alt="{caption}"></a>'
            f'<figcaption><span class="caption"><span class="rank">{rank}.</span> {caption}</span>'
            f'<span class="meta">{date} · score {hit.score:.4g}<br><a href="{link}">{name}</a></span>'
            f"</figcaption></figure>"
        )
    empty = "<p>No photos matched.</p>" if not hits else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>\n"
        f"<main>\n" + "\n".join(figures) + f"\n</main>{empty}\n</body></html>\n"
    )


def write_contact_sheet(
    hits: Sequence[SearchHit], target: Path, thumbnails: Thumbnails, *, query: str, mode: str
) -> Path:
    """Write the sheet atomically to ``target``; returns its absolute path."""
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    subtitle = f"{len(hits)} photo{'s' if len(hits) != 1 else ''} · {mode} search · {when}"
    page = render(hits, thumbnails, title=f"phototag: {query}" if query else "phototag", subtitle=subtitle)
    target = Path(os.path.abspath(target.expanduser()))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target
