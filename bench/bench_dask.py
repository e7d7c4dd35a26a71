"""Single process vs Dask on an existing data folder (world, features, Feast registry, champions).

- `score`: `rewards score-batch` of every member, single process (onnxruntime 1 and 2 threads)
  vs a Dask LocalCluster of `--workers` worker processes x 1 thread, and whether the Dask file
  equals the single-process one (1 thread, exact comparison);
- `train`: LightGBM fit of both models on the same training sets, local engine vs `lightgbm.dask`
  (the early stopping replay included), with each model's held-out AUC.
Cluster start-up is timed apart from the work. Wall times on a shared machine: run twice.

    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/bench_dask.py --what score,train
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def champions(threads: int) -> dict[str, object]:
    from serving.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
    from serving.config import get_store_settings
    from serving.feature_store import open_store, service_feature_names
    from serving.models import ChampionSource, load_onnx

    store = get_store_settings()
    feast_store = open_store(store)
    source = ChampionSource(store.tracking_uri, store.models)
    return {name: load_onnx(source.champion(name)[1], service_feature_names(feast_store, service),
                            derived, threads=threads)
            for name, service, derived in (("reward", "propensity_v1", REWARD_DERIVED),
                                           ("difficulty", "difficulty_v1", DIFFICULTY_DERIVED))}


def bench_score(client: object, workers: int) -> dict[str, object]:
    from serving.batch import score_batch
    from serving.batch_dask import score_batch_dask
    from serving.config import get_store_settings
    from serving.recommend import Catalog

    store = get_store_settings()
    features = store.features_dir / "member_features.parquet"
    catalog = Catalog.from_offline(store.world_dir, store.features_dir)
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for threads in (1, 2):
            models = champions(threads)
            files[threads] = Path(tmp) / f"local{threads}.parquet"
            t0 = time.perf_counter()
            n = score_batch(features, catalog, models["reward"], models["difficulty"],
                            files[threads])
            out[f"single_process_{threads}_threads_s"] = round(time.perf_counter() - t0, 1)
        models = champions(1)
        dask_file = Path(tmp) / "dask.parquet"
        t0 = time.perf_counter()
        score_batch_dask(features, catalog, models["reward"], models["difficulty"], dask_file,
                         client, partition_size=10_000)
        out[f"dask_{workers}_workers_s"] = round(time.perf_counter() - t0, 1)
        out["members"] = n
        out["dask_equals_single_process_1_thread"] = bool(
            pd.read_parquet(files[1]).equals(pd.read_parquet(dask_file)))
    return out


def bench_train(client: object) -> dict[str, object]:
    from serving.candidates import DIFFICULTY_DECREASING
    from serving.config import get_store_settings
    from serving.feature_store import open_store, service_feature_names
    from training.config import get_train_settings
    from training.datasets import difficulty_dataset, reward_dataset
    from training.lgbm import fit_classifier, predict_proba
    from training.metrics import auc

    store, settings = get_store_settings(), get_train_settings()
    shares = (settings.valid_share, settings.test_share)
    feast_store = open_store(store)
    out: dict[str, object] = {}
    for name, build, service, objective, positive, decreasing in (
        ("reward", reward_dataset, "propensity_v1", "multiclass", [2], ()),
        ("difficulty", difficulty_dataset, "difficulty_v1", "binary", [1], DIFFICULTY_DECREASING),
    ):
        data = build(store, store.world_dir, shares, service,
                     service_feature_names(feast_store, service))
        X_test, y_test = data.subset("test")
        row: dict[str, object] = {"train_rows": int((data.part == "train").sum())}
        for engine in ("local", "dask"):
            t0 = time.perf_counter()
            model = fit_classifier(data, settings.model_copy(update={"engine": engine}),
                                   objective, decreasing, client=client)
            row[f"{engine}_fit_s"] = round(time.perf_counter() - t0, 1)
            row[f"{engine}_best_iteration"] = int(model.best_iteration_)
            proba = predict_proba(model, X_test)[:, positive].sum(axis=1)
            row[f"{engine}_test_auc"] = round(auc(np.isin(y_test, positive), proba), 4)
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", default="score,train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scheduler", default=None, help="default: a LocalCluster")
    args = parser.parse_args()
    from serving.cluster import dask_client

    report: dict[str, object] = {}
    t0 = time.perf_counter()
    with dask_client(args.scheduler, n_workers=args.workers, threads_per_worker=1) as client:
        report["cluster_start_s"] = round(time.perf_counter() - t0, 1)
        if "score" in args.what:
            report["score_batch"] = bench_score(client, args.workers)
            print(json.dumps(report, indent=2), file=sys.stderr)
        if "train" in args.what:
            report["train"] = bench_train(client)
    report["client_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
