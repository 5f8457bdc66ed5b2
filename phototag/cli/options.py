"""Option stacks shared by commands, so a flag means the same (and reads the same in --help) everywhere.

- ``model_options`` (+ ``apply_model_options``): the captioning model's flags (backfill, watch).
- ``progress_option``: ``--no-progress`` (backfill, restore, reindex).
- ``dry_run_option``: ``--dry-run`` (backfill, prune); each command says what its dry run shows.
- ``paths_argument``: the PATHS a command works on (backfill, restore, prune, watch).
- ``ray_option`` (+ ``cluster_stages``): ``--ray ADDRESS``, the model on a Ray cluster, and ``--ray-io``,
  decoding and metadata writes on its nodes too (backfill, watch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from phototag.cli.context import AppContext
from phototag.config import Settings

if TYPE_CHECKING:
    from phototag.caption_backend import CaptionBackend
    from phototag.stages import WriteFiles

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _stack(options: list[Decorator]) -> Decorator:
    """One decorator applying ``options`` so they show in --help in the order given."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


model_options = _stack(
    [
        click.option("--model", help="Hub id or local folder of a BLIP captioning model."),
        click.option("--prompt", help='Conditional prefix, e.g. "a photography of" (stripped from the caption).'),
        click.option("--batch-size", type=click.IntRange(1, 1024), help="Photos per model call."),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps."),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "fp32", "fp16", "bf16", "int8"]),
            help="Model precision (int8: CPU only, quantized Linear layers; README: Speed and precision).",
        ),
        click.option(
            "--overwrite", is_flag=True, default=None, help="Replace descriptions a person wrote (kept by default)."
        ),
    ]
)

ray_option = _stack(
    [
        click.option(
            "--ray",
            "ray_address",
            metavar="ADDRESS",
            help="Run the model on a Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: [cluster] "
            "ray_address). Decoding, metadata writes (unless --ray-io) and the index stay on this machine. "
            "Needs phototag[ray].",
        ),
        click.option(
            "--ray-io",
            is_flag=True,
            default=None,
            help="With --ray: decode photos and write their metadata on the cluster's nodes too, for a library "
            "mounted at the same path on every node (exiftool and the model folder there too); the index stays "
            "on this machine (default: [cluster] ray_io).",
        ),
    ]
)

progress_option = click.option("--no-progress", is_flag=True, help="No progress line on stderr.")


def dry_run_option(help: str) -> Decorator:  # noqa: A002 - click's own name for the text
    """``--dry-run``, with the command's own words for what its dry run shows."""
    return click.option("--dry-run", is_flag=True, help=help)


def paths_argument(*, required: bool = False) -> Decorator:
    """The PATHS (files or folders) a command works on."""
    return click.argument("paths", nargs=-1, required=required, type=click.Path(path_type=Path))


def apply_model_options(app: AppContext, values: dict[str, Any]) -> Settings:
    """Apply the flags, then refuse at once (before seconds of torch imports) a model folder that does
    not exist or a device this machine lacks."""
    from phototag.captioner import ModelLoadError, check_settings

    app.with_overrides(
        "model",
        name=values.pop("model", None),
        prompt=values.pop("prompt", None),
        batch_size=values.pop("batch_size", None),
        device=values.pop("device", None),
        dtype=values.pop("dtype", None),
    )
    settings = app.with_overrides("metadata", overwrite=values.pop("overwrite", None))
    try:
        check_settings(settings.model)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from None
    return settings


@dataclass(frozen=True)
class ClusterStages:
    """What ``--ray`` / ``--ray-io`` swap into the pipeline; None each: this machine does it."""

    captioner_factory: Callable[[], CaptionBackend] | None = None
    write_files: WriteFiles | None = None


def cluster_stages(app: AppContext, ray_address: str | None, ray_io: bool | None) -> ClusterStages:
    """With ``--ray`` (or ``[cluster] ray_address``): join the cluster now, so a wrong address or a
    missing token stops the command at once, and return what starts the model's actors when the first
    photo needs them (and, with ``--ray-io``, the node actors that decode and write). Without it: the
    model in this process, and Ray is never imported."""
    settings = app.with_overrides("cluster", ray_address=ray_address, ray_io=ray_io)
    address = settings.cluster.ray_address
    if not address:
        if settings.cluster.ray_io:
            raise click.UsageError("--ray-io needs --ray ADDRESS (or [cluster] ray_address): the cluster to use")
        return ClusterStages()
    from phototag.cluster import ClusterError, RayCaptioner, connect, disconnect

    try:
        connect(address)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    app.on_close(disconnect)
    model = settings.model
    io = None
    if settings.cluster.ray_io:
        from phototag.cluster_io import RayIO

        io = RayIO(settings.metadata)
        app.on_close(io.close)

    def start() -> CaptionBackend:
        captioner = RayCaptioner(model, io=io)
        app.on_close(captioner.close)
        return captioner

    return ClusterStages(start, io.write if io is not None else None)
