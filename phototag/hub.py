"""Is a model on this machine, and can the model hub be reached? Cheap checks made before torch loads.

huggingface_hub retries an unreachable hub five times with backoff for every file it asks for: a first
run on a machine without network took over a minute to fail, with dozens of warning lines. These
checks answer in a few seconds instead, so a missing model fails (or turns search by meaning off) with
one line that says what to do. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT = 3.0  # seconds for name lookup and TCP connect together

_probe_lock = threading.Lock()
_probe_results: dict[str, str | None] = {}


def looks_local(name: str) -> bool:
    """A path rather than a hub id ("org/name"): starts with /, . or ~, or has more than one slash."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def offline_mode() -> bool:
    """The user told huggingface_hub never to use the network (``HF_HUB_OFFLINE=1``)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_cached(repo_id: str, filename: str = "config.json") -> bool:
    """The hub model ``repo_id`` has ``filename`` in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repo id: the loader will say so
        return False
    return isinstance(found, str)


def unreachable_reason(url: str | None = None, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a TCP connection to the hub opens within ``timeout``, else why not (one phrase).

    The lookup and connect run on a helper thread so a resolver that hangs (no network, no DNS)
    cannot hold the caller longer than ``timeout``. Answers are remembered for the process.
    """
    url = url or endpoint()
    with _probe_lock:
        if url in _probe_results:
            return _probe_results[url]
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as exc:
            result.append(exc.strerror or str(exc) or type(exc).__name__)

    thread = threading.Thread(target=connect, name="phototag-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    reason = result[0] if result else f"no answer within {timeout:g} s"
    with _probe_lock:
        _probe_results[url] = reason
    return reason


def missing_model_reason(name: str) -> str | None:
    """Why the hub model ``name`` cannot be had right now (not cached, and offline mode or no hub),
    or None when it is cached or may be downloaded. Local folders are not this function's business."""
    if looks_local(name) or Path(name).expanduser().exists() or is_cached(name):
        return None
    if offline_mode():
        return "it is not in the local cache and HF_HUB_OFFLINE is set"
    reason = unreachable_reason()
    if reason is None:
        return None
    return f"it is not in the local cache and the model hub {endpoint()} cannot be reached ({reason})"


def quiet_hub_logging() -> None:
    """huggingface_hub logs each retry through its own handler and again through the root logger's:
    every line twice. Our own error says what failed, so its warnings are shown only with -vv."""
    from huggingface_hub.utils import logging as hub_logging

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        hub_logging.set_verbosity_error()
    hub_logging.get_logger().propagate = False
