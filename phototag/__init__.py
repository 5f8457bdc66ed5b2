"""phototag: caption a photo library with BLIP and make it searchable."""

from __future__ import annotations

__version__ = "0.1.0"
