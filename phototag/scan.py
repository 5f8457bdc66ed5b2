"""Walk folders and yield the photos in them, streaming (a million files never sit in memory)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from phototag.formats import is_image_path


def walk_photos(roots: Iterable[Path]) -> Iterator[Path]:
    """Absolute paths of image files under ``roots`` (files given directly are yielded as they are).

    Hidden files and folders are skipped; folder symlinks are not followed (no loops, no escaping
    the library); unreadable folders are skipped.
    """
    for root in roots:
        root = Path(os.path.abspath(os.path.expanduser(root)))
        if root.is_file():
            if is_image_path(root):
                yield root
            continue
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    items = sorted(entries, key=lambda e: e.name)
            except OSError:
                continue
            subfolders = []
            for entry in items:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subfolders.append(Path(entry.path))
                    elif entry.is_file() and is_image_path(entry.name):
                        yield Path(entry.path)
                except OSError:
                    continue
            stack.extend(reversed(subfolders))


def count_photos(roots: Iterable[Path]) -> int:
    return sum(1 for _ in walk_photos(roots))
