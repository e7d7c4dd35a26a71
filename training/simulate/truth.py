"""The hidden ground-truth model of the simulated world, as pure vectorized functions.

The simulator draws every outcome from these functions, and evaluation calls them for any
(member, reward) or (member, template, target) pair to score oracle policies. Keeping one copy
of the equations here is what makes "oracle" mean the same thing in both places.
docs/simulator.md explains the model and why each term exists.

Every effect depends only on things the feature pipeline can observe a noisy view of:
activity (visits), price sensitivity (basket amounts, purchases per visit), player type
(reviews, referrals, category breadth, streaks, challenge completions), category preferences
(purchase shares), skill (challenge completions) and tier (a member column).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.simulate.generate.catalog import (
    ANY_CATEGORY,
    CATEGORIES,
    CHALLENGE_KINDS,
    PLAYER_TYPES,
    REWARD_TYPES,
    TIERS,
    codes_of,
)

PREF_COLUMNS: tuple[str, ...] = tuple(f"pref_{category}" for category in CATEGORIES)
REFERENCE_WINDOW_DAYS = 7  # p_convert_control is calibrated as a weekly probability

# --- Baseline purchasing (what happens without an offer) -------------------------------------
ACTIVITY_REF = 0.3  # median visits/day; log(activity / ACTIVITY_REF) is the centred activity
BASE_LOGIT = -0.45
BASE_ACTIVITY_SLOPE = 0.9  # more visits -> more weeks with a purchase
BASE_PRICE_SLOPE = 0.8  # price-sensitive members buy on more of their visits (small baskets)
BASE_TIER_LOGIT = np.array([0.0, 0.15, 0.3, 0.45])  # Bronze..Platinum

UNIT_SPEND = 220.0  # mean purchase amount of a member with price_sensitivity 0, Bronze
SPEND_PRICE_SLOPE = 1.7  # amount *= exp(-1.7 * price_sensitivity): strongly visible in baskets
TIER_SPEND = np.array([1.0, 1.15, 1.3, 1.5])
PURCHASE_AMOUNT_SIGMA = 0.45  # lognormal noise of one purchase amount (mean-preserving)
EXTRA_PURCHASES_PER_ACTIVITY = 0.8  # extra purchases in a converted week per visit/day

# --- Offer response --------------------------------------------------------------------------
# Logit lift of an offer by (player type, reward type). Rows: PLAYER_TYPES; columns: REWARD_TYPES
# (discount, free_product, free_shipping, early_access, vip_experience, charity, points_mult).
TYPE_AFFINITY = np.array(
    [
        [0.40, 1.10, 0.35, 0.50, 1.00, 0.10, 0.80],  # achiever: tangible prizes and status
        [0.35, 1.00, 0.40, 1.30, 0.60, 0.30, 0.20],  # explorer: novelty
        [0.25, 0.50, 0.30, 0.45, 1.40, 1.30, 0.10],  # socializer: experiences and giving
        [0.40, 0.40, 0.30, 0.80, 0.70, 0.00, 1.40],  # competitor: multipliers, being first
    ]
)
# Money-like rewards add MONEY_SLOPE * (price_sensitivity - PRICE_PIVOT): loved by bargain
# hunters, slightly negative for price-insensitive members (it cheapens the brand).
MONEY_SLOPE = np.array([2.2, 0.8, 1.6, 0.0, 0.0, 0.0, 0.3])
PRICE_PIVOT = 0.4
CATEGORY_BONUS = 2.0  # logit per unit of (pref[category] - 1/8); 0 for category 'any'
COST_APPEAL = 0.15  # within a type, pricier rewards are a little more attractive
COST_REF = 5.0

# P(redeem | converted, offered): coupons are used by anyone who buys anyway (high base for
# discount / free shipping, which makes them costly per unit of uplift); experiences and
# donations take effort. Members redeem more of what they like.
REDEEM_BASE_LOGIT = np.array([2.2, 0.6, 2.2, -0.8, -1.2, -0.8, -0.2])
REDEEM_AFFINITY_SLOPE = 0.8
REDEEM_MONEY_SLOPE = 1.5
REDEEM_CATEGORY_BONUS = 1.5

# --- Challenge completion --------------------------------------------------------------------
# Per kind (CHALLENGE_KINDS order): intercept at the middle target, steepness in the
# standardized target (z in [-1, 1] over the allowed range), and activity slope.
KIND_INTERCEPT = np.array([0.7, 0.7, 0.8, 0.6, 0.4, 1.1, 0.7, 0.6])
KIND_TARGET_SLOPE = np.array([2.2, 2.1, 2.2, 2.0, 2.0, 2.3, 2.1, 2.0])
KIND_ACTIVITY_SLOPE = np.array([0.7, 0.5, 0.9, 0.3, 0.2, 0.1, 0.5, 0.3])
SKILL_SLOPE = 0.8  # per standard deviation of skill
SKILL_MEAN, SKILL_SD = 0.5, 0.2
# Rows: PLAYER_TYPES; columns: CHALLENGE_KINDS (purchase_streak, spend_target, visit_count,
# review, referral, profile_completion, explore_category, community_mission).
KIND_AFFINITY = np.array(
    [
        [0.8, 0.7, 0.7, -0.3, -0.4, 0.8, -0.2, 0.0],  # achiever
        [-0.3, 0.0, 0.0, 0.2, -0.2, 0.2, 1.0, 0.2],  # explorer
        [-0.4, -0.3, 0.0, 1.0, 1.0, 0.0, 0.1, 1.0],  # socializer
        [0.9, 0.6, 0.6, -0.4, -0.3, -0.2, -0.3, 0.6],  # competitor
    ]
)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def logit(p: np.ndarray) -> np.ndarray:
    """Inverse of `sigmoid`, for probabilities strictly inside (0, 1)."""
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class MemberArrays:
    """Hidden traits and tier as aligned arrays (one row per member, sorted by member_id)."""

    member_id: np.ndarray  # int64
    player_type: np.ndarray  # int codes into PLAYER_TYPES
    price_sensitivity: np.ndarray
    activity: np.ndarray
    skill: np.ndarray
    pref: np.ndarray  # (n, len(CATEGORIES)), rows sum to 1
    tier: np.ndarray  # int codes into TIERS

    @classmethod
    def from_frames(cls, traits: pd.DataFrame, members: pd.DataFrame | None = None) -> MemberArrays:
        """Align `traits` and `members` by member_id (both sorted); tier comes from `members`.

        Without `members`, tier is read from `traits` if present, else marked unknown (-1):
        only challenge completion, which does not depend on tier, works without it.
        """
        traits = traits.sort_values("member_id", kind="stable")
        if members is not None:
            members = members.sort_values("member_id", kind="stable")
            if not np.array_equal(members["member_id"].to_numpy(), traits["member_id"].to_numpy()):
                raise ValueError("traits and members must contain the same member_id values")
            tier = codes_of(members["tier"], TIERS, "tier")
        elif "tier" in traits:
            tier = codes_of(traits["tier"], TIERS, "tier")
        else:
            tier = np.full(len(traits), -1, dtype=np.int16)
        return cls(
            member_id=traits["member_id"].to_numpy(dtype=np.int64),
            player_type=codes_of(traits["player_type"], PLAYER_TYPES, "player_type"),
            price_sensitivity=traits["price_sensitivity"].to_numpy(dtype=np.float64),
            activity=traits["activity"].to_numpy(dtype=np.float64),
            skill=traits["skill"].to_numpy(dtype=np.float64),
            pref=traits[list(PREF_COLUMNS)].to_numpy(dtype=np.float64),
            tier=tier,
        )

    def subset(self, rows: slice | np.ndarray) -> MemberArrays:
        """The same members restricted to `rows` (a slice or positional index)."""
        return MemberArrays(
            member_id=self.member_id[rows],
            player_type=self.player_type[rows],
            price_sensitivity=self.price_sensitivity[rows],
            activity=self.activity[rows],
            skill=self.skill[rows],
            pref=self.pref[rows],
            tier=self.tier[rows],
        )

    def __len__(self) -> int:
        return int(self.member_id.size)


@dataclass(frozen=True)
class RewardArrays:
    """Catalog columns the response model needs, as arrays in catalog order."""

    reward_type: np.ndarray  # codes into REWARD_TYPES
    category: np.ndarray  # codes into CATEGORIES, -1 for 'any'
    cost: np.ndarray
    min_tier: np.ndarray  # codes into TIERS

    @classmethod
    def from_frame(cls, rewards: pd.DataFrame) -> RewardArrays:
        category = rewards["category"].to_numpy(dtype=object)
        is_any = category == ANY_CATEGORY
        codes = np.full(category.size, -1, dtype=np.int16)
        codes[~is_any] = codes_of(category[~is_any], CATEGORIES, "category")
        return cls(
            reward_type=codes_of(rewards["reward_type"], REWARD_TYPES, "reward_type"),
            category=codes,
            cost=rewards["cost"].to_numpy(dtype=np.float64),
            min_tier=codes_of(rewards["min_tier"], TIERS, "min_tier"),
        )


# --- Member-level building blocks (shared with the event generator) --------------------------
def window_conversion(weekly: np.ndarray, window_days: int) -> np.ndarray:
    """P(at least one purchase in `window_days`) from a weekly probability (constant hazard)."""
    return 1.0 - (1.0 - weekly) ** (window_days / REFERENCE_WINDOW_DAYS)


def baseline_conversion(m: MemberArrays, window_days: int = REFERENCE_WINDOW_DAYS) -> np.ndarray:
    """P(purchase within the window | no offer): activity, price sensitivity and tier."""
    weekly = sigmoid(
        BASE_LOGIT
        + BASE_ACTIVITY_SLOPE * np.log(m.activity / ACTIVITY_REF)
        + BASE_PRICE_SLOPE * (m.price_sensitivity - 0.5)
        + BASE_TIER_LOGIT[m.tier]
    )
    return window_conversion(weekly, window_days)


def unit_spend(m: MemberArrays) -> np.ndarray:
    """Mean amount of one purchase: falls steeply with price sensitivity, rises with tier."""
    return UNIT_SPEND * np.exp(-SPEND_PRICE_SLOPE * m.price_sensitivity) * TIER_SPEND[m.tier]


def extra_purchases(m: MemberArrays, window_days: int = REFERENCE_WINDOW_DAYS) -> np.ndarray:
    """Poisson mean of purchases beyond the first in a converted window."""
    return EXTRA_PURCHASES_PER_ACTIVITY * m.activity * window_days / REFERENCE_WINDOW_DAYS


def basket_value(m: MemberArrays, window_days: int = REFERENCE_WINDOW_DAYS) -> np.ndarray:
    """Expected spend in a window given conversion: (1 + extra purchases) * unit spend."""
    return unit_spend(m) * (1.0 + extra_purchases(m, window_days))


def offer_effect(m: MemberArrays, r: RewardArrays) -> np.ndarray:
    """Logit lift of offering each reward to each member, shape (n_members, n_rewards)."""
    money = MONEY_SLOPE[r.reward_type][None, :] * (m.price_sensitivity[:, None] - PRICE_PIVOT)
    return (
        TYPE_AFFINITY[m.player_type][:, r.reward_type]
        + money
        + CATEGORY_BONUS * _category_match(m, r)
        + COST_APPEAL * np.log(r.cost / COST_REF)[None, :]
    )


def redeem_given_convert(m: MemberArrays, r: RewardArrays) -> np.ndarray:
    """P(redeem | offered and converted), shape (n_members, n_rewards)."""
    money = MONEY_SLOPE[r.reward_type][None, :] * (m.price_sensitivity[:, None] - PRICE_PIVOT)
    return sigmoid(
        REDEEM_BASE_LOGIT[r.reward_type][None, :]
        + REDEEM_AFFINITY_SLOPE * TYPE_AFFINITY[m.player_type][:, r.reward_type]
        + REDEEM_MONEY_SLOPE * money
        + REDEEM_CATEGORY_BONUS * _category_match(m, r)
    )


def _category_match(m: MemberArrays, r: RewardArrays) -> np.ndarray:
    """pref[member, reward category] - 1/8 (negative for disliked categories), 0 for 'any'."""
    column = np.where(r.category >= 0, r.category, 0)
    match = m.pref[:, column] - 1.0 / len(CATEGORIES)
    return np.where(r.category[None, :] >= 0, match, 0.0)


def response_arrays(
    m: MemberArrays, r: RewardArrays, margin: float, window_days: int = REFERENCE_WINDOW_DAYS
) -> dict[str, np.ndarray]:
    """Array-level core of `reward_response` (used by the simulator chunk by chunk)."""
    if np.any(m.tier < 0):
        raise ValueError("reward response needs every member's tier (pass members)")
    n_members, n_rewards = len(m), r.cost.size
    p_control = baseline_conversion(m, window_days)
    p_offer = sigmoid(logit(p_control)[:, None] + offer_effect(m, r))
    p_redeem = p_offer * redeem_given_convert(m, r)
    basket = np.broadcast_to(basket_value(m, window_days)[:, None], (n_members, n_rewards))
    control = np.broadcast_to(p_control[:, None], (n_members, n_rewards))
    incremental = margin * basket * (p_offer - control) - p_redeem * r.cost[None, :]
    return {
        "p_redeem": p_redeem,
        "p_convert_offer": p_offer,
        "p_convert_control": control,
        "basket_value": basket,
        "incremental_value": incremental,
        "eligible": m.tier[:, None] >= r.min_tier[None, :],
    }


def reward_response(
    traits: pd.DataFrame,
    members: pd.DataFrame,
    rewards: pd.DataFrame,
    margin: float,
    window_days: int = REFERENCE_WINDOW_DAYS,
) -> dict[str, np.ndarray]:
    """True response of every member to every reward, arrays of shape (n_members, n_rewards).

    Rows follow member_id order (traits and members are aligned by member_id), columns follow
    the row order of `rewards`. Keys: `p_redeem`, `p_convert_offer`, `p_convert_control`
    (a read-only broadcast of the per-member control probability), `basket_value` (expected
    spend in the window given conversion, also broadcast), `incremental_value`
    (= margin * basket_value * (p_convert_offer - p_convert_control) - p_redeem * cost) and
    `eligible` (tier >= min_tier). `window_days` is the world's attribution window
    (world.json `attribution_window_days`; 7 by default).
    """
    return response_arrays(
        MemberArrays.from_frames(traits, members), RewardArrays.from_frame(rewards), margin,
        window_days,
    )


# --- Challenges ------------------------------------------------------------------------------
def standardized_target(
    target: np.ndarray, min_target: np.ndarray, max_target: np.ndarray
) -> np.ndarray:
    """Target mapped to [-1, 1] over the template's allowed range (easiest -> hardest)."""
    return 2.0 * (target - min_target) / (max_target - min_target) - 1.0


def completion_arrays(
    m: MemberArrays,
    member_rows: np.ndarray,
    kind: np.ndarray,
    z_target: np.ndarray,
) -> np.ndarray:
    """Array-level core of `completion_probability`: rows index into `m`, kind codes, z."""
    skill_z = (m.skill[member_rows] - SKILL_MEAN) / SKILL_SD
    log_activity = np.log(m.activity[member_rows] / ACTIVITY_REF)
    return sigmoid(
        KIND_INTERCEPT[kind]
        + SKILL_SLOPE * skill_z
        + KIND_AFFINITY[m.player_type[member_rows], kind]
        + KIND_ACTIVITY_SLOPE[kind] * log_activity
        - KIND_TARGET_SLOPE[kind] * z_target
    )


def completion_probability(
    traits: pd.DataFrame,
    challenges: pd.DataFrame,
    member_id: np.ndarray,
    challenge_id: np.ndarray,
    target: np.ndarray,
) -> np.ndarray:
    """True P(complete) for each (member_id[i], challenge_id[i], target[i]) triple.

    The three arrays have equal length (broadcast scalars first). For a fixed member and
    template the probability is strictly decreasing in the target, also outside the allowed
    range. Use `catalog.challenge_targets(challenges)` to enumerate the allowed targets.
    """
    m = MemberArrays.from_frames(traits)
    member_id = np.asarray(member_id, dtype=np.int64)
    rows = np.searchsorted(m.member_id, member_id)
    rows_clipped = np.minimum(rows, len(m) - 1)
    if np.any(m.member_id[rows_clipped] != member_id):
        raise ValueError("member_id contains ids that are not in traits")
    template_rows = pd.Index(challenges["challenge_id"]).get_indexer(
        np.asarray(challenge_id, dtype=object)
    )
    if np.any(template_rows < 0):
        unknown = sorted(set(np.asarray(challenge_id, dtype=object)[template_rows < 0]))
        raise ValueError(f"unknown challenge_id(s) {unknown[:5]}")
    kind = codes_of(challenges["kind"], CHALLENGE_KINDS, "kind")[template_rows]
    z = standardized_target(
        np.asarray(target, dtype=np.float64),
        challenges["min_target"].to_numpy(dtype=np.float64)[template_rows],
        challenges["max_target"].to_numpy(dtype=np.float64)[template_rows],
    )
    return completion_arrays(m, rows_clipped, kind, z)
