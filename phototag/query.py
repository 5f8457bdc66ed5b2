"""Query text -> a parsed query -> FTS5 expressions.

Any text a person types is a valid query: it is split into words (letters and digits), each word is
quoted before it reaches FTS5, so ``AND``, ``*``, quotes, ``-`` and apostrophes are never FTS syntax.
Stop words are dropped unless the query has nothing else, so "dog on beach" matches "a dog running
on the beach". A few forms mean more: ``"exact phrase"``, ``-word`` (exclude), ``tag:word``, and the
filters ``in:FOLDER``, ``after:DATE`` and ``before:DATE`` (taken date; ``-tag:`` and ``-in:`` exclude).
The free text as typed (without filters) is what a semantic search embeds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from datetime import date

from phototag.text import STOP_WORDS, words

FIELDS = ("tag", "in", "after", "before")

_TOKEN = re.compile(r'(-?)(?:([A-Za-z]+):(?!//))?(?:"([^"]*)"?|(\S+))', re.UNICODE)
_DATE = re.compile(r"(\d{4})(?:[-/.](\d{1,2})(?:[-/.](\d{1,2}))?)?")


class QueryError(ValueError):
    """A query that cannot mean anything (for example an unknown ``field:``)."""


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def parse_date(value: str, field: str) -> str:
    """``2024``, ``2024-06`` or ``2024-06-01`` -> ``"2024-06-01"`` (a year or month means its first day)."""
    match = _DATE.fullmatch(value.strip())
    if match is None:
        raise QueryError(f"{field}:{value}: not a date; use YYYY, YYYY-MM or YYYY-MM-DD")
    year, month, day = int(match[1]), int(match[2] or 1), int(match[3] or 1)
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        raise QueryError(f"{field}:{value}: no such date") from None


def folder_prefix(value: str) -> str:
    """An ``in:`` folder as an absolute path prefix ending in the separator (``~`` expanded)."""
    return os.path.abspath(os.path.expanduser(value)).rstrip(os.sep) + os.sep


@dataclass(frozen=True)
class Query:
    terms: tuple[str, ...] = ()
    phrases: tuple[tuple[str, ...], ...] = ()
    excluded: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    excluded_tags: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()  # absolute prefixes ending in os.sep: the photo is under any of them
    excluded_folders: tuple[str, ...] = ()
    after: str | None = None  # taken on this ISO date or later
    before: str | None = None  # taken before this ISO date
    text: str = ""  # the free text as typed, without filters: what semantic search embeds

    @property
    def is_empty(self) -> bool:
        """Nothing to rank by (filters alone may still select photos)."""
        return not (self.terms or self.phrases or self.tags)

    @property
    def has_filters(self) -> bool:
        return bool(
            self.phrases
            or self.tags
            or self.excluded
            or self.excluded_tags
            or self.folders
            or self.excluded_folders
            or self.after
            or self.before
        )

    def _required(self) -> list[str]:
        parts = [_quote(" ".join(p)) for p in self.phrases if p]
        parts += [f"keywords : {_quote(t)}" for t in self.tags]
        return parts

    def _exclusions(self) -> list[str]:
        return [_quote(t) for t in self.excluded] + [f"keywords : {_quote(t)}" for t in self.excluded_tags]

    def _with_exclusions(self, positive: str) -> str:
        excluded = self._exclusions()
        if not excluded:
            return positive
        return f"({positive}) NOT ({' OR '.join(excluded)})"

    def required_expression(self) -> str | None:
        """FTS5 expression every result must match whatever the ranking (phrases and tags), or None."""
        parts = self._required()
        return " AND ".join(parts) if parts else None

    def excluded_expression(self) -> str | None:
        """FTS5 expression no result may match (``-word``, ``-tag:``), or None."""
        excluded = self._exclusions()
        return " OR ".join(excluded) if excluded else None

    def all_words(self) -> str | None:
        """FTS5 expression matching photos that have every term (and phrase, and tag)."""
        parts = self._required() + [_quote(t) for t in self.terms]
        if not parts:
            return None
        return self._with_exclusions(" AND ".join(parts))

    def any_words(self) -> str | None:
        """FTS5 expression matching photos that have at least one term (plus all phrases and tags)."""
        if len(self.terms) < 2:
            return None
        parts = self._required() + ["(" + " OR ".join(_quote(t) for t in self.terms) + ")"]
        return self._with_exclusions(" AND ".join(parts))


def parse_query(text: str) -> Query:
    terms: list[str] = []
    phrases: list[tuple[str, ...]] = []
    excluded: list[str] = []
    tags: list[str] = []
    excluded_tags: list[str] = []
    folders: list[str] = []
    excluded_folders: list[str] = []
    after: list[str] = []
    before: list[str] = []
    free_text: list[str] = []
    for match in _TOKEN.finditer(text):
        negate, name, quoted, bare = match.groups()
        value = quoted if quoted is not None else bare
        if name is not None:
            key = name.lower()
            if key not in FIELDS:
                raise QueryError(f"unknown field '{name}:'; known fields: {', '.join(f + ':' for f in FIELDS)}")
            if key == "tag":
                (excluded_tags if negate else tags).extend(words(value))
            elif key == "in" and value.strip():
                (excluded_folders if negate else folders).append(folder_prefix(value.strip()))
            elif key in ("after", "before") and value.strip():
                if negate:
                    raise QueryError(f"-{key}: is not a filter; use {'before' if key == 'after' else 'after'}:")
                (after if key == "after" else before).append(parse_date(value, key))
            continue
        found = words(value)
        if negate:
            excluded.extend(found)
            continue
        if quoted is not None and len(found) > 1:
            phrases.append(tuple(found))
        else:
            terms.extend(found)
        if found:
            free_text.append(value.strip())
    content = [t for t in terms if t not in STOP_WORDS]
    if content or phrases or tags:
        terms = content
    return Query(
        terms=tuple(dict.fromkeys(terms)),
        phrases=tuple(phrases),
        excluded=tuple(dict.fromkeys(excluded)),
        tags=tuple(dict.fromkeys(tags)),
        excluded_tags=tuple(dict.fromkeys(excluded_tags)),
        folders=tuple(dict.fromkeys(folders)),
        excluded_folders=tuple(dict.fromkeys(excluded_folders)),
        after=max(after) if after else None,
        before=min(before) if before else None,
        text=" ".join(free_text),
    )


def with_filters(
    query: Query,
    *,
    folders: tuple[str, ...] = (),
    after: str | None = None,
    before: str | None = None,
    tags: tuple[str, ...] = (),
) -> Query:
    """``query`` with filters given as command-line flags added (same meaning as in the query text)."""
    added_tags = [w for tag in tags for w in words(tag)]
    afters = [d for d in (query.after, after and parse_date(after, "after")) if d]
    befores = [d for d in (query.before, before and parse_date(before, "before")) if d]
    return replace(
        query,
        folders=tuple(dict.fromkeys(query.folders + tuple(folder_prefix(f) for f in folders))),
        tags=tuple(dict.fromkeys(query.tags + tuple(added_tags))),
        after=max(afters) if afters else None,
        before=min(befores) if befores else None,
    )
