"""Training, registration and promotion through the MLflow tracking server (PostgreSQL backend,
artifacts stored by the server). The model tests of tests/model/test_training_pipeline.py run
here unchanged; the tests below check where runs and artifacts went and drive the registry with
the `rewards` command configured by environment variables alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _reuse import reuse

globals().update(reuse("model/test_training_pipeline.py"))
pytestmark = [pytest.mark.integration, pytest.mark.production, pytest.mark.model,
              pytest.mark.slow]


def test_runs_and_artifacts_live_on_the_server(trained_store, servers) -> None:  # noqa: ANN001
    from mlflow import MlflowClient

    _, _, reward, _ = trained_store
    client = MlflowClient(tracking_uri=servers.mlflow_uri, registry_uri=servers.mlflow_uri)
    run = client.get_run(reward.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server
    assert run.data.metrics["propensity.auc"] == pytest.approx(reward.metrics["propensity.auc"])
    # the version this run registered lives on the server (the reused tests before may have
    # promoted later versions: the champion is whichever they left)
    assert client.get_model_version("reward", reward.version).run_id == reward.run_id
    assert client.get_model_version_by_alias("reward", "champion").version


def test_cli_on_the_production_profile_by_environment_only(trained_store, servers) -> None:  # noqa: ANN001
    """`rewards models` against the server: REWARDS_PROFILE=production and URLs, no flags."""
    from mlflow import MlflowClient

    store = trained_store[0]
    env = {**os.environ, "REWARDS_PROFILE": "production", "REWARDS_DATA_DIR": str(store.data),
           "REWARDS_MODELS_DIR": str(store.models), "REWARDS_REDIS_URL": servers.redis_url,
           "REWARDS_MLFLOW_TRACKING_URI": servers.mlflow_uri}
    cli = [sys.executable, "-m", "training.cli"]
    out = subprocess.run([*cli, "models", "list", "--json"], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    report = json.loads(out.stdout)
    client = MlflowClient(tracking_uri=servers.mlflow_uri, registry_uri=servers.mlflow_uri)
    for name in ("reward", "difficulty"):  # what the server says, whichever version it is
        assert report[name]["champion"] == client.get_model_version_by_alias(
            name, "champion").version
    assert report["reward"]["history"][0]["action"] == "register"

    missing = {k: v for k, v in env.items() if k != "REWARDS_MLFLOW_TRACKING_URI"}
    failed = subprocess.run([*cli, "models", "list"], env=missing, capture_output=True,
                            text=True, timeout=120, check=False)
    assert failed.returncode != 0 and "REWARDS_MLFLOW_TRACKING_URI" in failed.stderr
