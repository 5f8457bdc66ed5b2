"""Settings: one TOML file, defaults in code, CLI flags override, errors name the key.

The TOML file has one table per concern (``[model]``, ``[metadata]``, ``[index]``, ``[watch]``,
``[pipeline]``, ``[search]``); ``config.example.toml`` at the repository root documents every key.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from phototag.database import IndexLocation, locate

DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class ConfigError(Exception):
    """A configuration problem; the message names the key and what is wrong."""


def data_dir() -> Path:
    """Where phototag keeps its index and state (XDG data dir)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "phototag"


def write_private_json(target: Path, data: Any, *, indent: int | None = None) -> None:
    """Replace ``target`` atomically (a reader never sees half a file) with ``data`` as JSON, owner-only:
    phototag's state files name photos. A path that is not UTF-8 (Python holds its odd bytes as lone
    surrogates) is written as a JSON escape, which reads back as the same string."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with os.fdopen(os.open(tmp, flags, 0o600), "w", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(json.dumps(data, ensure_ascii=False, indent=indent) + "\n")
    os.replace(tmp, target)


def make_private_dir(folder: Path) -> None:
    """Create ``folder`` (and missing parents) with the new folder itself owner-only (0700).

    Index, lock and state files hold private photos' paths and captions. An existing folder keeps
    the permissions its owner chose; only one phototag creates is made private.
    """
    if folder.exists():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is reduced by the umask, never widened: be exact
    except FileExistsError:  # another process made it meanwhile
        pass


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "phototag"


# Captions per model call when [model] batch_size is 0, by device kind. The captioner batches with it
# and the pipeline sizes its queues from it, so both read it here.
DEFAULT_BATCH_SIZE = {"cuda": 32, "mps": 8, "cpu": 4}


def default_batch_size(device: str) -> int:
    """The batch size for ``device`` ("cuda:1" counts as "cuda"; "auto" as "cpu" until torch has
    picked a device: the pipeline grows its queues once the model has loaded)."""
    return DEFAULT_BATCH_SIZE.get(device.split(":")[0], DEFAULT_BATCH_SIZE["cpu"])


@dataclass(frozen=True)
class ModelSettings:
    name: str = DEFAULT_MODEL
    prompt: str = ""
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 0  # 0: chosen for the device
    # Generation defaults follow the BLIP authors' own captioning (salesforce/BLIP, models/blip.py
    # `generate`: beam search 3, at most 30 tokens, a repetition control); see README "Captions".
    max_new_tokens: int = 30
    min_new_tokens: int = 0  # 0: the model stops when it is done (the authors use 5)
    num_beams: int = 3
    no_repeat_ngram_size: int = 3  # no three-word sequence twice in one caption; 0: off
    # BLIP-large's made-up opening words, never generated (phototag.caption_text says more); (): off
    suppress_words: tuple[str, ...] = ("arafed", "araffe", "arafe", "araf", "araffed", "arafes", "araffes")
    draft_decode: str | bool = "auto"  # auto: off with fp32 (exact captions), on with fp16/bf16
    process: str | bool = "auto"  # the model in a child process (phototag.model_process); auto: on CUDA


@dataclass(frozen=True)
class MetadataSettings:
    mode: str = "embed"
    sidecar_naming: str = "ext"
    overwrite: bool = False
    exiftool: str = ""
    keep_mtime: bool = False


@dataclass(frozen=True)
class IndexSettings:
    db: str = ""


def usable_cores() -> int:
    """The cores this process may run on (``taskset``, a container's CPU set), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


# Stages that scale with the cores take one worker per core, and at least two: one waits on exiftool
# (a process of its own) while the other runs Python.
MIN_AUTO_WORKERS = 2
MAX_EXIFTOOL_PROCESSES = 64


@dataclass(frozen=True)
class PipelineSettings:
    decode_workers: int = 0  # 0: one per core (at least 2)
    queue_batches: int = 3
    exiftool_processes: int = 0  # 0: one per core (at least 2)

    def workers(self, configured: int) -> int:
        return configured if configured > 0 else max(MIN_AUTO_WORKERS, usable_cores())

    @property
    def effective_decode_workers(self) -> int:
        """Threads that plan, decode and preprocess photos."""
        return self.workers(self.decode_workers)

    @property
    def effective_exiftool_processes(self) -> int:
        """exiftool processes a session may run at once; the pipeline writes on as many threads."""
        return self.workers(self.exiftool_processes)


@dataclass(frozen=True)
class ClusterSettings:
    ray_address: str = ""  # empty: caption on this machine; else what ray.init(address=...) takes
    ray_io: bool = False  # decode and write metadata on the cluster's nodes too (same-path mounts)


@dataclass(frozen=True)
class WatchSettings:
    folders: tuple[str, ...] = ()
    rescan_interval: float = 3600.0
    settle_seconds: float = 2.0
    stop_timeout: float = 30.0


@dataclass(frozen=True)
class SearchSettings:
    embedding_model: str = ""  # empty: $PHOTOTAG_EMBEDDING_MODEL, else DEFAULT_EMBEDDING_MODEL
    embeddings: bool = True  # embed captions as they are indexed
    min_similarity: float = 0.25  # cosine below which a caption is not a match by meaning


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    metadata: MetadataSettings = field(default_factory=MetadataSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    def db_setting(self) -> str:
        """``[index] db`` (or ``--db``), else ``$PHOTOTAG_DB``: a file path, a database URL, or ""."""
        return self.index.db or os.environ.get("PHOTOTAG_DB") or ""

    def index_location(self) -> IndexLocation:
        """The index: the SQLite file in the data folder unless a path or a database URL is configured."""
        return locate(self.db_setting(), data_dir() / "index.sqlite3", data_dir())

    def db_path(self) -> Path:
        """The SQLite index file, or for a server index the local name of its side files (locks, state)."""
        return self.index_location().path

    def embedding_model(self) -> str:
        """The caption-embedding model: config, else ``$PHOTOTAG_EMBEDDING_MODEL``, else the default."""
        return self.search.embedding_model or os.environ.get("PHOTOTAG_EMBEDDING_MODEL") or DEFAULT_EMBEDDING_MODEL


_CHOICES: dict[str, tuple[str, ...]] = {
    "model.device": ("auto", "cpu", "cuda", "mps"),
    "model.dtype": ("auto", "fp32", "fp16", "bf16", "int8"),
    "metadata.mode": ("embed", "sidecar", "both"),
    "metadata.sidecar_naming": ("ext", "base"),
}


_WHOLE_NUMBERS = frozenset({"pipeline.decode_workers", "pipeline.exiftool_processes", "pipeline.queue_batches"})


def _coerce(key: str, value: Any, default: Any) -> Any:
    if key in ("model.draft_decode", "model.process"):
        if value != "auto" and not isinstance(value, bool):
            raise ConfigError(f'{key}: expected true, false or "auto", got {value!r}')
        return value
    if key in _CHOICES:
        if value not in _CHOICES[key] and not (key == "model.device" and str(value).startswith("cuda:")):
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(_CHOICES[key])}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int | float) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        if key in _WHOLE_NUMBERS and value != int(value):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        if key == "pipeline.exiftool_processes" and value > MAX_EXIFTOOL_PROCESSES:
            raise ConfigError(f"{key}: at most {MAX_EXIFTOOL_PROCESSES} (0: one per core), got {value!r}")
        return type(default)(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def settings_from_dict(raw: dict[str, Any]) -> Settings:
    """Typed settings from a parsed TOML document; unknown tables or keys are errors."""
    settings = Settings()
    sections = {f.name: getattr(settings, f.name) for f in fields(settings)}
    updates: dict[str, Any] = {}
    for section_name, section_value in raw.items():
        if section_name not in sections:
            raise ConfigError(f"unknown table [{section_name}]; known: {', '.join(sections)}")
        if not isinstance(section_value, dict):
            raise ConfigError(f"{section_name}: expected a table")
        current = sections[section_name]
        known = {f.name: getattr(current, f.name) for f in fields(current)}
        changes = {}
        for key, value in section_value.items():
            if key not in known:
                raise ConfigError(f"{section_name}.{key}: unknown key; known: {', '.join(known)}")
            changes[key] = _coerce(f"{section_name}.{key}", value, known[key])
        updates[section_name] = replace(current, **changes)
    return replace(settings, **updates)


def load_settings(path: Path | None) -> Settings:
    """Read the config file (explicit path, else ``$PHOTOTAG_CONFIG``, else the XDG one if present)."""
    if path is None:
        env = os.environ.get("PHOTOTAG_CONFIG")
        candidate = Path(env) if env else config_dir() / "config.toml"
        if not candidate.exists():
            if env:
                raise ConfigError(f"PHOTOTAG_CONFIG: {candidate} does not exist")
            return Settings()
        path = candidate
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return settings_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def override(settings: Settings, section: str, **values: Any) -> Settings:
    """Apply CLI flags (``None`` means "not given") on top of the file's settings."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return settings
    current = getattr(settings, section)
    checked = {k: _coerce(f"{section}.{k}", v, getattr(current, k)) for k, v in given.items()}
    return replace(settings, **{section: replace(current, **checked)})
