"""``phototag search``: the photos whose captions match, by words, by meaning, or both; best first."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from phototag.cli.context import AppContext, pass_app
from phototag.query import QueryError, parse_query, with_filters
from phototag.search import HYBRID, KEYWORD, MODES, SEMANTIC, Finder, SearchError, SearchHit, has_vectors

if TYPE_CHECKING:
    import sqlite3

    from phototag.pg_search import PgFinder
    from phototag.query import Query
    from phototag.vectors import VectorStore

FORMATS = ("paths", "json", "table")


class _QueryCommand(click.Command):
    """Lets ``-word`` (exclude a word) stand in the query unquoted: a dash-word that is not one of
    this command's options is query text, not an unknown option (``phototag search animal -dog``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        known = {opt for param in self.get_params(ctx) for opt in (*param.opts, *param.secondary_opts)}
        options: list[str] = []
        words: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":
                words += args[i + 1 :]
                break
            is_exclusion = arg.startswith("-") and not arg.startswith("--") and len(arg) > 1
            (words if is_exclusion and arg not in known else options).append(arg)
        return super().parse_args(ctx, options + (["--", *words] if words else []))


@click.command("search", cls=_QueryCommand)
@click.argument("query", nargs=-1)
@click.option("-n", "--limit", type=click.IntRange(1), default=20, show_default=True, help="Most results.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    help="keyword: caption words (bm25); semantic: meaning (sentence embeddings); hybrid: both, fused. "
    "Default: hybrid when the index has caption embeddings, else keyword.",
)
@click.option(
    "--in",
    "folders",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Only photos under this folder (repeatable; same as in:FOLDER).",
)
@click.option("--after", metavar="DATE", help="Taken on DATE or later: YYYY, YYYY-MM or YYYY-MM-DD (after:DATE).")
@click.option("--before", metavar="DATE", help="Taken before DATE (before:DATE).")
@click.option("--tag", "tags", multiple=True, help="Only photos with this keyword (repeatable; tag:WORD).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="paths (default): one per line; json: JSON lines; table: score, date, caption, path.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a contact sheet: an HTML page with thumbnails and captions.",
)
@click.option(
    "--open",
    "open_sheet",
    is_flag=True,
    help="Open the contact sheet in the web browser (written to the data dir without --html).",
)
@pass_app
def command(
    app: AppContext,
    query: tuple[str, ...],
    limit: int,
    mode: str | None,
    folders: tuple[Path, ...],
    after: str | None,
    before: str | None,
    tags: tuple[str, ...],
    fmt: str | None,
    as_json: bool,
    html_file: Path | None,
    open_sheet: bool,
) -> None:
    """Find photos by what their captions say. Prints absolute paths, best match first.

    Words are matched in any order and form ("dogs" finds "dog"); small words like "on" and "the"
    are ignored. With caption embeddings (made while captioning, or by 'phototag reindex'), photos
    are also found by meaning: "puppy at the seaside" finds "a dog running on the beach".

    \b
    In the query:
      "exact phrase"     words together, in this order
      -word              without this word
      tag:WORD           with this keyword (-tag:WORD: without)
      in:FOLDER          under this folder (-in:FOLDER: not under it)
      after:DATE         taken on DATE or later (YYYY, YYYY-MM or YYYY-MM-DD)
      before:DATE        taken before DATE

    \b
    Examples:
      phototag search dog on beach
      phototag search puppy at the seaside --mode semantic
      phototag search "red car" -night after:2024-06 in:~/Pictures/2024
      phototag search sunset --format table
      phototag search beach --html beach.html --open
      phototag search sunset | xargs -d '\\n' feh
    """
    if as_json and fmt not in (None, "json"):
        raise click.UsageError("--json and --format are two ways to say the same thing: use one")
    fmt = "json" if as_json else (fmt or "paths")
    text = " ".join(query)
    try:
        parsed = with_filters(
            parse_query(text), folders=tuple(str(f) for f in folders), after=after, before=before, tags=tags
        )
    except QueryError as exc:
        raise click.UsageError(str(exc)) from None
    if not query and not parsed.has_filters:
        raise click.UsageError("nothing to search for: give words, a phrase or a filter")
    settings = app.settings
    min_similarity = settings.search.min_similarity
    if settings.index_location().is_server:
        server = app.server_finder()
        mode, copy, embed = _semantic_side_server(app, server, settings.embedding_model(), parsed, mode)
        search = partial(server.search, store=copy)
    else:
        conn = app.search_connection()
        mode, store, embed = _semantic_side(conn, settings.db_path(), settings.embedding_model(), parsed, mode)
        search = partial(Finder(conn).search, store=store)
    try:
        found = search(parsed, mode=mode, limit=limit * 2, embed=embed, min_similarity=min_similarity)
    except SearchError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.index_location().is_server:
        # a shared index lists photos of every machine: one not mounted here is still a match
        hits = found[:limit]
    else:
        hits = [hit for hit in found if os.path.exists(hit.path)][:limit]
    _print(hits, fmt)
    if html_file is not None or open_sheet:
        _contact_sheet(app, hits, html_file, text, mode, open_sheet)


def _semantic_side(
    conn: sqlite3.Connection, db: Path, model: str, query: Query, mode: str | None
) -> tuple[str, VectorStore | None, Any]:
    """The mode to run, and the vector store and query embedder it needs (loaded only if needed)."""
    from phototag.embeddings import model_id

    key = model_id(model)
    if mode == KEYWORD or not query.text:
        return mode or KEYWORD, None, None
    if not has_vectors(conn, key):
        if mode in (SEMANTIC, HYBRID):
            raise click.ClickException(
                f"the index has no caption embeddings from {key}: run 'phototag reindex --embeddings' first"
            )
        _hint_other_models(conn, key)
        return KEYWORD, None, None
    from phototag.search import vectors_cache_dir

    try:
        from phototag.vectors import VectorStore
    except ImportError as exc:
        raise click.ClickException(f"{exc} (--mode keyword searches without it)") from None

    store = VectorStore.for_sqlite(conn, db, key, vectors_cache_dir())
    try:
        store.sync()
    except OSError as exc:
        raise click.ClickException(f"cannot keep the vector cache in {store.dir}: {exc}") from None
    return mode or HYBRID, store, _query_embedder(model)


def _query_embedder(model: str) -> Any:
    """Query text -> unit vector (a running daemon's model, else torch-free, else the model itself)."""
    from phototag.embed_socket import default_socket_path
    from phototag.embeddings import EmbeddingError
    from phototag.query_encoder import query_vector

    def embed(text: str) -> Any:
        try:
            return query_vector(model, text, socket_path=default_socket_path())
        except EmbeddingError as exc:
            raise SearchError(f"{exc} (--mode keyword searches without it)") from None

    return embed


def _semantic_side_server(
    app: AppContext, finder: PgFinder, model: str, query: Query, mode: str | None
) -> tuple[str, VectorStore | None, Any]:
    """:func:`_semantic_side` for a PostgreSQL index: its vectors, copied to this machine."""
    from phototag.embeddings import model_id

    key = model_id(model)
    if mode == KEYWORD or not query.text:
        return mode or KEYWORD, None, None
    if not finder.has_vectors(key):
        if mode in (SEMANTIC, HYBRID):
            raise click.ClickException(
                f"the index has no caption embeddings from {key}: run 'phototag reindex --embeddings' first"
            )
        others = finder.vector_models()
        if others:
            click.echo(
                f"phototag: caption embeddings in the index are from {', '.join(others)}, not {key}; "
                "searching by keywords (run 'phototag reindex --embeddings' to search by meaning)",
                err=True,
            )
        return KEYWORD, None, None
    from phototag.pg_search import vector_store

    store = vector_store(finder.conn, app.location(), key)
    try:
        store.sync()
    except OSError as exc:
        raise click.ClickException(f"cannot keep the vector cache in {store.dir}: {exc}") from None
    return mode or HYBRID, store, _query_embedder(model)


def _hint_other_models(conn: sqlite3.Connection, model: str) -> None:
    from phototag.search import vector_models

    others = vector_models(conn)
    if others:
        click.echo(
            f"phototag: caption embeddings in the index are from {', '.join(others)}, not {model}; "
            "searching by keywords (run 'phototag reindex --embeddings' to search by meaning)",
            err=True,
        )


def _print(hits: list[SearchHit], fmt: str) -> None:
    if fmt == "json":
        for hit in hits:
            click.echo(json.dumps(hit.as_dict(), ensure_ascii=False))
    elif fmt == "table":
        if hits:
            click.echo(f"{'score':>8}  {'taken':<16}  {'caption':<50}  path")
        for hit in hits:
            caption = hit.caption if len(hit.caption) <= 50 else hit.caption[:49] + "…"
            taken = hit.taken_at.replace("T", " ")[:16] if hit.taken_at else "-"
            click.echo(f"{hit.score:>8.4g}  {taken:<16}  {caption:<50}  {hit.path}")
    else:
        for hit in hits:
            click.echo(hit.path)


def _contact_sheet(
    app: AppContext, hits: list[SearchHit], target: Path | None, text: str, mode: str, open_sheet: bool
) -> None:
    from phototag.contact_sheet import Thumbnails, thumbnails_dir, write_contact_sheet

    if target is None:
        from phototag.config import data_dir

        target = data_dir() / "contact-sheet.html"

    def raw_preview(path: Path) -> bytes | None:
        return app.exiftool().preview(path)  # started for the first RAW only; ends with the command

    try:
        written = write_contact_sheet(
            hits, target, Thumbnails(thumbnails_dir(), raw_preview=raw_preview), query=text, mode=mode
        )
    except OSError as exc:
        raise click.ClickException(f"cannot write the contact sheet {target}: {exc.strerror or exc}") from None
    click.echo(f"contact sheet: {written} ({len(hits)} photos)", err=True)
    if open_sheet:
        import webbrowser

        if not webbrowser.open(written.as_uri()):
            click.echo(f"phototag: no web browser found; open {written.as_uri()}", err=True)
