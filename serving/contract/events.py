"""Feedback events, decisions and experiment exposures as the service receives and logs them.

The records are validated here, once, whoever sends or stores them: the HTTP routes parse
``EventIn``, the recommender builds ``DecisionRecord`` and ``ExposureRecord``, and the event
store (``serving.stores.events``) writes them. Times are timezone-aware and converted to UTC;
ids are short printable identifiers, so they index well in any SQL engine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

EventType = Literal[
    "impression", "redemption", "challenge_completed", "purchase",
    "consent_withdrawn", "consent_granted",
]
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
]
ItemId = Annotated[
    str, StringConstraints(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9_.:-]+$")
]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
PropertyValue = Annotated[str, StringConstraints(max_length=256)] | int | Finite | bool
#: Ids are pseudonymous integers; 2**53 - 1 keeps them exact in JSON and within BIGINT.
MAX_MEMBER_ID = 9_007_199_254_740_991


_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    """In UTC, and within a sane range (an overflowing offset must be a 422, not a crash)."""
    try:
        out = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None
    if not _EARLIEST <= out < _LATEST:
        raise ValueError("timestamp must be between 2000-01-01 and 2100-01-01 (UTC)")
    return out


class EventIn(BaseModel):
    """A feedback event sent by a CRM automation or the app.

    ``challenge_id`` is declared before ``reward_id`` on purpose: field validators see only the
    fields before them, and whether ``reward_id`` is required depends on ``challenge_id``.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: Identifier
    event_type: EventType
    member_id: int = Field(ge=1, le=MAX_MEMBER_ID)
    timestamp: AwareDatetime
    decision_id: Identifier | None = None
    challenge_id: ItemId | None = Field(None, validate_default=True)
    reward_id: ItemId | None = Field(None, validate_default=True)
    amount: float | None = Field(None, ge=0, le=1e7, allow_inf_nan=False, validate_default=True)
    cost: float | None = Field(None, ge=0, le=1e7, allow_inf_nan=False)
    properties: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)],
                     PropertyValue] | None = Field(None, max_length=20)

    _timestamp_utc = field_validator("timestamp")(_utc)

    @field_validator("properties", mode="before")
    @classmethod
    def _exact_integers(cls, value: Any) -> Any:
        """Integers beyond 2**53 lose digits in JSON clients (and would silently become floats
        in the union below): refuse them."""
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, int) and not isinstance(item, bool) and (
                        abs(item) > MAX_MEMBER_ID):
                    raise ValueError(f"{key!r}: integers must be within +-(2**53 - 1)")
        return value

    @field_validator("challenge_id")
    @classmethod
    def _challenge_required(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("event_type") == "challenge_completed":
            raise ValueError("required for challenge_completed events")
        return value

    @field_validator("reward_id")
    @classmethod
    def _reward_required(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Skip when challenge_id itself was invalid: its own error is the one to report.
        if (value is None and info.data.get("event_type") in ("impression", "redemption")
                and "challenge_id" in info.data and info.data["challenge_id"] is None):
            raise ValueError(
                f"required for {info.data['event_type']} events without a challenge_id")
        return value

    @field_validator("amount")
    @classmethod
    def _amount_required(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None and info.data.get("event_type") == "purchase":
            raise ValueError("required for purchase events")
        return value


class DecisionItem(BaseModel):
    """One reward or challenge in a recommendation, with what is needed to learn from it later."""

    model_config = ConfigDict(extra="forbid")

    item_type: Literal["reward", "challenge"]
    item_id: ItemId
    rank: int = Field(ge=0)
    score: Finite
    shown_probability: float = Field(ge=0, le=1)  # logging propensity, for off-policy evaluation
    target: Finite | None = None
    cost: float | None = Field(None, ge=0, allow_inf_nan=False)


class DecisionRecord(BaseModel):
    """A recommendation as served: who, when, which arm and models, and what was offered."""

    model_config = ConfigDict(extra="forbid")

    decision_id: Identifier
    member_id: int = Field(ge=1)
    created_at: AwareDatetime
    channel: ShortText
    arm: ShortText | None = None
    experiment_id: Identifier | None = None
    model_versions: dict[str, str] = Field(default_factory=dict)
    items: list[DecisionItem] = Field(default_factory=list)
    flags: dict[str, bool] = Field(default_factory=dict)

    _created_at_utc = field_validator("created_at")(_utc)

    @model_validator(mode="after")
    def _items_unique(self) -> Self:
        """An item offered twice in one decision would make cost attribution ambiguous."""
        keys = {(item.item_type, item.item_id) for item in self.items}
        if len(keys) != len(self.items):
            raise ValueError("items must not repeat an (item_type, item_id) pair")
        return self


class ExposureRecord(BaseModel):
    """A member's exposure to an experiment arm; only the first per experiment is kept."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: Identifier
    member_id: int = Field(ge=1)
    arm: ShortText
    exposed_at: AwareDatetime
    decision_id: Identifier
    channel: ShortText
    tier: ShortText | None = None
    uplift_score: Finite | None = None

    _exposed_at_utc = field_validator("exposed_at")(_utc)
