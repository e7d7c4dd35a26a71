"""The Dask engines against the single-machine path, on a 2-worker LocalCluster (two worker
processes, one thread each, as a real cluster would run them: models and data are pickled).

- batch scoring: identical scores, member for member (exact equality), with partitions and
  chunks that differ from the single-process run;
- training: ``lightgbm.dask`` reaches the same held-out quality as local LightGBM (AUC within
  0.01), keeps the difficulty model monotone, and the whole pipeline registers a model trained
  on Dask.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.decisioning.candidates import DIFFICULTY_DECREASING, DIFFICULTY_DERIVED, REWARD_DERIVED
from serving.config import StoreSettings

pytestmark = [pytest.mark.integration, pytest.mark.dask, pytest.mark.slow]
AUC_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from serving.batch.cluster import dask_client

    with dask_client(n_workers=2, threads_per_worker=1, processes=True,
                     memory_limit="2GiB") as c:
        yield c


@pytest.fixture(scope="module")
def champions(trained_store):  # noqa: ANN001, ANN201
    from serving.stores.features import open_store, service_feature_names
    from serving.stores.models import ChampionSource, load_onnx

    store: StoreSettings = trained_store[0]
    feast_store = open_store(store)
    source = ChampionSource(store.tracking_uri, store.models)
    models = {}
    for name, service, derived in (("reward", "propensity_v1", REWARD_DERIVED),
                                   ("difficulty", "difficulty_v1", DIFFICULTY_DERIVED)):
        _, path = source.champion(name)
        models[name] = load_onnx(path, service_feature_names(feast_store, service), derived,
                                 threads=1)  # as `rewards score-batch` (deterministic sums)
    return models


def test_batch_scores_are_identical(trained_store, champions, client,  # noqa: ANN001
                                    tmp_path: Path) -> None:
    from serving.batch.scoring import score_batch
    from serving.batch.partitioned import score_batch_dask
    from serving.config import ServeSettings
    from serving.stores.catalog import load_store_catalog

    store: StoreSettings = trained_store[0]
    features = store.features_dir / "member_features.parquet"
    catalog = load_store_catalog(ServeSettings().events(store))
    local, dask = tmp_path / "local.parquet", tmp_path / "dask.parquet"
    n_local = score_batch(features, catalog, champions["reward"], champions["difficulty"], local,
                          chunk_size=2_000)
    n_dask = score_batch_dask(features, catalog, champions["reward"], champions["difficulty"],
                              dask, client, chunk_size=97, partition_size=450)
    assert n_local == n_dask == 2_000
    a, b = pd.read_parquet(local), pd.read_parquet(dask)
    assert len(a) == 2_000 and a["reward_1"].ne("").all()
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_compiled_runtime_on_dask_equals_single_process(trained_store, champions,  # noqa: ANN001
                                                        client, tmp_path: Path) -> None:
    """--runtime compiled on Dask: workers rebuild the compiled models from the shipped native
    text, check them against the shipped ONNX on their first chunk, and score exactly like the
    single-process compiled run (lleaves sums each row alone, so chunking cannot matter). A
    worker handed a native model that disagrees with its ONNX model refuses it."""
    from serving.batch.scoring import latest_member_features, score_batch
    from serving.batch.partitioned import ShippedCompiled, score_batch_dask, score_partition
    from serving.batch.compiled import ParityRefused, compile_native
    from serving.stores.models import ChampionSource
    from serving.config import ServeSettings
    from serving.stores.catalog import load_store_catalog

    store: StoreSettings = trained_store[0]
    features = store.features_dir / "member_features.parquet"
    catalog = load_store_catalog(ServeSettings().events(store))
    source = ChampionSource(store.tracking_uri, store.models)
    compiled = {name: compile_native(source.native(name, source.champion(name)[0]), model,
                                     tmp_path / "compiled")
                for name, model in champions.items()}
    local, dask = tmp_path / "local.parquet", tmp_path / "dask.parquet"
    score_batch(features, catalog, compiled["reward"], compiled["difficulty"], local)
    assert score_batch_dask(features, catalog, compiled["reward"], compiled["difficulty"], dask,
                            client, chunk_size=97, partition_size=450) == 2_000
    pd.testing.assert_frame_equal(pd.read_parquet(local), pd.read_parquet(dask),
                                  check_exact=True)
    checks = client.run(lambda: [
        (m.parity_max_abs_diff, m.parity_rows)
        for m in __import__("serving.batch.partitioned", fromlist=["_COMPILED"])._COMPILED.values()])
    verified = [check for per_worker in checks.values() for check in per_worker]
    assert verified and all(diff <= 1e-5 and rows >= 10_000 for diff, rows in verified)

    # the first tree's leaf values with one digit changed each (same length: the header's tree
    # sizes still hold), shipped straight to a worker, past the client's own check
    text = compiled["difficulty"].native_path.read_text()
    head, sep, rest = text.partition("\nleaf_value=")
    leaves, newline, tail = rest.partition("\n")
    tampered = head + sep + leaves.translate(str.maketrans("0123456789", "5678901234")) \
        + newline + tail
    good = ShippedCompiled.of(compiled["difficulty"])
    bad = ShippedCompiled(tampered.encode(), good.reference)
    future = client.submit(score_partition, latest_member_features(features).iloc[:500],
                           catalog, ShippedCompiled.of(compiled["reward"]), bad, 3, 0.7, 97,
                           pure=False)
    with pytest.raises(ParityRefused, match="difficulty v1: the compiled native model"):
        future.result()


def test_batch_csv_output_and_cli_flags(trained_store, tmp_path: Path,  # noqa: ANN001
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`rewards score-batch --engine dask` end to end (its own LocalCluster)."""
    from typer.testing import CliRunner

    from serving.config import get_store_settings
    from training.cli.app import app

    store: StoreSettings = trained_store[0]
    out = tmp_path / "scores.csv"
    monkeypatch.setenv("REWARDS_MODELS_DIR", str(store.models))
    get_store_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, [
            "score-batch", "--out", str(out), "--engine", "dask", "--partition-size", "700",
            "--data-dir", str(store.data)])
    finally:
        get_store_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert '"engine": "dask"' in result.output
    assert len(pd.read_csv(out)) == 2_000
    bad = CliRunner().invoke(app, ["score-batch", "--out", str(out), "--engine", "spark"])
    assert bad.exit_code == 2 and "--engine" in bad.output


@pytest.fixture(scope="module")
def datasets(trained_store):  # noqa: ANN001, ANN201
    from serving.stores.features import open_store, service_feature_names
    from training.data.datasets import difficulty_dataset, reward_dataset

    store, settings = trained_store[0], trained_store[1]
    shares = (settings.valid_share, settings.test_share)
    feast_store = open_store(store)
    reward = reward_dataset(store, store.features_dir, shares, "propensity_v1",
                            service_feature_names(feast_store, "propensity_v1"))
    difficulty = difficulty_dataset(store, store.features_dir, shares, "difficulty_v1",
                                    service_feature_names(feast_store, "difficulty_v1"))
    return settings, reward, difficulty


def _test_auc(model, data, positive) -> float:  # noqa: ANN001
    from training.models.lgbm import predict_proba
    from training.evaluation.metrics import auc

    X, y = data.subset("test")
    return auc(np.isin(y, positive), predict_proba(model, X)[:, positive].sum(axis=1))


def test_dask_training_matches_local_quality(datasets, client) -> None:  # noqa: ANN001
    from training.models.lgbm import fit_classifier

    settings, reward_data, difficulty_data = datasets
    on_dask = settings.model_copy(update={"engine": "dask"})
    for data, objective, positive, decreasing in (
        (reward_data, "multiclass", [2], ()),
        (difficulty_data, "binary", [1], DIFFICULTY_DECREASING),
    ):
        local = fit_classifier(data, settings, objective, decreasing)
        dask = fit_classifier(data, on_dask, objective, decreasing, client=client)
        assert 1 <= dask.best_iteration_ <= settings.max_rounds
        assert dask.booster_.current_iteration() == dask.best_iteration_  # cut at the best round
        local_auc, dask_auc = _test_auc(local, data, positive), _test_auc(dask, data, positive)
        assert local_auc > 0.6
        assert abs(local_auc - dask_auc) <= AUC_TOLERANCE, (objective, local_auc, dask_auc)


def test_replayed_early_stopping_matches_lightgbm(datasets) -> None:  # noqa: ANN001
    """On a local model, replaying early stopping finds LightGBM's own best round, with the
    validation rows unweighted and weighted (as the service's own decisions are)."""
    import lightgbm as lgb

    from training.models.dask_train import replay_early_stopping
    from training.models.params import lgbm_params

    settings, _, data = datasets
    X, y = data.subset("train")
    Xv, yv = data.subset("valid")
    full = lgb.LGBMClassifier(**{**lgbm_params(data, settings, "binary"), "n_estimators": 150})
    full.fit(X, y)
    # inverse-probability-like weights: heavy on a few rows, as exploration's rare picks are
    weights = np.random.default_rng(3).pareto(1.5, len(yv)) + 0.1
    rounds = {}
    for name, w in (("plain", None), ("weighted", weights)):
        stopped = lgb.LGBMClassifier(**{**lgbm_params(data, settings, "binary"),
                                        "n_estimators": 150})
        stopped.fit(X, y, eval_X=(Xv,), eval_y=(yv,),
                    eval_sample_weight=None if w is None else [w], callbacks=[
                        lgb.early_stopping(settings.early_stopping_rounds, verbose=False)])
        rounds[name] = stopped.best_iteration_
        assert replay_early_stopping(full.booster_, Xv, yv, settings.early_stopping_rounds,
                                     w) == stopped.best_iteration_, name
    print("best rounds:", rounds)


def test_pipeline_trains_and_registers_on_dask(trained_store, client,  # noqa: ANN001
                                               tmp_path: Path) -> None:
    """`rewards train difficulty --engine dask`'s pipeline on a copy of the store (its own
    MLflow database, so the shared registry is untouched)."""
    from training.data.feast_ops import apply_repo
    from training.pipeline import train_difficulty

    store, settings = trained_store[0], trained_store[1]
    copy = StoreSettings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    shutil.copytree(store.world_dir, copy.world_dir)
    shutil.copytree(store.features_dir, copy.features_dir)
    apply_repo(copy)
    result = train_difficulty(copy, settings.model_copy(update={"engine": "dask"}),
                              client=client)
    assert result.version == "1" and result.onnx_path.is_file()
    assert result.metrics["onnx.parity_max_abs_diff"] <= 1e-5
    assert result.metrics["difficulty.auc"] > 0.6
