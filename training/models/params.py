"""The LightGBM parameters both engines fit with.

Apart from ``lgbm`` (local fit) and ``dask_train`` (the cluster fit) so that each imports them
from here and neither imports the other at module level: the local engine hands off to the
Dask one, and both must build the same model from the same settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.config import TrainSettings
from training.data.datasets import Dataset


def lgbm_params(data: Dataset, settings: TrainSettings, objective: str,
                monotone_decreasing: Sequence[str] = ()) -> dict[str, Any]:
    """LightGBM parameters shared by the local and the Dask engine (so they fit the same model).

    ``monotone_decreasing`` names inputs whose effect must never be positive (harder targets
    can only lower the completion probability), enforced by LightGBM's monotone constraints.
    """
    params: dict[str, object] = {
        "objective": objective, "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves, "min_child_samples": settings.min_child_samples,
        "n_estimators": settings.max_rounds, "subsample": 0.8, "subsample_freq": 1,
        "colsample_bytree": 0.8, "reg_lambda": 1.0, "num_threads": settings.num_threads,
        "random_state": settings.seed, "verbose": -1,
    }
    if monotone_decreasing:
        params["monotone_constraints"] = [
            -1 if name in monotone_decreasing else 0 for name in data.input_names]
        params["monotone_constraints_method"] = "advanced"
    return params
