"""The training pipelines: data -> model -> evaluation -> plots -> ONNX -> MLflow -> registry.

One function per model family; `rewards train ...` and `make demo` call them. Each run leaves a
registered `challenger` (the first ever also becomes `champion`) and a local ONNX copy under
models/<name>/<version>/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from serving.config import StoreSettings
from serving.contract.model_meta import ModelMetadata
from serving.decisioning.candidates import DIFFICULTY_DECREASING
from serving.stores.features import open_store, service_feature_names
from training.config import TrainSettings
from training.data.datasets import (
    DIFFICULTY_CLASSES,
    REWARD_CLASSES,
    Dataset,
    TimeSplit,
    difficulty_dataset,
    reward_dataset,
    reweighted,
)
from training.data.history import read_history_meta
from training.evaluation import plots
from training.evaluation.difficulty import evaluate_difficulty
from training.evaluation.evaluate import Evaluation, fit_value_params
from training.evaluation.reward import evaluate_reward
from training.models.lgbm import fit_classifier

Progress = Callable[[str], None]
PARITY_ROWS = 10_000


@dataclass
class TrainResult:
    name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    onnx_path: Path
    timings: dict[str, float] = field(default_factory=dict)
    #: the fitted model and its data (what `rewards retrain`'s gate evaluates further)
    model: Any = None
    data: Dataset | None = None


@dataclass(frozen=True)
class Publish:
    """How a training run is published. ``first_is_champion``: the first version of a model
    becomes champion (`rewards train`); `rewards retrain` gates every version itself.
    ``oracle``: add a simulated world's oracle figures when it has them (never on the retrain
    path, which must work on a real program's data alone). ``tags``: extra MLflow run tags."""

    first_is_champion: bool = True
    oracle: bool = True
    tags: dict[str, str] = field(default_factory=dict)


def _quiet(_: str) -> None:
    return None


def _oracle(world_dir: Path) -> ModuleType | None:
    """``training.simulate.oracle`` when the world is a simulated one that carries its hidden
    truth, else None: a real program's data has no oracle, and every step works without it."""
    from training.simulate import oracle

    return oracle if oracle.available(world_dir) else None


class _Timer:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    def step(self, label: str) -> _Step:
        return _Step(self, label)


class _Step:
    def __init__(self, timer: _Timer, label: str) -> None:
        self.timer, self.label = timer, label

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        self.timer.progress(f"  - {self.label} ...")

    def __exit__(self, *exc: object) -> None:
        dt = time.perf_counter() - self.t0
        self.timer.timings[self.label] = round(dt, 2)
        if exc[0] is None:
            self.timer.progress(f"    {self.label}: {dt:.1f} s")


def train_reward(store: StoreSettings, settings: TrainSettings,
                 progress: Progress = _quiet, client: Any | None = None,
                 publish: Publish = Publish()) -> TrainResult:
    """Reward propensity + uplift: one 3-class LightGBM over offers and the no-offer holdout.

    ``client``: the Dask client when ``settings.engine == "dask"`` (else a LocalCluster)."""
    timer = _Timer(progress)
    service = settings.reward_service
    shares = (settings.valid_share, settings.test_share)
    with timer.step("training set (Feast get_historical_features)"):
        features = service_feature_names(open_store(store), service)
        data = reward_dataset(store, store.features_dir, shares, service, features)
    data = reweighted(data, settings.logging_weights, "propensity")
    with timer.step(f"LightGBM on {int((data.part == 'train').sum()):,} offers"):
        model = fit_classifier(data, settings, objective="multiclass", client=client)
    split = data.split
    with timer.step("held-out evaluation (test period)"):
        value_params = fit_value_params(data, read_history_meta(store.features_dir).margin)
        ev = evaluate_reward(model, data, split, store.features_dir,
                             settings.policy_eval_members, value_params, settings.seed)
    oracle = _oracle(store.world_dir) if publish.oracle else None
    if oracle is not None:
        with timer.step("oracle figures (simulated world)"):
            oracle.add_reward_figures(ev, model, data.service_features, store.world_dir,
                                      value_params)
    plot_dir = store.data / "reports" / settings.reward_model_name
    with timer.step("plots"):
        pngs = {
            "feature_importance.png": plots.importance_plot(
                data.input_names, model.booster_.feature_importance("gain"),
                "Reward model: feature importance", plot_dir / "feature_importance.png"),
        }
        if "propensity_calibration" in ev.curves:
            pngs["calibration_propensity.png"] = plots.calibration_plot(
                ev.curves["propensity_calibration"], "P(redeem) calibration, test period",
                plot_dir / "calibration_propensity.png")
        if "qini_model" in ev.curves:
            pngs["qini.png"] = plots.qini_plot(ev.curves["qini_model"],
                                               ev.curves.get("qini_oracle"),
                                               plot_dir / "qini.png")
        for stale in {"calibration_propensity.png", "qini.png"} - set(pngs):
            (plot_dir / stale).unlink(missing_ok=True)  # an earlier model's, not this one's
    return _publish(settings.reward_model_name, model, data, split, ev, pngs, REWARD_CLASSES,
                    service, store, settings, timer, publish, value_params)


def train_difficulty(store: StoreSettings, settings: TrainSettings,
                     progress: Progress = _quiet, client: Any | None = None,
                     publish: Publish = Publish()) -> TrainResult:
    """Challenge difficulty: binary LightGBM, monotone decreasing in the target."""
    timer = _Timer(progress)
    service = settings.difficulty_service
    shares = (settings.valid_share, settings.test_share)
    with timer.step("training set (Feast get_historical_features)"):
        features = service_feature_names(open_store(store), service)
        data = difficulty_dataset(store, store.features_dir, shares, service, features)
    data = reweighted(data, settings.logging_weights, "target_probability")
    with timer.step(f"LightGBM (monotone in target) on {int((data.part == 'train').sum()):,} "
                    "assignments"):
        model = fit_classifier(data, settings, objective="binary",
                               monotone_decreasing=DIFFICULTY_DECREASING, client=client)
    split = data.split
    with timer.step("held-out evaluation (test period)"):
        ev = evaluate_difficulty(model, data, split, store.features_dir, settings.flow_zone,
                                 settings.seed)
    oracle = _oracle(store.world_dir) if publish.oracle else None
    if oracle is not None:
        with timer.step("oracle figures (simulated world)"):
            oracle.add_difficulty_figures(ev, store.world_dir, settings.flow_zone)
    plot_dir = store.data / "reports" / settings.difficulty_model_name
    with timer.step("plots"):
        pngs = {
            "calibration_difficulty.png": plots.calibration_plot(
                ev.curves["difficulty_calibration"], "P(complete) calibration, test period",
                plot_dir / "calibration_difficulty.png"),
            "difficulty_curves.png": plots.difficulty_curves_plot(
                ev.curves["difficulty_grid"], settings.flow_zone,
                plot_dir / "difficulty_curves.png"),
            "feature_importance.png": plots.importance_plot(
                data.input_names, model.booster_.feature_importance("gain"),
                "Difficulty model: feature importance", plot_dir / "feature_importance.png"),
        }
    return _publish(settings.difficulty_model_name, model, data, split, ev, pngs,
                    DIFFICULTY_CLASSES, service, store, settings, timer, publish)


def _publish(name: str, model, data: Dataset, split: TimeSplit, ev: Evaluation,  # noqa: ANN001
             pngs: dict[str, Path], classes: list[str], service: str, store: StoreSettings,
             settings: TrainSettings, timer: _Timer, publish: Publish,
             value_params: dict[str, float] | None = None) -> TrainResult:
    """Export + parity check, MLflow run, registration, local model cache."""
    from training.models import export, tracking

    metrics = {k: float(v) for k, v in ev.metrics.items()}
    meta = ModelMetadata(
        name=name, version="unregistered", feature_service=service,
        service_features=data.service_features, derived_features=data.derived_features,
        classes=classes, trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        data_window=split.as_dict(), data_fingerprint=data.fingerprint(), metrics=metrics,
        value_params=value_params or {})
    staging = store.data / "staging" / name
    with timer.step("ONNX export + parity check"):
        onnx_path = export.export_onnx(model, meta, staging)
        rng = np.random.default_rng(settings.seed)
        rows = rng.choice(len(data.X), min(PARITY_ROWS, len(data.X)), replace=False)
        metrics["onnx.parity_max_abs_diff"] = export.check_parity(model, onnx_path, data.X[rows])
    with timer.step("MLflow run + registration"):
        tracking.configure_mlflow(store.tracking_uri, store.artifact_root,
                                  settings.experiment)
        params = {k: v for k, v in model.get_params().items() if v is not None}
        params["best_iteration"] = model.best_iteration_
        params["engine"] = settings.engine
        params.update({f"split.{k}": v for k, v in split.as_dict().items()})
        run_id = tracking.log_training_run(
            name=name, params=params, metrics=metrics, feature_service=service,
            data_fingerprint=meta.data_fingerprint, plots=pngs, native_model=model,
            onnx_path=onnx_path, tags={"rows.train": str(int((data.part == "train").sum())),
                                       "weighted": str(data.weight is not None).lower(),
                                       "logging_weights": settings.logging_weights,
                                       **({"evaluation.skipped": json.dumps(ev.skipped)}
                                          if ev.skipped else {}),
                                       **publish.tags})
        version = tracking.register_model(name, run_id,
                                          first_is_champion=publish.first_is_champion)
    final = meta.model_copy(update={"version": version, "mlflow_run_id": run_id})
    out = export.export_onnx(model, final, store.models / name / version)
    (store.data / "reports" / name / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(name, version, run_id, metrics, out, timer.timings, model, data)


def evaluate_registered(store: StoreSettings, settings: TrainSettings, alias: str = "champion",
                        progress: Progress = _quiet) -> dict[str, object]:
    """Re-measure the registered models (by alias) on the test period; on a simulated world
    that carries its hidden truth, the oracle figures too."""
    import mlflow.lightgbm
    from mlflow import MlflowClient

    from serving.contract.model_meta import read_onnx_metadata
    from training.models import tracking

    tracking.configure_mlflow(store.tracking_uri, store.artifact_root,
                              settings.experiment)
    margin = read_history_meta(store.features_dir).margin
    oracle = _oracle(store.world_dir)
    out: dict[str, object] = {}
    versions: dict[str, str] = {}
    shares = (settings.valid_share, settings.test_share)
    for name, service, build in (
        (settings.reward_model_name, settings.reward_service, reward_dataset),
        (settings.difficulty_model_name, settings.difficulty_service, difficulty_dataset),
    ):
        version = tracking.alias_version(name, alias)
        if version is None:
            raise ValueError(f"model {name!r} has no {alias!r}: run `rewards train all` first")
        versions[name] = version
        run_id = MlflowClient().get_model_version(name, version).run_id
        progress(f"evaluating {name} v{version} ({alias})")
        model = mlflow.lightgbm.load_model(f"runs:/{run_id}/{tracking.NATIVE_ARTIFACT}")
        onnx_path = tracking.download_champion(name, store.models) if alias == "champion" else None
        meta = read_onnx_metadata(onnx_path) if onnx_path else None
        features = service_feature_names(open_store(store), service)
        data = build(store, store.features_dir, shares, service, features)
        if name == settings.reward_model_name:
            params = ({"margin": margin, **meta.value_params} if meta and meta.value_params
                      else fit_value_params(data, margin))
            ev = evaluate_reward(model, data, data.split, store.features_dir,
                                 settings.policy_eval_members, params, settings.seed)
            if oracle is not None:
                oracle.add_reward_figures(ev, model, data.service_features, store.world_dir,
                                          params)
        else:
            ev = evaluate_difficulty(model, data, data.split, store.features_dir,
                                     settings.flow_zone, settings.seed)
            if oracle is not None:
                oracle.add_difficulty_figures(ev, store.world_dir, settings.flow_zone)
        out.update(ev.metrics)
    out["models"] = versions
    return out
