"""Query text -> a parsed query -> FTS5 expressions.

Any text a person types is a valid query: it is split into words (letters and digits), each word is
quoted before it reaches FTS5, so ``AND``, ``*``, quotes, ``-`` and apostrophes are never FTS syntax.
Stop words are dropped unless the query has nothing else, so "dog on beach" matches "a dog running
on the beach". A few forms mean more: ``"exact phrase"``, ``-word`` (exclude) and ``tag:word``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STOP_WORDS = frozenset(
    """a an and are as at be but by for from has have he her his i in into is it its me my of on onto or
    our she that the their them there these they this those to up was we were what when where which who
    with you your""".split()
)

FIELDS = ("tag",)

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_TOKEN = re.compile(r'(-?)(?:([A-Za-z]+):(?!//))?(?:"([^"]*)"?|(\S+))', re.UNICODE)


class QueryError(ValueError):
    """A query that cannot mean anything (for example an unknown ``field:``)."""


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (apostrophes inside a word are dropped: "dog's" -> "dogs")."""
    return [re.sub(r"['’]", "", w).lower() for w in _WORD.findall(text)]


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


@dataclass(frozen=True)
class Query:
    terms: tuple[str, ...] = ()
    phrases: tuple[tuple[str, ...], ...] = ()
    excluded: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.terms or self.phrases or self.tags)

    def _required(self) -> list[str]:
        parts = [_quote(" ".join(p)) for p in self.phrases if p]
        parts += [f"keywords : {_quote(t)}" for t in self.tags]
        return parts

    def _with_exclusions(self, positive: str) -> str:
        if not self.excluded:
            return positive
        return f"({positive}) NOT ({' OR '.join(_quote(t) for t in self.excluded)})"

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
    for match in _TOKEN.finditer(text):
        negate, name, quoted, bare = match.groups()
        value = quoted if quoted is not None else bare
        if name is not None:
            key = name.lower()
            if key not in FIELDS:
                raise QueryError(f"unknown field '{name}:'; known fields: {', '.join(f + ':' for f in FIELDS)}")
            tags.extend(words(value))
            continue
        found = words(value)
        if negate:
            excluded.extend(found)
        elif quoted is not None and len(found) > 1:
            phrases.append(tuple(found))
        else:
            terms.extend(found)
    content = [t for t in terms if t not in STOP_WORDS]
    if content or phrases or tags:
        terms = content
    return Query(
        terms=tuple(dict.fromkeys(terms)),
        phrases=tuple(phrases),
        excluded=tuple(dict.fromkeys(excluded)),
        tags=tuple(dict.fromkeys(tags)),
    )
