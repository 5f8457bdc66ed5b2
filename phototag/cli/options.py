"""Option stacks, and opening the index, shared by commands that run the captioning pipeline (backfill, watch)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from phototag.cli import AppContext
from phototag.config import Settings

if TYPE_CHECKING:
    from phototag.index import PhotoIndex


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--model", help="Hub id or local folder of a BLIP captioning model."),
        click.option("--prompt", help='Conditional prefix, e.g. "a photography of" (stripped from the caption).'),
        click.option("--batch-size", type=click.IntRange(1, 1024), help="Photos per model call."),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), help="Model precision."),
        click.option("--overwrite", is_flag=True, default=None,
                     help="Replace descriptions a person wrote (kept by default)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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


def open_index(db: Path) -> PhotoIndex:
    """The index for a command that writes it, or one clear line (no traceback) when it cannot be
    opened: a folder this user cannot write, a damaged file, a disk that is full."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    from phototag.index import PhotoIndex

    try:
        return PhotoIndex(db)
    except (SQLAlchemyError, sqlite3.Error) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"cannot open the index {db}: {cause}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot open the index {db}: {exc.strerror or exc}") from None
