"""LightGBM on Dask (`rewards train ... --engine dask`): ``lightgbm.dask.DaskLGBMClassifier``
over the training rows spread across the workers, with the local engine's parameters.

LightGBM's Dask interface has no early stopping (each worker would judge its own slice of the
validation set and could stop at a different round), so the cluster trains up to ``max_rounds``
and early stopping is replayed here on the whole validation period: the validation loss after
every round (weighted as the local engine weighs it), the same patience, and the booster cut at
the best round.
The result is a plain ``LGBMClassifier``; evaluation, ONNX export and registration do not know
which engine fitted it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np

from training.config import TrainSettings
from training.data.datasets import MORE_DATA, Dataset
from training.models.params import lgbm_params


def fit_classifier_dask(data: Dataset, settings: TrainSettings, objective: str,
                        monotone_decreasing: Sequence[str] = (),
                        client: Any | None = None) -> lgb.LGBMClassifier:
    """Fit on the cluster behind ``client`` (a 2-worker LocalCluster when None)."""
    if client is None:
        from serving.batch.cluster import dask_client

        with dask_client() as local_client:
            return fit_classifier_dask(data, settings, objective, monotone_decreasing,
                                       local_client)
    import dask.array as da
    from distributed import wait
    from lightgbm.dask import DaskLGBMClassifier

    from serving.batch.cluster import worker_threads

    train_rows = np.flatnonzero(data.part == "train")
    X_valid, y_valid = data.subset("valid")
    if len(train_rows) == 0 or len(X_valid) == 0:
        raise ValueError(f"empty train or validation period: {MORE_DATA}")
    workers = list(client.nthreads())
    params = lgbm_params(data, settings, objective, monotone_decreasing)
    params["num_threads"] = worker_threads(client)  # per worker: no oversubscription
    # One chunk per worker, placed explicitly so that every worker trains on a share. Each
    # chunk is copied out of X only while it is sent, so the client never holds the whole
    # train period a second time (at 1M members that copy alone is gigabytes).
    rows = math.ceil(len(train_rows) / len(workers))
    X_parts, y_parts, w_parts = [], [], []
    for i, worker in enumerate(workers):
        chunk = train_rows[i * rows:(i + 1) * rows]
        if len(chunk) == 0:
            continue
        xf, yf = client.scatter([data.X[chunk], data.y[chunk]], workers=[worker])
        X_parts.append(da.from_delayed(xf, shape=(len(chunk), data.X.shape[1]),
                                       dtype=data.X.dtype))
        y_parts.append(da.from_delayed(yf, shape=(len(chunk),), dtype=data.y.dtype))
        if data.weight is not None:  # the service's own decisions: see logging_weights
            [wf] = client.scatter([data.weight[chunk]], workers=[worker])
            w_parts.append(da.from_delayed(wf, shape=(len(chunk),), dtype=data.weight.dtype))
        wait([xf, yf])
    model = DaskLGBMClassifier(client=client, **params)
    model.fit(da.concatenate(X_parts), da.concatenate(y_parts),
              sample_weight=da.concatenate(w_parts) if w_parts else None,
              feature_name=list(data.input_names))
    local = model.to_local()
    best = replay_early_stopping(local.booster_, X_valid, y_valid,
                                 settings.early_stopping_rounds, data.weights("valid"))
    local._Booster = lgb.Booster(model_str=local.booster_.model_to_string(num_iteration=best))
    local._best_iteration = best
    return local


def replay_early_stopping(booster: lgb.Booster, X_valid: np.ndarray, y_valid: np.ndarray,
                          patience: int, weight: np.ndarray | None = None) -> int:
    """The round LightGBM's early stopping would keep: the first minimum of the validation
    log-loss not improved on within ``patience`` rounds (1-based, like ``best_iteration_``).
    ``weight``: the validation rows' weights, as the local engine's ``eval_sample_weight``
    (the service's own decisions are weighted by their logged probabilities, and the round
    that fits them best is judged on the same mix)."""
    n_rounds = booster.current_iteration()
    raw = np.zeros((len(X_valid), booster.num_model_per_iteration()))
    y = np.asarray(y_valid).astype(int)
    best_loss, best_round = math.inf, 1
    for i in range(n_rounds):
        step = booster.predict(X_valid, start_iteration=i, num_iteration=1, raw_score=True)
        raw += np.asarray(step).reshape(len(X_valid), -1)
        loss = _log_loss(raw, y, weight)
        if loss < best_loss:
            best_loss, best_round = loss, i + 1
        elif i + 1 - best_round >= patience:
            break
    return best_round


def _log_loss(raw: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> float:
    """(Weighted) mean negative log-likelihood from raw scores (binary: one column;
    multiclass: k), as LightGBM's binary_logloss / multi_logloss."""
    if raw.shape[1] == 1:
        z = raw[:, 0]
        return float(np.average(np.logaddexp(0.0, z) - y * z, weights=weight))
    shifted = raw - raw.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.average(log_norm - shifted[np.arange(len(y)), y], weights=weight))
