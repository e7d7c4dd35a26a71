"""The whole training pipeline on a small world, then model-behaviour checks on what it made.

Runs for real: simulator -> features -> Feast apply/materialize -> historical retrieval ->
LightGBM -> held-out evaluation (+ oracle figures: the world has its hidden truth) -> ONNX
export + parity -> MLflow (SQLite) -> registry. The same world is also trained
on without its truth (the second half of this module).
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from serving.config import StoreSettings
from serving.contract.model_meta import read_onnx_metadata
from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
from training.config import TrainSettings
from training.pipeline import TrainResult

pytestmark = [pytest.mark.model, pytest.mark.integration, pytest.mark.slow]

#: Held-out and off-policy figures: any world, simulated or not.
HELD_OUT_KEYS = [
    "propensity.auc", "propensity.ece", "conversion.ece", "uplift.qini", "uplift.at_30",
    "ope.ips", "ope.snips", "ope.dr", "ope.dr_ci_low", "ope.dr_ci_high", "ope.rows",
    "ope.dr_random", "ope.dr_propensity_only", "ope.ess", "ope.logged_value",
    "difficulty.auc", "difficulty.ece", "difficulty.flow_zone_calibration_gap",
    "difficulty.flow_zone_rows", "difficulty.target_predicted_mean",
]
#: Oracle figures: only a simulated world that carries its hidden truth has them.
ORACLE_KEYS = [
    "propensity.oracle_auc", "uplift.oracle_qini", "policy.value_model", "policy.value_oracle",
    "policy.value_random", "policy.value_propensity_only", "policy.members", "ope.true_value",
    "difficulty.oracle_auc", "difficulty.target_completion_gap", "difficulty.target_true_mean",
    "difficulty.target_mean_abs_error",
]
REQUIRED_KEYS = HELD_OUT_KEYS + ORACLE_KEYS


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
    # off-policy, without the truth: the model's policy beats offering a random eligible reward
    assert m["ope.dr"] > m["ope.dr_random"]
    # and the DR interval, from logged outcomes only, covers the policy's true value
    assert m["ope.dr_ci_low"] <= m["ope.true_value"] <= m["ope.dr_ci_high"]
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
    import mlflow.lightgbm

    from training.data.features import built_vocabulary
    from training.evaluation.evaluate import member_snapshot
    from training.evaluation.scoring import score_targets

    store, _, _, difficulty = trained
    model = mlflow.lightgbm.load_model(f"runs:/{difficulty.run_id}/native_model")
    meta = read_onnx_metadata(difficulty.onnx_path)
    snap = member_snapshot(store.features_dir, pd.Timestamp("2026-01-20", tz="UTC")).head(200)
    templates = pd.read_parquet(store.features_dir / "challenge_features.parquet")
    grid = score_targets(model, snap, templates, meta.service_features,
                         built_vocabulary(store.features_dir))
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


# --- without the hidden truth ----------------------------------------------------------------
# A real loyalty program has no truth/ folder. The trained world is copied, its truth deleted,
# and both models retrained, re-evaluated and put through the promotion gate: every step works,
# records the held-out and off-policy figures and no oracle figure, and those figures are the
# ones the run with the truth recorded (the truth only adds figures, it changes none).


@pytest.fixture(scope="module")
def truthless(copy_store, trained_store, tmp_path_factory):  # noqa: ANN001, ANN201
    """(store without truth, settings, reward v2, difficulty v2, the truth run's results)."""
    from training.pipeline import train_difficulty, train_reward
    from training.simulate import oracle

    store = copy_store(tmp_path_factory.mktemp("truthless"))
    assert oracle.available(store.world_dir)
    shutil.rmtree(oracle.truth_dir(store.world_dir))
    assert not oracle.available(store.world_dir)
    # a fresh MLflow experiment: the copied one keeps its artifacts in the original folder
    settings = trained_store[1].model_copy(update={"experiment": "truthless"})
    reward = train_reward(store, settings)
    difficulty = train_difficulty(store, settings)
    return store, settings, reward, difficulty, trained_store[2], trained_store[3]


def test_training_without_truth_records_no_oracle_figure(truthless) -> None:  # noqa: ANN001
    from training.models import tracking

    store, settings, reward, difficulty, _, _ = truthless
    got = {**reward.metrics, **difficulty.metrics}
    assert not [k for k in ORACLE_KEYS if k in got]
    assert not [k for k in got if "oracle" in k or k.startswith("policy.")]
    assert all(math.isfinite(got[k]) for k in HELD_OUT_KEYS)
    assert got["propensity.auc"] > 0.6 and got["difficulty.auc"] > 0.6
    # registered beside the champions (other tests of the module may have added versions)
    tracking.configure_mlflow(store.tracking_uri, store.artifact_root, settings.experiment)
    for result in (reward, difficulty):
        assert int(result.version) > int(tracking.champion_version(result.name)), result.name
    # the plots are drawn from the model's curves alone
    for name, png in (("reward", "qini.png"), ("difficulty", "difficulty_curves.png")):
        assert (store.data / "reports" / name / png).stat().st_size > 10_000


def test_truth_adds_figures_and_changes_none(truthless) -> None:  # noqa: ANN001
    """Same data, same seeds: the held-out figures do not depend on whether truth exists."""
    _, _, reward, difficulty, with_truth_reward, with_truth_difficulty = truthless
    for without, with_truth in ((reward, with_truth_reward),
                                (difficulty, with_truth_difficulty)):
        assert set(with_truth.metrics) - set(without.metrics) <= set(ORACLE_KEYS)
        for key, value in without.metrics.items():
            assert value == pytest.approx(with_truth.metrics[key], rel=1e-9, abs=1e-12), key


def test_promotion_gates_use_only_figures_a_real_program_has(truthless) -> None:  # noqa: ANN001
    from training.config import PROMOTION_GATES

    _, _, reward, difficulty, _, _ = truthless
    for name, result in (("reward", reward), ("difficulty", difficulty)):
        gated = set(PROMOTION_GATES[name])
        assert gated, name
        assert gated <= set(result.metrics), name  # recorded by the truth-free run
        assert not gated & set(ORACLE_KEYS), name


def test_evaluate_and_promote_without_truth(truthless) -> None:  # noqa: ANN001
    from training.config import PROMOTION_GATES
    from training.models import tracking
    from training.pipeline import evaluate_registered

    store, settings, reward, difficulty, _, _ = truthless
    measured = evaluate_registered(store, settings, alias="challenger")
    assert measured["models"] == {"reward": reward.version, "difficulty": difficulty.version}
    assert not [k for k in ORACLE_KEYS if k in measured]
    for key in ("propensity.auc", "uplift.qini", "ope.dr", "difficulty.auc",
                "difficulty.flow_zone_calibration_gap"):  # the same model, re-measured
        source = reward if key in reward.metrics else difficulty
        assert measured[key] == pytest.approx(source.metrics[key], rel=1e-9), key
    # the challengers are the champions retrained on the same data: not worse, promoted
    tracking.configure_mlflow(store.tracking_uri, store.artifact_root, settings.experiment)
    for name, trained in (("reward", reward), ("difficulty", difficulty)):
        result = tracking.promote(name, PROMOTION_GATES[name], actor="test")
        assert result.promoted and result.failures == (), result.failures
        assert tracking.champion_version(name) == result.version == trained.version


def test_observable_eligibility_is_the_truths(small_store) -> None:  # noqa: ANN001
    """Eligibility from the features (tier rank vs the reward's minimum tier rank, serving's
    rule) is the truth's eligibility matrix, and every logged offer respected it."""
    from training.data.history import read_history_meta
    from training.evaluation.evaluate import eligible_rewards, member_snapshot
    from training.simulate.oracle import WorldTruth

    store = small_store
    at = read_history_meta(store.features_dir).start_ts + pd.Timedelta(days=21)
    snapshot = member_snapshot(store.features_dir, at)
    items = pd.read_parquet(store.features_dir / "reward_features.parquet")
    observable = eligible_rewards(snapshot, items)
    truth = WorldTruth.load(store.world_dir).reward_response(snapshot["member_id"].to_numpy())
    assert observable.shape == truth["eligible"].shape
    assert np.array_equal(observable, truth["eligible"])
    assert 0 < observable.mean() < 1  # some members may not have some rewards

    offers = pd.read_parquet(store.features_dir / "offers.parquet")
    offered = offers[offers["treated"]].merge(snapshot[["member_id", "tier_rank"]],
                                              on="member_id")
    min_rank = items.set_index("reward_id")["reward_min_tier_rank"]
    assert len(offered) > 1000
    assert (offered["tier_rank"].to_numpy() >= min_rank.loc[offered["reward_id"]].to_numpy()).all()
