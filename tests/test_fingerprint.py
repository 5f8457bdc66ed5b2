"""A photo's content fingerprint (phototag.fingerprint)."""

from __future__ import annotations

from pathlib import Path

from phototag.fingerprint import content_hash


def test_content_hash_sees_head_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 3_000_000)
    first = content_hash(path)
    path.write_bytes(b"a" * 2_999_999 + b"b")
    assert content_hash(path) != first
