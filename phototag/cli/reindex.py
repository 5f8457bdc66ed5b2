"""``phototag reindex``: add what an index from an older phototag (or another embedding model) lacks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from phototag.cli import AppContext, pass_app
from phototag.index import DONE, Photo, PhotoIndex


class CountProgress:
    """``label: done/total (pct)  rate/s  ETA`` on stderr: redrawn on a terminal, every 10 s elsewhere."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.done = label, total, 0
        self.enabled = enabled and total > 0
        self._tty = sys.stderr.isatty()
        self._start = self._last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= (0.2 if self._tty else 10.0) or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0
        line = (f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)  {rate:.0f}/s  "
                f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        sys.stderr.write(("\r\033[K" + line) if self._tty else line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self._tty:
            sys.stderr.write("\n")


@click.command("reindex")
@click.option("--embeddings", is_flag=True, help="Embed captions that have no vector from the embedding model.")
@click.option("--dates", is_flag=True,
              help="Record taken dates (EXIF DateTimeOriginal, else the file's time before phototag wrote it) "
                   "where missing.")
@click.option("--no-progress", is_flag=True, help="No progress line on stderr.")
@pass_app
def command(app: AppContext, embeddings: bool, dates: bool, no_progress: bool) -> None:
    """Bring an existing index up to date without captioning again. With no option: everything.

    --embeddings makes search by meaning possible for photos captioned before phototag embedded
    captions, or after [search] embedding_model changed (each caption's vector is replaced).
    --dates records when each photo was taken, for after: and before:: its EXIF DateTimeOriginal, else
    the file's modification time from before phototag first wrote to it (never the time of that write;
    where the index does not know it, the photo is left without a date). Both resume where they
    stopped. Refused while `phototag watch` or another writing phototag runs on the index.

    \b
    Examples:
      phototag reindex --embeddings
      PHOTOTAG_EMBEDDING_MODEL=~/models/all-MiniLM-L6-v2 phototag reindex --embeddings
      phototag reindex --dates
    """
    if not (embeddings or dates):
        embeddings = dates = True
    settings = app.settings
    db = settings.db_path()
    if not db.exists():
        raise click.ClickException(f"no index at {db}: run 'phototag backfill PATH' first")
    app.lock_index("phototag reindex")
    index = PhotoIndex(db)
    try:
        if dates:
            _dates(index, settings.metadata.exiftool or None, not no_progress and not app.quiet)
        if embeddings:
            _embeddings(index, settings.embedding_model(), not no_progress and not app.quiet)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: what was done is saved; run 'phototag reindex' again to go on", err=True)
        sys.exit(130)
    finally:
        index.close()


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
    _warm_vector_cache(index.path, embedder.name)


def _warm_vector_cache(db: Path, model: str) -> None:
    """Copy the vectors for searching now, so the first search does not wait for it."""
    from phototag.search import connect, vectors_cache_dir
    from phototag.vectors import VectorStore

    conn = connect(db)
    try:
        VectorStore(conn, db, model, vectors_cache_dir()).sync()
    except OSError as exc:
        click.echo(f"embeddings: the search cache could not be written ({exc}); searches will try again", err=True)
    finally:
        conn.close()


def _dates(index: PhotoIndex, exiftool_path: str | None, progress_on: bool) -> None:
    from sqlalchemy import func, select

    from phototag.exiftool import MetadataError
    from phototag.metadata import ExifToolSession
    from phototag.mwg import local_time_iso

    missing = (Photo.status == DONE) & Photo.taken_at.is_(None)
    with index.session() as session:
        total = session.scalar(select(func.count()).select_from(Photo).where(missing)) or 0
    if total == 0:
        click.echo("dates: every photo has a taken date", err=True)
        return
    try:
        exiftool = ExifToolSession(exiftool_path)
    except MetadataError as exc:
        raise click.ClickException(str(exc)) from None
    progress = CountProgress("reading dates", total, progress_on)
    recorded = last = 0
    with exiftool:
        while True:
            with index.session() as session:
                rows = session.scalars(
                    select(Photo).where(missing, Photo.id > last).order_by(Photo.id).limit(200)
                ).all()
            if not rows:
                break
            last = rows[-1].id
            found: dict[int, str] = {}
            for row in rows:
                try:
                    exif_date = exiftool.read(Path(row.path)).taken_at
                    mtime_ns = pre_write_mtime_ns(row, os.stat(row.path).st_mtime_ns)
                except (MetadataError, OSError):
                    continue  # gone or unreadable: the next backfill sweeps or retries it
                if exif_date or mtime_ns is not None:
                    found[row.id] = exif_date or local_time_iso(mtime_ns or 0)
            with index.transaction() as session:
                for photo_id, taken_at in found.items():
                    stored = session.get(Photo, photo_id)
                    if stored is not None:
                        stored.taken_at = taken_at
            recorded += len(found)
            progress.advance(len(rows))
    progress.finish()
    unknown = ""
    if recorded < total:
        unknown = f" ({total - recorded} have no EXIF date, and their time before phototag wrote them is unknown)"
    click.echo(f"dates: recorded {recorded} of {total}{unknown}", err=True)


def pre_write_mtime_ns(row: Photo, mtime_now_ns: int) -> int | None:
    """The photo's modification time from before phototag wrote it: the one recorded when phototag
    first planned it; for a row from an older index, the current mtime only if it predates the row
    (phototag has not changed it since, or kept it). None when unknown: the current mtime may be the
    time of phototag's own write, which is not when the photo was taken."""
    if row.mtime_before_write_ns is not None:
        return row.mtime_before_write_ns
    if row.written_to is None or mtime_now_ns < (row.created_at or 0) * 1e9:
        return mtime_now_ns
    return None
