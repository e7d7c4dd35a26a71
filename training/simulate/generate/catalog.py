"""Fixed vocabularies, the reward catalog and the challenge templates.

The catalog does not depend on the seed: worlds of different seeds share items, which keeps models
and reports comparable across runs. Costs are chosen so that the reward most likely to be redeemed
is often not the most profitable one (cheap free shipping ~2, discounts 5-15, VIP 40+).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from serving.contract.vocabulary import ANY_CATEGORY, Vocabulary  # noqa: F401 - re-exported

# The synthetic program's vocabularies. The product learns them like any program's: from the
# catalog the simulator imports (program/vocabulary.json), never from this module.
TIERS: tuple[str, ...] = ("Bronze", "Silver", "Gold", "Platinum")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
CATEGORIES: tuple[str, ...] = (
    "fashion", "electronics", "grocery", "beauty", "home", "sports", "books", "travel",
)
REWARD_TYPES: tuple[str, ...] = (
    "discount", "free_product", "free_shipping", "early_access", "vip_experience",
    "charity_donation", "points_multiplier",
)
CHALLENGE_KINDS: tuple[str, ...] = (
    "purchase_streak", "spend_target", "visit_count", "review", "referral",
    "profile_completion", "explore_category", "community_mission",
)
EVENT_TYPES: tuple[str, ...] = (
    "visit", "purchase", "review", "referral", "redemption", "challenge_completed",
)
VOCABULARY = Vocabulary(TIERS, REGIONS, CATEGORIES, REWARD_TYPES, CHALLENGE_KINDS)
PLAYER_TYPES: tuple[str, ...] = ("achiever", "explorer", "socializer", "competitor")

# (reward_id, name, reward_type, category, cost, min_tier)
_REWARDS: tuple[tuple[str, str, str, str, float, str], ...] = (
    ("R01", "10% off fashion", "discount", "fashion", 8.0, "Bronze"),
    ("R02", "10% off electronics", "discount", "electronics", 15.0, "Silver"),
    ("R03", "5 off groceries", "discount", "grocery", 5.0, "Bronze"),
    ("R04", "15% off beauty", "discount", "beauty", 7.0, "Bronze"),
    ("R05", "20% off home", "discount", "home", 12.0, "Silver"),
    ("R06", "10% off sports", "discount", "sports", 8.0, "Bronze"),
    ("R07", "Book voucher", "discount", "books", 5.0, "Bronze"),
    ("R08", "Travel discount", "discount", "travel", 15.0, "Gold"),
    ("R09", "Free pantry item", "free_product", "grocery", 3.0, "Bronze"),
    ("R10", "Free beauty sample", "free_product", "beauty", 4.0, "Bronze"),
    ("R11", "Free paperback", "free_product", "books", 8.0, "Silver"),
    ("R12", "Free fashion accessory", "free_product", "fashion", 12.0, "Silver"),
    ("R13", "Free gadget", "free_product", "electronics", 25.0, "Gold"),
    ("R14", "Free shipping", "free_shipping", "any", 2.0, "Bronze"),
    ("R15", "Free delivery on home goods", "free_shipping", "home", 3.0, "Bronze"),
    ("R16", "Free express shipping", "free_shipping", "any", 4.0, "Silver"),
    ("R17", "Early access: fashion drop", "early_access", "fashion", 1.0, "Silver"),
    ("R18", "Early access: electronics launch", "early_access", "electronics", 1.5, "Silver"),
    ("R19", "Early access: sports gear", "early_access", "sports", 1.0, "Bronze"),
    ("R20", "Early access: travel deals", "early_access", "travel", 2.0, "Gold"),
    ("R21", "Preview of new collections", "early_access", "any", 1.0, "Bronze"),
    ("R22", "VIP lounge evening", "vip_experience", "any", 40.0, "Gold"),
    ("R23", "Backstage event", "vip_experience", "any", 60.0, "Platinum"),
    ("R24", "Personal stylist session", "vip_experience", "fashion", 45.0, "Gold"),
    ("R25", "Travel VIP upgrade", "vip_experience", "travel", 80.0, "Platinum"),
    ("R26", "Donate to the food bank", "charity_donation", "any", 5.0, "Bronze"),
    ("R27", "Plant ten trees", "charity_donation", "any", 3.0, "Bronze"),
    ("R28", "Youth sports club donation", "charity_donation", "sports", 5.0, "Silver"),
    ("R29", "Library donation", "charity_donation", "books", 4.0, "Bronze"),
    ("R30", "Double points", "points_multiplier", "any", 4.0, "Bronze"),
    ("R31", "Triple points on electronics", "points_multiplier", "electronics", 6.0, "Silver"),
    ("R32", "Double points on groceries", "points_multiplier", "grocery", 2.0, "Bronze"),
    ("R33", "Triple points weekend", "points_multiplier", "any", 8.0, "Gold"),
    ("R34", "Double points on beauty", "points_multiplier", "beauty", 3.0, "Bronze"),
    ("R35", "5x points on travel", "points_multiplier", "travel", 10.0, "Platinum"),
)

# (challenge_id, name, kind, unit, duration_days, min_target, max_target, target_step, points)
_CHALLENGES: tuple[tuple[str, str, str, str, int, float, float, float, int], ...] = (
    ("C01", "Shopping streak", "purchase_streak", "days", 7, 2, 5, 1, 150),
    ("C02", "Fortnight streak", "purchase_streak", "days", 14, 3, 8, 1, 300),
    ("C03", "Spend sprint", "spend_target", "currency", 7, 50, 300, 50, 150),
    ("C04", "Big basket fortnight", "spend_target", "currency", 14, 200, 700, 100, 350),
    ("C05", "Regular visitor", "visit_count", "visits", 7, 3, 10, 1, 100),
    ("C06", "Loyal regular", "visit_count", "visits", 14, 8, 20, 2, 200),
    ("C07", "Review writer", "review", "reviews", 14, 1, 5, 1, 150),
    ("C08", "Critic's week", "review", "reviews", 7, 1, 4, 1, 100),
    ("C09", "Bring a friend", "referral", "referrals", 14, 1, 4, 1, 400),
    ("C10", "Complete your profile", "profile_completion", "fields", 7, 2, 8, 2, 80),
    ("C11", "Category explorer", "explore_category", "categories", 14, 2, 6, 1, 250),
    ("C12", "New horizons", "explore_category", "categories", 7, 2, 5, 1, 150),
    ("C13", "Community clean-up", "community_mission", "missions", 14, 1, 4, 1, 200),
    ("C14", "Team quest", "community_mission", "missions", 14, 2, 8, 2, 300),
)


def _catalog_timestamp(start: dt.date) -> pd.Timestamp:
    """Catalog load time: the day before the world starts, so Feast sees it at every event."""
    return pd.Timestamp(start - dt.timedelta(days=1), tz="UTC").as_unit("us")


def reward_catalog(start: dt.date = dt.date(2026, 1, 1)) -> pd.DataFrame:
    """The reward catalog with the columns of `rewards.parquet`."""
    frame = pd.DataFrame(
        list(_REWARDS), columns=["reward_id", "name", "reward_type", "category", "cost", "min_tier"]
    )
    frame["cost"] = frame["cost"].astype("float64")
    frame["event_timestamp"] = _catalog_timestamp(start)
    return frame


def challenge_catalog(start: dt.date = dt.date(2026, 1, 1)) -> pd.DataFrame:
    """The challenge templates with the columns of `challenges.parquet`."""
    frame = pd.DataFrame(
        list(_CHALLENGES),
        columns=[
            "challenge_id", "name", "kind", "unit", "duration_days",
            "min_target", "max_target", "target_step", "points",
        ],
    )
    frame["duration_days"] = frame["duration_days"].astype("int64")
    frame["points"] = frame["points"].astype("int64")
    for column in ("min_target", "max_target", "target_step"):
        frame[column] = frame[column].astype("float64")
    frame["event_timestamp"] = _catalog_timestamp(start)
    return frame


def allowed_targets(challenge: pd.Series | dict[str, float]) -> np.ndarray:
    """Allowed targets of one template: arange(min, max + step/2, step), as in the contract."""
    step = float(challenge["target_step"])
    low, high = float(challenge["min_target"]), float(challenge["max_target"])
    return np.arange(low, high + step / 2, step)


def challenge_targets(challenges: pd.DataFrame) -> pd.DataFrame:
    """Every allowed (challenge_id, target) pair, in template then target order.

    This is the action space of the challenge logging policy and of any difficulty policy.
    """
    ids: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for _, row in challenges.iterrows():
        values = allowed_targets(row)
        ids.append(np.full(values.size, row["challenge_id"], dtype=object))
        targets.append(values)
    return pd.DataFrame({"challenge_id": np.concatenate(ids), "target": np.concatenate(targets)})


def codes_of(values: pd.Series | np.ndarray, vocabulary: tuple[str, ...], name: str) -> np.ndarray:
    """Map labels to their position in `vocabulary`; raises naming `name` on unknown labels."""
    lookup = {label: code for code, label in enumerate(vocabulary)}
    series = pd.Series(np.asarray(values, dtype=object))
    codes = series.map(lookup)
    if codes.isna().any():
        bad = sorted(set(series[codes.isna()].astype(str)))
        raise ValueError(f"unknown {name}(s) {bad}; expected one of {list(vocabulary)}")
    return codes.to_numpy(dtype=np.int16)
