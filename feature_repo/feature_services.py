"""Feature services: each one IS a model's input contract, versioned with the model family.

Training asks a service for its features (get_historical_features) and serving asks the same
service online; the exported ONNX model records the service name and the ordered features.
Change a service's features only by adding a new version (propensity_v2, ...).
"""

from feast import FeatureService
from feature_views import MEMBER_FEATURES, challenge_attributes, member_daily, reward_attributes

# Consent steers business rules, never scores. Counts that only grow with time (points balance,
# offers or challenges ever received, 90-day totals on a young history) drift between the
# training and serving periods; the models get their per-day rates instead.
NOT_MODEL_INPUTS = {
    "consent", "points_balance", "offers_received", "challenges_assigned",
    "visits_90d", "purchases_90d", "spend_90d", "reviews_90d", "referrals_90d",
}
MODEL_MEMBER_FEATURES = [n for n in MEMBER_FEATURES if n not in NOT_MODEL_INPUTS]

propensity_v1 = FeatureService(
    name="propensity_v1",
    features=[member_daily[MODEL_MEMBER_FEATURES], reward_attributes],
    description="Reward propensity and uplift model: member history x reward attributes.",
)

difficulty_v1 = FeatureService(
    name="difficulty_v1",
    features=[member_daily[MODEL_MEMBER_FEATURES], challenge_attributes],
    description="Challenge difficulty model: member history x challenge template attributes.",
)
