"""The safe write: edit a hidden temp copy, verify it, then atomically replace the original.

A write never edits a photo (or sidecar) in place. ExifTool writes a hidden temp file beside it
(:func:`temp_path`); both are read back and compared (the caption landed, no other tag changed:
:func:`caption_problems`, :func:`unexpected_changes`); only then does the temp copy take the
original's permissions, owner and extended attributes, get flushed to disk and atomically replace it
(:func:`safe_edit`), keeping the original's mtime when asked (``keep_mtime``). Any refusal or failure
leaves the original byte-identical and no temp file behind; :func:`clean_stale_temps` removes the
temp files a crash left.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from phototag.exiftool import ExifTool, MetadataError, has_line_break, one_line
from phototag.failures import disk_full, file_size, is_transient_os_error, os_error_reason
from phototag.mwg import (
    EXIF_DESCRIPTION,
    IPTC_CAPTION,
    IPTC_CAPTION_LIMIT,
    IPTC_CHARSET,
    IPTC_KEYWORD_LIMIT,
    IPTC_KEYWORDS,
    OWNED_TAGS,
    XMP_DESCRIPTION,
    XMP_SUBJECT,
    as_list,
    as_text,
    declares_utf8,
    missing_keywords,
)

log = logging.getLogger(__name__)

TEMP_MARKER = ".phototag-tmp"
# Temp names carry their writer (host, pid, a random part): a temp whose writer is a dead process on
# this host is a crash's leftover at once. For the others (another host sharing the folder, names from
# an older phototag) only age tells: a write rewrites its temp continuously, then verifies and renames
# it within seconds, so one this old is a leftover; a younger one may be another phototag's write.
STALE_TEMP_SECONDS = 600
# What temp_path() makes (".NAME.phototag-tmp-HOST-PID-RANDOM.EXT"; older phototags made
# ".NAME.phototag-tmp.EXT"), and exiftool's own temp beside it.
_TEMP_NAME = re.compile(
    r"\..+" + re.escape(TEMP_MARKER) + r"(?:-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8})?"
    r"(\.[^.]+)?(_exiftool_tmp)?",
    re.DOTALL,
)
# This machine, as temp names say it (a host name can be long and hold dots; 8 hex digits cannot).
HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


# ExifTool stamps itself as the XMP toolkit whenever it rewrites XMP.
INCIDENTAL_TAGS = frozenset({"XMP-x:XMPToolkit"})


# Groups that describe the file rather than its metadata, and structural fields that follow the
# layout: offsets that move when a block grows (thumbnail/preview/strips, HEIF media data) and the
# WebP VP8X flags, which gain the "has XMP" bit when XMP is added.
VOLATILE_GROUPS = frozenset({"SourceFile", "System", "File", "ExifTool", "Composite"})
_STRUCTURAL_TAG = re.compile(r"(Offsets?|Start|MediaDataSize|MediaDataOffset|WebP_Flags)$")


COPY_THEN_WRITE_SUFFIXES = frozenset({".webp", ""})  # exiftool 12.x refuses "-o x.webp" ("Can't write RIFF")


_IO_ERROR = re.compile(
    r"Error (creating|opening|renaming|writing)|Permission denied|Read-only|No space|already exists|"
    r"File not found|Can't open",
    re.IGNORECASE,
)


def temp_path(target: Path, *, pid: int | None = None, host: str = HOST_TAG) -> Path:
    """Hidden temp file beside ``target`` that keeps its extension (so ExifTool keeps the format). Its
    name says who writes it (``host``, ``pid``: this process) plus a random part, so two writers never
    share a temp, and :func:`clean_stale_temps` can tell a live writer's temp from a dead one's."""
    owner = f"{TEMP_MARKER}-{host}-{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}"
    name = f".{target.name}{owner}{target.suffix}"
    # Stay under NAME_MAX with room for exiftool's "_exiftool_tmp"; and give exiftool a name it can
    # take (its argument stream is one name per line).
    if len(os.fsencode(name)) > 240 or has_line_break(name):
        digest = hashlib.sha1(os.fsencode(target.name)).hexdigest()[:16]
        name = f".{digest}{owner}{target.suffix}"
    return target.with_name(name)


def is_temp_name(name: str) -> bool:
    """True for the name of a temp file phototag (or exiftool, working for phototag) makes."""
    return bool(_TEMP_NAME.fullmatch(name))


def temp_owner(name: str) -> tuple[str, int] | None:
    """(host tag, pid) of the writer a temp name names; None for other names and older phototags' temps."""
    match = _TEMP_NAME.fullmatch(name)
    if match is None or match.group("host") is None:
        return None
    return match.group("host"), int(match.group("pid"))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(
    roots: Iterable[Path], *, older_than: float = STALE_TEMP_SECONDS, now: float | None = None
) -> list[Path]:
    """Delete the temp files a crash left under ``roots`` (only names phototag makes). A temp written by
    a process of this machine is removed once that process is gone, never while it lives; one from
    another machine or an older phototag once older than ``older_than`` seconds. Returns what was
    removed. Never follows folder links; unreadable folders are skipped; a file root cleans its own
    folder (not below it)."""
    deadline = (time.time() if now is None else now) - older_than
    removed: list[Path] = []
    for folder in _temp_folders(roots):
        try:
            with os.scandir(folder) as entries:
                candidates = [e for e in entries if e.name.startswith(".") and is_temp_name(e.name)]
        except OSError:
            continue
        for entry in candidates:
            owner = temp_owner(entry.name)
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if owner is not None and owner[0] == HOST_TAG:
                    stale = not pid_alive(owner[1])
                else:
                    stale = entry.stat(follow_symlinks=False).st_mtime < deadline
                if stale:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError as exc:
                log.warning("cannot remove stale temp file %s: %s", entry.path, exc.strerror or exc)
    return removed


def _temp_folders(roots: Iterable[Path]) -> Iterator[str]:
    """The folders phototag may have written in under ``roots`` (the walk skips hidden folders, as
    the photo scan does)."""
    for root in roots:
        root = Path(os.path.abspath(os.path.expanduser(root)))
        if not root.is_dir():
            if root.parent.is_dir():
                yield str(root.parent)
            continue
        stack = [str(root)]
        while stack:
            folder = stack.pop()
            yield folder
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
            except OSError:
                continue


def caption_problems(
    tags: Mapping[str, object],
    caption: str,
    keywords: Sequence[str],
    *,
    exif: bool = True,
    iptc: bool = False,
    expected: Mapping[str, str] | None = None,
) -> list[str]:
    """What is missing from a read-back: empty when the caption and keywords landed exactly.
    ``expected``: further tags that must read back as the given text (the Windows fields)."""
    problems = []
    for name, value in (expected or {}).items():
        if as_text(tags.get(name)) != value:
            problems.append(f"{name} reads back as {as_text(tags.get(name))!r}")
    checks = [XMP_DESCRIPTION] + ([EXIF_DESCRIPTION] if exif else [])
    if iptc and len(caption.encode()) <= IPTC_CAPTION_LIMIT:
        checks.append(IPTC_CAPTION)
    for name in checks:
        if as_text(tags.get(name)) != caption:
            problems.append(f"{name} reads back as {as_text(tags.get(name))!r}")
    if iptc and not declares_utf8(tags):
        problems.append(f"{IPTC_CHARSET} is {tags.get(IPTC_CHARSET)!r}, not UTF8")
    if missing_keywords(as_list(tags.get(XMP_SUBJECT)), keywords):
        problems.append(f"{XMP_SUBJECT} lacks {missing_keywords(as_list(tags.get(XMP_SUBJECT)), keywords)}")
    if iptc:
        short = [kw for kw in keywords if len(kw.encode()) <= IPTC_KEYWORD_LIMIT]
        if missing_keywords(as_list(tags.get(IPTC_KEYWORDS)), short):
            problems.append(f"{IPTC_KEYWORDS} lacks {missing_keywords(as_list(tags.get(IPTC_KEYWORDS)), short)}")
    return problems


def unexpected_changes(
    before: Mapping[str, object], after: Mapping[str, object], owned: Iterable[str] = OWNED_TAGS
) -> list[str]:
    """Tags (from ``exiftool -a -G1 -j``) that a caption write removed or changed but must not have.

    Owned tags, ExifTool bookkeeping, file-system facts and structural offsets are ignored (other
    languages of the description are not owned: only x-default is written). Tags the
    write *added* are not reported here (ExifTool adds the EXIF-mandatory IFD0 tags when it creates an
    EXIF block, and can reveal data it skipped before); empty values that vanish are not a loss
    (ExifTool drops empty ``rdf:Seq`` lists such as darktable's masks_history).
    """
    skip = set(owned) | INCIDENTAL_TAGS
    problems = []
    for name, old in before.items():
        group, _, tag = name.partition(":")
        if group in VOLATILE_GROUPS or name in skip:
            continue
        if _STRUCTURAL_TAG.search(tag):
            continue
        if name not in after:
            if old not in ("", [], None):
                problems.append(f"{name} removed")
        elif after[name] != old:
            problems.append(f"{name} changed from {short_repr(old)} to {short_repr(after[name])}")
    return problems


def dropped_keywords(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """Keywords present before a write and gone after it (must be empty: merging never drops one)."""
    lost = []
    for name in (XMP_SUBJECT, IPTC_KEYWORDS):
        remaining = set(as_list(after.get(name)))
        lost += [f"{name} lost {kw!r}" for kw in as_list(before.get(name)) if kw not in remaining]
    return lost


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        try:
            if path.is_file() or path.is_symlink():
                path.unlink()
        except OSError:
            pass


def _copy_owner(path: Path, like: os.stat_result) -> None:
    """Best effort: give ``path`` the owner and group of ``like`` (root can; others may set a group)."""
    if not hasattr(os, "chown"):
        return
    current = os.stat(path)
    for uid, gid in ((like.st_uid, like.st_gid), (-1, like.st_gid)):
        if (current.st_uid, current.st_gid) == (like.st_uid, like.st_gid):
            return
        try:
            os.chown(path, uid, gid)
            return
        except OSError:
            continue


def _copy_xattrs(source: Path, path: Path) -> None:
    """Best effort: extended attributes (Finder/desktop tags, ACLs, SELinux labels) survive a write."""
    if not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(source)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(path, name, os.getxattr(source, name))
        except OSError as exc:
            log.debug("cannot copy extended attribute %s to %s: %s", name, path, exc)


def _commit(tmp: Path, target: Path, mode_from: Path | None, *, keep_mtime: bool = False) -> None:
    """Give ``tmp`` the permissions, owner and extended attributes of ``mode_from``, flush it and
    atomically move it onto ``target``. ``keep_mtime``: ``target`` keeps ``mode_from``'s mtime."""
    like = os.stat(mode_from) if mode_from is not None else None
    if mode_from is not None and like is not None:
        _copy_owner(tmp, like)
        os.chmod(tmp, stat.S_IMODE(like.st_mode))
        _copy_xattrs(mode_from, tmp)
    _fsync_file(tmp)
    os.replace(tmp, target)
    if keep_mtime and like is not None:
        # After the rename, not before: a temp file with an old mtime would look like a crash's leftover.
        try:
            os.utime(target, ns=(like.st_atime_ns, like.st_mtime_ns))
        except OSError as exc:
            log.warning("%s: written, but its mtime could not be kept: %s", target, exc.strerror or exc)
    fsync_dir(target.parent)


def check_folder_writable(photo: Path) -> None:
    """A clear reason instead of exiftool's "Error creating file" when nothing can be written beside
    ``photo`` (neither a temp copy nor a sidecar). Root passes the mode check; exiftool then fails."""
    folder = photo.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MetadataError(f"{photo}: its folder is read-only; neither the photo nor a sidecar can be written")


def safe_edit(
    exiftool: ExifTool,
    target: Path,
    args: Sequence[str],
    check: Callable[[Mapping[str, object], Mapping[str, object]], str | None],
    *,
    rejected: Callable[[str], Exception],
    keep_mtime: bool = False,
) -> None:
    """Apply ``args`` to a hidden temp copy of ``target`` (which need not exist yet), read both back,
    let ``check(before, after)`` veto, then atomically replace ``target``.

    A refusal or veto raises ``rejected(reason)``; a file-system error raises MetadataError. Either
    way ``target`` is untouched and no temp file is left.
    """
    # A name of its own (this process, a random part): another writer's temp is never touched here,
    # and no crash's leftover can share it (clean_stale_temps removes those).
    tmp = temp_path(target)
    leftovers = (tmp, Path(f"{tmp}_exiftool_tmp"))
    exists = target.is_file()
    # A new sidecar is created in place; WebP (and sidecars) are copied, then edited in place.
    edit_in_place = not exists or target.suffix.lower() in COPY_THEN_WRITE_SUFFIXES | {".xmp"}
    command: list[str | bytes]
    try:
        if edit_in_place:
            if exists:
                shutil.copyfile(target, tmp)
            command = [*args, "-overwrite_original", exiftool.arg(tmp)]
        else:
            command = [*args, "-o", exiftool.arg(tmp), exiftool.arg(target)]
        _, stderr, status = exiftool.run(command)
        if status != 0 or not tmp.is_file() or (exists and tmp.stat().st_size == 0):
            message = one_line(stderr, target, tmp, *exiftool.aliases(target, tmp))
            if _IO_ERROR.search(message):
                raise _write_error(target, message)
            raise rejected(f"exiftool refused to write it ({message})")
        records = exiftool.read_json([target, tmp] if exists else [tmp], everything=True)
        problem = check(records[0] if exists else {}, records[-1])
        if problem:
            raise rejected(problem)
        _commit(tmp, target, mode_from=target if exists else None, keep_mtime=keep_mtime and exists)
    except OSError as exc:
        raise MetadataError(f"{target}: {os_error_reason(exc)}", transient=is_transient_os_error(exc)) from exc
    finally:
        _remove_quietly(*leftovers)


def _write_error(target: Path, message: str) -> MetadataError:
    """exiftool's write error as a reason: it says "Error writing output file" for a full disk, so the
    free space of the folder decides (the write needed room for a whole temp copy of the file)."""
    if "no space" in message.lower() or disk_full(target.parent, file_size(target)):
        return MetadataError(f"{target}: disk full (exiftool: {message})", transient=True)
    transient = bool(re.search(r"Error (writing|renaming)", message, re.IGNORECASE))  # I/O, not the photo
    return MetadataError(f"{target}: exiftool could not write: {message}", transient=transient)
