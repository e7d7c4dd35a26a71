"""Evaluation on the test period against the simulator's hidden truth.

Every metric is measured on decisions the models never saw (the last days of the window), and
compared with an oracle that knows the true probabilities, so "good" has an absolute meaning.
Definitions (also in docs/evaluation.md):
- propensity.*: P(redeem) on offered test rows; oracle_auc scores the same rows with the truth.
- uplift.qini: Qini AUC of the predicted uplift, treated vs holdout test rows; each holdout row is
  paired with a reward drawn like the logging policy, so both arms carry exchangeable pairs.
- policy.value_*: mean TRUE incremental value per member of the top-1 reward each policy picks,
  for members at the start of the test period.
- difficulty.*: P(complete) on test assignments; target_completion_gap is
  |true mean completion of the flow-zone targets - flow zone|.
- ope.*: off-policy estimates of the model policy's value (realized profit per decision) from
  the logged test decisions, beside its true value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from training.data.world import read_world_meta
from serving.decisioning.candidates import REWARD_ITEM_COLUMNS, no_offer_items, reward_matrix
from serving.decisioning.ranking import flow_zone_choice, member_basket, reward_scores
from serving.contract.vocabulary import TIERS
from training.evaluation import metrics
from training.data.datasets import Dataset, TimeSplit
from training.models.lgbm import predict_proba
from training.evaluation.scoring import reward_values, score_rewards, score_targets
from training.simulate import truth

OPE_MAX_ROWS = 60_000
DIFFICULTY_EVAL_MEMBERS = 5_000


@dataclass
class Evaluation:
    """Flat metrics plus the arrays the plots need."""

    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, object] = field(default_factory=dict)


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


@dataclass
class WorldTruth:
    """The hidden side of a simulated world, aligned by member_id."""

    world_dir: Path
    margin: float
    window_days: int
    members: pd.DataFrame
    traits: pd.DataFrame
    rewards: pd.DataFrame
    challenges: pd.DataFrame

    @classmethod
    def load(cls, world_dir: Path) -> WorldTruth:
        meta = read_world_meta(world_dir)
        return cls(world_dir, meta.margin, meta.attribution_window_days,
                   pd.read_parquet(world_dir / "members.parquet").set_index("member_id"),
                   pd.read_parquet(world_dir / "truth" / "member_traits.parquet")
                   .set_index("member_id"),
                   pd.read_parquet(world_dir / "rewards.parquet"),
                   pd.read_parquet(world_dir / "challenges.parquet"))

    def reward_response(self, member_ids: np.ndarray) -> dict[str, np.ndarray]:
        """True response matrices with one row per entry of ``member_ids`` (repeats allowed)."""
        uniq, inverse = np.unique(member_ids, return_inverse=True)
        out = truth.reward_response(self.traits.loc[uniq].reset_index(),
                                    self.members.loc[uniq].reset_index(),
                                    self.rewards, self.margin, self.window_days)
        return {k: np.asarray(v)[inverse] for k, v in out.items()}


def evaluate_reward(model: lgb.LGBMClassifier, data: Dataset, split: TimeSplit,
                    features_dir: Path, world: WorldTruth, policy_members: int,
                    value_params: dict[str, float], seed: int) -> Evaluation:
    """Propensity, uplift, policy value and off-policy estimates of the reward model."""
    ev = Evaluation()
    rng = np.random.default_rng(seed)
    mask = data.part == "test"
    rows = data.rows[mask].reset_index(drop=True)
    proba = predict_proba(model, data.X[mask])
    treated = rows["treated"].to_numpy(dtype=bool)
    truth_rows = pd.read_parquet(world.world_dir / "truth" / "offers.parquet").set_index("offer_id")
    true_p_redeem = truth_rows.loc[rows["offer_id"], "p_redeem"].to_numpy()

    y_redeem = rows["redeemed"].to_numpy()[treated]
    p_redeem = proba[treated, 2]
    ev.metrics["propensity.auc"] = metrics.auc(y_redeem, p_redeem)
    ev.metrics["propensity.oracle_auc"] = metrics.auc(y_redeem, true_p_redeem[treated])
    ev.metrics["propensity.ece"] = metrics.expected_calibration_error(y_redeem, p_redeem)
    ev.curves["propensity_calibration"] = metrics.calibration_curve(y_redeem, p_redeem, 10,
                                                                    "quantile")
    ev.metrics["conversion.ece"] = metrics.expected_calibration_error(
        rows["converted"].to_numpy(), proba[:, 1] + proba[:, 2])

    # Qini: treated rows keep their logged reward; holdout rows get one drawn like the logger,
    # so both arms hold exchangeable (member, reward) pairs. Two model rows per test row.
    items = pd.read_parquet(features_dir / "reward_features.parquet")
    reward_index = {r: i for i, r in enumerate(items["reward_id"])}
    ids = rows["member_id"].to_numpy()
    tr = world.reward_response(ids)
    logged = rows["reward_id"].map(reward_index).fillna(-1).to_numpy(dtype=int)
    pair = np.where(treated, logged, _uniform_eligible(tr["eligible"], rng))
    member_cols = {c: rows[c].to_numpy(np.float32) for c in data.service_features
                   if c not in REWARD_ITEM_COLUMNS}
    pair_cols = {**member_cols, **{c: items[c].to_numpy(np.float32)[pair]
                                   for c in REWARD_ITEM_COLUMNS}}
    n = len(rows)
    offer = predict_proba(model, reward_matrix(pair_cols, np.ones(n), data.service_features))
    control = predict_proba(model, reward_matrix({**member_cols, **no_offer_items(n)},
                                                 np.zeros(n), data.service_features))
    model_uplift = reward_scores(offer, control)["uplift"]
    r_idx = np.arange(n)
    true_uplift = tr["p_convert_offer"][r_idx, pair] - tr["p_convert_control"][r_idx, pair]
    converted = rows["converted"].to_numpy()
    t = treated.astype(float)
    ev.metrics["uplift.qini"] = metrics.qini_auc_score(converted, t, model_uplift)
    ev.metrics["uplift.oracle_qini"] = metrics.qini_auc_score(converted, t, true_uplift)
    ev.metrics["uplift.at_30"] = metrics.uplift_at_k(converted, t, model_uplift, k=0.3)
    ev.curves["qini_model"] = metrics.qini_curve(converted, t, model_uplift)
    ev.curves["qini_oracle"] = metrics.qini_curve(converted, t, true_uplift)

    _policy_values(ev, model, data, split, features_dir, world, items, policy_members,
                   value_params, rng)
    _off_policy(ev, model, data, rows, items, world, value_params, rng)
    return ev


def _uniform_eligible(eligible: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row, a uniformly drawn eligible column index (the logging policy's choice)."""
    u = rng.random(eligible.shape) * eligible
    return np.argmax(u, axis=1)


def fit_value_params(data: Dataset, margin: float) -> dict[str, float]:
    """Basket multiplier and fallback for ``serving.decisioning.ranking.basket_estimate``, from train rows."""
    rows = data.rows[(data.part == "train") & (data.rows["converted"] == 1)]
    avg = rows["avg_basket_90d"].to_numpy(dtype=np.float64)
    spend = rows["spend"].to_numpy(dtype=np.float64)
    has = avg > 0
    multiplier = float(spend[has].sum() / avg[has].sum()) if has.any() else 1.0
    fallback = float(spend[~has].mean()) if (~has).sum() >= 30 else float(spend.mean())
    return {"basket_multiplier": multiplier, "basket_fallback": fallback, "margin": margin}


def _basket(members: pd.DataFrame, params: dict[str, float]) -> np.ndarray:
    return member_basket(members["avg_basket_90d"].to_numpy(), params)


def policy_members(features_dir: Path, at: pd.Timestamp, n_members: int,
                   rng: np.random.Generator) -> pd.DataFrame:
    """The members whose policy values are measured: a random ``n_members`` of the snapshot
    at ``at`` (all of them when fewer), in member order."""
    snapshot = member_snapshot(features_dir, at)
    if len(snapshot) > n_members:
        snapshot = snapshot.iloc[np.sort(rng.choice(len(snapshot), n_members, replace=False))]
    return snapshot


def policy_value(score: np.ndarray, true_value: np.ndarray, eligible: np.ndarray) -> float:
    """Mean true incremental value of each member's top eligible reward by ``score``."""
    choice = np.argmax(np.where(eligible, score, -np.inf), axis=1)
    return float(true_value[np.arange(len(true_value)), choice].mean())


def _policy_values(ev: Evaluation, model: lgb.LGBMClassifier, data: Dataset, split: TimeSplit,
                   features_dir: Path, world: WorldTruth, items: pd.DataFrame, n_members: int,
                   value_params: dict[str, float], rng: np.random.Generator) -> None:
    snapshot = policy_members(features_dir, split.test_from, n_members, rng)
    ids = snapshot["member_id"].to_numpy()
    scores = score_rewards(model, snapshot, items, data.service_features)
    tr = world.reward_response(ids)
    eligible = tr["eligible"]
    cost = items["reward_cost"].to_numpy(dtype=np.float64)
    value_hat = reward_values(scores, _basket(snapshot, value_params), cost, world.margin)
    true_value = tr["incremental_value"]
    neg = np.where(eligible, 0.0, -np.inf)
    ev.metrics["policy.value_model"] = policy_value(value_hat, true_value, eligible)
    ev.metrics["policy.value_propensity_only"] = policy_value(scores.propensity, true_value,
                                                              eligible)
    ev.metrics["policy.value_oracle"] = policy_value(true_value, true_value, eligible)
    ev.metrics["policy.value_random"] = float(
        (np.where(eligible, true_value, 0).sum(axis=1) / eligible.sum(axis=1)).mean())
    ev.metrics["policy.members"] = float(len(ids))
    ev.curves["policy_by_type"] = _by_player_type(world, ids, np.argmax(value_hat + neg, axis=1),
                                                  np.argmax(true_value + neg, axis=1), true_value)


def _by_player_type(world: WorldTruth, ids: np.ndarray, model_choice: np.ndarray,
                    oracle_choice: np.ndarray, true_value: np.ndarray) -> pd.DataFrame:
    r = np.arange(len(ids))
    return pd.DataFrame({
        "player_type": world.traits.loc[ids, "player_type"].to_numpy(),
        "model": true_value[r, model_choice], "oracle": true_value[r, oracle_choice],
    }).groupby("player_type").mean()


def _off_policy(ev: Evaluation, model: lgb.LGBMClassifier, data: Dataset, rows: pd.DataFrame,
                items: pd.DataFrame, world: WorldTruth, value_params: dict[str, float],
                rng: np.random.Generator) -> None:
    """IPS / SNIPS / DR of the model's greedy policy from the logged (randomized) decisions.

    The reward is the realized profit of each decision (margin x spend - cost if redeemed); the
    true value is the same quantity's expectation under the truth for the policy's choices.
    """
    if len(rows) > OPE_MAX_ROWS:
        rows = rows.iloc[np.sort(rng.choice(len(rows), OPE_MAX_ROWS, replace=False))]
    rows = rows.reset_index(drop=True)
    margin, n = world.margin, len(rows)
    scores = score_rewards(model, rows, items, data.service_features)
    tr = world.reward_response(rows["member_id"].to_numpy())
    cost = items["reward_cost"].to_numpy(dtype=np.float64)
    basket = _basket(rows, value_params)
    q_offer = margin * basket[:, None] * scores.p_convert - scores.propensity * cost[None, :]
    q_control = margin * basket * scores.p_control[:, 0]
    choice = np.argmax(np.where(tr["eligible"], q_offer - q_control[:, None], -np.inf), axis=1)
    r_idx = np.arange(n)

    treated = rows["treated"].to_numpy(dtype=bool)
    reward_index = {r: i for i, r in enumerate(items["reward_id"])}
    logged = rows["reward_id"].map(reward_index).fillna(-1).to_numpy(dtype=int)
    logged_cost = np.where(treated, cost[np.maximum(logged, 0)], 0.0)
    realized = margin * rows["spend"].to_numpy() - rows["redeemed"].to_numpy() * logged_cost
    target_prob = (treated & (logged == choice)).astype(float)
    q_logged = np.where(treated, q_offer[r_idx, np.maximum(logged, 0)], q_control)
    q_target = q_offer[r_idx, choice]
    prop = rows["propensity"].to_numpy()
    ips = metrics.ips(realized, prop, target_prob)
    snips = metrics.snips(realized, prop, target_prob)
    dr = metrics.doubly_robust(realized, prop, target_prob, q_logged, q_target)
    true_value = (margin * tr["basket_value"][r_idx, choice] * tr["p_convert_offer"][r_idx, choice]
                  - tr["p_redeem"][r_idx, choice] * cost[choice])
    ev.metrics.update({
        "ope.ips": ips.value, "ope.snips": snips.value, "ope.dr": dr.value,
        "ope.dr_ci_low": dr.ci_low, "ope.dr_ci_high": dr.ci_high,
        "ope.true_value": float(true_value.mean()), "ope.rows": float(n),
    })


def evaluate_difficulty(model: lgb.LGBMClassifier, data: Dataset, split: TimeSplit,
                        features_dir: Path, world: WorldTruth, flow_zone: float,
                        seed: int) -> Evaluation:
    """Calibration and ranking of P(complete), and how close flow-zone targets land."""
    ev = Evaluation()
    rng = np.random.default_rng(seed)
    mask = data.part == "test"
    rows = data.rows[mask].reset_index(drop=True)
    p = predict_proba(model, data.X[mask])[:, 1]
    y = rows["completed"].to_numpy()
    truth_rows = pd.read_parquet(world.world_dir / "truth" / "assignments.parquet").set_index(
        "assignment_id")
    ev.metrics["difficulty.auc"] = metrics.auc(y, p)
    ev.metrics["difficulty.oracle_auc"] = metrics.auc(
        y, truth_rows.loc[rows["assignment_id"], "p_complete"].to_numpy())
    ev.metrics["difficulty.ece"] = metrics.expected_calibration_error(y, p)
    ev.curves["difficulty_calibration"] = metrics.calibration_curve(y, p, 10, "quantile")

    snapshot = member_snapshot(features_dir, split.test_from)
    if len(snapshot) > DIFFICULTY_EVAL_MEMBERS:
        snapshot = snapshot.iloc[np.sort(rng.choice(len(snapshot), DIFFICULTY_EVAL_MEMBERS,
                                                    replace=False))]
    templates = pd.read_parquet(features_dir / "challenge_features.parquet")
    grid = score_targets(model, snapshot, templates, data.service_features)
    grid["true_p"] = _true_completion(world, grid)
    group = grid["member_id"].to_numpy() * 1000 + grid["challenge_id"].str[1:].astype(int).to_numpy()
    chosen = grid.iloc[flow_zone_choice(group, grid["target"].to_numpy(),
                                        grid["p_complete"].to_numpy(), flow_zone)]
    ev.metrics["difficulty.target_completion_gap"] = abs(float(chosen["true_p"].mean()) - flow_zone)
    ev.metrics["difficulty.target_predicted_mean"] = float(chosen["p_complete"].mean())
    ev.metrics["difficulty.target_true_mean"] = float(chosen["true_p"].mean())
    ev.metrics["difficulty.target_mean_abs_error"] = float(
        np.abs(chosen["true_p"] - flow_zone).mean())
    ev.curves["difficulty_grid"] = _curve_examples(world, grid)
    return ev


def _true_completion(world: WorldTruth, grid: pd.DataFrame) -> np.ndarray:
    return truth.completion_probability(
        world.traits.reset_index(), world.challenges, grid["member_id"].to_numpy(),
        grid["challenge_id"].to_numpy(), grid["target"].to_numpy())


def _curve_examples(world: WorldTruth, grid: pd.DataFrame) -> pd.DataFrame:
    """Predicted vs true completion over targets for one member of each player type."""
    members = grid["member_id"].unique()
    types = world.traits.loc[members, "player_type"]
    picks = types.groupby(types).head(1).index.to_numpy()
    first_template = grid["challenge_id"].iloc[0]
    sub = grid[grid["member_id"].isin(picks)].copy()
    sub["player_type"] = world.traits.loc[sub["member_id"], "player_type"].to_numpy()
    sub["tier"] = [TIERS[0]] * len(sub)  # kept for plot labels; tier is not a trait
    sub["tier"] = world.members.loc[sub["member_id"], "tier"].to_numpy()
    return sub.assign(first_template=first_template)
