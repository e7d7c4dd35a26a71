"""Feedback events, decisions and experiment exposures as the service receives and logs them.

The records are validated here, once, whoever sends or stores them: the HTTP routes and the
bulk import parse events with :func:`parse_event` (one model per ``event_type``, picked by that
field), the recommender builds ``DecisionRecord`` and ``ExposureRecord``, and the event store
(``serving.stores.events``) writes them, reading each event's columns with
``getattr(event, name, None)`` since a model declares only its own type's fields.

The published JSON Schema is meant to say exactly what the server accepts, so that any request
valid under it is taken and any other refused (contract fuzzing checks both ways):

- numbers are JSON numbers: a boolean or a numeric string is refused, never coerced;
- times are RFC 3339 strings with an offset, years 1970-2099 as written (a regular expression
  in the schema, checked by the server too), converted to UTC;
- ids are 1-64 characters of ``[A-Za-z0-9_.:-]``, except ``.`` and ``..``, which URLs treat as
  path steps (a member so named could never be addressed in ``/v1/members/{member_id}``);
- cross-field rules ("exactly one of reward_id / challenge_id") are in the schema as
  ``oneOf`` / ``anyOf`` of the fields that must be present and non-null.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# -- ids, numbers, text --------------------------------------------------------------------------

#: 1-64 characters of ``[A-Za-z0-9_.:-]`` (the length is checked apart), not ``.`` nor ``..``.
ID_PATTERN = (r"^(?:[A-Za-z0-9_:-][A-Za-z0-9_.:-]*|\.[A-Za-z0-9_:-][A-Za-z0-9_.:-]*"
              r"|\.\.[A-Za-z0-9_.:-]+)$")
ID_DESCRIPTION = "1-64 characters of letters, digits and _ . : - (not '.' nor '..')"
_ID = re.compile(ID_PATTERN)


def _identifier(value: Any) -> str:
    """One clear message for every way an id can be wrong (a JSON number is not an id)."""
    if not isinstance(value, str):
        raise PydanticCustomError("identifier_type", "must be a string id, not a {kind}",
                                  {"kind": json_kind(value)})
    if not (1 <= len(value) <= 64 and _ID.fullmatch(value)):
        raise PydanticCustomError("identifier", f"must be {ID_DESCRIPTION}")
    return value


Identifier = Annotated[str, BeforeValidator(_identifier), WithJsonSchema({
    "type": "string", "minLength": 1, "maxLength": 64, "pattern": ID_PATTERN,
    "description": ID_DESCRIPTION})]
#: A member of the loyalty program, as the program names it (``M-000172``, a UUID, ``"42"``).
MemberId = Identifier
#: A reward or challenge id (the catalog's).
ItemId = Identifier
#: JSON clients (JavaScript) keep integers exact up to 2**53 - 1.
MAX_SAFE_INTEGER = 9_007_199_254_740_991


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (for error messages)."""
    for types, name in ((bool, "boolean"), ((int, float), "number"), (str, "string"),
                        (list, "array"), (dict, "object"), (type(None), "null")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def _json_number(value: Any) -> Any:
    """Booleans and numeric strings are not numbers: refuse them instead of coercing
    (``"k_challenges": false`` must not mean 0)."""
    if isinstance(value, (bool, str, bytes, bytearray)):
        raise PydanticCustomError("json_number", "must be a JSON number, not a {kind}",
                                  {"kind": json_kind(value)})
    return value


#: Marks a JSON number (integer or not): ``true`` and ``"3"`` are refused, ``3.0`` is an integer
#: as JSON Schema says. Put it last in ``Annotated``, after the bounds, so that they stay in the
#: published schema (``minimum``/``maximum``).
NUMBER = BeforeValidator(_json_number)
Amount = Annotated[float, Field(ge=0, le=1e7, allow_inf_nan=False), NUMBER]
_POINTS = "signed change of the member's points balance"
Points = Annotated[int, Field(ge=-1_000_000_000, le=1_000_000_000, description=_POINTS), NUMBER]
EarnedPoints = Annotated[int, Field(gt=0, le=1_000_000_000, description=_POINTS), NUMBER]
SpentPoints = Annotated[int, Field(ge=-1_000_000_000, lt=0, description=_POINTS + " (negative)"),
                        NUMBER]
Quantity = Annotated[int, Field(ge=1, le=1_000_000), NUMBER]
Measure = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False), NUMBER]
Propensity = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False, description=(
    "probability that this offer (or this holdout) was drawn: the logging propensity")), NUMBER]
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


#: Free text such as a category or a channel: 1-32 characters, no control characters.
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=_PRINTABLE)]
Tier = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=_PRINTABLE)]


def _property_value(value: Any) -> str | int | float | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) <= MAX_SAFE_INTEGER:
            return value
    elif isinstance(value, float):
        if math.isfinite(value) and abs(value) <= MAX_SAFE_INTEGER:
            return value
    elif isinstance(value, str):
        if len(value) <= 256:
            return value
        raise PydanticCustomError("value_too_long", "text values are at most 256 characters")
    else:
        raise PydanticCustomError("value_type", "must be a string, a number or a boolean")
    raise PydanticCustomError("value_range",
                              "numbers must be finite and within +-(2**53 - 1), so that every "
                              "JSON client reads them exactly")


#: One value of ``properties`` (events) or ``attributes`` (members): text, number or boolean.
ExtraValue = Annotated[Any, PlainValidator(_property_value), WithJsonSchema({"anyOf": [
    {"type": "string", "maxLength": 256}, {"type": "boolean"},
    {"type": "number", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER}]})]
ExtraKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
#: Small flat dicts of extra facts (no nesting: they are stored as JSON text).
Properties = Annotated[dict[ExtraKey, ExtraValue], Field(max_length=20)]
Attributes = Annotated[dict[ExtraKey, ExtraValue], Field(max_length=50)]


# -- times ---------------------------------------------------------------------------------------

_YEAR = r"(?:19[7-9][0-9]|20[0-9][0-9])"
_LEAP_YEAR = r"(?:19(?:7[26]|8[048]|9[26])|20(?:[02468][048]|[13579][26]))"
_MONTH_DAY = (r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
              r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))")
_DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
#: A calendar date, years 1970-2099 (days per month and leap years included).
DATE_PATTERN = rf"^{_DATE}$"
#: RFC 3339 with an offset, ``T`` and ``Z`` upper case, up to microseconds, years 1970-2099.
TIMESTAMP_PATTERN = (rf"^{_DATE}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{{1,6}})?"
                     r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$")
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
_DATE_ONLY = re.compile(DATE_PATTERN)
FIRST_YEAR, LAST_YEAR = 1970, 2099
_TIMESTAMP_SCHEMA = {"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN,
                     "description": "RFC 3339 with an offset (e.g. 2026-03-02T09:00:00Z), "
                                    "years 1970-2099; stored in UTC"}


def _timestamp_text(value: Any) -> Any:
    """Before parsing: a JSON string as the schema's pattern says (pydantic alone would also
    take a number of seconds, a space for the ``T``...), or a datetime from Python callers."""
    if isinstance(value, datetime) or (isinstance(value, str) and _TIMESTAMP.fullmatch(value)):
        return value
    raise PydanticCustomError("timestamp", "must be an RFC 3339 date-time with a timezone "
                                           "offset, e.g. 2026-03-02T09:00:00Z, years 1970-2099")


def _date_text(value: Any) -> Any:
    """A date alone (e.g. when a member joined) is midnight UTC; anything else as a timestamp."""
    if isinstance(value, str) and _DATE_ONLY.fullmatch(value):
        value = date.fromisoformat(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime.combine(value, time(), UTC)
    try:
        return _timestamp_text(value)
    except PydanticCustomError:
        raise PydanticCustomError("date_or_timestamp", "must be a date (YYYY-MM-DD) or an RFC "
                                  "3339 date-time with a timezone offset, years 1970-2099"
                                  ) from None


def _in_years_utc(value: datetime) -> datetime:
    """The year is checked as written (what the schema's pattern can say), then the time is
    converted to UTC."""
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise PydanticCustomError("timestamp_range", "years {first}-{last} only, got {year}",
                                  {"first": FIRST_YEAR, "last": LAST_YEAR, "year": value.year})
    return value.astimezone(UTC)


#: An aware time in UTC; JSON: RFC 3339 with an offset (imports may pass aware datetimes).
Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_text),
                      AfterValidator(_in_years_utc), WithJsonSchema(_TIMESTAMP_SCHEMA)]
DateOrTimestamp = Annotated[AwareDatetime, BeforeValidator(_date_text),
                            AfterValidator(_in_years_utc), WithJsonSchema({
    "anyOf": [{"type": "string", "format": "date", "pattern": DATE_PATTERN}, _TIMESTAMP_SCHEMA],
    "description": "a date (midnight UTC) or an RFC 3339 date-time; years 1970-2099"})]


def _utc(value: datetime) -> datetime:
    """Records built by the service: in UTC, within the same years (an overflowing offset must
    be a validation error, not a crash)."""
    try:
        out = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None
    if not FIRST_YEAR <= out.year <= LAST_YEAR:
        raise ValueError(f"timestamp must be in the years {FIRST_YEAR}-{LAST_YEAR} (UTC)")
    return out


# -- events --------------------------------------------------------------------------------------

EventType = Literal[
    "visit", "purchase", "review", "referral", "points_earned", "points_spent", "tier_change",
    "impression", "holdout", "click", "redemption", "challenge_progress", "challenge_completed",
    "consent_granted", "consent_withdrawn",
]
#: Every per-type column of the event store's ``events`` table; an event model declares only
#: those of its type, so the store reads them with ``getattr(event, name, None)``.
EVENT_FIELDS: tuple[str, ...] = (
    "reward_id", "challenge_id", "amount", "cost", "category", "quantity", "points", "tier",
    "target", "value", "propensity")


def _given(name: str, *nulls: str) -> dict[str, Any]:
    """JSON Schema: ``name`` is present and not null; each of ``nulls`` is absent or null."""
    return {"required": [name], "properties": {name: {"type": "string"},
                                               **{other: {"type": "null"} for other in nulls}}}


def _schema(**rule: Any) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra=rule)


def _exactly_one_item(value: str | None, info: ValidationInfo) -> str | None:
    """On ``challenge_id`` (declared after ``reward_id``, defaults validated): one of the two."""
    if "reward_id" not in info.data:  # reward_id itself was invalid: its error says enough
        return value
    if (value is None) == (info.data["reward_id"] is None):
        raise ValueError("give exactly one of reward_id and challenge_id")
    return value


def _some_item(value: str | None, info: ValidationInfo) -> str | None:
    if value is None and "reward_id" in info.data and info.data["reward_id"] is None:
        raise ValueError("give reward_id or challenge_id (or both)")
    return value


class EventBase(BaseModel):
    """Fields every event has. Unknown fields are refused: nothing unexpected gets stored."""

    model_config = ConfigDict(extra="forbid")

    event_id: Identifier = Field(description="idempotency key: a replay is stored once")
    event_type: str
    member_id: MemberId
    timestamp: Timestamp
    decision_id: Identifier | None = Field(
        None, description="the recommendation this event answers (outcome attribution)")
    properties: Properties | None = None


class VisitEvent(EventBase):
    event_type: Literal["visit"]


class PurchaseEvent(EventBase):
    event_type: Literal["purchase"]
    amount: Amount
    category: ShortText | None = None
    quantity: Quantity | None = None
    points: Points | None = None
    reward_id: ItemId | None = Field(None, description="a reward applied to this purchase")


class ReviewEvent(EventBase):
    event_type: Literal["review"]
    points: Points | None = None


class ReferralEvent(EventBase):
    event_type: Literal["referral"]
    points: Points | None = None


class PointsEarnedEvent(EventBase):
    event_type: Literal["points_earned"]
    points: EarnedPoints


class PointsSpentEvent(EventBase):
    event_type: Literal["points_spent"]
    points: SpentPoints


class TierChangeEvent(EventBase):
    event_type: Literal["tier_change"]
    tier: Tier


class ImpressionEvent(EventBase):
    """An offer shown: one reward, or one challenge with its target."""

    model_config = _schema(oneOf=[_given("reward_id", "challenge_id", "target"),
                                  _given("challenge_id", "reward_id")])

    event_type: Literal["impression"]
    reward_id: ItemId | None = None
    challenge_id: ItemId | None = Field(None, validate_default=True)
    target: Measure | None = Field(None, description="the challenge's target")
    propensity: Propensity | None = None

    _one_item = field_validator("challenge_id")(_exactly_one_item)

    @field_validator("target")
    @classmethod
    def _target_of_a_challenge(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("challenge_id", "") is None:
            raise ValueError("a target belongs to a challenge impression only")
        return value


class HoldoutEvent(EventBase):
    """A member held out of an offer (the control group of an uplift measurement)."""

    event_type: Literal["holdout"]
    reward_id: ItemId | None = None
    propensity: Propensity | None = None


class ClickEvent(EventBase):
    model_config = _schema(oneOf=[_given("reward_id", "challenge_id"),
                                  _given("challenge_id", "reward_id")])

    event_type: Literal["click"]
    reward_id: ItemId | None = None
    challenge_id: ItemId | None = Field(None, validate_default=True)

    _one_item = field_validator("challenge_id")(_exactly_one_item)


class RedemptionEvent(EventBase):
    model_config = _schema(anyOf=[_given("reward_id"), _given("challenge_id")])

    event_type: Literal["redemption"]
    reward_id: ItemId | None = None
    challenge_id: ItemId | None = Field(None, validate_default=True)
    cost: Amount | None = Field(None, description="what the redemption cost the program")
    points: Points | None = None

    _some_item = field_validator("challenge_id")(_some_item)


class ChallengeProgressEvent(EventBase):
    event_type: Literal["challenge_progress"]
    challenge_id: ItemId
    value: Measure = Field(description="progress so far, in the challenge's unit")


class ChallengeCompletedEvent(EventBase):
    event_type: Literal["challenge_completed"]
    challenge_id: ItemId
    points: Points | None = None


class ConsentGrantedEvent(EventBase):
    event_type: Literal["consent_granted"]


class ConsentWithdrawnEvent(EventBase):
    event_type: Literal["consent_withdrawn"]


#: Any event, its model chosen by ``event_type`` (a discriminated union: one schema per type).
EventIn = Annotated[
    VisitEvent | PurchaseEvent | ReviewEvent | ReferralEvent | PointsEarnedEvent
    | PointsSpentEvent | TierChangeEvent | ImpressionEvent | HoldoutEvent | ClickEvent
    | RedemptionEvent | ChallengeProgressEvent | ChallengeCompletedEvent | ConsentGrantedEvent
    | ConsentWithdrawnEvent,
    Field(discriminator="event_type")]
EVENT_MODELS: dict[str, type[EventBase]] = {
    model.model_fields["event_type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in EventBase.__subclasses__()}
EVENT_ADAPTER: TypeAdapter[EventIn] = TypeAdapter(EventIn)
_EVENTS_ADAPTER: TypeAdapter[list[EventIn]] = TypeAdapter(list[EventIn])


def parse_event(data: Mapping[str, Any]) -> EventIn:
    """One event from JSON-like data (``ValidationError`` naming the field otherwise)."""
    return EVENT_ADAPTER.validate_python(data)


def parse_events(rows: Sequence[Mapping[str, Any]]) -> list[EventIn]:
    """Several events; one ``ValidationError`` listing every bad row's fields."""
    return _EVENTS_ADAPTER.validate_python(rows)


def error_field(loc: Sequence[int | str], error_type: str = "") -> str:
    """Where a validation error is, as the client wrote it: without the union's tag that
    pydantic inserts after an event's position (``events.0.purchase.amount`` ->
    ``events.0.amount``), and at ``event_type`` when that is what is missing or unknown."""
    parts = [str(p) for i, p in enumerate(loc)
             if not (p in EVENT_MODELS and (i == 0 or isinstance(loc[i - 1], int)
                                            or loc[i - 1] == "body"))]
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        parts.append("event_type")
    return ".".join(parts)


# -- decisions and exposures ---------------------------------------------------------------------

class DecisionItem(BaseModel):
    """One reward or challenge in a recommendation, with what is needed to learn from it later."""

    model_config = ConfigDict(extra="forbid")

    item_type: Literal["reward", "challenge"]
    item_id: ItemId
    rank: int = Field(ge=0)
    score: Annotated[float, Field(allow_inf_nan=False)]
    #: the logging propensity (off-policy evaluation): the probability that this slot showed
    #: this item, the no-offer share and, for a challenge, its target's draw included
    shown_probability: float = Field(ge=0, le=1)
    target: Annotated[float, Field(allow_inf_nan=False)] | None = None
    #: challenges: P(this target | this template was picked); 1 when the target was not drawn
    target_probability: float | None = Field(None, ge=0, le=1)
    cost: float | None = Field(None, ge=0, allow_inf_nan=False)


#: Who chose a decision's items: the models; rules with uniform exploration because no model
#: of a family was ever promoted; or the rules' fallback because a promoted model is broken.
Policy = Literal["model", "cold_start", "fallback"]


class RankingContext(BaseModel):
    """What the reward ranking of a decision applied besides the model's scores, logged so
    that off-policy evaluation re-ranks as serving did (a policy evaluated without it is not
    the policy that served: on the learning-loop bench a third of the greedy choices differed).
    """

    model_config = ConfigDict(extra="forbid")

    #: the budget's cost multiplier (lambda, >= 1) the values were computed with
    cost_multiplier: float = Field(1.0, ge=0)
    #: rewards the member's tier allowed but the decision kept out: cooldown after a recent
    #: offer, the request's exclusions, a reward's daily cap reached
    blocked: list[Identifier] = Field(default_factory=list)
    #: the novelty factor of rewards shown within the novelty window (positive values only)
    novelty: dict[str, float] = Field(default_factory=dict)


class DecisionRecord(BaseModel):
    """A recommendation as served: who, when, which arm and models, and what was offered,
    with what learning needs later: the feature values the models were given and, per item,
    the probability it was shown with (the decision log, ``EventStore.decision_log``)."""

    model_config = ConfigDict(extra="forbid")

    decision_id: Identifier
    member_id: MemberId
    created_at: AwareDatetime
    channel: ShortText
    arm: ShortText | None = None
    experiment_id: Identifier | None = None
    model_versions: dict[str, str] = Field(default_factory=dict)
    items: list[DecisionItem] = Field(default_factory=list)
    #: personalized, cold_start (a member without history), degraded, no_offer (the no-offer
    #: draw or an experiment's holdout arm withheld every reward)
    flags: dict[str, bool] = Field(default_factory=dict)
    policy: Policy = "model"
    #: the member's values of the models' input features (after cold-start and consent
    #: substitution); None when no model served the decision. NaN is kept (stored as null).
    features: dict[str, float] | None = None
    #: probability that this decision offers no reward: the no-offer share outside
    #: experiments, 1 in an experiment's holdout arm (given the arm), None in its other arms
    #: (their slots carry the probabilities) or when no reward was asked for
    no_offer_probability: float | None = Field(None, ge=0, le=1)
    #: the reward ranking's context (None: no reward was ranked, e.g. the no-offer draw)
    ranking: RankingContext | None = None

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
    member_id: MemberId
    arm: ShortText
    exposed_at: AwareDatetime
    decision_id: Identifier
    channel: ShortText
    tier: ShortText | None = None
    uplift_score: Annotated[float, Field(allow_inf_nan=False)] | None = None

    _exposed_at_utc = field_validator("exposed_at")(_utc)
