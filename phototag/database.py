"""Where the index lives: a SQLite file (the default) or a database server named by a URL.

``--db``, ``$PHOTOTAG_DB`` and ``[index] db`` take either a file path or any SQLAlchemy URL
(``postgresql://USER@HOST/DB``). A server index still has a few local files beside it on each
machine (the daemon's lock and state file, why the last run stopped, the search's vector cache):
they live under the data folder, in a name made from the URL, so two servers never share them.

Standard library only: ``phototag search`` and ``status`` decide where to look before they import
anything heavy.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# What a bare "postgresql://" means: psycopg 3, the driver of the [postgres] extra.
DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


class IndexUnreachable(Exception):
    """The index's server cannot be reached or refuses us; the message is one line naming it."""


def is_url(value: str) -> bool:
    """A database URL (``scheme://...``), not a file path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


def sqlalchemy_url(url: str) -> str:
    """``url`` with a driver SQLAlchemy can load: ``postgresql://`` (and ``postgres://``) mean psycopg 3."""
    scheme, rest = url.split("://", 1)
    return f"{DRIVERS.get(scheme.lower(), scheme)}://{rest}"


def redact(url: str) -> str:
    """``url`` fit to print: a password in it is replaced by ``***``."""
    return re.sub(r"^([^:/]+://[^:/@]+):[^@/]*@", r"\1:***@", url)


@dataclass(frozen=True)
class IndexLocation:
    """A SQLite file (``url`` None) or a server index (``url`` set; ``path`` is then the local name its
    side files are made from, never a database)."""

    path: Path
    url: str | None = None

    @property
    def is_server(self) -> bool:
        return self.url is not None

    @property
    def dialect(self) -> str:
        """``sqlite``, ``postgresql``, ... (the URL scheme without its driver)."""
        if self.url is None:
            return "sqlite"
        name = self.url.split("://", 1)[0].split("+", 1)[0].lower()
        return "postgresql" if name == "postgres" else name

    def exists(self) -> bool:
        """Whether there is an index to read: the file exists (a server is asked when connecting)."""
        return self.is_server or self.path.exists()

    def engine_url(self) -> str:
        return sqlalchemy_url(self.url) if self.url is not None else f"sqlite:///{self.path}"

    def __str__(self) -> str:
        return redact(self.url) if self.url is not None else str(self.path)


def locate(setting: str, default: Path, data_folder: Path) -> IndexLocation:
    """The index a ``db`` setting names (``default`` when empty); a URL's side files go under
    ``data_folder/servers/``."""
    if not setting:
        return IndexLocation(default)
    if not is_url(setting):
        return IndexLocation(Path(setting).expanduser())
    shown = redact(setting)
    digest = hashlib.sha256(shown.encode("utf-8")).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9.-]+", "-", shown.split("://", 1)[1]).strip("-")[:60] or "index"
    return IndexLocation(data_folder / "servers" / f"{readable}-{digest}.index", url=setting)
