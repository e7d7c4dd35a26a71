"""Helpers every `rewards` sub-command module shares (errors, settings, common options).

They live apart from training/cli/app.py so sub-apps (training/cli/experiments.py) can import them
while training/cli/app.py imports the sub-apps, also when run as ``python -m training.cli``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from serving.config import StoreSettings, get_store_settings

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """A problem the user can fix; printed as one line, never as a traceback."""


def friendly(func: F) -> F:
    """Turn expected failures into a one-line message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (UserError, ValueError, FileNotFoundError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _settings(data_dir: Path | None) -> StoreSettings:
    settings = get_store_settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data folder (default: REWARDS_DATA_DIR or <project>/data)."),
]
