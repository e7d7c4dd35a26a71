"""Scoring sampled members against the catalog with the native models (evaluation side).

Serving scores with onnxruntime, evaluation with the LightGBM model it just trained; both lay
out candidate rows with ``serving.decisioning.candidates.item_rows`` and turn reward-model
probabilities into scores with ``serving.decisioning.scoring``, so there is one implementation
of both. Only the model call is training's own. Work is chunked so 100k members x 35 rewards
never sits in memory at once.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from serving.contract.vocabulary import Vocabulary
from serving.decisioning.candidates import CHALLENGE_ITEM_COLUMNS, REWARD_ITEM_COLUMNS
from serving.decisioning.candidates import item_rows
from serving.decisioning.scoring import (
    CHUNK_ROWS, RewardScores, member_matrix, score_member_rows,
)
from training.models.lgbm import predict_proba

__all__ = ["RewardScores", "reward_values", "score_rewards", "score_targets"]


def _predict(model: lgb.LGBMClassifier):  # noqa: ANN202 - a serving.decisioning.scoring.Predict
    return lambda X: predict_proba(model, X)


def score_rewards(model: lgb.LGBMClassifier, members: pd.DataFrame, items: pd.DataFrame,
                  service_features: list[str], vocabulary: Vocabulary
                  ) -> RewardScores:
    """Score every member against every reward of ``items``, plus each member's no-offer row
    (derived inputs pick member features by the catalog ``vocabulary``)."""
    cols = {c: items[c].to_numpy(np.float32) for c in REWARD_ITEM_COLUMNS}
    rows = item_rows("reward", cols, service_features, vocabulary)
    return score_member_rows(_predict(model), member_matrix(members, rows.member_names), rows,
                             chunk_rows=CHUNK_ROWS)


def reward_values(scores: RewardScores, basket: np.ndarray, cost: np.ndarray,
                  margin: float) -> np.ndarray:
    """Predicted incremental value (members x rewards)."""
    return scores.values(basket, cost, margin)


def score_targets(model: lgb.LGBMClassifier, members: pd.DataFrame, templates: pd.DataFrame,
                  service_features: list[str], vocabulary: Vocabulary
                  ) -> pd.DataFrame:
    """P(complete) for every member x template x allowed target (long format)."""
    grid = []
    for _, t in templates.iterrows():
        targets = np.arange(t["challenge_min_target"], t["challenge_max_target"]
                            + t["challenge_target_step"] / 2, t["challenge_target_step"])
        grid.append(pd.DataFrame({"challenge_id": t["challenge_id"], "target": targets}))
    options = pd.concat(grid, ignore_index=True).merge(templates, on="challenge_id")
    cols = {c: options[c].to_numpy(np.float32) for c in (*CHALLENGE_ITEM_COLUMNS, "target")}
    rows = item_rows("difficulty", cols, service_features, vocabulary)
    values = member_matrix(members, rows.member_names)
    m = len(options)
    step = max(1, CHUNK_ROWS // m)
    probs = [predict_proba(model, rows.stack(values[lo:lo + step]))[:, 1]
             for lo in range(0, len(values), step)]
    ids = members["member_id"].to_numpy()
    return pd.DataFrame({
        "member_id": np.repeat(ids, m),
        "challenge_id": np.tile(options["challenge_id"].to_numpy(), len(ids)),
        "target": np.tile(cols["target"], len(ids)),
        "p_complete": np.concatenate(probs) if probs else np.empty(0),
    })
