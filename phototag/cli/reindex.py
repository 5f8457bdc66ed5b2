"""``phototag reindex``: add what an index from an older phototag (or another embedding model) lacks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from phototag.cli.context import AppContext, pass_app
from phototag.cli.options import progress_option
from phototag.cli.progress import CountProgress

if TYPE_CHECKING:
    from phototag.database import IndexLocation
    from phototag.index import PhotoIndex


@click.command("reindex")
@click.option("--embeddings", is_flag=True, help="Embed captions that have no vector from the embedding model.")
@click.option(
    "--dates",
    is_flag=True,
    help="Record taken dates (EXIF DateTimeOriginal, else the file's time before phototag wrote it) where missing.",
)
@click.option(
    "--copy-to",
    "copy_to",
    metavar="URL",
    help="Copy the whole index (captions, statuses, undo data, vectors) into another database, e.g. "
    "postgresql://USER@HOST/DB, to share it between machines; then use it with --db URL.",
)
@click.option(
    "--replace-target",
    is_flag=True,
    help="With --copy-to: replace the photos the target already holds (refused otherwise).",
)
@click.option(
    "--search-index",
    is_flag=True,
    help="Rebuild what makes search fast: the vector index (in the data dir) and the folder and day spans.",
)
@progress_option
@pass_app
def command(
    app: AppContext,
    embeddings: bool,
    dates: bool,
    copy_to: str | None,
    replace_target: bool,
    search_index: bool,
    no_progress: bool,
) -> None:
    """Bring an existing index up to date without captioning again. With no option: everything.

        --embeddings makes search by meaning possible for photos captioned before phototag embedded
        captions, or after [search] embedding_model changed (each caption's vector is replaced).
        --dates records when each photo was taken, for after: and before:: its EXIF DateTimeOriginal, else
        the file's modification time from before phototag first wrote to it (never the time of that write;
        where the index does not know it, the photo is left without a date). Both resume where they
        stopped. Refused while `phototag watch` or another writing phototag runs on the index.

    --copy-to URL copies the whole index as it is (statuses, captions, undo data, vectors) into another
    database, such as a PostgreSQL one several machines share; in one transaction, so an interrupted
    copy leaves the target as it was. A target that already holds photos is refused unless
    --replace-target is given.

    --search-index rebuilds the search's vector index from scratch. It is kept current by every search
    (new, changed and removed captions are caught up, never a full rebuild) and rebuilt by itself when it
    is missing, damaged or from another model; this is for recovery, or to reclaim the room of many
    removed vectors. It also counts each folder's and day's photos again, which narrows what in:,
    after: and before: look through after many photos were moved or deleted. It writes the index in one
    short transaction, so it may run while `phototag watch` does.

    \b
    Examples:
      phototag reindex --embeddings
      PHOTOTAG_EMBEDDING_MODEL=~/models/all-MiniLM-L6-v2 phototag reindex --embeddings
      phototag reindex --dates
      phototag reindex --search-index
      phototag reindex --copy-to postgresql://photos@nas.local/phototag
      phototag --db postgresql://photos@nas.local/phototag status
    """
    if copy_to is not None:
        if embeddings or dates or search_index:
            raise click.UsageError("--copy-to copies the index as it is: run --embeddings or --dates on its own")
        _copy_to(app, copy_to, replace_target, not no_progress and not app.quiet)
        return
    if replace_target:
        raise click.UsageError("--replace-target goes with --copy-to URL")
    settings = app.settings
    app.existing_db("run 'phototag backfill PATH' first")
    if search_index and app.location().is_server:
        raise click.UsageError("--search-index is for a SQLite index (a PostgreSQL index's copy catches up by itself)")
    if search_index and not (embeddings or dates):
        _rebuild_search_index(settings.db_path(), settings.embedding_model())
        return
    if not (embeddings or dates):
        embeddings = dates = True
    app.lock_index("phototag reindex")
    index = app.index()
    try:
        if dates:
            _dates(app, index, not no_progress and not app.quiet)
        if embeddings:
            _embeddings(index, settings.embedding_model(), not no_progress and not app.quiet)
        if search_index:
            _rebuild_search_index(index.path, settings.embedding_model())
    except KeyboardInterrupt:
        click.echo("\ninterrupted: what was done is saved; run 'phototag reindex' again to go on", err=True)
        sys.exit(130)


def _copy_to(app: AppContext, url: str, replace: bool, progress_on: bool) -> None:
    """Copy the configured index into ``url``, holding both indexes' writer locks meanwhile."""
    from phototag.config import data_dir
    from phototag.copy_index import TargetNotEmpty, copy_index, row_count
    from phototag.database import locate
    from phototag.pg_lock import writer_lock

    app.existing_db("nothing to copy")
    source_location = app.location()
    target_location = locate(url, source_location.path, data_dir())
    if target_location == source_location:
        raise click.UsageError(f"--copy-to {target_location} is the index being copied")
    app.lock_index("phototag reindex --copy-to")
    app.hold_lock(writer_lock(target_location, "phototag reindex --copy-to (target)"))
    source = app.index()
    target = app.open_other_index(target_location)
    progress = CountProgress("copying rows", row_count(source), progress_on)
    try:
        copied = copy_index(source, target, replace=replace, on_batch=progress.advance)
    except TargetNotEmpty as exc:
        raise click.ClickException(f"{exc}: --replace-target replaces them with this index's") from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: nothing was copied; {target_location} is as it was", err=True)
        sys.exit(130)
    finally:
        progress.finish()
    click.echo(
        f"copied {copied.photos} photos and {copied.vectors} caption vectors to {target_location}; "
        f"use it with --db {target_location} (or [index] db in the config file)",
        err=True,
    )


def _embeddings(index: PhotoIndex, model: str, progress_on: bool) -> None:
    from phototag.embeddings import EmbeddingError, embed_missing, load_embedder, missing_count, model_id

    total = missing_count(index, model_id(model))
    if total == 0:
        click.echo(f"embeddings: every caption has a vector from {model_id(model)}", err=True)
        return
    click.echo(f"embeddings: loading {model}", err=True)
    try:
        embedder = load_embedder(model)
    except EmbeddingError as exc:
        raise click.ClickException(str(exc)) from None
    progress = CountProgress("embedding captions", total, progress_on)
    saved = embed_missing(index, embedder, on_batch=progress.advance)
    progress.finish()
    click.echo(f"embeddings: {saved} captions embedded with {embedder.name}", err=True)
    if index.location.is_server:
        _warm_server_vector_copy(index.location, embedder.name)
    else:
        _warm_vector_cache(index.path, embedder.name)


def _warm_server_vector_copy(location: IndexLocation, model: str) -> None:
    """:func:`_warm_vector_cache` for a PostgreSQL index (this machine's copy of its vectors)."""
    from phototag.pg_search import connect, vector_store

    conn = connect(location)
    try:
        vector_store(conn, location, model).sync()
    except OSError as exc:
        click.echo(f"embeddings: the search cache could not be written ({exc}); searches will try again", err=True)
    finally:
        conn.close()


def _warm_vector_cache(db: Path, model: str) -> None:
    """Copy the vectors for searching now, so the first search does not wait for it."""
    from phototag.search import connect, vectors_cache_dir
    from phototag.vectors import VectorStore

    conn = connect(db)
    try:
        VectorStore.for_sqlite(conn, db, model, vectors_cache_dir()).sync()
    except OSError as exc:
        click.echo(f"embeddings: the search cache could not be written ({exc}); searches will try again", err=True)
    finally:
        conn.close()


def _rebuild_search_index(db: Path, model: str) -> None:
    import sqlite3
    import time

    from phototag.embeddings import model_id
    from phototag.migrations import rebuild_spans, upgrade
    from phototag.search import connect, has_vectors, vectors_cache_dir
    from phototag.vectors import VectorStore

    key = model_id(model)
    conn = connect(db)
    try:
        start = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")  # waits for a writer's transaction (the busy timeout), then one of its own
        upgrade(conn)  # an index from before the span tables gains them
        rebuild_spans(conn)
        conn.commit()
        photos = conn.execute("SELECT count(*) FROM photos").fetchone()[0]
        click.echo(
            f"search index: folders and days of {photos} photos counted in {time.monotonic() - start:.1f} s", err=True
        )
    except sqlite3.OperationalError as exc:
        conn.close()
        raise click.ClickException(f"cannot write the index {db}: {exc}") from None
    if not has_vectors(conn, key):  # keyword search only: the spans were all there was to rebuild
        conn.close()
        click.echo(
            f"search index: no caption embeddings from {key}, so no vector index to rebuild "
            "('phototag reindex --embeddings' makes search by meaning possible)",
            err=True,
        )
        return
    try:
        store = VectorStore.for_sqlite(conn, db, key, vectors_cache_dir())
        click.echo(f"search index: rebuilding from the vectors of {key}", err=True)
        start = time.monotonic()
        rows = store.sync(rebuild=True)
    except OSError as exc:
        raise click.ClickException(f"cannot write the search index in {vectors_cache_dir()}: {exc}") from None
    finally:
        conn.close()
    click.echo(f"search index: {rows} vectors in {time.monotonic() - start:.1f} s ({store.dir})", err=True)


def _dates(app: AppContext, index: PhotoIndex, progress_on: bool) -> None:
    from phototag.taken_dates import missing_dates, record_taken_dates

    total = missing_dates(index)
    if total == 0:
        click.echo("dates: every photo has a taken date", err=True)
        return
    progress = CountProgress("reading dates", total, progress_on)
    recorded = record_taken_dates(index, app.exiftool(), on_batch=progress.advance)
    progress.finish()
    unknown = ""
    if recorded < total:
        unknown = f" ({total - recorded} have no EXIF date, and their time before phototag wrote them is unknown)"
    click.echo(f"dates: recorded {recorded} of {total}{unknown}", err=True)
