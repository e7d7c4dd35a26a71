"""The `rewards` command. Heavy libraries are imported inside commands, so `--help` is instant."""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from serving.config import StoreSettings
from training.cli.common import DataDirOpt, UserError, _settings, friendly

app = typer.Typer(
    help="rewards-reco: personalized rewards and challenges for loyalty programs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
features_app = typer.Typer(help="Build point-in-time features and load them into Feast.",
                           no_args_is_help=True)
app.add_typer(features_app, name="features")
train_app = typer.Typer(help="Train, evaluate, export and register models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
models_app = typer.Typer(help="Inspect, promote and roll back registered models.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")

keys_app = typer.Typer(help="Create, list and revoke API keys (stored hashed).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")

EngineOpt = Annotated[
    str | None, typer.Option(help="local (one process, the default) or dask (a LocalCluster, or "
                                  "--scheduler); training defaults to REWARDS_TRAIN_ENGINE.")]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(help="Dask scheduler address for --engine dask (default: REWARDS_DASK_SCHEDULER,"
                      " else a 2-worker LocalCluster)."),
]


def _engine(engine: str) -> str:
    if engine not in ("local", "dask"):
        raise UserError(f"--engine: expected local or dask, got {engine!r}")
    return engine


def _runtime(runtime: str) -> str:
    if runtime not in ("onnx", "compiled"):
        raise UserError(f"--runtime: expected onnx or compiled, got {runtime!r}")
    return runtime


@app.command()
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
    if not world_dir.is_dir():
        raise UserError(f"--world: folder {world_dir} does not exist (run `rewards simulate`)")
    t0 = time.perf_counter()
    counts = build_features(world_dir, out or settings.features_dir, chunk_size=chunk_size)
    typer.echo(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "rows": counts}))


@features_app.command("apply")
@friendly
def features_apply(data_dir: DataDirOpt = None) -> None:
    """Register entities, feature views and services (like `feast apply`)."""
    from training.data.feast_ops import apply_repo

    typer.echo(json.dumps(apply_repo(_settings(data_dir))))


@features_app.command("materialize")
@friendly
def features_materialize(
    data_dir: DataDirOpt = None,
    apply: Annotated[bool, typer.Option(help="Apply the repo first.")] = True,
) -> None:
    """Apply the repo, then load the latest features of the world into the online store."""
    settings = _settings(data_dir)
    _materialize(settings, apply=apply)


def _materialize(settings: StoreSettings, apply: bool = True) -> dict[str, Any]:
    from training.data.feast_ops import apply_repo, materialize_world

    from training.data.world import read_world_meta

    meta = read_world_meta(settings.world_dir)
    if not (settings.features_dir / "member_features.parquet").is_file():
        raise UserError(f"no features in {settings.features_dir}: run `rewards features build`")
    start = meta.start_ts.to_pydatetime()
    t0 = time.perf_counter()
    if apply:
        apply_repo(settings)
    materialize_world(settings, start, meta.days)
    result = {"materialized_through": str(meta.end_ts.date()),
              "seconds": round(time.perf_counter() - t0, 1)}
    typer.echo(json.dumps(result))
    return result


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def _train(which: str, data_dir: Path | None, engine: str | None = None,
           scheduler: str | None = None) -> list[dict[str, Any]]:
    from contextlib import nullcontext

    from training.config import get_train_settings
    from training.pipeline import train_difficulty, train_reward

    store, settings = _settings(data_dir), get_train_settings()
    settings = settings.model_copy(update={"engine": _engine(engine or settings.engine)})
    if not (store.features_dir / "member_features.parquet").is_file():
        raise UserError(f"no features in {store.features_dir}: run `rewards features build` "
                        "and `rewards features materialize` first")
    results = []
    cluster: Any = nullcontext(None)
    if settings.engine == "dask":
        from serving.batch.cluster import dask_client

        cluster = dask_client(scheduler or store.dask_scheduler)
    with cluster as client:
        for name, fn in (("reward", train_reward), ("difficulty", train_difficulty)):
            if which in (name, "all"):
                _echo(f"training the {name} model ({settings.engine} engine)")
                r = fn(store, settings, progress=_echo, client=client)
                results.append({"model": r.name, "version": r.version, "run_id": r.run_id,
                                "onnx": str(r.onnx_path), "seconds": r.timings,
                                "metrics": r.metrics})
    return results


@train_app.command("rewards")
@friendly
def train_rewards(data_dir: DataDirOpt = None, engine: EngineOpt = None,
                  scheduler: SchedulerOpt = None) -> None:
    """Reward propensity + uplift model (registered as `reward`)."""
    typer.echo(json.dumps(_train("reward", data_dir, engine, scheduler), indent=2))


@train_app.command("difficulty")
@friendly
def train_difficulty_cmd(data_dir: DataDirOpt = None, engine: EngineOpt = None,
                         scheduler: SchedulerOpt = None) -> None:
    """Challenge difficulty model, monotone in the target (registered as `difficulty`)."""
    typer.echo(json.dumps(_train("difficulty", data_dir, engine, scheduler), indent=2))


@train_app.command("all")
@friendly
def train_all(data_dir: DataDirOpt = None, engine: EngineOpt = None,
              scheduler: SchedulerOpt = None) -> None:
    """Both models."""
    typer.echo(json.dumps(_train("all", data_dir, engine, scheduler), indent=2))


@app.command()
@friendly
def evaluate(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    alias: Annotated[str, typer.Option(help="Which registered models: champion or challenger.")]
    = "champion",
    data_dir: DataDirOpt = None,
) -> None:
    """Measure the registered models on the test period against the simulator's hidden truth."""
    from training.config import get_train_settings
    from training.pipeline import evaluate_registered

    if alias not in ("champion", "challenger"):
        raise UserError(f"--alias: expected champion or challenger, got {alias!r}")
    result = evaluate_registered(_settings(data_dir), get_train_settings(), alias, _echo)
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, value in sorted(result.items()):
        typer.echo(f"{key:<40} {value:.4f}" if isinstance(value, float) else f"{key:<40} {value}")


def _registry(data_dir: Path | None) -> None:
    from training.models import tracking
    from training.config import get_train_settings

    store, settings = _settings(data_dir), get_train_settings()
    tracking.configure_mlflow(store.tracking_uri, store.artifact_root,
                              settings.experiment)


ModelName = Annotated[str, typer.Argument(help="Registered model: reward or difficulty.")]


def _known_model(name: str) -> str:
    from training.config import PROMOTION_GATES

    if name not in PROMOTION_GATES:
        raise UserError(f"NAME: unknown model {name!r}; expected one of {sorted(PROMOTION_GATES)}")
    return name


@models_app.command("list")
@friendly
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Champion, challenger and the history of every alias move (who, when, why)."""
    from training.models import tracking
    from training.config import PROMOTION_GATES

    _registry(data_dir)
    names = [_known_model(name)] if name else list(PROMOTION_GATES)
    report = {n: {"champion": tracking.champion_version(n),
                  "challenger": tracking.challenger_version(n),
                  "history": tracking.history(n)} for n in names}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for n, info in report.items():
        typer.secho(f"{n}: champion v{info['champion']}  challenger v{info['challenger']}",
                    bold=True)
        for e in info["history"]:
            forced = " (forced)" if e.get("forced") else ""
            typer.echo(f"  {e['at']}  {e['action']:<9} v{e['version']}"
                       f"{'  from v' + str(e['from_version']) if e.get('from_version') else ''}"
                       f"  by {e['actor']}{forced}  {e.get('reason') or ''}")


@models_app.command("promote")
@friendly
def models_promote(
    name: ModelName,
    force: Annotated[bool, typer.Option(help="Skip the gate (requires --reason).")] = False,
    reason: Annotated[str, typer.Option(help="Why; recorded in the history.")] = "",
    data_dir: DataDirOpt = None,
) -> None:
    """Move `champion` to the challenger if it is not worse on held-out metrics and OPE."""
    from training.models import tracking
    from training.config import PROMOTION_GATES

    _registry(data_dir)
    result = tracking.promote(_known_model(name), PROMOTION_GATES[name], force=force,
                              reason=reason)
    if not result.promoted:
        lines = "\n  ".join(result.failures)
        raise UserError(f"{name} v{result.version} not promoted; worse than champion "
                        f"v{result.from_version}:\n  {lines}")
    typer.echo(json.dumps({"model": name, "champion": result.version,
                           "previous": result.from_version, "forced": result.forced}))


@models_app.command("rollback")
@friendly
def models_rollback(
    name: ModelName,
    reason: Annotated[str, typer.Option(help="Why; recorded in the history.")] = "",
    data_dir: DataDirOpt = None,
) -> None:
    """Point `champion` back at the previous champion."""
    from training.models import tracking

    _registry(data_dir)
    event = tracking.rollback(_known_model(name), reason=reason)
    typer.echo(json.dumps(dict(event)))


def _key_store(data_dir: Path | None):  # noqa: ANN202
    from serving.config import get_serve_settings
    from serving.stores.keys import open_key_store

    return open_key_store(get_serve_settings().keys(_settings(data_dir)))


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
    store = _key_store(data_dir)
    try:
        record, raw = store.create(name, scope, rate_limit)
    finally:
        store.close()
    typer.echo(json.dumps({**record.public(), "key": raw}))
    _echo("store this key now: it cannot be shown again (only its SHA-256 is kept)")


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


@app.command("score-batch")
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
    from tqdm.auto import tqdm

    from serving.batch.scoring import latest_member_features, score_batch
    from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
    from serving.config import get_serve_settings
    from serving.stores.feature_store import open_store, service_feature_names
    from serving.stores.models import ChampionSource, ModelRefused, load_onnx
    from serving.decisioning.recommend import Catalog
    from serving.decisioning.rules import load_rules

    engine, runtime = _engine(engine or "local"), _runtime(runtime)
    if out.suffix not in (".parquet", ".csv"):
        raise UserError(f"--out: expected a .parquet or .csv file, got {out.name!r}")
    if not out.parent.is_dir():
        raise UserError(f"--out: folder {out.parent} does not exist")
    store, serve_settings = _settings(data_dir), get_serve_settings()
    feast_store = open_store(store)
    source = ChampionSource(store.tracking_uri, store.models)
    models: dict[str, Any] = {}
    report: dict[str, Any] = {}
    try:
        for name, service, derived in (("reward", "propensity_v1", REWARD_DERIVED),
                                       ("difficulty", "difficulty_v1", DIFFICULTY_DERIVED)):
            found = source.champion(name)
            if found is None:
                raise UserError(f"no champion for {name!r}: run `rewards train all`")
            models[name] = load_onnx(found[1], service_feature_names(feast_store, service),
                                     derived, threads=1 if runtime == "compiled" else threads)
            if runtime == "compiled":
                from serving.batch.compiled import compile_native

                native = source.native(name, found[0])  # the champion version's own booster
                models[name] = compile_native(native, models[name], native.parent, threads)
                report.setdefault("compile_seconds", {})[name] = round(
                    models[name].compile_seconds, 1)
        features = store.features_dir / "member_features.parquet"
        catalog = Catalog.from_offline(serve_settings.catalog(store), store.features_dir)
        flow = load_rules(serve_settings.rules(store)).challenges.flow_zone
        t0 = time.perf_counter()  # reading the features counts: it is part of the job
        members = latest_member_features(features)  # read once: the bar's total, then scored
        with tqdm(total=len(members), unit="member", desc="score-batch",
                  file=sys.stderr) as bar:
            if engine == "dask":
                from serving.batch.partitioned import score_batch_dask
                from serving.batch.cluster import dask_client

                with dask_client(scheduler or store.dask_scheduler) as client:
                    n = score_batch_dask(features, catalog, models["reward"],
                                         models["difficulty"], out, client, k_rewards=k_rewards,
                                         flow_zone=flow, chunk_size=chunk_size,
                                         partition_size=partition_size, threads=threads,
                                         progress=bar.update, members=members)
            else:
                n = score_batch(features, catalog, models["reward"], models["difficulty"], out,
                                k_rewards=k_rewards, flow_zone=flow, chunk_size=chunk_size,
                                progress=bar.update, members=members)
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


@app.command()
@friendly
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="Worker processes, each on its own SO_REUSEPORT socket.")] = 1,
) -> None:
    """Start the recommendation API (OpenAPI docs at /docs)."""
    from serving.workers import serve as run

    run(host, port, workers)


@app.command()
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
    """The main job on embedded defaults: simulate -> features -> Feast -> train -> serve."""
    from training.config import get_train_settings
    from training.data.feast_ops import apply_repo
    from training.data.features import build_features
    from training.pipeline import train_difficulty, train_reward
    from training.simulate import WorldConfig, simulate_world

    settings = _settings(data_dir)
    if data_dir is not None:
        import os

        os.environ["REWARDS_DATA_DIR"] = str(data_dir)  # the server process reads it too
    total = 5 if serve_after else 4
    t_all = time.perf_counter()

    def step(i: int, label: str) -> None:
        typer.secho(f"[{i}/{total}] {label}", fg=typer.colors.CYAN, bold=True, err=True)

    step(1, f"simulate {members:,} members x {days} days (seed {seed})")
    counts = simulate_world(WorldConfig(members=members, days=days, seed=seed), settings.world_dir)
    _echo(f"    world written to {settings.world_dir}: {counts}")
    step(2, "build point-in-time features")
    _echo(f"    {build_features(settings.world_dir, settings.features_dir)}")
    step(3, "feast apply + materialize into the online store")
    _echo(f"    {apply_repo(settings)}")
    _materialize(settings, apply=False)
    step(4, "train, evaluate, export and register both models")
    train_settings = get_train_settings()
    for fn in (train_reward, train_difficulty):
        result = fn(settings, train_settings, progress=_echo)
        _promote_if_better(result.name)
        _echo(f"    {result.name} v{result.version}: " + ", ".join(
            f"{k}={v:.3f}" for k, v in result.metrics.items()
            if k.split(".")[0] in ("propensity", "policy", "difficulty", "uplift", "ope")))
    typer.secho(f"demo pipeline done in {time.perf_counter() - t_all:.0f} s; data under "
                f"{settings.data}", fg=typer.colors.GREEN, err=True)
    if serve_after:
        step(5, f"serve on http://127.0.0.1:{port} (Ctrl-C to stop; docs at /docs)")
        key = _demo_key(data_dir)
        _echo(f"""    a new API key for this demo (scopes recommend, events, experiments:read; shown once):
      export REWARDS_KEY={key}
    try:
      curl -s -X POST http://127.0.0.1:{port}/v1/recommendations \\
           -H "Authorization: Bearer $REWARDS_KEY" \\
           -H 'content-type: application/json' -d '{{"member_id": 42, "k_rewards": 3}}'
    reports in a browser: http://127.0.0.1:{port}/login (paste the key)""")
        serve(host="127.0.0.1", port=port, workers=1)


def _demo_key(data_dir: Path | None) -> str:
    """A fresh key for the demo's example requests (listed, and revocable, like any other)."""
    store = _key_store(data_dir)
    try:
        return store.create("demo", ["recommend", "events", "experiments:read"])[1]
    finally:
        store.close()


def _promote_if_better(name: str) -> None:
    """Demo re-runs: the new challenger becomes champion only through the gate."""
    from training.models import tracking
    from training.config import PROMOTION_GATES

    if tracking.champion_version(name) == tracking.challenger_version(name):
        return
    result = tracking.promote(name, PROMOTION_GATES[name])
    verdict = "promoted" if result.promoted else "kept champion v" + str(result.from_version)
    _echo(f"    {name} challenger v{result.version}: {verdict}")


# Sub-apps in their own modules (imported last: they use the helpers above).
from training.cli.experiments import experiments_app, uplift_app  # noqa: E402

app.add_typer(experiments_app, name="experiments")
app.add_typer(uplift_app, name="uplift")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
