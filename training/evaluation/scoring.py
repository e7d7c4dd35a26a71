"""Batch scoring of members against the catalog with the native models (evaluation side).

Serving does the same with onnxruntime; both build inputs with ``serving.decisioning.candidates`` so the
rows are identical. Work is chunked so 100k members x 35 rewards never sits in memory at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

from serving.decisioning.candidates import (
    CHALLENGE_ITEM_COLUMNS, REWARD_ITEM_COLUMNS, cross, difficulty_matrix, no_offer_items,
    reward_matrix,
)
from serving.decisioning.ranking import expected_value, reward_scores
from training.models.lgbm import predict_proba

CHUNK_ROWS = 400_000


def _columns(frame: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
    return {n: frame[n].to_numpy(dtype=np.float32) for n in names if n in frame.columns}


@dataclass
class RewardScores:
    """(members x rewards) matrices, rows aligned with the member frame, columns with items."""

    propensity: np.ndarray
    p_convert: np.ndarray
    p_control: np.ndarray  # (members, 1): the no-offer row

    @property
    def uplift(self) -> np.ndarray:
        return self.p_convert - self.p_control


def score_rewards(model: lgb.LGBMClassifier, members: pd.DataFrame, items: pd.DataFrame,
                  service_features: list[str]) -> RewardScores:
    """Score every member against every reward, plus each member's no-offer control row."""
    member_names = [n for n in service_features if n not in REWARD_ITEM_COLUMNS]
    item_names = list(REWARD_ITEM_COLUMNS)
    m = len(items)
    step = max(1, CHUNK_ROWS // (m + 1))
    out_p, out_c, out_0 = [], [], []
    item_cols = _columns(items, item_names)
    for lo in range(0, len(members), step):
        chunk = _columns(members.iloc[lo:lo + step], member_names)
        n = len(next(iter(chunk.values())))
        pairs = cross(chunk, item_cols)
        offer = predict_proba(model, reward_matrix(pairs, np.ones(n * m), service_features))
        control_cols = {**chunk, **no_offer_items(n)}
        control = predict_proba(model, reward_matrix(control_cols, np.zeros(n), service_features))
        s = reward_scores(offer, np.repeat(control, m, axis=0))
        out_p.append(s["propensity"].reshape(n, m))
        out_c.append(s["p_convert"].reshape(n, m))
        out_0.append(s["p_control"].reshape(n, m)[:, :1])
    return RewardScores(np.vstack(out_p), np.vstack(out_c), np.vstack(out_0))


def reward_values(scores: RewardScores, basket: np.ndarray, cost: np.ndarray,
                  margin: float) -> np.ndarray:
    """Predicted incremental value (members x rewards)."""
    return expected_value(scores.uplift, scores.propensity, basket[:, None], cost[None, :], margin)


def score_targets(model: lgb.LGBMClassifier, members: pd.DataFrame, templates: pd.DataFrame,
                  service_features: list[str]) -> pd.DataFrame:
    """P(complete) for every member x template x allowed target (long format)."""
    rows = []
    for _, t in templates.iterrows():
        targets = np.arange(t["challenge_min_target"], t["challenge_max_target"]
                            + t["challenge_target_step"] / 2, t["challenge_target_step"])
        rows.append(pd.DataFrame({"challenge_id": t["challenge_id"], "target": targets}))
    options = pd.concat(rows, ignore_index=True).merge(templates, on="challenge_id")
    member_names = [n for n in service_features if n not in CHALLENGE_ITEM_COLUMNS]
    item_names = list(CHALLENGE_ITEM_COLUMNS)
    item_cols = _columns(options, item_names)
    targets = options["target"].to_numpy(np.float32)
    m = len(options)
    step = max(1, CHUNK_ROWS // m)
    probs = []
    for lo in range(0, len(members), step):
        chunk = _columns(members.iloc[lo:lo + step], member_names)
        n = len(next(iter(chunk.values())))
        pairs = cross(chunk, item_cols)
        X = difficulty_matrix(pairs, np.tile(targets, n), service_features)
        probs.append(predict_proba(model, X)[:, 1])
    ids = members["member_id"].to_numpy()
    return pd.DataFrame({
        "member_id": np.repeat(ids, m),
        "challenge_id": np.tile(options["challenge_id"].to_numpy(), len(ids)),
        "target": np.tile(targets, len(ids)),
        "p_complete": np.concatenate(probs),
    })
