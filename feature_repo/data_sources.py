"""Parquet sources written by `rewards features build` under $REWARDS_FEAST_ROOT/features (the
data folder; a backfill retrain's own folder while it runs)."""

import os
from pathlib import Path

from feast import FileSource

FEATURES_DIR = (
    Path(os.environ.get("REWARDS_FEAST_ROOT") or os.environ.get(
        "REWARDS_DATA_DIR", Path(__file__).resolve().parent.parent / "data"))
    / "features"
)

member_daily_source = FileSource(
    name="member_daily_source",
    path=str(FEATURES_DIR / "member_features.parquet"),
    timestamp_field="event_timestamp",
    description="Point-in-time member features, one row per member per day.",
)

reward_source = FileSource(
    name="reward_source",
    path=str(FEATURES_DIR / "reward_features.parquet"),
    timestamp_field="event_timestamp",
)

challenge_source = FileSource(
    name="challenge_source",
    path=str(FEATURES_DIR / "challenge_features.parquet"),
    timestamp_field="event_timestamp",
)
