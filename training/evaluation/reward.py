"""Held-out evaluation of the reward model (propensity and uplift), from observable data.

Definitions:
- propensity.auc / propensity.ece: P(redeem) on the offered test rows;
- conversion.ece: P(convert) = P(converted, not redeemed) + P(redeemed) on every test row;
- uplift.qini / uplift.at_30: Qini coefficient and uplift in the top 30% of the predicted
  uplift, treated vs holdout test rows. Treated rows keep their logged reward; each holdout row
  is paired with a reward drawn like the logging policy (uniformly among the member's eligible
  rewards), so both arms carry exchangeable (member, reward) pairs;
- ope.*: off-policy estimates from the logged test decisions (see ``training.evaluation.ope``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from serving.decisioning.candidates import REWARD_ITEM_COLUMNS, no_offer_items, reward_matrix
from serving.decisioning.scoring import scores_from_proba
from training.data.datasets import Dataset, TimeSplit
from training.evaluation import metrics
from training.evaluation.evaluate import Evaluation, eligible_rewards, policy_members
from training.evaluation.ope import LoggedDecisions, logged_columns, off_policy
from training.models.lgbm import predict_proba


@dataclass
class RewardHoldout:
    """What the reward evaluation scored, so an oracle can score the same with the truth."""

    rows: pd.DataFrame  # the test-period decisions (treated and holdout), in log order
    items: pd.DataFrame  # reward features, catalog order (the columns of every matrix)
    pair: np.ndarray  # catalog column paired with each row: logged, or drawn for holdout rows
    policy_members: pd.DataFrame  # member snapshot at the test start, for policy values
    logged: LoggedDecisions  # the off-policy estimates' rows and the model policy's choices


def uniform_eligible(eligible: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row, a uniformly drawn eligible column index (the logging policy's choice)."""
    u = rng.random(eligible.shape) * eligible
    return np.argmax(u, axis=1)


def evaluate_reward(model: lgb.LGBMClassifier, data: Dataset, split: TimeSplit,
                    features_dir: Path, n_policy_members: int,
                    value_params: dict[str, float], seed: int) -> Evaluation:
    """Propensity, uplift and off-policy estimates of the reward model on the test period.

    ``value_params``: the model's value parameters (``fit_value_params``, with the margin).
    ``n_policy_members`` members of the test-start snapshot are drawn for policy values, which
    only an oracle can measure (``training.simulate.oracle``); drawing them here keeps one
    random stream, so every figure is the same with or without the oracle.
    """
    ev = Evaluation()
    rng = np.random.default_rng(seed)
    mask = data.part == "test"
    rows = data.rows[mask].reset_index(drop=True)
    proba = predict_proba(model, data.X[mask])
    treated = rows["treated"].to_numpy(dtype=bool)

    y_redeem = rows["redeemed"].to_numpy()[treated]
    p_redeem = proba[treated, 2]
    if len(np.unique(y_redeem)) == 2:
        ev.metrics["propensity.auc"] = metrics.auc(y_redeem, p_redeem)
    else:
        ev.skipped["propensity.auc"] = ("the test period's offers were all redeemed or none "
                                        "was")
    if len(y_redeem):
        ev.metrics["propensity.ece"] = metrics.expected_calibration_error(y_redeem, p_redeem)
        ev.curves["propensity_calibration"] = metrics.calibration_curve(y_redeem, p_redeem, 10,
                                                                        "quantile")
    else:
        ev.skipped["propensity.ece"] = "no offer in the test period (only no-offer draws)"
    ev.metrics["conversion.ece"] = metrics.expected_calibration_error(
        rows["converted"].to_numpy(), proba[:, 1] + proba[:, 2])

    # Qini: two model rows per test row (the paired offer, and no offer).
    items = pd.read_parquet(features_dir / "reward_features.parquet")
    pair = np.where(treated, logged_columns(rows, items),
                    uniform_eligible(eligible_rewards(rows, items), rng))
    member_cols = {c: rows[c].to_numpy(np.float32) for c in data.service_features
                   if c not in REWARD_ITEM_COLUMNS}
    pair_cols = {**member_cols, **{c: items[c].to_numpy(np.float32)[pair]
                                   for c in REWARD_ITEM_COLUMNS}}
    n = len(rows)
    offer = predict_proba(model, reward_matrix(pair_cols, np.ones(n), data.service_features,
                                               data.vocabulary))
    control = predict_proba(model, reward_matrix({**member_cols, **no_offer_items(n)},
                                                 np.zeros(n), data.service_features,
                                                 data.vocabulary))
    # each row's candidate rows as serving lays them out: the offer, then no offer
    model_uplift = scores_from_proba(np.stack([offer, control], axis=1).reshape(2 * n, -1),
                                     n).uplift[:, 0]
    converted = rows["converted"].to_numpy()
    t = treated.astype(float)
    if treated.all() or not treated.any() or len(np.unique(converted)) < 2:
        why = ("no control group in the test period: no decision drew no offer "
               "(REWARDS_NO_OFFER_SHARE, an experiment's holdout)" if treated.all()
               else "no offer in the test period (only no-offer draws)" if not treated.any()
               else "no conversion in the test period (or only conversions)")
        ev.skipped.update({"uplift.qini": why, "uplift.at_30": why})
    else:
        ev.metrics["uplift.qini"] = metrics.qini_auc_score(converted, t, model_uplift)
        ev.metrics["uplift.at_30"] = metrics.uplift_at_k(converted, t, model_uplift, k=0.3)
        ev.curves["qini_model"] = metrics.qini_curve(converted, t, model_uplift)

    members = policy_members(features_dir, split.test_from, n_policy_members, rng)
    ope_metrics, logged = off_policy(model, data.service_features, rows, items, value_params, rng,
                                     vocabulary=data.vocabulary)
    ev.metrics.update(ope_metrics)
    ev.holdout = RewardHoldout(rows, items, pair, members, logged)
    return ev
