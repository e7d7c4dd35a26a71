"""Oracle figures: how far the models are from what the simulator's hidden truth allows.

Only simulated worlds have a ``truth/`` folder (true member traits, the true P(redeem) of every
logged offer, the true P(complete) of every assignment); a real program has none. The held-out
evaluation (``training.evaluation``) never reads it. When :func:`available` says a world has
one, the pipeline calls :func:`add_reward_figures` / :func:`add_difficulty_figures`, which score
the very rows and choices the evaluation recorded (``Evaluation.holdout``) with the truth and
add these figures to the same Evaluation:
- propensity.oracle_auc: the true P(redeem) as a score of the offered test rows;
- uplift.oracle_qini: the Qini coefficient of the true uplift of the same pairs;
- policy.value_*: mean TRUE incremental value per member of the top-1 eligible reward each
  policy picks (model, propensity-only, oracle, random), for ``policy.members`` members at the
  start of the test period;
- ope.true_value: the true expected profit per decision of the model policy's choices on the
  logged test decisions (what the ope.* estimates estimate);
- difficulty.oracle_auc: the true P(complete) as a score of the test assignments;
- difficulty.target_*: the true completion of the flow-zone targets the model picks
  (``target_completion_gap`` = |true mean - flow zone|; their predicted mean,
  ``target_predicted_mean``, needs no truth and comes with the held-out evaluation).
Curves for the plots: ``qini_oracle``, ``policy_by_type``, ``difficulty_grid`` with ``true_p``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from training.data.world import read_world_meta
from training.evaluation import metrics
from training.evaluation.difficulty import DifficultyHoldout, curve_examples
from training.evaluation.evaluate import Evaluation, eligible_rewards, member_baskets
from training.evaluation.reward import RewardHoldout
from training.evaluation.scoring import reward_values, score_rewards
from training.simulate import truth
from training.simulate.generate.catalog import VOCABULARY  # the simulated program's

TRUTH_DIR = "truth"
TRUTH_FILES = ("member_traits.parquet", "offers.parquet", "assignments.parquet")


def truth_dir(world_dir: Path) -> Path:
    return Path(world_dir) / TRUTH_DIR


def available(world_dir: Path) -> bool:
    """Does this world carry the simulator's hidden truth (every file the oracle reads)?"""
    return all((truth_dir(world_dir) / name).is_file() for name in TRUTH_FILES)


def player_types(world_dir: Path) -> pd.DataFrame | None:
    """member_id -> player_type from the hidden traits (a segment for experiment reports on a
    simulated world), or None when the world has no truth."""
    path = truth_dir(world_dir) / "member_traits.parquet"
    if not path.is_file():
        return None
    types = pd.read_parquet(path, columns=["member_id", "player_type"])
    types["member_id"] = types["member_id"].astype(str)  # the product's ids are strings
    return types


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
                   pd.read_parquet(truth_dir(world_dir) / "member_traits.parquet")
                   .set_index("member_id"),
                   pd.read_parquet(world_dir / "rewards.parquet"),
                   pd.read_parquet(world_dir / "challenges.parquet"))

    def reward_response(self, member_ids: np.ndarray) -> dict[str, np.ndarray]:
        """True response matrices with one row per entry of ``member_ids`` (repeats allowed);
        columns follow the catalog (rewards.parquet) order."""
        uniq, inverse = np.unique(_member_ints(member_ids), return_inverse=True)
        out = truth.reward_response(self.traits.loc[uniq].reset_index(),
                                    self.members.loc[uniq].reset_index(),
                                    self.rewards, self.margin, self.window_days)
        return {k: np.asarray(v)[inverse] for k, v in out.items()}

    def completion(self, member_id: np.ndarray, challenge_id: np.ndarray,
                   target: np.ndarray) -> np.ndarray:
        """True P(complete) of each (member, template, target)."""
        return truth.completion_probability(self.traits.reset_index(), self.challenges,
                                            _member_ints(member_id), challenge_id, target)

    def logged_truth(self, name: str, key: str, decision_ids: pd.Series,
                     column: str) -> np.ndarray:
        """A truth column of logged decisions (``offers``/``assignments``), by the decision ids
        the simulator gave them in its import files (``o<offer_id>``, ``a<assignment_id>``)."""
        table = pd.read_parquet(truth_dir(self.world_dir) / f"{name}.parquet",
                                columns=[key, column])
        ids = decision_ids.astype(str).str[1:].astype(np.int64)
        return table.set_index(key).loc[ids, column].to_numpy()


def _member_ints(member_ids: np.ndarray | pd.Series) -> np.ndarray:
    """The simulator's integer ids of members the product knows by their string ids."""
    return np.asarray(member_ids).astype(str).astype(np.int64)


def policy_value(score: np.ndarray, true_value: np.ndarray, eligible: np.ndarray) -> float:
    """Mean true incremental value of each member's top eligible reward by ``score``."""
    choice = np.argmax(np.where(eligible, score, -np.inf), axis=1)
    return float(true_value[np.arange(len(true_value)), choice].mean())


def _check_catalog_order(world: WorldTruth, items: pd.DataFrame) -> None:
    """Truth matrices follow rewards.parquet; evaluation matrices follow the reward features."""
    if not np.array_equal(world.rewards["reward_id"].astype(str).to_numpy(),
                          items["reward_id"].astype(str).to_numpy()):
        raise ValueError("reward features and the world's catalog list rewards in a different "
                         "order: rebuild the features (`rewards features`)")


def add_reward_figures(ev: Evaluation, model: lgb.LGBMClassifier, service_features: list[str],
                       world_dir: Path, value_params: dict[str, float]) -> None:
    """Add the reward model's oracle figures and curves to ``ev`` (from ``evaluate_reward``)."""
    hold: RewardHoldout = ev.holdout
    world = WorldTruth.load(world_dir)
    _check_catalog_order(world, hold.items)
    rows = hold.rows
    treated = rows["treated"].to_numpy(dtype=bool)
    true_p_redeem = world.logged_truth("offers", "offer_id", rows["decision_id"], "p_redeem")
    if "propensity.auc" in ev.metrics:  # else one class only: no AUC to compare with
        ev.metrics["propensity.oracle_auc"] = metrics.auc(
            rows["redeemed"].to_numpy()[treated], true_p_redeem[treated])

    tr = world.reward_response(rows["member_id"].to_numpy())
    r_idx = np.arange(len(rows))
    true_uplift = (tr["p_convert_offer"][r_idx, hold.pair]
                   - tr["p_convert_control"][r_idx, hold.pair])
    converted, t = rows["converted"].to_numpy(), treated.astype(float)
    if "uplift.qini" in ev.metrics:  # else no control group: nothing to compare with
        ev.metrics["uplift.oracle_qini"] = metrics.qini_auc_score(converted, t, true_uplift)
        ev.curves["qini_oracle"] = metrics.qini_curve(converted, t, true_uplift)

    policy_values(ev, model, service_features, world, hold, value_params)
    _true_ope_value(ev, world, hold)


def policy_values(ev: Evaluation, model: lgb.LGBMClassifier, service_features: list[str],
                  world: WorldTruth, hold: RewardHoldout, value_params: dict[str, float]) -> None:
    """The true value of the model's greedy policy on the evaluation members (and of the
    propensity-only, oracle and random policies) into ``ev.metrics["policy.value_*"]``."""
    snapshot = hold.policy_members
    ids = snapshot["member_id"].to_numpy()
    scores = score_rewards(model, snapshot, hold.items, service_features, VOCABULARY)
    eligible = eligible_rewards(snapshot, hold.items)
    cost = hold.items["reward_cost"].to_numpy(dtype=np.float64)
    value_hat = reward_values(scores, member_baskets(snapshot, value_params), cost,
                              float(value_params["margin"]))
    true_value = world.reward_response(ids)["incremental_value"]
    neg = np.where(eligible, 0.0, -np.inf)
    ev.metrics["policy.value_model"] = policy_value(value_hat, true_value, eligible)
    ev.metrics["policy.value_propensity_only"] = policy_value(scores.propensity, true_value,
                                                              eligible)
    ev.metrics["policy.value_oracle"] = policy_value(true_value, true_value, eligible)
    ev.metrics["policy.value_random"] = float(
        (np.where(eligible, true_value, 0).sum(axis=1) / eligible.sum(axis=1)).mean())
    ev.metrics["policy.members"] = float(len(ids))
    r = np.arange(len(ids))
    model_choice = np.argmax(value_hat + neg, axis=1)
    oracle_choice = np.argmax(true_value + neg, axis=1)
    ev.curves["policy_by_type"] = pd.DataFrame({
        "player_type": world.traits.loc[_member_ints(ids), "player_type"].to_numpy(),
        "model": true_value[r, model_choice], "oracle": true_value[r, oracle_choice],
    }).groupby("player_type").mean()


def _true_ope_value(ev: Evaluation, world: WorldTruth, hold: RewardHoldout) -> None:
    """The true expected profit per decision of the model policy's choices on the OPE rows."""
    logged = hold.logged
    tr = world.reward_response(logged.rows["member_id"].to_numpy())
    r, c = np.arange(len(logged.rows)), logged.choice
    value = (logged.margin * tr["basket_value"][r, c] * tr["p_convert_offer"][r, c]
             - tr["p_redeem"][r, c] * logged.cost[c])
    ev.metrics["ope.true_value"] = float(value.mean())


def add_difficulty_figures(ev: Evaluation, world_dir: Path, flow_zone: float) -> None:
    """Add the difficulty model's oracle figures and its true curves to ``ev``."""
    hold: DifficultyHoldout = ev.holdout
    world = WorldTruth.load(world_dir)
    rows = hold.rows
    if "difficulty.auc" in ev.metrics:  # else one class only: no AUC to compare with
        ev.metrics["difficulty.oracle_auc"] = metrics.auc(
            rows["completed"].to_numpy(),
            world.logged_truth("assignments", "assignment_id", rows["decision_id"],
                               "p_complete"))
    chosen = hold.chosen
    true_p = world.completion(chosen["member_id"].to_numpy(), chosen["challenge_id"].to_numpy(),
                              chosen["target"].to_numpy())
    ev.metrics["difficulty.target_completion_gap"] = abs(float(true_p.mean()) - flow_zone)
    ev.metrics["difficulty.target_true_mean"] = float(true_p.mean())
    ev.metrics["difficulty.target_mean_abs_error"] = float(np.abs(true_p - flow_zone).mean())

    grid = hold.grid.copy()
    grid["player_type"] = world.traits.loc[_member_ints(grid["member_id"]),
                                           "player_type"].to_numpy()
    examples = curve_examples(grid, "player_type")
    examples["true_p"] = world.completion(examples["member_id"].to_numpy(),
                                          examples["challenge_id"].to_numpy(),
                                          examples["target"].to_numpy())
    ev.curves["difficulty_grid"] = examples
