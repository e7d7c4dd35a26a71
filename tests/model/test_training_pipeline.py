"""The whole training pipeline on a small world, then model-behaviour checks on what it made.

Runs for real: simulator -> features -> Feast apply/materialize -> historical retrieval ->
LightGBM -> evaluation against truth -> ONNX export + parity -> MLflow (SQLite) -> registry.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
from serving.config import StoreSettings
from serving.contract.model_meta import read_onnx_metadata
from training.config import TrainSettings
from training.pipeline import TrainResult

pytestmark = [pytest.mark.model, pytest.mark.integration, pytest.mark.slow]

REQUIRED_KEYS = [
    "propensity.auc", "propensity.oracle_auc", "propensity.ece", "uplift.qini",
    "uplift.oracle_qini", "policy.value_model", "policy.value_oracle", "policy.value_random",
    "policy.value_propensity_only", "difficulty.auc", "difficulty.oracle_auc", "difficulty.ece",
    "difficulty.target_completion_gap", "ope.ips", "ope.snips", "ope.dr", "ope.dr_ci_low",
    "ope.dr_ci_high", "ope.true_value",
]


@pytest.fixture(scope="module")
def trained(trained_store) -> tuple[StoreSettings, TrainSettings, TrainResult,  # noqa: ANN001
                                    TrainResult]:
    return trained_store


def test_every_evaluation_key_is_reported(trained) -> None:  # noqa: ANN001
    _, _, reward, difficulty = trained
    got = {**reward.metrics, **difficulty.metrics}
    missing = [k for k in REQUIRED_KEYS if k not in got]
    assert not missing
    assert all(np.isfinite(got[k]) for k in REQUIRED_KEYS)


def test_models_learn_something_real(trained) -> None:  # noqa: ANN001
    _, _, reward, difficulty = trained
    m = {**reward.metrics, **difficulty.metrics}
    assert m["propensity.auc"] > 0.6
    assert m["difficulty.auc"] > 0.6
    assert m["policy.value_oracle"] >= m["policy.value_model"] > m["policy.value_random"]
    assert m["onnx.parity_max_abs_diff"] <= 1e-5


def test_first_models_are_registered_and_champions(trained) -> None:  # noqa: ANN001
    from training.models import tracking

    store, settings, reward, difficulty = trained
    tracking.configure_mlflow(store.tracking_uri, store.artifact_root,
                              settings.experiment)
    assert tracking.champion_version("reward") == reward.version
    assert tracking.champion_version("difficulty") == difficulty.version


def test_onnx_carries_the_feature_contract(trained) -> None:  # noqa: ANN001
    store, _, reward, difficulty = trained
    meta = read_onnx_metadata(reward.onnx_path)
    assert meta.feature_service == "propensity_v1"
    assert meta.version == reward.version and meta.mlflow_run_id == reward.run_id
    assert meta.derived_features == list(REWARD_DERIVED)
    assert read_onnx_metadata(difficulty.onnx_path).derived_features == list(DIFFICULTY_DERIVED)
    assert reward.onnx_path.parent == store.models / "reward" / reward.version


def test_difficulty_never_rises_with_the_target(trained) -> None:  # noqa: ANN001
    """Directional: for any member and template, a harder target is never likelier to finish."""
    from training.evaluation.evaluate import member_snapshot
    from training.evaluation.scoring import score_targets
    import mlflow.lightgbm

    store, _, _, difficulty = trained
    model = mlflow.lightgbm.load_model(f"runs:/{difficulty.run_id}/native_model")
    meta = read_onnx_metadata(difficulty.onnx_path)
    snap = member_snapshot(store.features_dir, pd.Timestamp("2026-01-20", tz="UTC")).head(200)
    templates = pd.read_parquet(store.features_dir / "challenge_features.parquet")
    grid = score_targets(model, snap, templates, meta.service_features)
    grid = grid.sort_values(["member_id", "challenge_id", "target"])
    steps = grid.groupby(["member_id", "challenge_id"])["p_complete"].diff().dropna()
    assert (steps <= 1e-12).all()
    assert (steps < 0).mean() > 0.3  # and the target does matter


def test_onnx_scores_like_the_native_model(trained) -> None:  # noqa: ANN001
    _, _, reward, _ = trained
    meta = read_onnx_metadata(reward.onnx_path)
    session = ort.InferenceSession(str(reward.onnx_path), providers=["CPUExecutionProvider"])
    X = np.random.default_rng(0).normal(size=(64, len(meta.input_names))).astype(np.float32)
    (proba,) = session.run([meta.output], {session.get_inputs()[0].name: X})
    assert proba.shape == (64, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
