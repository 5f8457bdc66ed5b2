"""``phototag watch``: a daemon that captions photos as they arrive in some folders."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from phototag.cli.context import AppContext, pass_app
from phototag.cli.options import apply_model_options, cluster_stages, model_options, paths_argument, ray_option

if TYPE_CHECKING:
    from phototag.config import Settings
    from phototag.embed_socket import EmbedServer

log = logging.getLogger("phototag.watch")


@click.command("watch")
@paths_argument()
@model_options
@ray_option
@pass_app
def command(
    app: AppContext, paths: tuple[Path, ...], ray_address: str | None, ray_io: bool | None, **model_values: Any
) -> None:
    """Watch PATHS (default: the config's [watch] folders) and caption new photos as they arrive.

    New, changed and moved-in photos are captioned once their copy has settled; moved and renamed
    photos keep their captions; deleted photos leave the index. Work in progress survives a crash
    (it resumes on the next start), and a rescan every [watch] rescan_interval seconds catches what
    the watcher missed. SIGTERM or Ctrl-C finishes the batch in flight and exits; a second Ctrl-C
    quits at once (photos are never left half-written). One log line per captioned photo on stderr
    (-q: errors only). `phototag status` shows whether a daemon is running.

    \b
    Examples:
      phototag watch ~/Pictures
      phototag watch ~/Pictures /mnt/uploads --batch-size 8
      phototag watch                           # the config's [watch] folders
      systemctl --user enable --now phototag   # see contrib/phototag.service
      phototag watch /mnt/photos --ray auto    # the model on the Ray cluster this machine is part of
      phototag watch /mnt/photos --ray auto --ray-io   # decode and write on its nodes too (same mounts)
    """
    from phototag.safe_write import clean_stale_temps
    from phototag.watch import WatchDaemon

    settings = apply_model_options(app, model_values)
    folders = [Path(p) for p in paths] or [Path(p) for p in settings.watch.folders]
    if not folders:
        raise click.UsageError("no folders to watch: give PATH... or set [watch] folders in the config")
    roots = app.roots(folders, folders=True)

    phototag_log = logging.getLogger("phototag")
    if logging.getLogger().level == logging.WARNING:  # no -v or -q: a daemon says what it does
        phototag_log.setLevel(logging.INFO)

    lock = app.daemon_lock()  # first: a second daemon refuses before it touches the index
    index = app.index()
    exiftool = app.exiftool()
    stale = clean_stale_temps(roots)  # temps of dead writers (and old ones of other hosts); never a live one's
    if stale:
        log.info("removed %d temp files left by an interrupted run", len(stale))
    cluster = cluster_stages(app, ray_address, ray_io)
    daemon = WatchDaemon(
        settings,
        roots,
        index=index,
        exiftool=exiftool,
        lock=lock,
        captioner_factory=cluster.captioner_factory,
        write_files=cluster.write_files,
    )
    watch = settings.watch
    log.info(
        "watching %s (settle %gs, rescan %s, index %s)",
        ", ".join(map(str, daemon.roots)),
        watch.settle_seconds,
        f"every {watch.rescan_interval:g}s" if watch.rescan_interval else "off",
        settings.index_location(),
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():  # the second signal: quit now; safe writes mean no photo is half-written
            os._exit(128 + signum)
        stop.set()
        log.info("%s: finishing the batch in flight (Ctrl-C again to quit at once)", signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    daemon.start()
    try:
        embed_server = _serve_query_embeddings(settings)
        try:
            while not stop.wait(0.5):
                if daemon.error is not None:
                    break
        finally:
            if embed_server is not None:
                embed_server.close()
    except BaseException:
        daemon.shutdown(watch.stop_timeout)  # its threads stop before the context closes exiftool and the index
        raise
    finished = daemon.shutdown(watch.stop_timeout)
    if not finished:
        log.error(
            "the batch in flight did not finish within %gs; its photos stay pending and resume on the next start",
            watch.stop_timeout,
        )
        if daemon.error is not None:
            log.error("%s", daemon.error)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)  # threads still busy: leave without waiting (every write is atomic); not a clean stop
    app.close()  # exiftool, index and lock now, before saying so
    if daemon.error is not None:
        raise click.ClickException(str(daemon.error))
    log.info("stopped")


def _serve_query_embeddings(settings: Settings) -> EmbedServer | None:
    """Answer `phototag search` query embeddings from this long-lived process (see embed_socket)."""
    if not settings.search.embeddings:
        return None
    from phototag.embed_socket import EmbedServer, default_socket_path

    try:
        return EmbedServer(default_socket_path(), settings.embedding_model()).start()
    except OSError as exc:
        log.warning("not answering query embeddings for search: %s", exc)
        return None
