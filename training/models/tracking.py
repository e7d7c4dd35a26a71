"""MLflow tracking and the model registry: runs, versions, the promotion gate and rollback.

Each registered model has two aliases. ``challenger`` is the newest registered version;
``champion`` is what serving loads. A third, ``trial``, is set only on purpose (by
`rewards retrain` or `rewards models trial`): serving runs that version beside the champion on a
share of decisions (REWARDS_TRIAL_SHARE) so the next off-policy gate can measure it on
its own traffic. Moving ``champion`` goes through :func:`promote`, which only
lets a challenger through when it is not worse than the champion on held-out metrics (read from
each version's MLflow run), or through :func:`rollback`. Every alias move is appended to a
history kept as registered-model tags (``history.<ns timestamp>`` -> JSON event), so the audit
trail lives in MLflow itself: it survives restarts, is visible in the UI, and one tag per event
means concurrent writers never overwrite each other's entries.

MLflow calls go through the tracking/registry URI set by :func:`configure_mlflow`.
"""

from __future__ import annotations

import getpass
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypedDict

import lightgbm
import mlflow
import mlflow.lightgbm
import mlflow.onnx
import numpy as np
import onnx
import onnxruntime
from mlflow import MlflowClient
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.types import ColSpec, Schema, TensorSpec

from serving.contract.model_meta import ModelMetadata, read_onnx_metadata
from serving.stores.registry import (  # serving's compiled batch runtime reads NATIVE_ARTIFACT
    CARD_FILE, METADATA_FILE, NATIVE_ARTIFACT, download_version,
)
from training.models.export import INPUT_NAME

CHAMPION = "champion"
CHALLENGER = "challenger"
#: A version on trial: serving gives it a share of the decisions (README "Trial traffic").
TRIAL = "trial"
ONNX_ARTIFACT = "onnx_model"
HISTORY_TAG_PREFIX = "history."

Direction = Literal["higher", "lower"]
#: A metric's better direction, optionally with the absolute amount it may get worse by.
MetricRule = Direction | tuple[Direction, float]
#: ``gate(challenger_metrics, champion_metrics)`` -> reasons the challenger is worse (empty: pass).
Gate = Callable[[Mapping[str, float], Mapping[str, float]], list[str]]


class RegistryError(ValueError):
    """The registry is not in a state that allows the request (a user-fixable problem)."""


class HistoryEvent(TypedDict):
    """One alias move, as stored in the registry history."""

    action: Literal["register", "promote", "rollback", "trial", "end trial"]
    version: str
    from_version: str | None
    actor: str
    at: str
    reason: str
    forced: bool
    overridden: list[str]


@dataclass(frozen=True)
class PromotionResult:
    """Outcome of :func:`promote`; ``failures`` says which gate checks failed (or were forced)."""

    name: str
    version: str
    from_version: str | None
    promoted: bool
    forced: bool
    failures: tuple[str, ...]
    reason: str


# --- tracking ----------------------------------------------------------------------------------


def configure_mlflow(
    tracking_uri: str, artifact_location: Path | None = None, experiment: str = "rewards-reco"
) -> str:
    """Point tracking and registry at ``tracking_uri`` and select ``experiment``; return its id.

    The artifact location is fixed when the experiment is created (MLflow's default is
    ``./mlruns`` of whatever directory the process started in), so an existing experiment with a
    different location is an error rather than a silent write elsewhere.
    """
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient()
    location = artifact_location.resolve().as_uri() if artifact_location else None
    existing = client.get_experiment_by_name(experiment)
    if existing is None:
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    elif location is not None and existing.artifact_location.rstrip("/") != location:
        raise ValueError(
            f"experiment {experiment!r} stores artifacts in {existing.artifact_location}, "
            f"not {location}; use that location or another experiment name"
        )
    else:
        experiment_id = existing.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _signatures(metadata: ModelMetadata) -> tuple[ModelSignature, ModelSignature]:
    """Input schemas of the native booster (named columns) and of the ONNX graph (tensors).

    The booster's output is left undeclared: it is P(positive) for binary models, a matrix for
    multiclass ones.
    """
    native = ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in metadata.input_names])
    )
    exported = ModelSignature(
        inputs=Schema(
            [TensorSpec(np.dtype(np.float32), (-1, len(metadata.input_names)), INPUT_NAME)]
        ),
        outputs=Schema(
            [TensorSpec(np.dtype(np.float32), (-1, len(metadata.classes)), metadata.output)]
        ),
    )
    return native, exported


def log_training_run(
    name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    feature_service: str,
    data_fingerprint: str,
    plots: dict[str, Path],
    native_model: lightgbm.LGBMClassifier,
    onnx_path: Path,
    tags: dict[str, str] | None = None,
) -> str:
    """Log one training run of model ``name`` in the current experiment; return its run id.

    The run holds params, held-out metrics (which the promotion gate reads), lineage tags, plots
    under ``plots/<key>`` (with the file's extension when the key has none), the model card and
    metadata exported beside ``onnx_path``, the native model (LightGBM text format: portable and
    safe to load, unlike pickle) and the ONNX model. Requirements are pinned explicitly because
    inferring them costs seconds per model.
    """
    metadata = read_onnx_metadata(onnx_path)
    if (metadata.name, metadata.feature_service) != (name, feature_service):
        raise ValueError(
            f"{onnx_path} was exported for model {metadata.name!r} on feature service "
            f"{metadata.feature_service!r}, not {name!r} on {feature_service!r}"
        )
    native_signature, onnx_signature = _signatures(metadata)
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags(
            {
                "model": name,
                "feature_service": feature_service,
                "data_fingerprint": data_fingerprint,
                **(tags or {}),
            }
        )
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        if plots:
            with tempfile.TemporaryDirectory() as staging:
                for key, path in plots.items():
                    filename = key if Path(key).suffix else f"{key}{path.suffix}"
                    shutil.copyfile(path, Path(staging) / filename)
                mlflow.log_artifacts(staging, "plots")
        for sidecar in (CARD_FILE, METADATA_FILE):
            if (onnx_path.parent / sidecar).is_file():
                mlflow.log_artifact(str(onnx_path.parent / sidecar))
        mlflow.lightgbm.log_model(
            native_model.booster_,
            name=NATIVE_ARTIFACT,
            signature=native_signature,
            pip_requirements=[f"lightgbm=={lightgbm.__version__}"],
        )
        mlflow.onnx.log_model(
            onnx.load(str(onnx_path)),
            name=ONNX_ARTIFACT,
            signature=onnx_signature,
            onnx_execution_providers=["CPUExecutionProvider"],
            save_as_external_data=False,  # one self-contained file for serving to copy
            pip_requirements=[
                f"onnx=={onnx.__version__}",
                f"onnxruntime=={onnxruntime.__version__}",
            ],
        )
    return str(run.info.run_id)


# --- registry ----------------------------------------------------------------------------------


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()  # $LOGNAME, $USER, ... then the password database
    except (OSError, KeyError):
        return "unknown"


def _alias(model: RegisteredModel, alias: str) -> str | None:
    """The version an alias points to, as a string (MLflow 3 returns ints)."""
    version = model.aliases.get(alias)
    return None if version is None else str(version)


def _missing(exc: MlflowException) -> bool:
    return bool(exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST))


def _registered(client: MlflowClient, name: str) -> RegisteredModel:
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _missing(exc):
            raise RegistryError(f"no registered model named {name!r}") from exc
        raise


def _events(model: RegisteredModel) -> list[tuple[int, HistoryEvent]]:
    """History entries with their tag timestamps, oldest first."""
    entries = [
        (int(key.removeprefix(HISTORY_TAG_PREFIX)), json.loads(value))
        for key, value in model.tags.items()
        if key.startswith(HISTORY_TAG_PREFIX) and key.removeprefix(HISTORY_TAG_PREFIX).isdigit()
    ]
    return sorted(entries, key=lambda entry: entry[0])


def _record(
    client: MlflowClient,
    model: RegisteredModel,
    action: Literal["register", "promote", "rollback", "trial", "end trial"],
    version: str,
    from_version: str | None,
    *,
    actor: str | None,
    reason: str,
    forced: bool = False,
    overridden: list[str] | None = None,
) -> HistoryEvent:
    """Append one event to ``model``'s history (as read in ``model``; pass a fresh read).

    The tag key is a nanosecond timestamp kept above the newest existing key, so events stay
    ordered even on a clock that is coarse or stepped back.
    """
    event = HistoryEvent(
        action=action,
        version=version,
        from_version=from_version,
        actor=_actor(actor),
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        reason=reason,
        forced=forced,
        overridden=overridden or [],
    )
    newest = max((stamp for stamp, _ in _events(model)), default=0)
    stamp = max(time.time_ns(), newest + 1)
    client.set_registered_model_tag(model.name, f"{HISTORY_TAG_PREFIX}{stamp}", json.dumps(event))
    return event


def history(name: str) -> list[HistoryEvent]:
    """Every alias move of model ``name``, oldest first: who, when, why, and whether forced."""
    return [event for _, event in _events(_registered(MlflowClient(), name))]


def alias_version(name: str, alias: str) -> str | None:
    """The version ``alias`` points to, or None when unset (or no such model)."""
    try:
        return _alias(MlflowClient().get_registered_model(name), alias)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise


def champion_version(name: str) -> str | None:
    """The version serving should run, or None when there is no champion (or no such model)."""
    return alias_version(name, CHAMPION)


def challenger_version(name: str) -> str | None:
    """The newest registered version, waiting for promotion (or already promoted)."""
    return alias_version(name, CHALLENGER)


def trial_version(name: str) -> str | None:
    """The version on trial (served on a share of decisions beside the champion), or None."""
    return alias_version(name, TRIAL)


def set_trial(name: str, version: str | None, reason: str = "",
              actor: str | None = None) -> HistoryEvent | None:
    """Put ``version`` on trial (None: end the trial), recorded in the history; None when
    nothing changed. The champion cannot be on trial: it already serves every decision."""
    client = MlflowClient()
    model = _registered(client, name)
    current = _alias(model, TRIAL)
    if version == current:
        return None
    if version is None:
        assert current is not None
        client.delete_registered_model_alias(name, TRIAL)
        return _record(client, model, "end trial", current, None, actor=actor, reason=reason)
    if version == _alias(model, CHAMPION):
        raise RegistryError(f"{name} v{version} is the champion: it cannot be on trial")
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        if _missing(exc):
            raise RegistryError(f"{name} has no version {version}") from exc
        raise
    client.set_registered_model_alias(name, TRIAL, version)
    return _record(client, model, "trial", version, current, actor=actor, reason=reason)


def _logged_model_id(client: MlflowClient, run_id: str, artifact_path: str) -> str:
    """The id of the model logged as ``artifact_path`` in run ``run_id`` (MLflow 3 LoggedModel)."""
    run = client.get_run(run_id)
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{artifact_path}'",
    )
    if not found:
        raise RegistryError(f"run {run_id} logged no model named {artifact_path!r}")
    return found[0].model_id


def register_model(name: str, run_id: str, artifact_path: str = ONNX_ARTIFACT,
                   first_is_champion: bool = True) -> str:
    """Register the run's ONNX model as a new version of ``name`` and make it the challenger.

    The first version of a model also becomes champion, since there is nothing to compare it
    with, unless ``first_is_champion`` is False (`rewards retrain` gates the first model
    against the cold-start policy). Returns the new version.
    """
    client = MlflowClient()
    model_id = _logged_model_id(client, run_id, artifact_path)
    try:
        client.create_registered_model(
            name, description="rewards-reco model; aliases and history managed by training.models.tracking"
        )
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    version = str(
        client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id
        ).version
    )
    model = client.get_registered_model(name)
    client.set_registered_model_alias(name, CHALLENGER, version)
    _record(client, model, "register", version, _alias(model, CHALLENGER),
            actor=None, reason=f"run {run_id}")
    if first_is_champion and _alias(model, CHAMPION) is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        _record(client, client.get_registered_model(name), "promote", version, None,
                actor=None, reason="first model")
    return version


def metric_gate(rules: Mapping[str, MetricRule]) -> Gate:
    """A gate from ``{metric: "higher" | "lower" | (direction, tolerance)}``.

    The challenger fails a metric when it is worse than the champion by more than the absolute
    tolerance (default 0), or when it lacks a metric the champion has. A metric the champion
    lacks is skipped: there is nothing to be worse than, and new metrics must be introducible.
    """
    parsed: dict[str, tuple[Direction, float]] = {}
    for metric, rule in rules.items():
        direction, tolerance = (rule, 0.0) if isinstance(rule, str) else rule
        if direction not in ("higher", "lower") or not tolerance >= 0:
            raise ValueError(
                f"{metric}: expected 'higher'/'lower' and a tolerance >= 0, got {rule}"
            )
        parsed[metric] = (direction, float(tolerance))

    def gate(challenger: Mapping[str, float], champion: Mapping[str, float]) -> list[str]:
        failures = []
        for metric, (direction, tolerance) in parsed.items():
            old = champion.get(metric, math.nan)
            if not math.isfinite(old):
                continue
            new = challenger.get(metric, math.nan)
            if not math.isfinite(new):
                failures.append(f"{metric}: missing on the challenger (champion {old:.4g}; "
                                "its run's evaluation.skipped tag says why)")
                continue
            worse_by = old - new if direction == "higher" else new - old
            if worse_by > tolerance:
                failures.append(
                    f"{metric}: {new:.4g} vs champion {old:.4g}, worse by {worse_by:.4g} "
                    f"({direction} is better, tolerance {tolerance:g})"
                )
        return failures

    return gate


def _run_metrics(client: MlflowClient, name: str, version: str) -> dict[str, float]:
    run_id = client.get_model_version(name, version).run_id
    return dict(client.get_run(run_id).data.metrics) if run_id else {}


def promote(
    name: str,
    gate: Gate | Mapping[str, MetricRule],
    force: bool = False,
    reason: str = "",
    actor: str | None = None,
    version: str | None = None,
) -> PromotionResult:
    """Move ``champion`` to the current challenger (or to ``version``) if the gate passes (or
    ``force`` with a reason). A promoted version that was on trial ends its trial.

    A refusal is a normal outcome, returned with ``promoted=False`` and the failed checks. A
    challenger that was rolled back from also fails, so a routine promote cannot silently
    reinstate a model someone pulled out of production. With no champion at all (its alias
    removed by hand) there is nothing to compare with and the challenger is promoted.
    """
    if force and not reason.strip():
        raise ValueError("force=True needs a reason: forced promotions are recorded")
    check = gate if callable(gate) else metric_gate(gate)
    client = MlflowClient()
    model = _registered(client, name)
    challenger = version or _alias(model, CHALLENGER)
    champion = _alias(model, CHAMPION)
    if challenger is None:
        raise RegistryError(f"{name} has no challenger; register a model first")
    if challenger == champion:
        raise RegistryError(f"{name} v{challenger} is already champion")

    failures = []
    if champion is not None:
        failures = check(
            _run_metrics(client, name, challenger), _run_metrics(client, name, champion)
        )
    rolled_back = [e for _, e in _events(model) if e["action"] == "rollback"
                   and e["from_version"] == challenger]
    if rolled_back:
        last = rolled_back[-1]
        failures.append(
            f"v{challenger} was rolled back at {last['at']} by {last['actor']}: {last['reason']}"
        )
    promoted = force or not failures
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger)
        _record(client, model, "promote", challenger, champion, actor=actor,
                reason=reason or "passed the gate", forced=force, overridden=failures)
        if _alias(model, TRIAL) == challenger:  # the champion serves every decision now
            set_trial(name, None, reason="promoted to champion", actor=actor)
    return PromotionResult(
        name=name,
        version=challenger,
        from_version=champion,
        promoted=promoted,
        forced=promoted and force,
        failures=tuple(failures),
        reason=reason,
    )


def _champion_stack(events: list[HistoryEvent]) -> list[str]:
    """Champions in succession, with rolled-back ones popped: the undo stack of promotions."""
    stack: list[str] = []
    for event in events:
        if event["action"] == "promote":
            stack.append(event["version"])
        elif event["action"] == "rollback":
            while stack and stack[-1] != event["version"]:
                stack.pop()
            if not stack:
                stack.append(event["version"])
    return stack


def rollback(name: str, reason: str = "", actor: str | None = None) -> HistoryEvent:
    """Move ``champion`` back to the champion before it; repeated calls keep going back.

    Returns the recorded event. Raises :class:`RegistryError` when there is no earlier champion.
    """
    client = MlflowClient()
    model = _registered(client, name)
    current = _alias(model, CHAMPION)
    stack = _champion_stack([event for _, event in _events(model)])
    while stack and stack[-1] == current:
        stack.pop()
    if not stack:
        raise RegistryError(f"{name} has no earlier champion to roll back to")
    client.set_registered_model_alias(name, CHAMPION, stack[-1])
    event = _record(client, model, "rollback", stack[-1], current, actor=actor, reason=reason)
    if _alias(model, TRIAL) == stack[-1]:  # the champion serves every decision now
        set_trial(name, None, reason="rolled back to champion", actor=actor)
    return event


def download_champion(name: str, dest_root: Path) -> Path:
    """The champion's bundle, downloaded afresh to ``dest_root/<name>/<version>/`` (stamped,
    atomic: :func:`serving.stores.registry.download_version`); RegistryError if there is none."""
    version = champion_version(name)
    if version is None:
        raise RegistryError(f"{name} has no champion")
    return download_version(mlflow.get_tracking_uri(), name, version, dest_root, refresh=True)
