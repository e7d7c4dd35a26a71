"""Off-policy value of reward policies, estimated from the logged (randomized) test decisions.

The logging policy offered each member a reward drawn uniformly among the eligible ones, or
nothing (the holdout), and logged that probability. So the value of any other policy (what it
would have earned had it decided instead) can be estimated from the same log without running
it: IPS, self-normalized IPS and doubly robust (DR) estimates with 95% intervals.

The value of a decision is the realized profit: margin x spend in the attribution window, minus
the reward's cost if it was redeemed. Policies compared (all offer one eligible reward):
- ``model``: the greedy policy serving runs, the reward of highest predicted incremental value;
- ``propensity_only``: the reward most likely to be redeemed (a common heuristic);
- ``random``: a reward drawn uniformly among the eligible ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

from serving.contract.vocabulary import Vocabulary
from training.evaluation import metrics
from training.evaluation.evaluate import eligible_rewards, member_baskets
from training.evaluation.scoring import RewardScores, score_rewards

OPE_MAX_ROWS = 60_000


@dataclass
class LoggedDecisions:
    """The logged test decisions the estimates used, and the model policy's choice for each."""

    rows: pd.DataFrame  # sub-sampled to OPE_MAX_ROWS, in log order
    choice: np.ndarray  # column of the reward features (catalog order) the model picks
    cost: np.ndarray  # reward cost, catalog order
    margin: float


def logged_columns(rows: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """Catalog column of each row's logged reward; -1 for holdout rows (no offer)."""
    reward_index = {r: i for i, r in enumerate(items["reward_id"])}
    return rows["reward_id"].map(reward_index).fillna(-1).to_numpy(dtype=int)


def expected_profits(scores: RewardScores, basket: np.ndarray, cost: np.ndarray,
                     margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The reward model's expected profit per decision of offering each reward (rows x
    rewards: margin x basket x P(convert) - P(redeem) x cost) and of no offer (margin x basket
    x P(convert | no offer)): the direct-method values of DR, here and in the retrain gate."""
    q_offer = margin * basket[:, None] * scores.p_convert - scores.propensity * cost[None, :]
    return q_offer, margin * basket * scores.p_control[:, 0]


def off_policy(model: lgb.LGBMClassifier, service_features: list[str], rows: pd.DataFrame,
               items: pd.DataFrame, value_params: dict[str, float],
               rng: np.random.Generator, vocabulary: Vocabulary
               ) -> tuple[dict[str, float], LoggedDecisions]:
    """``ope.*`` metrics of the model policy and of the baselines, and what they scored."""
    if len(rows) > OPE_MAX_ROWS:
        rows = rows.iloc[np.sort(rng.choice(len(rows), OPE_MAX_ROWS, replace=False))]
    rows = rows.reset_index(drop=True)
    margin, n = float(value_params["margin"]), len(rows)
    r_idx = np.arange(n)
    scores = score_rewards(model, rows, items, service_features, vocabulary)
    cost = items["reward_cost"].to_numpy(dtype=np.float64)
    basket = member_baskets(rows, value_params)
    # Reward model's expected profit of offering each reward, and of no offer.
    q_offer, q_control = expected_profits(scores, basket, cost, margin)
    eligible = eligible_rewards(rows, items)

    treated = rows["treated"].to_numpy(dtype=bool)
    logged = logged_columns(rows, items)
    safe = np.maximum(logged, 0)
    realized = margin * rows["spend"].to_numpy() - rows["redeemed"].to_numpy() * np.where(
        treated, cost[safe], 0.0)
    prop = rows["propensity"].to_numpy()
    q_logged = np.where(treated, q_offer[r_idx, safe], q_control)

    def greedy(score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        choice = np.argmax(np.where(eligible, score, -np.inf), axis=1)
        return choice, (treated & (logged == choice)).astype(float), q_offer[r_idx, choice]

    choice, model_prob, model_q = greedy(q_offer - q_control[:, None])
    _, prop_prob, prop_q = greedy(scores.propensity)
    n_eligible = eligible.sum(axis=1)
    random_prob = np.where(treated & eligible[r_idx, safe], 1.0 / n_eligible, 0.0)
    random_q = np.where(eligible, q_offer, 0.0).sum(axis=1) / n_eligible

    ips = metrics.ips(realized, prop, model_prob)
    snips = metrics.snips(realized, prop, model_prob)
    dr = metrics.doubly_robust(realized, prop, model_prob, q_logged, model_q)
    dr_prop = metrics.doubly_robust(realized, prop, prop_prob, q_logged, prop_q)
    dr_random = metrics.doubly_robust(realized, prop, random_prob, q_logged, random_q)
    w = model_prob / prop
    out = {
        "ope.ips": ips.value, "ope.snips": snips.value,
        "ope.dr": dr.value, "ope.dr_ci_low": dr.ci_low, "ope.dr_ci_high": dr.ci_high,
        "ope.dr_propensity_only": dr_prop.value,
        "ope.dr_propensity_only_ci_low": dr_prop.ci_low,
        "ope.dr_propensity_only_ci_high": dr_prop.ci_high,
        "ope.dr_random": dr_random.value,
        "ope.dr_random_ci_low": dr_random.ci_low, "ope.dr_random_ci_high": dr_random.ci_high,
        # Rows that effectively carry the model policy's IPS estimate: (sum w)^2 / sum w^2.
        "ope.ess": float(w.sum() ** 2 / max(float((w ** 2).sum()), 1e-12)),
        "ope.logged_value": float(realized.mean()),
        "ope.rows": float(n),
    }
    return out, LoggedDecisions(rows, choice, cost, margin)
