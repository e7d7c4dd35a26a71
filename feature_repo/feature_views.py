"""Feature views over the parquet sources.

The member view's columns are exactly what the feature pipeline computed
(`training.data.features.member_feature_names` under the vocabulary the features were built with,
`<features>/vocabulary.json`), so the two cannot drift apart.
"""

from datetime import timedelta

from data_sources import FEATURES_DIR, challenge_source, member_daily_source, reward_source
from entities import challenge, member, reward
from feast import FeatureView, Field
from feast.types import Float32

from training.data.features import built_vocabulary, member_feature_names

#: The catalog's vocabulary names the per-category, per-type and per-kind features.
MEMBER_FEATURES = member_feature_names(built_vocabulary(FEATURES_DIR))

# Rows are daily; a row older than two days means the daily job stopped, and stale features
# must not silently feed training.
member_daily = FeatureView(
    name="member_daily",
    entities=[member],
    ttl=timedelta(days=2),
    schema=[Field(name=name, dtype=Float32) for name in MEMBER_FEATURES],
    source=member_daily_source,
    online=True,
    description="Point-in-time engagement, redemption and challenge history per member.",
    tags={"owner": "rewards-reco", "grain": "member x day"},
)

# Catalog attributes change rarely; a long TTL keeps the catalog load valid for years.
reward_attributes = FeatureView(
    name="reward_attributes",
    entities=[reward],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="reward_type_code", dtype=Float32),
        Field(name="reward_category_code", dtype=Float32),  # -1 = any category
        Field(name="reward_cost", dtype=Float32),
        Field(name="reward_min_tier_rank", dtype=Float32),
    ],
    source=reward_source,
    online=True,
)

challenge_attributes = FeatureView(
    name="challenge_attributes",
    entities=[challenge],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="challenge_kind_code", dtype=Float32),
        Field(name="challenge_duration_days", dtype=Float32),
        Field(name="challenge_min_target", dtype=Float32),
        Field(name="challenge_max_target", dtype=Float32),
        Field(name="challenge_target_step", dtype=Float32),
        Field(name="challenge_points", dtype=Float32),
    ],
    source=challenge_source,
    online=True,
)
