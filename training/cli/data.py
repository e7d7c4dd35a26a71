"""`rewards simulate` and `rewards features ...`: the world, its point-in-time features, and
loading them into Feast."""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from serving.config import StoreSettings
from training.cli.common import (
    DataDirOpt,
    UserError,
    _settings,
    friendly,
    require_pipeline,
    require_world,
)

features_app = typer.Typer(help="Build point-in-time features and load them into Feast.",
                           no_args_is_help=True)


@friendly
def simulate(
    members: Annotated[int, typer.Option(min=1, help="Number of members.")] = 100_000,
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same world).")] = 7,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = "2026-01-01",
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <data>/world).")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Simulate a synthetic loyalty world (members, catalog, events, randomized logs, truth)."""
    from training.simulate import WorldConfig, simulate_world

    try:
        start_day = date.fromisoformat(start)
    except ValueError:
        raise UserError(f"--start: expected YYYY-MM-DD, got {start!r}") from None
    config = WorldConfig(members=members, days=days, seed=seed, start=start_day)
    out_dir = out or _settings(data_dir).world_dir
    t0 = time.perf_counter()
    counts = simulate_world(config, out_dir)
    typer.echo(json.dumps({"out": str(out_dir), "seconds": round(time.perf_counter() - t0, 1),
                           "rows": counts}))


@features_app.command("build")
@friendly
def features_build(
    world: Annotated[Path | None, typer.Option(help="World folder (default: <data>/world).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output (default: <data>/features).")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Members per chunk.")] = 20_000,
    data_dir: DataDirOpt = None,
) -> None:
    """Compute point-in-time member features and item features as parquet for Feast."""
    from training.data.features import build_features

    settings = _settings(data_dir)
    world_dir = world or settings.world_dir
    require_world(world_dir)
    t0 = time.perf_counter()
    counts = build_features(world_dir, out or settings.features_dir, chunk_size=chunk_size)
    typer.echo(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "rows": counts}))


@features_app.command("apply")
@friendly
def features_apply(data_dir: DataDirOpt = None) -> None:
    """Register entities, feature views and services (like `feast apply`)."""
    from training.data.feast_ops import apply_repo

    settings = _settings(data_dir)
    require_pipeline(settings, through="features")  # the feature views' sources
    typer.echo(json.dumps(apply_repo(settings)))


@features_app.command("materialize")
@friendly
def features_materialize(
    data_dir: DataDirOpt = None,
    apply: Annotated[bool, typer.Option(help="Apply the repo first.")] = True,
) -> None:
    """Apply the repo, then load the latest features of the world into the online store."""
    materialize(_settings(data_dir), apply=apply)


def materialize(settings: StoreSettings, apply: bool = True) -> dict[str, Any]:
    """Load the world's latest features into the online store (applying the repo first)."""
    from training.data.feast_ops import apply_repo, materialize_world
    from training.data.world import read_world_meta

    require_pipeline(settings, through="features" if apply else "feast")
    meta = read_world_meta(settings.world_dir)
    start = meta.start_ts.to_pydatetime()
    t0 = time.perf_counter()
    if apply:
        apply_repo(settings)
    materialize_world(settings, start, meta.days)
    result = {"materialized_through": str(meta.end_ts.date()),
              "seconds": round(time.perf_counter() - t0, 1)}
    typer.echo(json.dumps(result))
    return result
