"""Helpers every `rewards` sub-command module shares: errors, settings, common options, and the
checks that a command's inputs exist before it starts.

They live apart from the command modules so that each of those imports only this one, and
training/cli/app.py imports them all (also when run as ``python -m training.cli``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from serving.config import StoreSettings, get_store_settings

F = TypeVar("F", bound=Callable[..., Any])

#: What `rewards features build` writes; every reader of features needs all three.
FEATURE_FILES = ("member_features.parquet", "reward_features.parquet",
                 "challenge_features.parquet", "offers.parquet", "assignments.parquet",
                 "history.json")


class UserError(Exception):
    """A problem the user can fix; printed as one line, never as a traceback."""


def friendly(func: F) -> F:
    """Turn expected failures into a one-line message and exit code 2 (75 when another job
    holds the data folder: try later)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from training.data.job_lock import BUSY_EXIT, DataFolderBusy

        try:
            return func(*args, **kwargs)
        except DataFolderBusy as exc:  # not the user's mistake: a later run will do
            typer.secho(f"busy: {exc}", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(code=BUSY_EXIT) from None
        except (UserError, ValueError, FileNotFoundError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _settings(data_dir: Path | None) -> StoreSettings:
    settings = get_store_settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def echo_err(msg: str) -> None:
    """Progress and notes go to stderr, so stdout stays the command's (JSON) result."""
    typer.echo(msg, err=True)


DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data folder (default: REWARDS_DATA_DIR or <project>/data)."),
]
EngineOpt = Annotated[
    str | None, typer.Option(help="local (one process, the default) or dask (a LocalCluster, or "
                                  "--scheduler); training defaults to REWARDS_TRAIN_ENGINE.")]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(help="Dask scheduler address for --engine dask (default: REWARDS_DASK_SCHEDULER,"
                      " else a 2-worker LocalCluster)."),
]


def check_engine(engine: str) -> str:
    if engine not in ("local", "dask"):
        raise UserError(f"--engine: expected local or dask, got {engine!r}")
    return engine


def check_runtime(runtime: str) -> str:
    if runtime not in ("onnx", "compiled"):
        raise UserError(f"--runtime: expected onnx or compiled, got {runtime!r}")
    return runtime


# -- inputs: each check names the command that makes what is missing ---------------------------
# The pipeline's order is import (or simulate) -> features build -> features apply/materialize ->
# train; a
# command checks every step it depends on, in that order, so the message names the first step
# to run. The checks look at files only: they cost nothing and import nothing heavy.

def require_world(world_dir: Path) -> None:
    from training.data.world import META_FILE, world_exists

    if not world_exists(world_dir):
        raise UserError(f"no world at {world_dir} ({META_FILE} missing): run `rewards simulate` "
                        "(or `rewards demo`) first")


def require_event_store(store: StoreSettings) -> str:
    """The event store's URL; for SQLite, the database must exist (reading must not leave an
    empty one behind)."""
    from serving.config import get_serve_settings

    url = get_serve_settings().events(store)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no event store at {url.removeprefix('sqlite:///')}: run `rewards "
                        "import members FILE` and `rewards import events FILE` (or `rewards "
                        "simulate`) first")
    return url


def require_features(store: StoreSettings) -> None:
    missing = [name for name in FEATURE_FILES if not (store.features_dir / name).is_file()]
    if len(missing) == len(FEATURE_FILES):
        raise UserError(f"no features in {store.features_dir}: run `rewards features build` first")
    if missing:  # an interrupted build
        raise UserError(f"incomplete features in {store.features_dir} ({', '.join(missing)} "
                        "missing): run `rewards features build` again")


def require_feast(store: StoreSettings) -> None:
    """Feature services are read from the registry: training and scoring need it applied."""
    from serving.stores.features import registry_file

    registry = registry_file(store)
    if registry is not None and not registry.is_file():
        raise UserError(f"no Feast registry at {registry}: run `rewards features apply` "
                        "(or `rewards features materialize`) first")


def model_registry(store: StoreSettings) -> Path | None:
    """The MLflow database file; None for a tracking server (nothing local to look at)."""
    uri = store.tracking_uri
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def require_model_registry(store: StoreSettings) -> None:
    """Before MLflow opens it: opening a missing SQLite registry would create an empty one."""
    path = model_registry(store)
    if path is not None and not path.is_file():
        raise UserError(f"no model registry at {path}: run `rewards train all` "
                        "(or `rewards demo`) first")


Step = Literal["features", "feast", "models"]
PIPELINE: tuple[Step, ...] = ("features", "feast", "models")


def require_pipeline(store: StoreSettings, *, through: Step) -> None:
    """Every step of the pipeline up to ``through``, in order: the first one missing is the
    one reported, so the message names the next command to run."""
    checks: dict[Step, Callable[[], None]] = {
        "features": lambda: require_features(store),
        "feast": lambda: require_feast(store),
        "models": lambda: require_model_registry(store),
    }
    for step in PIPELINE[:PIPELINE.index(through) + 1]:
        checks[step]()
