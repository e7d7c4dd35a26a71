"""LightGBM fitting with time-based early stopping, shared by both model families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np

from training.config import TrainSettings
from training.data.datasets import MORE_DATA, Dataset
from training.models.params import lgbm_params


def fit_classifier(data: Dataset, settings: TrainSettings, objective: str,
                   monotone_decreasing: Sequence[str] = (),
                   client: Any | None = None) -> lgb.LGBMClassifier:
    """Fit on the train period, early-stop on the validation period.

    ``settings.engine == "dask"`` trains with ``lightgbm.dask`` on ``client`` (a LocalCluster
    when None) and returns the same kind of local model, so everything downstream is shared.
    """
    if settings.engine == "dask":
        from training.models.dask_train import fit_classifier_dask

        return fit_classifier_dask(data, settings, objective, monotone_decreasing, client)
    X_train, y_train = data.subset("train")
    X_valid, y_valid = data.subset("valid")
    if len(X_train) == 0 or len(X_valid) == 0:
        raise ValueError(f"empty train or validation period: {MORE_DATA}")
    model = lgb.LGBMClassifier(**lgbm_params(data, settings, objective, monotone_decreasing))
    model.fit(X_train, y_train, sample_weight=data.weights("train"), eval_X=(X_valid,),
              eval_y=(y_valid,), eval_sample_weight=_eval_weights(data),
              feature_name=list(data.input_names),
              callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)])
    return model


def _eval_weights(data: Dataset) -> list[Any] | None:
    weights = data.weights("valid")
    return None if weights is None else [weights]


def predict_proba(model: lgb.LGBMClassifier | lgb.Booster, X: np.ndarray) -> np.ndarray:
    """Class probabilities (n, n_classes) at the early-stopped iteration.

    Goes straight to the booster: the sklearn wrapper would re-validate column names on every
    numpy batch, which costs time in evaluation loops and says nothing new. Accepts a bare
    Booster too (what the MLflow native-model flavour loads back).
    """
    booster = getattr(model, "booster_", model)
    raw = booster.predict(X, num_iteration=getattr(model, "best_iteration_", None))
    raw = np.asarray(raw, dtype=np.float64)
    return raw if raw.ndim == 2 else np.column_stack([1.0 - raw, raw])
