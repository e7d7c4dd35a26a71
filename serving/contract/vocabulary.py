"""Vocabularies shared by the simulator, the feature pipeline, training and serving.

They live in ``serving`` because serving is the runtime contract: training may import serving,
never the reverse. Codes are list positions, so only ever append to these lists.
"""

from __future__ import annotations

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

#: Value used for a rate with no history (the trees learn to split it off).
MISSING_RATE = -1.0
#: Recency reported for "never happened", in days.
NEVER_DAYS = 365.0


def code(vocabulary: tuple[str, ...], value: str) -> int:
    """Integer code of a vocabulary value; -1 for anything unknown (e.g. category 'any')."""
    try:
        return vocabulary.index(value)
    except ValueError:
        return -1
