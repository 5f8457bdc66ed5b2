"""Query embeddings over a local socket: a long-running process (``phototag watch``) keeps the
embedding model loaded and answers; ``phototag search`` asks it first, so a search by meaning does not
spend seconds loading torch and the model.

The socket lives in ``<data dir>/run/`` (a folder only the owner can enter) and is itself owner-only;
the client also refuses a socket owned by another user. The protocol is one JSON line each way:
``{"model": ..., "text": ...}`` -> ``{"vector": base64 float32}`` or ``{"error": ...}``. Anything that
goes wrong on the client side (no daemon, another model, a timeout) means "embed it yourself".

A daemon serves it with two lines (the model loads on the first request, or is already loaded by
the pipeline's embedding thread)::

    server = EmbedServer(default_socket_path(), settings.embedding_model()).start()
    ...
    server.close()
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from phototag.embeddings import Embedder

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


def default_socket_path() -> Path:
    from phototag.config import data_dir

    return data_dir() / "run" / "embed.sock"


def ask(path: Path, model: str, text: str, timeout: float = 2.0) -> np.ndarray | None:
    """The daemon's vector for ``text`` from ``model``, or None (no daemon, other model, error)."""
    try:
        info = os.stat(path)
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
            return None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(str(path))
            client.sendall(json.dumps({"model": model, "text": text}).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = client.recv(65536)
                if not chunk:
                    break
                reply += chunk
        answer = json.loads(reply)
    except (OSError, ValueError):
        return None
    if "vector" not in answer:
        log.debug("embedding daemon declined: %s", answer.get("error"))
        return None
    import numpy as np

    return np.frombuffer(base64.b64decode(answer["vector"]), dtype="<f4").copy()


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            answer = self.server.answer(str(request["model"]), str(request["text"]))
        except Exception as exc:  # a bad request gets an error line, never a dead server
            answer = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(answer).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    answer: Callable[[str, str], dict[str, Any]]


class EmbedServer:
    """Answers query-embedding requests for one model until :meth:`close`."""

    def __init__(self, path: Path, model_name: str, loader: Callable[[str], Embedder] | None = None) -> None:
        from phototag.embeddings import load_embedder, model_id

        self.path = Path(path)
        self.model = model_id(model_name)
        self._model_name = model_name
        self._loader = loader or load_embedder
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> EmbedServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        if self.path.exists() or self.path.is_symlink():
            if ask(self.path, self.model, "ping", timeout=0.5) is not None:
                raise OSError(f"another process already answers on {self.path}")
            self.path.unlink()
        server = _Server(str(self.path), _Handler)
        os.chmod(self.path, 0o600)
        server.answer = self._answer
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="phototag-embed-socket", daemon=True)
        self._thread.start()
        return self

    def _answer(self, model: str, text: str) -> dict[str, Any]:
        if model != self.model:
            return {"error": f"this daemon embeds with {self.model}, not {model}"}
        vector = self._loader(self._model_name).encode([text])[0]
        return {"vector": base64.b64encode(vector.astype("<f4").tobytes()).decode()}

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with contextlib.suppress(OSError):
            self.path.unlink()
