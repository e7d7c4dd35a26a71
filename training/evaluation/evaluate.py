"""Held-out evaluation on the test period, from observable data only.

Every metric is measured on decisions the models never saw (the last days of the window), with
what a real loyalty program has: the logged (randomized) decisions and their outcomes, the
offline feature store and the catalog. The model families' evaluations live next to this module:
- ``reward``: propensity ranking and calibration, Qini of the predicted uplift;
- ``ope``: off-policy value of the model's policy and of baselines, from the logged decisions;
- ``difficulty``: P(complete) ranking and calibration, calibration around the flow zone.

A simulated world also has a hidden truth; ``training.simulate.oracle`` adds figures against it
(policy value vs the oracle, true OPE value, ...) to the same :class:`Evaluation`, scoring the
very rows and choices recorded in ``Evaluation.holdout``. Nothing here reads that truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from serving.decisioning.ranking import member_basket
from training.data.datasets import Dataset


@dataclass
class Evaluation:
    """Flat metrics, the arrays the plots need, and what was scored (for the oracle)."""

    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    #: metrics the test period cannot measure, and why (a program without a control group has
    #: no Qini): left out rather than made up; the run's ``evaluation.skipped`` tag says so
    skipped: dict[str, str] = field(default_factory=dict)
    #: The family's record of scored rows and choices (``RewardHoldout``/``DifficultyHoldout``).
    holdout: Any = None


def member_snapshot(features_dir: Path, at: pd.Timestamp, ids: np.ndarray | None = None
                    ) -> pd.DataFrame:
    """Member feature rows stamped exactly ``at`` (a day boundary), read from the offline store."""
    ds = pads.dataset(features_dir / "member_features.parquet")
    flt = pads.field("event_timestamp") == pa_timestamp(at)
    if ids is not None:
        flt = flt & pads.field("member_id").isin(ids.tolist())
    return ds.to_table(filter=flt).to_pandas().sort_values("member_id").reset_index(drop=True)


def pa_timestamp(ts: pd.Timestamp):  # noqa: ANN201 - pyarrow scalar
    import pyarrow as pa

    return pa.scalar(ts.to_pydatetime(), type=pa.timestamp("us", tz="UTC"))


def policy_members(features_dir: Path, at: pd.Timestamp, n_members: int,
                   rng: np.random.Generator) -> pd.DataFrame:
    """The members whose policy values are measured: a random ``n_members`` of the snapshot
    at ``at`` (all of them when fewer), in member order."""
    snapshot = member_snapshot(features_dir, at)
    if len(snapshot) > n_members:
        snapshot = snapshot.iloc[np.sort(rng.choice(len(snapshot), n_members, replace=False))]
    return snapshot


def eligible_rewards(members: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """(members x rewards) bool: may each member be offered each reward?

    Serving's eligibility rule (``rules.eligibility.respect_min_tier``: the member's tier rank
    reaches the reward's minimum tier rank) on observable columns: ``tier_rank`` of the member
    features, ``reward_min_tier_rank`` of the reward features (columns follow ``items``).
    """
    tier = members["tier_rank"].to_numpy(dtype=np.float64)
    min_tier = items["reward_min_tier_rank"].to_numpy(dtype=np.float64)
    return tier[:, None] >= min_tier[None, :]


def fit_value_params(data: Dataset, margin: float) -> dict[str, float]:
    """Basket multiplier and fallback for ``serving.decisioning.ranking.basket_estimate``, from
    train rows."""
    rows = data.rows[(data.part == "train") & (data.rows["converted"] == 1)]
    avg = rows["avg_basket_90d"].to_numpy(dtype=np.float64)
    spend = rows["spend"].to_numpy(dtype=np.float64)
    has = avg > 0
    multiplier = float(spend[has].sum() / avg[has].sum()) if has.any() else 1.0
    fallback = float(spend[~has].mean()) if (~has).sum() >= 30 else float(spend.mean())
    return {"basket_multiplier": multiplier, "basket_fallback": fallback, "margin": margin}


def member_baskets(members: pd.DataFrame, params: dict[str, float]) -> np.ndarray:
    """Expected spend of each member if they convert (the model's value parameters)."""
    return member_basket(members["avg_basket_90d"].to_numpy(), params)

