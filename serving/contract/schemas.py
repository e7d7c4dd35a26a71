"""Request and response schemas of the HTTP API. Unknown fields are rejected everywhere.

Request fields take JSON types as they are: numbers must be JSON numbers (``false`` is not 0,
``"3"`` is not 3), member ids JSON strings (``42`` is not ``"42"``); see
``serving.contract.events`` for the shared field types.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from serving.contract.events import (
    NUMBER, Attributes, DateOrTimestamp, EventIn, ItemId, MemberId, Policy, ShortText, Tier,
)

Channel = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
#: A vocabulary value (tier, region), as the catalog's vocabularies allow them.
VocabularyValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
TierHint = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,16}$")]
Count = Annotated[int, Field(ge=0, le=20), NUMBER]
MAX_BATCH = 1_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestContext(_Strict):
    """What the caller knows that the feature store may not (used for cold starts)."""

    tier: TierHint | None = Field(None, description="the member's tier, for a member without "
                                                    "history (a tier the catalog does not "
                                                    "list counts as no hint)")
    region: VocabularyValue | None = None


class RecommendationRequest(_Strict):
    member_id: MemberId
    channel: Channel = "app"
    k_rewards: Count = 3
    k_challenges: Count = 3
    context: RequestContext | None = None
    exclude: list[ItemId] = Field(default_factory=list, max_length=100,
                                  description="reward or challenge ids never to return")


class BatchRecommendationRequest(_Strict):
    member_ids: list[MemberId] = Field(min_length=1, max_length=MAX_BATCH)
    channel: Channel = "crm"
    k_rewards: Count = 3
    k_challenges: Count = 3
    exclude: list[ItemId] = Field(default_factory=list, max_length=100)


class RewardOut(BaseModel):
    reward_id: str
    name: str
    type: str
    category: str
    propensity: float = Field(description="P(redeem | offer)")
    uplift: float = Field(description="P(purchase | offer) - P(purchase | no offer)")
    expected_value: float = Field(description="margin x basket x uplift - P(redeem) x cost")
    cost: float
    shown_probability: float = Field(description="probability this slot showed this reward")
    reason: str


class ChallengeOut(BaseModel):
    challenge_id: str
    name: str
    kind: str
    target: float
    unit: str
    duration_days: int
    completion_probability: float
    points: int
    shown_probability: float
    reason: str


class RecommendationResponse(BaseModel):
    decision_id: str
    member_id: str
    rewards: list[RewardOut]
    challenges: list[ChallengeOut]
    model_versions: dict[str, str]
    experiment_arm: str | None = None
    experiment_id: str | None = None
    personalized: bool
    cold_start: bool
    degraded: bool
    degraded_reasons: list[str] = Field(default_factory=list)
    cost_multiplier: float = 1.0
    policy: Policy = Field(
        "model", description="model: both model families served; cold_start: a family has no "
                             "promoted model yet, its items come from uniform exploration; "
                             "fallback: a promoted model failed, rules served (degraded)")


class BatchRecommendationResponse(BaseModel):
    results: list[RecommendationResponse]


class EventsRequest(_Strict):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH,
                                  description="one schema per event_type")


class EventAck(BaseModel):
    event_id: str
    status: Literal["stored", "duplicate"]


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    results: list[EventAck]


class ReloadResponse(BaseModel):
    outcomes: dict[str, str]
    versions: dict[str, str]
    workers_reloaded: int = Field(
        1, description="workers that checked the registry for this reload (outcomes: this one)")
    workers: int = Field(1, description="live workers of this server")


class MemberProfile(_Strict):
    """Body of PUT /v1/members/{member_id}: the member's profile, replaced as a whole."""

    joined_at: DateOrTimestamp
    tier: Tier
    region: ShortText | None = None
    consent: StrictBool | None = Field(None, description="consent to personalization; absent: "
                                                         "unknown")
    attributes: Attributes | None = Field(None, description="any other facts the program "
                                                            "keeps (text, number or boolean)")


class MemberUpserted(BaseModel):
    member_id: str
    status: Literal["created", "updated"]


class ErasureResponse(BaseModel):
    """What DELETE /v1/members/{id} removed, per store."""

    member_id: str
    erased: dict[str, int] = Field(description="rows deleted per table: events, decisions, "
                                               "decision_items, experiment_exposures, members "
                                               "(the profile), online_features")


class ErrorItem(BaseModel):
    field: str | None = Field(description="the offending field, e.g. body.member_id")
    reason: str


class ErrorResponse(BaseModel):
    """Every error of the API (401, 403, 404, 405, 409, 413, 422, 429, 500, 503): each item
    names the offending field (``body.events.1.amount``, ``path.member_id``, ``method``...)."""

    errors: list[ErrorItem]


_ERROR_TEXT = {400: "bad request", 401: "missing or invalid API key",
               403: "the key lacks the route's scope", 404: "not found", 409: "conflict",
               413: "request body too large", 422: "invalid input; each error names its field",
               429: "rate limit exceeded; retry after Retry-After seconds",
               503: "a store is unavailable; retry after Retry-After seconds"}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting the error body (FastAPI's default 422 schema is not the
    one this API returns)."""
    return {code: {"model": ErrorResponse, "description": _ERROR_TEXT[code]} for code in codes}


#: What every route behind an API key may answer besides its success.
AUTH_ERRORS = error_responses(401, 403, 413, 422, 429)
