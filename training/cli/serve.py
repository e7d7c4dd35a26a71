"""`rewards serve`, `rewards score-batch`, `rewards keys ...` and `rewards demo`: answering with
the champion models, online or in batch, and who may ask."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from serving.config import StoreSettings
from training.cli.common import (
    DataDirOpt,
    EngineOpt,
    SchedulerOpt,
    UserError,
    _settings,
    check_engine,
    check_runtime,
    echo_err,
    friendly,
    model_registry,
    require_features,
    require_pipeline,
)

if TYPE_CHECKING:
    from serving.stores.keys import KeyStore

keys_app = typer.Typer(help="Create, list and revoke API keys (stored hashed).",
                       no_args_is_help=True)


def _use_data_dir(data_dir: Path | None) -> None:
    """Make ``--data-dir`` the folder every later reader of the settings sees: the server (in
    this process, or its worker processes) builds its settings from the environment."""
    from serving.config import get_store_settings

    if data_dir is not None:
        os.environ["REWARDS_DATA_DIR"] = str(data_dir.resolve())
        get_store_settings.cache_clear()


def _require_servable(store: StoreSettings) -> None:
    """What the server cannot start without (serving.services.build_services): the features and
    the rules. An empty catalog or no model yet is fine: the server answers what it can (empty
    or cold-start answers, reported by /readyz) and picks them up when they arrive."""
    from serving.config import get_serve_settings

    settings = get_serve_settings()
    require_features(store)
    rules = settings.rules(store)
    if not rules.is_file():
        raise UserError(f"no business rules at {rules}: restore config/rules.toml or set "
                        "REWARDS_RULES_FILE")
    settings.keys(store)  # ValueError when the profile lacks the database URL
    from serving.stores.features import registry_file

    feast = registry_file(store)
    if feast is not None and not feast.is_file():
        echo_err(f"note: no Feast registry at {feast}: members' features unavailable (cold "
                 "start) until `rewards features materialize`")
    registry = model_registry(store)
    if registry is not None and not registry.is_file():
        echo_err(f"note: no model registry at {registry}: cold-start answers until "
                 "`rewards train all` registers models")


@friendly
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="Worker processes, each on its own SO_REUSEPORT socket.")] = 1,
    refresh_seconds: Annotated[float, typer.Option(
        min=0, help="Recompute members with new events and push them to the online store "
                    "every N seconds, beside the server (0: off; `rewards features refresh "
                    "--watch N` does the same as a separate process).")] = 0,
    data_dir: DataDirOpt = None,
) -> None:
    """Start the recommendation API (OpenAPI docs at /docs)."""
    store = _settings(data_dir)
    _require_servable(store)
    _use_data_dir(data_dir)
    from serving.workers import serve as run

    stop = _start_refresher(store, refresh_seconds) if refresh_seconds > 0 else None
    try:
        run(host, port, workers)
    finally:
        if stop is not None:
            stop.set()


def _start_refresher(store: StoreSettings, every: float) -> threading.Event:
    """The feature refresher as a daemon thread of the serve command (one per server, not per
    worker): a failed round is logged and retried at the next one, never fatal to serving."""
    from training.cli.data import refresh_forever

    require_pipeline(store, through="feast")
    stop = threading.Event()
    log = logging.getLogger("rewards.refresh")

    def failed(exc: Exception) -> None:
        log.error("feature refresh failed; retrying in %s s", every, exc_info=exc)

    def run() -> None:
        for result in refresh_forever(store, every, stop, on_error=failed):
            if result["members"]:
                log.info("features refreshed", extra=result)

    threading.Thread(target=run, name="feature-refresh", daemon=True).start()
    return stop


def _key_store(data_dir: Path | None, *, create: bool = False) -> KeyStore:
    """The key table; unless ``create``, a missing SQLite database is an error, not made empty."""
    from serving.config import get_serve_settings
    from serving.stores.keys import open_key_store

    url = get_serve_settings().keys(_settings(data_dir))
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if not create and path is not None and not path.is_file():
        raise UserError(f"no API keys at {path}: run `rewards keys create --name NAME "
                        "--scope recommend` first")
    return open_key_store(url)


@keys_app.command("create")
@friendly
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key, e.g. 'crm-prod'.")],
    scope: Annotated[list[str], typer.Option(
        help="Scope to grant (repeat): recommend, events, experiments:read, "
             "experiments:write, admin.")],
    rate_limit: Annotated[float | None, typer.Option(
        help="Requests per second for this key (default: REWARDS_DEFAULT_RATE_LIMIT).")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a key and print it ONCE: only its hash is stored."""
    store = _key_store(data_dir, create=True)
    try:
        record, raw = store.create(name, scope, rate_limit)
    finally:
        store.close()
    typer.echo(json.dumps({**record.public(), "key": raw}))
    echo_err("store this key now: it cannot be shown again (only its SHA-256 is kept)")


@keys_app.command("list")
@friendly
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Every key: id, name, scopes, rate limit, created, revoked (never the key itself)."""
    store = _key_store(data_dir)
    try:
        keys = [k.public() for k in store.list_keys()]
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(keys, indent=2))
        return
    for k in keys:
        state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
        rate = f"{k['rate_limit']:g}/s" if k["rate_limit"] else "default rate"
        typer.echo(f"{k['key_id']}  {k['name']:<20} {','.join(k['scopes']):<40} {rate:<14} "
                   f"created {k['created_at']}  {state}")


@keys_app.command("revoke")
@friendly
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by `rewards keys list`.")],
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a key; servers stop accepting it within REWARDS_AUTH_CACHE_TTL_SECONDS."""
    store = _key_store(data_dir)
    try:
        revoked = store.revoke(key_id)
    finally:
        store.close()
    if not revoked:
        raise UserError(f"KEY_ID: no active key {key_id!r} (see `rewards keys list`)")
    typer.echo(json.dumps({"key_id": key_id, "revoked": True}))


@friendly
def score_batch_cmd(
    out: Annotated[Path, typer.Option(help="Output file: .parquet or .csv.")],
    k_rewards: Annotated[int, typer.Option(min=1, max=20, help="Rewards per member.")] = 3,
    chunk_size: Annotated[int, typer.Option(min=1, help="Members per onnxruntime call.")] = 2_000,
    threads: Annotated[int, typer.Option(
        min=1, max=64, help="Threads per model call. onnx: onnxruntime threads, 1 (default) "
                            "keeps scores bit-identical across chunk sizes and engines, more "
                            "reorder sums (~1e-7); compiled: lleaves threads (rows split, scores "
                            "unchanged).")] = 1,
    runtime: Annotated[str, typer.Option(
        help="onnx (default): the champion ONNX models in onnxruntime. compiled: the same "
             "versions' native LightGBM models compiled with lleaves (cached beside the "
             "models; ~3x faster), used only after matching the ONNX models' probabilities "
             "within 1e-5 on the first chunk.")] = "onnx",
    engine: EngineOpt = None,
    scheduler: SchedulerOpt = None,
    partition_size: Annotated[int, typer.Option(
        min=1, help="Members per Dask task (--engine dask).")] = 50_000,
    data_dir: DataDirOpt = None,
) -> None:
    """Score every member with the champion models into a file (top rewards + targets).

    --engine dask scores partitions on a Dask cluster with the same models; the file is the same
    as the single-process one."""
    engine, runtime = check_engine(engine or "local"), check_runtime(runtime)
    if out.suffix not in (".parquet", ".csv"):
        raise UserError(f"--out: expected a .parquet or .csv file, got {out.name!r}")
    if not out.parent.is_dir():
        raise UserError(f"--out: folder {out.parent} does not exist")
    store = _settings(data_dir)
    require_pipeline(store, through="models")

    from tqdm.auto import tqdm

    from serving.batch.scoring import latest_member_features, score_batch
    from serving.config import get_model_settings, get_serve_settings
    from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
    from serving.decisioning.rules import load_rules
    from serving.stores.catalog import open_catalog_store
    from serving.stores.features import open_store, service_feature_names
    from serving.stores.models import ChampionSource, ModelRefused, load_onnx

    serve_settings, names = get_serve_settings(), get_model_settings()
    feast_store = open_store(store)
    source = ChampionSource(store.tracking_uri, store.models)
    models: dict[str, Any] = {}
    report: dict[str, Any] = {}
    try:
        for (name, service), derived in zip(names.families(), (REWARD_DERIVED,
                                                               DIFFICULTY_DERIVED), strict=True):
            found = source.champion(name)
            if found is None:
                raise UserError(f"no champion for {name!r}: run `rewards train all` first")
            models[name] = load_onnx(found[1], service_feature_names(feast_store, service),
                                     derived, threads=1 if runtime == "compiled" else threads)
            if runtime == "compiled":
                from serving.batch.compiled import compile_native

                native = source.native(name, found[0])  # the champion version's own booster
                models[name] = compile_native(native, models[name], native.parent, threads)
                report.setdefault("compile_seconds", {})[name] = round(
                    models[name].compile_seconds, 1)
        reward, difficulty = models[names.reward_model_name], models[names.difficulty_model_name]
        features = store.features_dir / "member_features.parquet"
        catalog_store = open_catalog_store(serve_settings.events(store))
        try:
            if catalog_store.is_empty():
                raise UserError("the catalog is empty: run `rewards catalog import FILE` first")
            catalog = catalog_store.catalog()  # what serving answers from, retired items out
        finally:
            catalog_store.close()
        flow = load_rules(serve_settings.rules(store)).challenges.flow_zone
        t0 = time.perf_counter()  # reading the features counts: it is part of the job
        members = latest_member_features(features)  # read once: the bar's total, then scored
        with tqdm(total=len(members), unit="member", desc="score-batch",
                  file=sys.stderr) as bar:
            if engine == "dask":
                from serving.batch.cluster import dask_client
                from serving.batch.partitioned import score_batch_dask

                with dask_client(scheduler or store.dask_scheduler) as client:
                    n = score_batch_dask(features, catalog, reward, difficulty, out, client,
                                         k_rewards=k_rewards, flow_zone=flow,
                                         chunk_size=chunk_size, partition_size=partition_size,
                                         threads=threads, progress=bar.update, members=members)
            else:
                n = score_batch(features, catalog, reward, difficulty, out, k_rewards=k_rewards,
                                flow_zone=flow, chunk_size=chunk_size, progress=bar.update,
                                members=members)
    except ModelRefused as exc:  # a broken model or a compiled one that disagrees with ONNX
        raise UserError(str(exc)) from None
    dt = time.perf_counter() - t0
    if runtime == "compiled":
        report["parity_max_abs_diff"] = {  # None: no member, so nothing was compared
            name: None if m.parity_max_abs_diff is None else float(f"{m.parity_max_abs_diff:.3g}")
            for name, m in models.items()}
    typer.echo(json.dumps({"members": n, "seconds": round(dt, 1), "engine": engine,
                           "runtime": runtime, "members_per_second": round(n / dt), **report,
                           "out": str(out)}))


@friendly
def demo(
    members: Annotated[int, typer.Option(min=1, help="Members in the demo world.")] = 100_000,
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve",
                                              help="Start the API at the end.")] = True,
    port: Annotated[int, typer.Option(min=1, max=65535, help="API port.")] = 8000,
    data_dir: DataDirOpt = None,
) -> None:
    """The main job on embedded defaults: simulate -> features -> Feast -> train -> serve.

    The simulated world is imported into the event store, and features come from there."""
    from serving.config import ServeSettings
    from training.cli.data import build_store_features, materialize
    from training.cli.train import promote_if_better
    from training.config import get_train_settings
    from training.data.feast_ops import apply_repo
    from training.pipeline import train_difficulty, train_reward
    from training.simulate import WorldConfig, simulate_world
    from training.simulate.onboard import onboard, summaries

    settings = _settings(data_dir)
    _use_data_dir(data_dir)  # the server reads it too
    total = 5 if serve_after else 4
    t_all = time.perf_counter()

    def step(i: int, label: str) -> None:
        typer.secho(f"[{i}/{total}] {label}", fg=typer.colors.CYAN, bold=True, err=True)

    step(1, f"simulate {members:,} members x {days} days (seed {seed}) and import them")
    counts = simulate_world(WorldConfig(members=members, days=days, seed=seed), settings.world_dir)
    echo_err(f"    world written to {settings.world_dir}: {counts}")
    imported = onboard(settings.world_dir, ServeSettings().events(settings))
    echo_err(f"    imported into the event store: {summaries(imported)}")
    step(2, "build point-in-time features from the event store")
    echo_err(f"    {build_store_features(settings)}")
    step(3, "feast apply + materialize into the online store")
    echo_err(f"    {apply_repo(settings)}")
    materialize(settings, apply=False)
    step(4, "train, evaluate, export and register both models")
    train_settings = get_train_settings()
    for fn in (train_reward, train_difficulty):
        result = fn(settings, train_settings, progress=echo_err)
        promote_if_better(result.name)
        echo_err(f"    {result.name} v{result.version}: " + ", ".join(
            f"{k}={v:.3f}" for k, v in result.metrics.items()
            if k.split(".")[0] in ("propensity", "policy", "difficulty", "uplift", "ope")))
    typer.secho(f"demo pipeline done in {time.perf_counter() - t_all:.0f} s; data under "
                f"{settings.data}", fg=typer.colors.GREEN, err=True)
    if serve_after:
        step(5, f"serve on http://127.0.0.1:{port} (Ctrl-C to stop; docs at /docs)")
        key = _demo_key(data_dir)
        echo_err(f"""    a new API key for this demo (scopes recommend, events, experiments:read; shown once):
      export REWARDS_KEY={key}
    try:
      curl -s -X POST http://127.0.0.1:{port}/v1/recommendations \\
           -H "Authorization: Bearer $REWARDS_KEY" \\
           -H 'content-type: application/json' -d '{{"member_id": "42", "k_rewards": 3}}'
    reports in a browser: http://127.0.0.1:{port}/login (paste the key)""")
        serve(host="127.0.0.1", port=port, workers=1, data_dir=data_dir)


def _demo_key(data_dir: Path | None) -> str:
    """A fresh key for the demo's example requests (listed, and revocable, like any other)."""
    store = _key_store(data_dir, create=True)
    try:
        return store.create("demo", ["recommend", "events", "experiments:read"])[1]
    finally:
        store.close()
