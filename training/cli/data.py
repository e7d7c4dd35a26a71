"""`rewards simulate` and `rewards features ...`: the world, its point-in-time features, and
loading them into Feast."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from serving.config import StoreSettings
from training.cli.common import (
    DataDirOpt,
    UserError,
    _settings,
    echo_err,
    friendly,
    require_event_store,
    require_pipeline,
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
    load: Annotated[bool, typer.Option(
        "--import/--no-import", help="Import the world's members and events into the event "
                                     "store, as a program would (default: yes).")] = True,
    data_dir: DataDirOpt = None,
) -> None:
    """Simulate a synthetic loyalty world and import it like a program would.

    The catalog, members and events go through the same path as `rewards catalog import` and
    `rewards import`; the hidden truth stays in the world folder."""
    from serving.config import ServeSettings
    from training.simulate import WorldConfig, simulate_world
    from training.simulate.onboard import onboard, summaries

    try:
        start_day = date.fromisoformat(start)
    except ValueError:
        raise UserError(f"--start: expected YYYY-MM-DD, got {start!r}") from None
    config = WorldConfig(members=members, days=days, seed=seed, start=start_day)
    settings = _settings(data_dir)
    out_dir = out or settings.world_dir
    t0 = time.perf_counter()
    counts = simulate_world(config, out_dir)
    result: dict[str, Any] = {"out": str(out_dir), "seconds": round(time.perf_counter() - t0, 1),
                              "rows": counts}
    if load:
        imported = onboard(out_dir, ServeSettings().events(settings))
        result["imported"] = summaries(imported)
        result["seconds"] = round(time.perf_counter() - t0, 1)
    typer.echo(json.dumps(result))


def build_store_features(settings: StoreSettings, *, start: str | None = None,
                         end: str | None = None, out: Path | None = None,
                         chunk_size: int = 20_000, progress: bool = True,
                         as_of: Any = None) -> dict[str, Any]:
    """Features, labelled decisions and history.json from the event store (and the catalog).

    ``as_of`` (a tz-aware instant): read the store as of then (`rewards retrain`)."""
    import pandas as pd

    from serving.stores.events import open_event_store
    from training.data.history import build_from_store
    from training.data.job_lock import exclusive

    def day(value: str | None, option: str) -> pd.Timestamp | None:
        if value is None:
            return None
        try:
            return pd.Timestamp(value, tz="UTC")
        except ValueError:
            raise UserError(f"{option}: expected a date (YYYY-MM-DD), got {value!r}") from None

    first, until = day(start, "--start"), day(end, "--end")  # bad input before any store opens
    url = require_event_store(settings)
    rewards, challenges, vocabulary = catalog_frames(settings)
    with exclusive(settings.data, "rewards features build"):
        store = open_event_store(url)
        try:
            if store.count_events() == 0:
                raise UserError("the event store has no events: run `rewards import events "
                                "FILE` (or `rewards simulate`) first")
            t0 = time.perf_counter()
            meta, counts = build_from_store(
                store, rewards, challenges, vocabulary, out or settings.features_dir,
                window_days=settings.attribution_window_days, margin=settings.margin,
                start=first, end=until, as_of=as_of, chunk_size=chunk_size,
                progress=progress)
        finally:
            store.close()
    return {"seconds": round(time.perf_counter() - t0, 1), "rows": counts,
            "calendar": {"start": meta.start, "days": meta.days}}


def catalog_frames(settings: StoreSettings) -> tuple[Any, Any, Any]:
    """(rewards, challenges, vocabulary) of the program's catalog store, retired items
    included: they still appear in the history."""
    from serving.stores.catalog import open_catalog_store

    store = open_catalog_store(require_event_store(settings))
    try:
        if store.is_empty():
            raise UserError("the catalog is empty: run `rewards catalog import FILE` (or "
                            "`rewards simulate`) first")
        return (store.frame("rewards", include_retired=True),
                store.frame("challenges", include_retired=True), store.vocabulary())
    finally:
        store.close()


@features_app.command("build")
@friendly
def features_build(
    start: Annotated[str | None, typer.Option(
        help="First day of the history (default: the day of the earliest event).")] = None,
    end: Annotated[str | None, typer.Option(
        help="Day after the history; later events are left out (default: after the latest "
             "event).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output (default: <data>/features).")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Members per chunk.")] = 20_000,
    data_dir: DataDirOpt = None,
) -> None:
    """Point-in-time features and labelled decisions, from the event store.

    Reads the members and events imported or posted, and the catalog; writes what Feast serves
    and training learns from."""
    typer.echo(json.dumps(build_store_features(_settings(data_dir), start=start, end=end,
                                               out=out, chunk_size=chunk_size)))


@features_app.command("refresh")
@friendly
def features_refresh(
    watch: Annotated[float, typer.Option(
        min=0, help="Keep refreshing every N seconds (0: once).")] = 0,
    data_dir: DataDirOpt = None,
) -> None:
    """Push fresh features of members with new events to the online store.

    Only members with events received since the last refresh are recomputed; serving sees them
    at the next request."""
    settings = _settings(data_dir)
    require_pipeline(settings, through="feast")
    rounds = refresh_loop(settings, watch) if watch <= 0 else refresh_forever(
        settings, watch, on_error=lambda exc: echo_err(
            f"refresh failed ({type(exc).__name__}: {exc}); retrying in {watch:g} s"))
    for result in rounds:
        typer.echo(json.dumps(result))


def refresh_forever(settings: StoreSettings, every: float, stop: Any = None, *,
                    on_error: Callable[[Exception], None]) -> Iterator[dict[str, Any]]:
    """:func:`refresh_loop` that outlives a failed round: a retrain or `features build`
    rewriting the feature folder, a store that is briefly down. ``on_error`` hears of it and
    the next round runs ``every`` seconds later (``stop``, an Event, ends the wait)."""
    stop = stop if stop is not None else threading.Event()  # never set: run until killed
    while True:
        try:
            yield from refresh_loop(settings, every, stop)
            return
        except Exception as exc:  # noqa: BLE001 - a long-running refresher keeps going
            on_error(exc)
            if stop.wait(every):
                return


def refresh_loop(settings: StoreSettings, every: float,
                 stop: Any = None) -> Any:
    """Yield one refresh summary per round; one round when ``every`` is 0. ``stop`` (an Event)
    ends the loop between rounds.

    Each round reads the catalog and the build's calendar again: a server runs for weeks while
    rewards are added through the catalog API (a redemption of one the refresher did not know
    would count under no reward type) and retrains rebuild the features. The vocabulary stays
    the one the features were built with: it names the online store's columns."""
    from serving.stores.events import open_event_store
    from serving.stores.features import open_store
    from training.data.features import built_vocabulary
    from training.data.history import read_history_meta
    from training.data.refresh import refresh

    url = require_event_store(settings)
    feast = open_store(settings)
    store = open_event_store(url)
    try:
        while True:
            rewards, challenges, _ = catalog_frames(settings)
            result = refresh(store, feast, rewards, challenges,
                             built_vocabulary(settings.features_dir),
                             read_history_meta(settings.features_dir), settings.features_dir)
            yield {"members": result.members, "rows_written": result.rows_written,
                   "seconds": result.seconds, "watermark": result.watermark.isoformat()}
            if every <= 0 or (stop is not None and stop.wait(every)):
                return
            if stop is None:
                time.sleep(every)
    finally:
        store.close()


@features_app.command("show")
@friendly
def features_show(
    member_id: Annotated[str, typer.Argument(help="The member's id.")],
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Time (ISO-8601; naive = UTC); default: now.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    service: Annotated[str | None, typer.Option(
        help="FeatureService whose member features to show (default: the reward model's).")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """The member's feature values as training would see them at a time (point-in-time)."""
    from datetime import UTC, datetime

    import pandas as pd

    from serving.config import get_model_settings
    from serving.stores.features import open_store
    from training.data.refresh import member_at

    try:
        when = pd.Timestamp(as_of) if as_of else pd.Timestamp(datetime.now(UTC))
    except ValueError:
        raise UserError(f"--as-of: expected an ISO-8601 time, got {as_of!r}") from None
    settings = _settings(data_dir)
    require_pipeline(settings, through="feast")
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    name = service or get_model_settings().reward_service
    values = member_at(open_store(settings), name, member_id, when.to_pydatetime())
    if all(v is None for v in values.values()):
        raise UserError(f"no features for member {member_id!r} at {when.isoformat()} (unknown "
                        "member, or no feature row within the view's TTL before that time)")
    if as_json:
        typer.echo(json.dumps({"member_id": member_id, "as_of": when.isoformat(),
                               "service": name, "features": values}, indent=2))
    else:
        for key, value in values.items():
            typer.echo(f"{key:32s} {value}")


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


def materialize(settings: StoreSettings, apply: bool = True, echo: bool = True
                ) -> dict[str, Any]:
    """Load the world's latest features into the online store (applying the repo first).

    Holds the data folder's lock: a build or retrain running meanwhile rewrites the folder
    it reads."""
    from training.data.feast_ops import apply_repo, materialize_world
    from training.data.history import read_history_meta
    from training.data.job_lock import exclusive

    require_pipeline(settings, through="features" if apply else "feast")
    with exclusive(settings.data, "rewards features materialize"):
        meta = read_history_meta(settings.features_dir)
        start = meta.start_ts.to_pydatetime()
        t0 = time.perf_counter()
        if apply:
            apply_repo(settings)
        materialize_world(settings, start, meta.days)
    result = {"materialized_through": str(meta.end_ts.date()),
              "seconds": round(time.perf_counter() - t0, 1)}
    if echo:
        typer.echo(json.dumps(result))
    return result
