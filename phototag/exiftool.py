"""The exiftool processes: long-running ``exiftool -stay_open`` children, their small protocol, a pool.

phototag talks to ExifTool through long-running processes (:class:`ExifTool`), started with ``-stay_open True
-@ -``: each command is written to its stdin as one argument per line, ended by ``-executeN``;
exiftool answers on stdout up to ``{readyN}``, and ``-echo4`` puts the exit status on stderr after
its messages. The protocol is a few dozen lines, so phototag owns it (no library's private reader to
patch): end-of-file on either pipe means exiftool died, which fails that call, and the next call
starts a fresh exiftool. One process answers one call at a time, so a session keeps a pool of them
(:class:`ExifToolPool`, one per core by default): each read or write borrows one for its whole
duration, and the pool starts another only when all are busy.

exiftool runs in its own session (a terminal's Ctrl-C reaches phototag alone, which then finishes the
photo in flight) and, on Linux, gets SIGTERM when phototag dies. File names reach it as the file
system's bytes; a name with a line break goes through a private alias (:class:`_SafeNames`). Values
are escaped for ``-ex`` (:func:`escape_value`).

:class:`MetadataError` is the one error the metadata rooms raise (``metadata``, ``mwg``,
``safe_write``, ``sidecars``, ``restore``): a one-line reason naming the file.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from phototag.children import start_child

log = logging.getLogger(__name__)

# Every command gets these: UTF-8 file names and UTF-8 EXIF text.
COMMON_ARGS = ("-charset", "utf8", "-charset", "exif=utf8")
_BLOCK_SIZE = 4096

EXIFTOOL_MISSING = (
    "exiftool not found: install it "
    "(Debian/Ubuntu: sudo apt-get install libimage-exiftool-perl; macOS: brew install exiftool)"
)


class MetadataError(Exception):
    """A metadata read or write failed; ``str(e)`` is a one-line reason naming the file.

    ``transient``: the trouble was not the photo's (disk full, I/O error, exiftool died), so a later run
    may retry it (see :mod:`phototag.failures`).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(" ".join(str(message).split()))
        self.transient = transient


def escape_value(value: str) -> str:
    """Escape a tag value for exiftool's ``-ex`` (XML) input mode.

    Values travel through exiftool's ``-@ -`` argument stream, one argument per line: a newline
    would end the argument, leading white space and one space after ``=`` are stripped. With ``-ex``
    exiftool un-escapes ``&amp;``-style entities in values, so these characters are sent as numeric
    character references and ``&`` as ``&amp;``.
    """
    out = []
    for ch in value:
        if ch == "&":
            out.append("&amp;")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"&#{ord(ch)};")
        else:
            out.append(ch)
    text = "".join(out)
    if text[:1] == " ":
        text = "&#32;" + text[1:]
    return text


def has_line_break(text: str) -> bool:
    return "\n" in text or "\r" in text


def _arg_path(path: Path) -> bytes:
    """A file argument for the ``-@ -`` stream: absolute (so "-x.jpg" is never read as an option),
    as the file system's own bytes (any name works, UTF-8 or not), and on one line (a name with a line
    break goes through :class:`_SafeNames` first)."""
    raw = os.fsencode(os.path.abspath(path))
    if b"\n" in raw or b"\r" in raw:
        raise MetadataError(f"cannot handle a file name containing a line break: {str(path)!r}")
    return raw


class _SafeNames:
    """Names without line breaks for paths that have them, so exiftool's line-based argument stream
    can reach every file.

    The aliases are symbolic links in a private temp folder (mode 0700, removed on :meth:`close`): a
    photo whose own name has a line break is read through a link to it; a folder whose name has one is
    reached through a link to the folder, so exiftool can also write phototag's temp copy inside it
    (temp names never have a line break). Every write still ends with phototag's own rename of that
    temp copy onto the real name, so photos and sidecars keep their names.
    """

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._aliases: dict[str, Path] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> Path:
        path = Path(os.path.abspath(path))
        if not has_line_break(str(path)):
            return path
        with self._lock:
            return self._alias(path)

    def _alias(self, path: Path) -> Path:
        known = self._aliases.get(str(path))
        if known is not None:
            return known
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="phototag-names-"))
        if has_line_break(path.name):
            suffix = "" if has_line_break(path.suffix) else path.suffix  # exiftool picks formats by suffix
            alias = self._folder / f"{len(self._aliases)}{suffix}"
            os.symlink(path, alias)
        else:
            alias = self._alias(path.parent) / path.name  # the line break is in a folder's name
        self._aliases[str(path)] = alias
        return alias

    def aliases(self, *paths: Path) -> list[Path]:
        """The aliases made for ``paths`` (to take them out of exiftool's messages)."""
        with self._lock:
            return [self._aliases[key] for key in map(str, paths) if key in self._aliases]

    def close(self) -> None:
        with self._lock:
            folder, self._folder = self._folder, None
            self._aliases.clear()
        if folder is None:
            return
        try:
            for entry in os.scandir(folder):
                os.unlink(entry.path)  # the links themselves, never what they point to
            os.rmdir(folder)
        except OSError as exc:
            log.warning("cannot remove phototag's temp folder %s: %s", folder, exc.strerror or exc)


def merge_copies(record: Mapping[str, object]) -> dict[str, object]:
    """Fold ``-G1:4`` keys ("IFD1:Copy2:XResolution") back to "IFD1:XResolution".

    Copy numbers count occurrences across all groups, so they shift when a write adds a tag anywhere
    (a new IFD0:XResolution renumbers JFIF's). Keyed by group and tag instead, repeated tags within one
    group (e.g. an unknown XMP structure flattened to repeated fields) become a list in file order.
    """
    merged: dict[str, object] = {}
    repeated: set[str] = set()
    for key, value in record.items():
        name = re.sub(r":Copy\d+:", ":", key)
        if name not in merged:
            merged[name] = value
        elif name in repeated:
            merged[name].append(value)  # type: ignore[attr-defined]
        else:
            merged[name] = [merged[name], value]
            repeated.add(name)
    return merged


def one_line(text: str, *paths: Path) -> str:
    """The gist of exiftool's stderr: its error lines (else any lines), without the " - FILE" suffix."""
    for path in paths:
        text = text.replace(f" - {path}", "")
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    return " ".join((errors or lines or ["no message"])[:2])


def _read_until_marker(fd: int, marker: bytes) -> bytes:
    """Read exiftool's output up to ``marker``, raising OSError when the pipe closes.

    End-of-file means exiftool has died: waiting for more would spin forever, so the call fails and the
    session starts exiftool afresh for the next one.
    """
    chunks: list[bytes] = []
    tail = b""
    keep = len(marker) + 4
    while not tail.strip().endswith(marker):
        data = os.read(fd, _BLOCK_SIZE)
        if not data:
            raise OSError("exiftool closed its output (the process stopped)")
        chunks.append(data)
        tail = (tail + data)[-keep:]
    return b"".join(chunks)


class ExifTool:
    """One ``exiftool -stay_open`` process, restarted when it dies; thread-safe via ``lock``.

    :meth:`run` sends one command and returns (stdout, stderr, exit status); :meth:`read_json` reads
    tags of some files; :meth:`arg` turns a path into a file argument exiftool can take.
    """

    def __init__(self, executable: str | None = None) -> None:
        resolved = shutil.which(executable or "exiftool")
        if resolved is None:
            raise MetadataError(EXIFTOOL_MISSING)
        self.executable = resolved
        self.lock = threading.RLock()
        self._process: subprocess.Popen[bytes] | None = None
        self._numbers = itertools.count(1)
        self._closed = False
        self._safe_names = _SafeNames()
        self._start()

    # -- the process --------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _start(self) -> None:
        command = [self.executable, "-stay_open", "True", "-@", "-", "-common_args", *COMMON_ARGS]
        try:
            # its own session: a terminal's Ctrl-C would otherwise kill exiftool mid-write too
            self._process = start_child(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self._execute(["-ver"])  # a first answer: it runs, and speaks the protocol
        except (OSError, ValueError) as exc:
            self._stop()
            raise MetadataError(f"cannot start exiftool ({self.executable}): {exc}") from exc

    def _execute(self, args: Sequence[str | bytes]) -> tuple[bytes, bytes, int]:
        """One exchange of the ``-stay_open`` protocol. Raises OSError when exiftool has died, ValueError
        when its answer is out of step."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None or process.stderr is None:
            raise OSError("exiftool is not running")
        number = next(self._numbers)
        ready, post = f"{{ready{number}}}".encode(), f"post{number}".encode()
        lines = [arg if isinstance(arg, bytes) else arg.encode("utf-8") for arg in args]
        lines += [b"-echo4", b"=${status}=" + post, f"-execute{number}\n".encode()]
        process.stdin.write(b"\n".join(lines))
        process.stdin.flush()
        stdout = _read_until_marker(process.stdout.fileno(), ready).strip()[: -len(ready)]
        stderr = _read_until_marker(process.stderr.fileno(), post).strip()[: -len(post)]
        # stderr ends with "=STATUS=": -echo4 prints it after exiftool's own messages
        if not stderr.endswith(b"="):
            raise ValueError(f"exiftool's answer is out of step: {stderr[-40:]!r}")
        cut = stderr.rfind(b"=", 0, -1)
        return stdout, stderr[:cut], int(stderr[cut + 1 : -1])

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.communicate(input=b"-stay_open\nFalse\n", timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        except (OSError, ValueError):  # its pipes are gone already
            process.kill()
            process.wait()

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self._stop()
            self._safe_names.close()

    # -- commands -----------------------------------------------------------------------------------

    def run(self, args: Sequence[str | bytes]) -> tuple[str, str, int]:
        """Run one exiftool command; returns (stdout, stderr, status). Restarts a dead process once."""
        with self.lock:
            if self._closed:
                raise MetadataError("exiftool session is closed")
            if not self.running:
                self._stop()
                try:
                    self._start()
                except MetadataError as exc:  # it ran before: not this photo's fault
                    raise MetadataError(str(exc), transient=True) from exc
            try:
                stdout, stderr, status = self._execute(args)
            except (OSError, ValueError) as exc:  # the process died or the protocol broke: start afresh next time
                self._stop()
                raise MetadataError(f"exiftool stopped unexpectedly: {exc}", transient=True) from exc
        return stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"), status

    def version(self) -> str:
        stdout, _, _ = self.run(["-ver"])
        return stdout.strip()

    def arg(self, path: Path) -> bytes:
        """``path`` as one argument line for exiftool, through a safe alias if its name has a line break."""
        return _arg_path(self._safe_names(path))

    def aliases(self, *paths: Path) -> list[Path]:
        """The aliases made for ``paths`` (to take them out of exiftool's messages)."""
        return self._safe_names.aliases(*paths)

    def read_json(self, paths: Sequence[Path], tags: Sequence[str] = (), *, everything: bool = False) -> list[dict]:
        """One exiftool read of ``paths``. ``everything``: every tag, raw values, binary as base64,
        duplicates kept apart (-G1:4 numbers copies; plain -G1 JSON silently keeps only the first) and
        XMP structures whole (-struct), so that two reads can be compared tag by tag."""
        args: list[str | bytes] = ["-j", "-a", "-G1:4", "-struct", "-n", "-b"] if everything else ["-j", "-G1"]
        args += list(tags) + [self.arg(p) for p in paths]
        stdout, stderr, _ = self.run(args)
        try:
            # numbers stay text: "1.50" or "007" must not become 1.5 or 7
            records = json.loads(stdout, parse_float=str, parse_int=str) if stdout.strip() else []
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{paths[0].name}: unreadable exiftool output ({one_line(stderr)})") from exc
        if len(records) != len(paths):
            raise MetadataError(f"{paths[0].name}: exiftool could not read it ({one_line(stderr)})")
        return [merge_copies(r) for r in records] if everything else records


class ExifToolPool:
    """Up to ``size`` exiftool processes for the threads of one session; thread-safe.

    :meth:`borrow` lends a process for one unit of work (a read, or a whole safe write: its edit and
    verify read). The first process starts at once (a missing exiftool is a clear error before any
    photo), the others only when every started one is busy, so a command that reads one photo at a
    time keeps one process. An idle process is lent lowest-started first: ``primary`` serves a
    single-threaded caller every time."""

    def __init__(self, executable: str | None = None, size: int = 1) -> None:
        self.size = max(1, size)
        self.primary = ExifTool(executable)
        self.executable = self.primary.executable
        self._started: list[ExifTool] = [self.primary]
        self._idle: list[ExifTool] = [self.primary]
        self._starting = 0
        self._closed = False
        self._changed = threading.Condition()

    @property
    def processes(self) -> list[ExifTool]:
        """The processes started so far (each restarts itself if its exiftool died)."""
        with self._changed:
            return list(self._started)

    @contextmanager
    def borrow(self) -> Iterator[ExifTool]:
        """One exiftool process, this caller's alone until the block ends. Never borrow twice at once in
        one thread: with every process lent, the second borrow would wait for the first."""
        tool = self._take()
        try:
            yield tool
        finally:
            with self._changed:
                self._idle.append(tool)
                self._idle.sort(key=self._started.index)
                self._changed.notify()

    def _take(self) -> ExifTool:
        with self._changed:
            while True:
                if self._closed:
                    raise MetadataError("exiftool session is closed")
                if self._idle:
                    return self._idle.pop(0)
                if len(self._started) + self._starting < self.size:
                    self._starting += 1
                    break
                self._changed.wait()
        try:  # started outside the lock: the others keep lending meanwhile
            tool = ExifTool(self.executable)
        except MetadataError as exc:  # one exiftool ran already: not this photo's fault
            with self._changed:
                self._starting -= 1
                self._changed.notify()
            raise MetadataError(str(exc), transient=True) from exc
        with self._changed:
            self._starting -= 1
            closed = self._closed
            if not closed:
                self._started.append(tool)
        if closed:
            tool.close()
            raise MetadataError("exiftool session is closed")
        return tool

    def close(self) -> None:
        """Stop every process (one in use finishes its call first)."""
        with self._changed:
            self._closed = True
            started = list(self._started)
            self._changed.notify_all()
        for tool in started:
            tool.close()
