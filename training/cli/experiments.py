"""`rewards experiments ...` and `rewards uplift ...`: experiments for marketers, uplift for any
randomized dataset. Registered on the main app in training/cli/app.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from training.cli.common import DataDirOpt, UserError, _settings, friendly, require_features

experiments_app = typer.Typer(help="Uplift experiments: define arms, run, report.",
                              no_args_is_help=True)
uplift_app = typer.Typer(help="Uplift modelling on any randomized dataset.", no_args_is_help=True)
REPORTS_EXPERIMENT = "experiment-reports"  # MLflow experiment holding one run per report


def _events(data_dir: Path | None, create: bool = False):  # noqa: ANN202
    """The event store. Only ``create`` (defining an experiment) may start a new SQLite store,
    and only inside an existing data folder: any other command run before there is one stops
    with what to run first instead of leaving an empty database behind."""
    from serving.config import get_serve_settings
    from serving.stores.events import open_event_store

    store = _settings(data_dir)
    url = get_serve_settings().events(store)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.is_dir():
            raise UserError(f"no data folder at {path.parent}: run `rewards demo` (or "
                            "`rewards simulate`) first, or pass --data-dir")
        if not create and not path.is_file():
            raise UserError(f"no event store at {path}: run `rewards demo` or "
                            "`rewards experiments create` first")
    return open_event_store(url)


def _when(option: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{option}: expected an ISO time like 2026-12-01T00:00:00Z, "
                        f"got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _arms(text: str) -> list[dict[str, Any]]:
    """``model=0.8,random=0.1,holdout=0.1`` (shares may also be percentages: model=80,...)."""
    arms: list[dict[str, Any]] = []
    for part in text.split(","):
        name, _, share = part.partition("=")
        try:
            arms.append({"name": name.strip(), "share": float(share)})
        except ValueError:
            raise UserError(f"--arms: expected name=share pairs, got {part!r}") from None
    if arms and sum(a["share"] for a in arms) > 1.5:  # percentages
        arms = [{**a, "share": a["share"] / 100} for a in arms]
    return arms


@experiments_app.command("create")
@friendly
def create(
    name: Annotated[str, typer.Option(help="Experiment name.")],
    start: Annotated[str, typer.Option(help="Start, ISO time (UTC if no offset).")],
    end: Annotated[str, typer.Option(help="End, ISO time.")],
    arms: Annotated[str, typer.Option(help="Arms and shares (fractions or percentages).")]
    = "model=0.8,random=0.1,holdout=0.1",
    primary_metric: Annotated[str, typer.Option(
        help="redemption, challenge_completion or incremental_spend.")] = "redemption",
    window_days: Annotated[int, typer.Option(help="Attribution window, days.")] = 7,
    description: Annotated[str, typer.Option(help="Free text shown on the report.")] = "",
    data_dir: DataDirOpt = None,
) -> None:
    """Define an experiment (stored in the event store; a running service picks it up within
    seconds)."""
    from pydantic import ValidationError

    from serving.experiments.definition import ExperimentCreate
    from serving.experiments.service import ExperimentConflict, create_experiment

    try:
        body = ExperimentCreate(name=name, start=_when("--start", start),
                                end=_when("--end", end), arms=_arms(arms),
                                primary_metric=primary_metric,  # type: ignore[arg-type]
                                attribution_window_days=window_days, description=description)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(f"--{field.split('.')[0].replace('_', '-')}: {first['msg']}") from None
    events = _events(data_dir, create=True)
    try:
        experiment = create_experiment(events, body, datetime.now(UTC))
    except ExperimentConflict as exc:
        raise UserError(f"--start: {exc.reason}") from None
    finally:
        events.close()
    typer.echo(experiment.model_dump_json(indent=2))


@experiments_app.command("list")
@friendly
def list_cmd(data_dir: DataDirOpt = None) -> None:
    """Every experiment, oldest first (JSON)."""
    from serving.experiments.service import list_experiments

    events = _events(data_dir)
    try:
        found = list_experiments(events)
    finally:
        events.close()
    typer.echo(json.dumps([e.model_dump(mode="json") for e in found], indent=2))


def _reward_costs(url: str) -> dict[str, float] | None:
    """Each reward's cost from the catalog store (retired ones too); None for no catalog."""
    from serving.stores.catalog import open_catalog_store

    catalog = open_catalog_store(url)
    try:
        rewards = catalog.frame("rewards", include_retired=True)
    finally:
        catalog.close()
    if rewards.empty:
        return None
    return dict(zip(rewards["reward_id"], rewards["cost"].astype(float), strict=True))


def _segments(store: Any, events: Any, segments: Path | None) -> Any:
    """Region from the member profiles, player type when the world is a simulated one (its
    hidden traits; a real program has none), or a user's own table."""
    from serving.experiments.service import load_segments
    from training.uplift.data import read_table
    from training.simulate.oracle import player_types

    if segments is not None:
        table = read_table(segments)
        if "member_id" not in table.columns:
            raise UserError("--segments: the table needs a member_id column")
        return table
    table = load_segments(events)
    types = player_types(store.world_dir)
    if table is not None and types is not None:
        table = table.merge(types, on="member_id", how="left")
    return table


@experiments_app.command("report")
@friendly
def report_cmd(
    experiment_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id.")],
    out: Annotated[Path, typer.Option(help="Folder for report.html, report.json, PNGs.")],
    segments: Annotated[Path | None, typer.Option(
        help="Optional CSV/parquet with member_id and segment columns (e.g. player_type).")]
    = None,
    mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow",
                                             help="Log the report as an MLflow run.")] = True,
    data_dir: DataDirOpt = None,
) -> None:
    """Write the marketer's report (same HTML as GET /experiments/ID) and log it to MLflow."""
    from serving.config import get_serve_settings
    from serving.experiments.render import write_report
    from serving.experiments.service import compute_report, get_experiment

    store, serve = _settings(data_dir), get_serve_settings()
    events = _events(data_dir)
    try:
        experiment = get_experiment(events, experiment_id)
        if experiment is None:
            raise UserError(f"ID: no experiment {experiment_id!r} (see `rewards experiments list`)")
        costs = _reward_costs(serve.events(store))
        report = compute_report(events, experiment, datetime.now(UTC), costs,
                                _segments(store, events, segments))
    finally:
        events.close()
    files = write_report(report, out)
    result: dict[str, Any] = {"experiment_id": experiment_id, "members": report.members,
                              "files": {k: str(v) for k, v in files.items()},
                              "summary": report.summary, "warnings": report.warnings}
    if mlflow_log:
        result["mlflow_run_id"] = log_report_to_mlflow(store, report, out)
    typer.echo(json.dumps(result, indent=2))


def log_report_to_mlflow(store: Any, report: Any, out: Path) -> str:
    """One run per report in the ``experiment-reports`` MLflow experiment: params, headline
    metrics, and the HTML/PNG/JSON files as artifacts."""
    import mlflow

    from training.models import tracking

    tracking.configure_mlflow(store.tracking_uri, store.artifact_root / REPORTS_EXPERIMENT,
                              REPORTS_EXPERIMENT)
    e = report.experiment
    with mlflow.start_run(run_name=f"report-{e.id}") as run:
        mlflow.set_tags({"experiment_id": e.id, "kind": "experiment-report"})
        mlflow.log_params({"experiment_id": e.id, "name": e.name,
                           "primary_metric": e.primary_metric,
                           "arms": ",".join(f"{a.name}={a.share:g}" for a in e.arms),
                           "attribution_window_days": e.attribution_window_days})
        metrics: dict[str, float] = {"members": float(report.members),
                                     "window_complete_share": report.window_complete_share}
        for a in report.arms:
            metrics[f"arm.{a.arm}.members"] = float(a.members)
            if a.conversion_rate is not None:
                metrics[f"arm.{a.arm}.conversion_rate"] = a.conversion_rate.value
        for u in report.uplifts:
            key = f"uplift.{u.treatment}_vs_{u.control}.{u.outcome}"
            metrics.update({key: u.absolute.value, f"{key}.ci_low": u.absolute.ci_low,
                            f"{key}.ci_high": u.absolute.ci_high, f"{key}.p_value": u.p_value})
        if report.qini.available:
            metrics["qini_auc"] = float(report.qini.qini_auc or 0.0)
            metrics["uplift_auc"] = float(report.qini.uplift_auc or 0.0)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), artifact_path="report")
        return run.info.run_id


@experiments_app.command("simulate-live")
@friendly
def simulate_live_cmd(
    experiment_id: Annotated[str, typer.Argument(metavar="ID", help="A running experiment.")],
    members: Annotated[int, typer.Option(min=1, help="Simulated members who visit.")] = 5_000,
    seed: Annotated[int, typer.Option(help="Random seed of the members' answers.")] = 0,
    api: Annotated[str | None, typer.Option(
        help="Base URL of a running service; default: the app in-process.")] = None,
    api_key: Annotated[str | None, typer.Option(
        envvar="REWARDS_API_KEY", help="Key with scopes recommend, events and experiments:read "
        "(needed with --api; in-process a temporary key is created and revoked).")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """A live period on the simulated world: decisions through the API with the experiment's
    arms applied, members answering per the hidden truth, outcomes posted as events."""
    from serving.config import get_serve_settings
    from training.simulate.live import ServiceRefused, missing_world

    store, serve = _settings(data_dir), get_serve_settings()
    world = store.world_dir
    problem = missing_world(world)
    if problem:
        raise UserError(problem)
    try:
        if api is not None:
            result = _live_remote(api, api_key, world, experiment_id, members, seed)
        else:
            result = _live_in_process(store, serve, data_dir, world, experiment_id, members,
                                      seed)
    except ServiceRefused as exc:
        raise UserError(f"the service refused the live period ({exc}): check `rewards "
                        "train all` and `rewards features` ran for this data folder") from None
    typer.echo(json.dumps(result, indent=2))


def _live_remote(api: str, api_key: str | None, world: Path, experiment_id: str, members: int,
                 seed: int) -> dict[str, Any]:
    import httpx

    from training.simulate.live import simulate_live

    if not api_key:
        raise UserError("--api-key: a key is needed to call a running service "
                        "(rewards keys create --scope recommend --scope events "
                        "--scope experiments:read)")
    with httpx.Client(base_url=api, timeout=120,
                      headers={"Authorization": f"Bearer {api_key}"}) as client:
        return simulate_live(client, world, experiment_id, members, seed)


def _live_in_process(store: Any, serve: Any, data_dir: Path | None, world: Path,
                     experiment_id: str, members: int, seed: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from serving.experiments.service import get_experiment
    from serving.main import create_app
    from serving.stores.keys import open_key_store
    from training.simulate.live import simulate_live

    require_features(store)  # the service reads the catalog's features
    events = _events(data_dir)  # the experiment must be defined before the service starts
    try:
        if get_experiment(events, experiment_id) is None:
            raise UserError(f"ID: no experiment {experiment_id!r}: run `rewards experiments "
                            "create` first (see `rewards experiments list`)")
    finally:
        events.close()
    keys = open_key_store(serve.events(store))
    record, key = keys.create("simulate-live", ["recommend", "events", "experiments:read"])
    try:
        with TestClient(create_app(store, serve),
                        headers={"Authorization": f"Bearer {key}"}) as client:
            return simulate_live(client, world, experiment_id, members, seed)
    finally:
        keys.revoke(record.key_id)
        keys.close()


@uplift_app.command("evaluate")
@friendly
def uplift_evaluate(
    data: Annotated[Path, typer.Option(help="Randomized dataset, .csv or .parquet.")],
    treatment_col: Annotated[str, typer.Option(help="Column holding the group.")],
    treated: Annotated[list[str], typer.Option(
        help="Value of a treated group (repeat for several arms).")],
    control: Annotated[str, typer.Option(help="Value of the control group.")],
    outcome: Annotated[str, typer.Option(help="Binary 0/1 outcome column.")],
    features: Annotated[list[str] | None, typer.Option(
        help="Feature column (repeat, or comma-separated); default: every other column "
             "except --exclude and columns the balance check flags.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        help="Column never to use as a feature, e.g. other outcomes (repeat or comma-separated)."
    )] = None,
    learners: Annotated[str | None, typer.Option(
        help="Comma-separated learners to choose from (t, s, x, dr, linear, t_plain, "
             "linear_plain); default: t, s, x, dr, linear.")] = None,
    predictions_out: Annotated[Path | None, typer.Option(
        help="Write per-row out-of-fold uplift scores (.csv or .parquet).")] = None,
    report: Annotated[Path | None, typer.Option(
        help="Folder for report.html, report.json and the PNG charts.")] = None,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Cross-fitting folds.")] = 5,
    inner_folds: Annotated[int, typer.Option(
        min=2, max=10, help="Folds of the learner choice inside each training fold.")] = 3,
    bootstrap: Annotated[int, typer.Option(
        min=20, max=5000, help="Bootstrap resamples for the intervals.")] = 200,
    seed: Annotated[int, typer.Option(help="Fold and model seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Uplift on any randomized dataset: leakage/balance check, cross-fitted T/S/X/DR/linear
    learners chosen inside the folds, Qini with intervals per arm, best-arm policy value."""
    from training.uplift.evaluate import EvaluateOptions, evaluate_file
    from training.uplift.summary import summary_lines

    def names(values: list[str] | None) -> list[str]:
        return [f.strip() for part in (values or []) for f in part.split(",") if f.strip()]

    options = EvaluateOptions(
        treatment_col, list(treated), control, outcome,
        names(features) or None, tuple(names(exclude)), names([learners] if learners else None)
        or None, folds, inner_folds, bootstrap, seed)
    result = evaluate_file(data, options, predictions_out, report,
                           progress=lambda line: typer.echo(line, err=True))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for line in summary_lines(result):
        typer.echo(line)
