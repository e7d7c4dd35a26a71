"""Point-in-time correctness of member features on tiny hand-built logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.contract.vocabulary import MISSING_RATE, NEVER_DAYS, Vocabulary
from serving.decisioning.catalog import challenge_item_features, reward_item_features
from training.data.features import World, compute_member_features, member_feature_names

START = pd.Timestamp("2026-01-01", tz="UTC")
#: This little program's own vocabulary (the catalog's, as the feature pipeline receives it).
VOCAB = Vocabulary(tiers=("Bronze", "Silver", "Gold"), regions=("north", "south", "east"),
                   categories=("fashion", "books"), reward_types=("discount", "free_shipping"),
                   challenge_kinds=("purchase_streak", "review"))


def ts(day: float, hour: float = 0.0) -> pd.Timestamp:
    return START + pd.Timedelta(days=day, hours=hour)


def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


EVENT_COLS = ["member_id", "event_timestamp", "event_type", "amount", "category", "points",
              "reward_id"]
OFFER_COLS = ["offer_id", "member_id", "event_timestamp", "reward_id", "treated", "propensity",
              "redeemed", "converted", "spend", "outcome_timestamp"]
ASSIGN_COLS = ["assignment_id", "member_id", "event_timestamp", "challenge_id", "target",
               "propensity", "completed", "outcome_timestamp"]


@pytest.fixture
def world() -> World:
    """Member 1 is active with a gap; member 2 has no events at all; member 3 has offers only."""
    members = pd.DataFrame({
        "member_id": ["1", "2", "3"],
        "joined_at": [ts(-10), ts(-100), ts(0)],
        "tier": ["Silver", "Bronze", "Gold"],
        "region": ["north", "south", "east"],
        "consent": [True, False, True],
    })
    rewards = pd.DataFrame({
        "reward_id": ["R01", "R02"], "name": ["10% off", "free ship"],
        "reward_type": ["discount", "free_shipping"], "category": ["fashion", "any"],
        "cost": [10.0, 2.0], "min_tier": ["Bronze", "Silver"], "event_timestamp": [ts(-1)] * 2,
    })
    challenges = pd.DataFrame({
        "challenge_id": ["C01"], "name": ["buy N"], "kind": ["purchase_streak"],
        "unit": ["purchases"], "duration_days": [14], "min_target": [2.0], "max_target": [6.0],
        "target_step": [1.0], "points": [100], "event_timestamp": [ts(-1)],
    })
    events = frame([
        # member 1: visits day 0, 1, 2 (streak), gap on 3-4, purchase on day 5 at 10:00
        {"member_id": 1, "event_timestamp": ts(0, 8), "event_type": "visit", "points": 0},
        {"member_id": 1, "event_timestamp": ts(1, 9), "event_type": "visit", "points": 0},
        {"member_id": 1, "event_timestamp": ts(2, 23.99), "event_type": "visit", "points": 0},
        {"member_id": 1, "event_timestamp": ts(2, 12), "event_type": "purchase", "amount": 40.0,
         "category": "fashion", "points": 40},
        {"member_id": 1, "event_timestamp": ts(5, 10), "event_type": "purchase", "amount": 20.0,
         "category": "books", "points": 20},
        {"member_id": 1, "event_timestamp": ts(5, 11), "event_type": "review", "points": 5},
        {"member_id": 1, "event_timestamp": ts(6, 0), "event_type": "redemption",
         "points": -30, "reward_id": "R01"},
    ], EVENT_COLS).fillna({"amount": 0.0, "category": "", "reward_id": ""})
    offers = frame([
        # known at day 3 00:00 exactly: not strictly before the day-3 row, so day 4 on
        {"offer_id": 1, "member_id": 1, "event_timestamp": ts(1, 5), "reward_id": "R01",
         "treated": True, "propensity": 0.4, "redeemed": 1, "converted": 1, "spend": 40.0,
         "outcome_timestamp": ts(3)},
        {"offer_id": 2, "member_id": 3, "event_timestamp": ts(0, 1), "reward_id": "R02",
         "treated": True, "propensity": 0.4, "redeemed": 0, "converted": 1, "spend": 5.0,
         "outcome_timestamp": ts(2, 1)},
        {"offer_id": 3, "member_id": 3, "event_timestamp": ts(1, 1), "reward_id": "",
         "treated": False, "propensity": 0.2, "redeemed": 0, "converted": 0, "spend": 0.0,
         "outcome_timestamp": ts(3, 1)},
        # outcome only after the window: never visible
        {"offer_id": 4, "member_id": 3, "event_timestamp": ts(6), "reward_id": "R01",
         "treated": True, "propensity": 0.4, "redeemed": 1, "converted": 1, "spend": 9.0,
         "outcome_timestamp": ts(20)},
    ], OFFER_COLS)
    assignments = frame([
        {"assignment_id": 1, "member_id": 1, "event_timestamp": ts(0), "challenge_id": "C01",
         "target": 4.0, "propensity": 0.2, "completed": 1, "outcome_timestamp": ts(4, 12)},
        {"assignment_id": 2, "member_id": 1, "event_timestamp": ts(1), "challenge_id": "C01",
         "target": 6.0, "propensity": 0.2, "completed": 0, "outcome_timestamp": ts(5)},
    ], ASSIGN_COLS)
    for table in (events, offers, assignments):  # member ids are the program's strings
        table["member_id"] = table["member_id"].astype(str)
    return World(START, 7, members, rewards, challenges, events, offers, assignments, VOCAB)


@pytest.fixture
def feats(world: World) -> pd.DataFrame:
    out = compute_member_features(world)
    return out.set_index(["member_id", out["event_timestamp"].dt.day - 1])


def at(feats: pd.DataFrame, member: int, day: int, name: str) -> float:
    return float(feats.loc[(str(member), day), name])


def test_shape_and_columns(feats: pd.DataFrame) -> None:
    assert list(feats.columns) == ["event_timestamp", *member_feature_names(VOCAB)]
    assert len(feats) == 3 * 8  # days 0..7 inclusive for each member
    assert str(feats["event_timestamp"].dtype) == "datetime64[us, UTC]"


def test_events_on_the_feature_day_are_not_visible(feats: pd.DataFrame) -> None:
    # The day-0 row sees nothing, although member 1 visited at 08:00 on day 0.
    assert at(feats, 1, 0, "visits_7d") == 0
    assert at(feats, 1, 1, "visits_7d") == 1
    # The 23:59 visit on day 2 is visible only from the day-3 row.
    assert at(feats, 1, 2, "visits_7d") == 2
    assert at(feats, 1, 3, "visits_7d") == 3
    # The day-5 purchase is not in the day-5 row.
    assert at(feats, 1, 5, "purchases_7d") == 1
    assert at(feats, 1, 6, "purchases_7d") == 2
    assert at(feats, 1, 6, "spend_30d") == pytest.approx(60.0)
    assert at(feats, 1, 6, "avg_basket_90d") == pytest.approx(30.0)


def test_rolling_window_drops_old_events(world: World) -> None:
    longer = World(world.start, 12, world.members, world.rewards, world.challenges,
                   world.events, world.offers, world.assignments, VOCAB)
    f = compute_member_features(longer).set_index(["member_id", "event_timestamp"])
    # visits on days 0, 1, 2; the 7-day window at day 9 covers days 2..8
    assert f.loc[("1", ts(9)), "visits_7d"] == 1
    assert f.loc[("1", ts(10)), "visits_7d"] == 0
    assert f.loc[("1", ts(10)), "visits_30d"] == 3


def test_recency_streak_and_gaps(feats: pd.DataFrame) -> None:
    assert at(feats, 1, 0, "days_since_last_visit") == NEVER_DAYS
    assert at(feats, 1, 3, "days_since_last_visit") == 1
    assert at(feats, 1, 5, "days_since_last_visit") == 3  # gap on days 3 and 4
    assert at(feats, 1, 3, "current_streak") == 3  # active days 0, 1, 2
    assert at(feats, 1, 4, "current_streak") == 0
    assert at(feats, 1, 6, "current_streak") == 1  # purchase on day 5
    assert at(feats, 1, 6, "days_since_last_purchase") == 1
    assert at(feats, 1, 3, "active_days_30d") == 3


def test_member_without_events(feats: pd.DataFrame) -> None:
    row = feats.loc[("2", 7)]
    assert row["visits_90d"] == 0 and row["spend_90d"] == 0 and row["points_balance"] == 0
    assert row["days_since_last_visit"] == NEVER_DAYS
    assert row["redemption_rate"] == MISSING_RATE
    assert row["challenge_completion_rate"] == MISSING_RATE
    assert row["tier_rank"] == 0 and row["consent"] == 0
    assert row["tenure_days"] == 107  # signed up 100 days before start; row at day 7


def test_category_shares_and_points(feats: pd.DataFrame) -> None:
    assert at(feats, 1, 6, "share_fashion_90d") == pytest.approx(0.5)
    assert at(feats, 1, 6, "share_books_90d") == pytest.approx(0.5)
    assert at(feats, 1, 6, "categories_90d") == 2
    assert at(feats, 1, 6, "points_balance") == 65  # 40 + 20 + 5; redemption at day 6 00:00
    assert at(feats, 1, 7, "points_balance") == 35


def test_offer_outcomes_visible_only_once_known(feats: pd.DataFrame) -> None:
    assert at(feats, 1, 3, "offers_received") == 0  # outcome at day 3 00:00 is not < day 3
    assert at(feats, 1, 4, "offers_received") == 1
    assert at(feats, 1, 4, "redeem_rate_discount") == 1.0
    assert at(feats, 1, 4, "redeem_rate_free_shipping") == MISSING_RATE
    assert at(feats, 3, 2, "offers_received") == 0
    assert at(feats, 3, 3, "redeem_rate_free_shipping") == 0.0
    assert at(feats, 3, 3, "conversion_rate_offered") == 1.0
    assert at(feats, 3, 3, "conversion_rate_holdout") == MISSING_RATE  # known at day 3 01:00
    assert at(feats, 3, 4, "conversion_rate_holdout") == 0.0
    assert at(feats, 3, 7, "offers_received") == 1  # the day-20 outcome never shows


def test_challenge_history(feats: pd.DataFrame) -> None:
    assert at(feats, 1, 4, "challenges_assigned") == 0  # completed at day 4 12:00
    assert at(feats, 1, 5, "challenge_completion_rate") == 1.0
    assert at(feats, 1, 5, "mean_completed_target_ratio") == pytest.approx(0.5)  # (4-2)/(6-2)
    assert at(feats, 1, 6, "challenge_completion_rate") == 0.5
    assert at(feats, 1, 6, "completion_rate_purchase_streak") == 0.5
    assert at(feats, 1, 6, "completion_rate_review") == MISSING_RATE


def test_chunked_equals_whole(world: World) -> None:
    whole = compute_member_features(world)
    parts = pd.concat([compute_member_features(world, world.members.iloc[[i]]) for i in range(3)])
    pd.testing.assert_frame_equal(whole.reset_index(drop=True), parts.reset_index(drop=True))


def test_item_features(world: World) -> None:
    rewards = reward_item_features(world.rewards, VOCAB)
    assert rewards["reward_category_code"].tolist() == [0.0, -1.0]  # 'any' -> -1
    assert rewards["reward_min_tier_rank"].tolist() == [0.0, 1.0]
    challenges = challenge_item_features(world.challenges, VOCAB)
    assert challenges["challenge_kind_code"].tolist() == [0.0]
    assert np.isclose(challenges["challenge_max_target"].iloc[0], 6.0)


def test_feature_names_follow_the_catalog_vocabulary() -> None:
    names = member_feature_names(VOCAB)
    assert {"share_fashion_90d", "share_books_90d", "redeem_rate_free_shipping",
            "offers_discount", "completion_rate_review"} <= set(names)
    assert not [n for n in names if "electronics" in n or "vip_experience" in n]
    other = member_feature_names(VOCAB.appended("category", ["pets"]))
    assert other[:len(names)] != names or "share_pets_90d" in other


def test_observed_days_counts_history_we_have(world: World) -> None:
    late = world.members.assign(joined_at=[ts(-10), ts(-100), ts(3)])
    f = compute_member_features(World(world.start, 7, late, world.rewards, world.challenges,
                                      world.events, world.offers, world.assignments, VOCAB))
    f = f.set_index(["member_id", f["event_timestamp"].dt.day - 1])
    assert f.loc[("1", 5), "observed_days"] == 5  # world started 5 days ago
    assert f.loc[("3", 5), "observed_days"] == 2  # joined on day 3
    assert f.loc[("3", 2), "observed_days"] == 0  # not a member yet


def test_rates_divide_by_observed_history(feats: pd.DataFrame) -> None:
    assert at(feats, 1, 6, "visits_per_day_90d") == pytest.approx(3 / 6)
    assert at(feats, 1, 6, "spend_per_day_90d") == pytest.approx(60 / 6)
    assert at(feats, 1, 0, "visits_per_day_90d") == 0  # no history yet: no division by zero


def test_habit_features(feats: pd.DataFrame) -> None:
    # member 1, row of day 6: active on days 0, 1, 2 and 5 (visits 0-2, purchases 2 and 5)
    assert at(feats, 1, 6, "active_day_share_90d") == pytest.approx(4 / 6)
    assert at(feats, 1, 6, "visits_per_active_day_90d") == pytest.approx(3 / 4)
    assert at(feats, 1, 6, "repeat_active_share_90d") == pytest.approx(2 / 4)  # days 1 and 2
    assert at(feats, 1, 5, "reviews_per_visit_90d") == 0  # the review is on day 5
    assert at(feats, 1, 6, "reviews_per_visit_90d") == pytest.approx(1 / 3)
