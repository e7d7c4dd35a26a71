"""Reward scores and values from the reward model's probabilities: one implementation.

The API (one member, its eligible rewards), batch scoring (chunks of members over the whole
catalog) and offline evaluation (training's native LightGBM model over sampled members) all
lay a member's candidate rows out the same way, each reward and then the member's no-offer
row (:func:`serving.decisioning.candidates.candidate_rows`), and turn the model's 3-class
output into propensity, conversion, uplift and expected value here. Only how the model is
called differs (onnxruntime, compiled trees, native LightGBM): callers pass ``predict``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from serving.contract.model_meta import ModelMetadata
from serving.decisioning.candidates import MemberRows
from serving.decisioning.ranking import expected_value

#: A model call: input matrix (rows, features) -> class probabilities (rows, classes).
Predict = Callable[[np.ndarray], np.ndarray]


class ScoringModel(Protocol):
    """What decisioning needs of a model: its contract and one batched call. Serving passes
    verified onnxruntime sessions (serving.stores.models.LoadedModel), batch scoring may pass
    compiled ones; decisioning never loads a model itself."""

    meta: ModelMetadata

    def predict(self, X: np.ndarray) -> np.ndarray: ...


#: Candidate rows per scoring call when many members are scored (evaluation): bounds memory.
CHUNK_ROWS = 400_000


@dataclass(frozen=True)
class RewardScores:
    """(members x rewards) matrices, rows aligned with the members, columns with the rewards.

    Classes of the reward model: no conversion, converted without redeeming, redeemed
    (training.data.datasets.REWARD_CLASSES).
    """

    propensity: np.ndarray  # P(redeem | offer)
    p_convert: np.ndarray  # P(convert | offer)
    p_control: np.ndarray  # (members, 1): P(convert | no offer), the no-offer row

    @property
    def uplift(self) -> np.ndarray:
        return self.p_convert - self.p_control

    def values(self, basket: np.ndarray, cost: np.ndarray, margin: float,
               cost_multiplier: float | np.ndarray = 1.0) -> np.ndarray:
        """Expected incremental profit of each offer (members x rewards): ``basket`` per member
        (float64, see ranking.member_basket), ``cost`` per reward; ``cost_multiplier`` one
        for all or one per member ((members x 1))."""
        return expected_value(self.uplift, self.propensity,
                              np.asarray(basket).reshape(-1, 1), np.asarray(cost)[None, :],
                              margin, cost_multiplier)


def scores_from_proba(proba: np.ndarray, members: int) -> RewardScores:
    """Scores from the model's output on ``members`` members' candidate rows, member-major:
    each member's rewards, then its no-offer row (so ``proba`` has members x (rewards + 1) rows).
    """
    p = proba.reshape(members, -1, proba.shape[-1])
    offer, control = p[:, :-1], p[:, -1:]
    return RewardScores(propensity=offer[..., 2], p_convert=offer[..., 1] + offer[..., 2],
                        p_control=control[..., 1] + control[..., 2])


def member_matrix(members: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """(members, features) float32, each column converted on its own like a single row's."""
    return np.stack([members[c].to_numpy(np.float32) for c in names], axis=1)


def score_member_rows(predict: Predict, members: np.ndarray, rows: MemberRows,
                  dtype: type[np.floating] = np.float32,
                  chunk_rows: int | None = None) -> RewardScores:
    """Score many members against every reward of ``rows`` (the compiled candidate matrix over
    the catalog, no-offer row last). ``members``: their values in ``rows.member_names`` order.

    ``chunk_rows`` bounds the rows of one model call (evaluation scores tens of thousands of
    members); batch scoring passes chunks small enough already.
    """
    per_member = len(rows.base)
    if len(members) == 0:
        empty = np.empty((0, per_member - 1), dtype=np.float64)
        return RewardScores(empty, empty, empty[:, :1])
    step = len(members) if chunk_rows is None else max(1, chunk_rows // per_member)
    parts = [scores_from_proba(predict(rows.stack(members[lo:lo + step], dtype)),
                               len(members[lo:lo + step]))
             for lo in range(0, len(members), max(step, 1))]
    if len(parts) == 1:
        return parts[0]
    return RewardScores(*(np.vstack([getattr(s, f) for s in parts])
                          for f in ("propensity", "p_convert", "p_control")))
