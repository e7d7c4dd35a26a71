"""A program that never holds offers back (REWARDS_NO_OFFER_SHARE=0, no experiment) has no
control group: uplift cannot be measured on its test period. `rewards retrain` must still
train, gate and promote on what can be measured, and say what could not."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration


def test_a_retrain_without_a_control_group_trains_and_says_what_it_could_not_measure(
        tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from serving.config import ServeSettings, StoreSettings
    from serving.main import create_app
    from training.cli.data import build_store_features, materialize
    from training.config import TrainSettings
    from training.retrain import RetrainSettings, retrain
    from training.simulate import WorldConfig, simulate_world
    from training.simulate.loop import Truth, answer_round, onboard_without_offers, run_round

    monkeypatch.setenv("REWARDS_NO_OFFER_SHARE", "0")
    store = StoreSettings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    simulate_world(WorldConfig(members=1_500, days=35, seed=5), store.world_dir, progress=False)
    onboard_without_offers(store.world_dir, ServeSettings().events(store))
    build_store_features(store, progress=False)
    materialize(store, apply=True, echo=False)
    start = pd.Timestamp(json.loads((store.world_dir / "world.json").read_text())["end"],
                         tz="UTC").to_pydatetime()
    truth, rng = Truth(store.world_dir), np.random.default_rng(0)
    settings = ServeSettings(auth_disabled=True, model_poll_seconds=0, seed=1)
    with TestClient(create_app(store, settings)) as client:
        frame, times = run_round(client, client.app.state.services,
                                 truth.world.members.index.to_numpy(), start, 7.0, rng)
        answer_round(client, store.world_dir, frame, times, 7, truth.rewards, rng)
    assert frame["reward_id"].notna().all()  # every decision offered a reward: no control

    record = retrain(store, TrainSettings(policy_eval_members=300, min_child_samples=40,
                                          num_leaves=15),
                     RetrainSettings(min_decisions=100, min_assignments=50, bootstrap=100),
                     as_of=start + timedelta(days=14), as_present=True)
    assert record["status"] == "trained"
    reward, difficulty = record["families"]
    assert reward["candidate"] == "1" and difficulty["candidate"] == "1"
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(client.get_model_version(reward["name"], "1").run_id)
    assert "uplift.qini" not in run.data.metrics  # not measurable, so not made up
    assert "propensity.auc" in run.data.metrics
    assert "no control group" in json.loads(run.data.tags["evaluation.skipped"])["uplift.qini"]
    reports = store.data / "reports" / reward["name"]
    assert (reports / "feature_importance.png").is_file() and not (reports / "qini.png").exists()
