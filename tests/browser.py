"""A real browser for the tests of contact sheets: headless Chromium loads a page and reports the
natural size of every image (so a thumbnail that does not decode shows), or takes a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.components import unavailable

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Appended to a copy of the sheet: once every <img> is complete, write what each decoded to into the DOM.
PROBE = """<script>
function probe() {
  const images = Array.from(document.images);
  if (!images.every(i => i.complete)) { setTimeout(probe, 20); return; }
  document.body.setAttribute('data-probe', images.map(i => i.naturalWidth + 'x' + i.naturalHeight).join(' '));
}
window.addEventListener('load', probe);
</script></body>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        unavailable("browser", "chromium is not installed (.ci/run installs Debian's chromium with apt)")
    return found


def loaded_images(page: Path, tmp_path: Path) -> list[tuple[int, int]]:
    """Open ``page`` in headless Chromium; the natural size of every image after loading."""
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE))
    done = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert match is not None, f"the page did not finish loading: {done.stderr[-1500:]}"
    return [tuple(int(n) for n in size.split("x")) for size in match.group(1).split()]  # type: ignore[misc]


def screenshot(page: Path, target: Path, tmp_path: Path) -> None:
    subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'chromium-shot'}",
            "--window-size=1100,800",
            "--virtual-time-budget=10000",
            f"--screenshot={target}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
