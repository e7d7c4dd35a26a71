"""`rewards train ...`, `rewards evaluate` and `rewards models ...`: fitting and registering
models, measuring them against the truth, and moving the champion alias."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from training.cli.common import (
    DataDirOpt,
    EngineOpt,
    SchedulerOpt,
    UserError,
    _settings,
    check_engine,
    echo_err,
    friendly,
    require_model_registry,
    require_pipeline,
)

train_app = typer.Typer(help="Train, evaluate, export and register models.", no_args_is_help=True)
models_app = typer.Typer(help="Inspect, promote and roll back registered models.",
                         no_args_is_help=True)


def _train(which: str, data_dir: Path | None, engine: str | None = None,
           scheduler: str | None = None) -> list[dict[str, Any]]:
    from contextlib import nullcontext

    from training.config import get_train_settings
    from training.data.job_lock import exclusive
    from training.pipeline import train_difficulty, train_reward

    store, settings = _settings(data_dir), get_train_settings()
    settings = settings.model_copy(update={"engine": check_engine(engine or settings.engine)})
    require_pipeline(store, through="feast")
    results = []
    cluster: Any = nullcontext(None)
    if settings.engine == "dask":
        from serving.batch.cluster import dask_client

        cluster = dask_client(scheduler or store.dask_scheduler)
    with exclusive(store.data, f"rewards train {which}"), cluster as client:
        for name, fn in (("reward", train_reward), ("difficulty", train_difficulty)):
            if which in (name, "all"):
                echo_err(f"training the {name} model ({settings.engine} engine)")
                r = fn(store, settings, progress=echo_err, client=client)
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
    store = _settings(data_dir)
    require_pipeline(store, through="models")
    result = evaluate_registered(store, get_train_settings(), alias, echo_err)
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, value in sorted(result.items()):
        typer.echo(f"{key:<40} {value:.4f}" if isinstance(value, float) else f"{key:<40} {value}")


def _registry(data_dir: Path | None) -> None:
    """Point MLflow at the data folder's registry, which must exist already."""
    from training.config import get_train_settings
    from training.models import tracking

    store, settings = _settings(data_dir), get_train_settings()
    require_model_registry(store)
    tracking.configure_mlflow(store.tracking_uri, store.artifact_root, settings.experiment)


ModelName = Annotated[str, typer.Argument(help="Registered model: reward or difficulty.")]


def _known_model(name: str) -> str:
    from training.config import promotion_gates

    if name not in promotion_gates():
        raise UserError(f"NAME: unknown model {name!r}; expected one of {sorted(promotion_gates())}")
    return name


def _registered(name: str) -> None:
    """A model the registry knows (training registers it: there is nothing to move before)."""
    from training.models import tracking

    try:
        tracking.history(name)
    except tracking.RegistryError:
        raise UserError(f"no registered model {name!r}: run `rewards train all` first") from None


@models_app.command("list")
@friendly
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Champion, challenger and the history of every alias move (who, when, why)."""
    from training.config import promotion_gates
    from training.models import tracking

    names = [_known_model(name)] if name else list(promotion_gates())
    _registry(data_dir)
    for n in names:
        _registered(n)
    report: dict[str, dict[str, Any]] = {
        n: {"champion": tracking.champion_version(n),
            "challenger": tracking.challenger_version(n),
            "trial": tracking.trial_version(n),
            "history": tracking.history(n)} for n in names}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for n, info in report.items():
        trial = f"  on trial v{info['trial']}" if info["trial"] else ""
        typer.secho(f"{n}: champion v{info['champion']}  challenger v{info['challenger']}"
                    f"{trial}", bold=True)
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
    from training.config import promotion_gates
    from training.models import tracking

    _known_model(name)
    _registry(data_dir)
    _registered(name)
    result = tracking.promote(name, promotion_gates()[name], force=force, reason=reason)
    if not result.promoted:
        lines = "\n  ".join(result.failures)
        raise UserError(f"{name} v{result.version} not promoted; worse than champion "
                        f"v{result.from_version}:\n  {lines}")
    typer.echo(json.dumps({"model": name, "champion": result.version,
                           "previous": result.from_version, "forced": result.forced}))


@models_app.command("trial")
@friendly
def models_trial(
    name: ModelName,
    version: Annotated[str | None, typer.Argument(
        help="The version to put on trial; omit with --end.")] = None,
    end: Annotated[bool, typer.Option("--end", help="End the current trial.")] = False,
    reason: Annotated[str, typer.Option(help="Why; recorded in the history.")] = "",
    data_dir: DataDirOpt = None,
) -> None:
    """Serve VERSION beside the champion on a share of decisions (REWARDS_TRIAL_SHARE),
    so that the next `rewards retrain` measures it on its own traffic (reward model only)."""
    from training.config import get_train_settings
    from training.models import tracking

    _known_model(name)
    if name != get_train_settings().reward_model_name:
        raise UserError(f"NAME: only the reward model runs trials, not {name!r}")
    if (version is None) == (not end):
        raise UserError("VERSION: give a version to put on trial, or --end to end the trial")
    if version is not None:  # "5" or "v5", as versions are printed
        number = version[1:] if version[:1] in ("v", "V") else version
        if not number.isdigit():
            raise UserError(f"VERSION: a version number such as 5 (or v5), got {version!r}")
        version = str(int(number))
    _registry(data_dir)
    _registered(name)
    event = tracking.set_trial(name, None if end else version, reason=reason)
    typer.echo(json.dumps({"model": name, "trial": tracking.trial_version(name),
                           "changed": event is not None}))


@models_app.command("rollback")
@friendly
def models_rollback(
    name: ModelName,
    reason: Annotated[str, typer.Option(help="Why; recorded in the history.")] = "",
    data_dir: DataDirOpt = None,
) -> None:
    """Point `champion` back at the previous champion."""
    from training.models import tracking

    _known_model(name)
    _registry(data_dir)
    _registered(name)
    event = tracking.rollback(name, reason=reason)
    typer.echo(json.dumps(dict(event)))


def promote_if_better(name: str) -> None:
    """Demo re-runs: the new challenger becomes champion only through the gate."""
    from training.config import promotion_gates
    from training.models import tracking

    if tracking.champion_version(name) == tracking.challenger_version(name):
        return
    result = tracking.promote(name, promotion_gates()[name])
    verdict = "promoted" if result.promoted else "kept champion v" + str(result.from_version)
    echo_err(f"    {name} challenger v{result.version}: {verdict}")
