"""The model in a process of its own (``[model] process``): the caption stage's backend when the GIL
would otherwise be the limit.

On a fast GPU a batch's time goes mostly to ``generate()``'s Python: each new token launches hundreds
of small kernels, one Python call each. In the pipeline's process that Python shares one GIL with
the decode, write and index threads (image conversion, exiftool's JSON, SQLAlchemy): measured on an
H200 (issue 11), the model call took 2.5x as long inside the pipeline as alone, and the pipeline
delivered 0.36-0.40 of the raw model's photos/s. A child process has a GIL of its own.

The child (``python -m phototag.model_process``, started like exiftool: its own session so a
terminal's Ctrl-C does not cut a batch short, ended with phototag by the parent-death signal) loads
:class:`~phototag.captioner.Captioner` from the same ``[model]`` settings. The decode threads here
send it uint8 pixels: the decoded photo as it is when the model resizes on its device (fast input),
else resized to the model's input on this side as BLIP's processor does, so the child only rescales
and normalizes. Pixels cross as raw bytes into the child's (pinned, on CUDA) buffers, captions come
back. A child that dies mid-batch is started again and the batch sent again once; a batch that loses
it twice fails its photos with the reason (transient: the next run retries them). ``auto`` uses a
child on CUDA only: on a CPU the model's own threads are the limit, not the GIL, and a second copy of
torch would cost memory for nothing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phototag.caption_backend import CaptionBackend, CaptionFailure
from phototag.captioner import ModelLoadError
from phototag.children import start_child
from phototag.config import ModelSettings
from phototag.failures import first_line
from phototag.imaging import resize_for_model

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

# How long a child that was asked to stop (its input closed) may take to exit before it is killed.
STOP_WAIT_S = 10.0
# A batch is sent this many times in all (a fresh child each time) before its photos fail.
ATTEMPTS = 2


def uses_process(settings: ModelSettings) -> bool:
    """Whether ``settings`` put the model in a child process (``auto``: when it runs on CUDA)."""
    if settings.process != "auto":
        return bool(settings.process)
    from phototag.captioner import pick_device

    return pick_device(settings.device, settings.dtype).startswith("cuda")


def local_captioner(settings: ModelSettings) -> CaptionBackend:
    """The model on this machine: in a child process when ``settings`` ask for one, else in this one."""
    if uses_process(settings):
        return ProcessCaptioner(settings)
    from phototag.captioner import Captioner

    return Captioner(settings)


class ModelProcessError(RuntimeError):
    """The child failed one batch (e.g. CUDA out of memory); it keeps serving the next."""


class _ChildGone(Exception):
    """The child's pipe closed: it ended (a crash, an out-of-memory kill) or is ending."""


class ProcessCaptioner:
    """The caption stage's backend with BLIP in a child process (see the module docstring)."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._lock = threading.Lock()
        info = self._start()
        self.batch_size = int(info["batch_size"])
        self.input_size = int(info["input_size"])
        self.draft_decode = bool(info["draft_decode"])
        self.device_preprocess = bool(info["device_preprocess"])
        self.device = str(info["device"])
        self._resample = int(info["resample"])
        log.info("the model runs in process %d on %s", self.pid, self.device)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- the child ---------------------------------------------------------------------------------

    def _start(self) -> dict[str, Any]:
        """Start a child and wait for its model to load; ModelLoadError (one line) when it cannot."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self._process = start_child(
                [sys.executable, "-m", "phototag.model_process", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                env=_child_environment(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            raise ModelLoadError(f"cannot start the model process: {exc}") from exc
        os.close(to_child_r)
        os.close(from_child_w)
        self._to_child, self._from_child = (
            Connection(to_child_w, readable=False),
            Connection(from_child_r, writable=False),
        )
        try:
            self._to_child.send((self.settings, logging.getLogger().getEffectiveLevel()))
            kind, payload = self._from_child.recv()
        except (EOFError, OSError):
            code = self._reap()
            raise ModelLoadError(f"the model process ended while loading the model ({_how(code)})") from None
        except BaseException:  # e.g. Ctrl-C while the model loads: no child left behind
            self._reap(wait=0)
            raise
        if kind == "error":
            self._reap()
            raise ModelLoadError(str(payload))
        return dict(payload)

    def _reap(self, *, wait: float = STOP_WAIT_S) -> int | None:
        """Close the pipes and end the child (waiting ``wait`` s first); its exit status."""
        for connection in (self._to_child, self._from_child):
            if connection is not None:
                connection.close()
        self._to_child = self._from_child = None
        process, self._process = self._process, None
        if process is None:
            return None
        try:
            return process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def close(self) -> None:
        with self._lock:
            self._reap()

    # -- the backend -------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """A decoded photo -> uint8 pixels for the child: as decoded when the child resizes on its device,
        else resized to the model's input here as BLIP's processor does."""
        if not self.device_preprocess:
            return resize_for_model(image, self.input_size, self._resample)
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)

    def caption(self, pixels: Sequence[Any]) -> list[str | CaptionFailure]:
        if not pixels:
            return []
        with self._lock:
            lost = "the model process had ended"
            for _ in range(ATTEMPTS):
                try:
                    if self._process is None:
                        self._same_model(self._start())
                    return list(self._ask(pixels))
                except _ChildGone:
                    # gone, or its pipe closed while it lingers: do not wait for it, end it
                    lost = f"the model process ended while captioning ({_how(self._reap(wait=1.0))})"
                    log.warning("%s; starting it again", lost)
                except ModelLoadError as exc:  # it loaded before: the photos are not at fault
                    return [CaptionFailure(f"{lost}; starting it again failed: {exc}", transient=True) for _ in pixels]
            return [CaptionFailure(f"{lost}, twice", transient=True) for _ in pixels]

    def _same_model(self, info: dict[str, Any]) -> None:
        """A child started again must take the pixels this side makes for the first one."""
        if (int(info["input_size"]), bool(info["device_preprocess"])) != (self.input_size, self.device_preprocess):
            self._reap(wait=0)
            raise ModelLoadError(f"the model process started again on {info['device']} wants other input")

    def _ask(self, pixels: Sequence[Any]) -> list[str]:
        assert self._to_child is not None and self._from_child is not None
        arrays = [np.ascontiguousarray(p, dtype=np.uint8) for p in pixels]
        try:
            self._to_child.send(("caption", [a.shape for a in arrays]))
            for array in arrays:
                self._to_child.send_bytes(array.reshape(-1).data)  # flat: send_bytes counts a view's first axis
            kind, payload = self._from_child.recv()
        except (EOFError, OSError):
            raise _ChildGone from None
        except BaseException:  # e.g. Ctrl-C mid-message: the pipes are out of step, never reuse them
            self._reap(wait=0)
            raise
        if kind == "error":
            raise ModelProcessError(str(payload))
        return [str(text) for text in payload]


def _child_environment() -> dict[str, str]:
    """The child imports this phototag: from a checkout run in place, that needs its folder on
    PYTHONPATH; an installed one (site-packages) is found as it is, and putting site-packages first
    would let it shadow the standard library."""
    import site

    root = str(Path(__file__).resolve().parents[1])
    installed = {os.path.realpath(p) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if os.path.realpath(root) in installed:
        return dict(os.environ)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def _how(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


# -- the child's side ---------------------------------------------------------------------------------


def _described(exc: BaseException) -> str:
    """``Type: first line`` (the type alone when there is no message): what failed in the child."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def serve(requests: Connection, replies: Connection) -> None:
    """The child: load the model named by the first message, then caption every batch sent, until the
    parent closes the pipe.

    Any failure of a load or a batch is answered with its one-line reason rather than ending the
    process (``except Exception`` on purpose: this is a process boundary, and an unexpected error type
    must fail its batch as it would in phototag's own process, not kill the model and be retried)."""
    import torch

    from phototag.captioner import Captioner

    settings, log_level = requests.recv()
    logging.basicConfig(level=max(log_level, logging.WARNING), format="phototag (model process): %(message)s")
    try:
        captioner = Captioner(settings)
        info = {
            "batch_size": captioner.batch_size,
            "input_size": captioner.input_size,
            "draft_decode": captioner.draft_decode,
            "device_preprocess": captioner.device_preprocess,
            "device": captioner.device,
            "resample": int(captioner.processor.image_processor.resample),
        }
    except ModelLoadError as exc:
        replies.send(("error", str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - see the docstring
        replies.send(("error", f"cannot load model {settings.name!r}: {_described(exc)}"))
        return
    replies.send(("ready", info))
    while True:
        try:
            _, shapes = requests.recv()
        except EOFError:  # the parent is done
            return
        # every photo's bytes are read before anything can fail, so the pipe stays in step
        photos = [_received(requests, tuple(shape), captioner.pin_memory, torch) for shape in shapes]
        try:
            reply: Any = ("ok", captioner.caption(photos))
        except Exception as exc:  # noqa: BLE001 - see the docstring (e.g. CUDA out of memory)
            reply = ("error", _described(exc))
        replies.send(reply)


def _received(requests: Connection, shape: tuple[int, ...], pinned: bool, torch: Any) -> Any:
    """One photo's bytes, read straight into the tensor the model's input is copied from (page-locked on
    CUDA, unless that memory has run out)."""
    try:
        photo = torch.empty(shape, dtype=torch.uint8, pin_memory=pinned)
    except RuntimeError:
        photo = torch.empty(shape, dtype=torch.uint8)
    requests.recv_bytes_into(photo.numpy().reshape(-1))  # flat: recv_bytes_into counts a view's first axis
    return photo


def main(argv: Sequence[str]) -> None:
    # stdout is the terminal's or the parent's: no library's print may reach it mid-protocol (the pipes
    # are separate), but keep it off anyway so a stray print cannot garble the parent's output
    os.dup2(2, 1)
    requests, replies = Connection(int(argv[0]), writable=False), Connection(int(argv[1]), readable=False)
    try:
        serve(requests, replies)
    except (EOFError, BrokenPipeError):  # the parent went away mid-message
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
