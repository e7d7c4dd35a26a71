"""The program's catalog as data: what a reward and a challenge template are, how they are
validated against the catalog's vocabularies, their model features, and the immutable
``Catalog`` the request path reads (numpy columns and integer codes prepared once).

Pure: the catalog store (serving.stores.catalog) reads and writes the rows; serving swaps a new
``Catalog`` in when the store's version changes. Item features are computed here from the rows
and the vocabulary (no feature store), so a reward added at noon is scored at noon.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel, ConfigDict, Field, StringConstraints, ValidationError,
    ValidationInfo, field_validator,
)

from serving.contract.events import ItemId, Timestamp
from serving.contract.vocabulary import (
    ANY_CATEGORY, MAX_TIER_LENGTH, NAME_PATTERN, VOCABULARY_KINDS,
    Vocabulary, value_error,
)
from serving.decisioning.candidates import CHALLENGE_ITEM_COLUMNS, REWARD_ITEM_COLUMNS
from serving.decisioning.ranking import target_layout

ItemKind = Literal["rewards", "challenges"]
_TEXT = r"^[^\x00-\x1f\x7f]+$"  # printable: no control characters (PostgreSQL refuses NUL)
#: A category, reward type or challenge kind (parts of feature names).
NameValue = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
TierValue = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TIER_LENGTH,
                                             pattern=_TEXT)]
Status = Literal["active", "retired"]
#: Allowed targets of one template at most: a typo'd step must not make a million-row grid.
MAX_TARGETS = 1_000
#: Largest cost, target or point count: beyond it a value is a typo (and loses float32 precision).
MAX_AMOUNT = 1e9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SHOWN = 20  # vocabulary values listed in an error message


# -- what an item is ---------------------------------------------------------------------------

class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=_TEXT)
    status: Status = Field("active", description="retired items are kept but never served")
    created_at: Timestamp | None = Field(
        None, description="when the item entered the program (default: when first stored); an "
                          "item created after the reward model's training data is new to it "
                          "and explored")


class RewardFields(_Item):
    """A reward as ``PUT /v1/catalog/rewards/{reward_id}`` takes it (the id is in the path)."""

    reward_type: NameValue
    category: NameValue = Field(
        description=f"a category of the vocabulary, or {ANY_CATEGORY!r}")
    cost: float = Field(ge=0, le=MAX_AMOUNT, strict=True, allow_inf_nan=False,
                        description="what the program pays when it is redeemed")
    min_tier: TierValue = Field(description="lowest tier that may be offered it")


class RewardIn(RewardFields):
    """A reward row of an import file."""

    reward_id: ItemId


class ChallengeFields(_Item):
    """A challenge template as ``PUT /v1/catalog/challenges/{challenge_id}`` takes it."""

    kind: NameValue
    unit: str = Field(min_length=1, max_length=32, pattern=_TEXT,
                      description="what the target counts")
    duration_days: int = Field(ge=1, le=366, strict=True)
    min_target: float = Field(ge=0, le=MAX_AMOUNT, strict=True, allow_inf_nan=False)
    max_target: float = Field(ge=0, le=MAX_AMOUNT, strict=True, allow_inf_nan=False)
    target_step: float = Field(gt=0, le=MAX_AMOUNT, strict=True, allow_inf_nan=False,
                               description="allowed targets: min_target, + step, ... max_target")
    points: int = Field(ge=0, le=int(MAX_AMOUNT), strict=True,
                        description="points awarded on completion")

    @field_validator("max_target")
    @classmethod
    def _ordered(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("min_target")
        if low is not None and value < low:
            raise ValueError(f"max_target {value:g} is below min_target {low:g}")
        return value

    @field_validator("target_step")
    @classmethod
    def _grid(cls, value: float, info: ValidationInfo) -> float:
        low, high = info.data.get("min_target"), info.data.get("max_target")
        if low is not None and high is not None and (high - low) / value + 1 > MAX_TARGETS:
            raise ValueError(f"{(high - low) / value + 1:.0f} allowed targets; at most "
                             f"{MAX_TARGETS}: use a larger step")
        return value


class ChallengeIn(ChallengeFields):
    """A challenge-template row of an import file."""

    challenge_id: ItemId


class RewardRecord(BaseModel):
    """A stored reward."""

    reward_id: str
    name: str
    reward_type: str
    category: str
    cost: float
    min_tier: str
    status: Status
    created_at: datetime
    updated_at: datetime


class ChallengeRecord(BaseModel):
    """A stored challenge template."""

    challenge_id: str
    name: str
    kind: str
    unit: str
    duration_days: int
    min_target: float
    max_target: float
    target_step: float
    points: int
    status: Status
    created_at: datetime
    updated_at: datetime


ITEM_MODELS: dict[str, type[RewardIn | ChallengeIn]] = {
    "rewards": RewardIn, "challenges": ChallengeIn}
ID_COLUMNS: dict[str, str] = {"rewards": "reward_id", "challenges": "challenge_id"}


# -- validation against the vocabularies -------------------------------------------------------

def _unknown(field: str, kind: str, value: str, vocabulary: Vocabulary, extra: str = "") -> str:
    known = list(vocabulary.values(kind))
    shown = ", ".join(known[:_MAX_SHOWN]) + (", ..." if len(known) > _MAX_SHOWN else "")
    return (f"unknown {field} {value!r}: not in the catalog's {kind} vocabulary "
            f"[{shown}]{extra}; append it first (`rewards catalog import --kind vocabulary` "
            f"or PUT /v1/catalog/vocabularies/{kind})")


#: Fields that must hold a vocabulary value: field -> (vocabulary kind, also allowed).
_VOCABULARY_FIELDS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "rewards": {"reward_type": ("reward_type", ()), "category": ("category", (ANY_CATEGORY,)),
                "min_tier": ("tier", ())},
    "challenges": {"kind": ("challenge_kind", ())},
}


def vocabulary_errors(item: BaseModel | Mapping[str, Any],
                      vocabulary: Vocabulary, kind: ItemKind | None = None
                      ) -> list[tuple[str, str]]:
    """(field, reason) for every value of ``item`` its vocabulary does not hold: a value
    outside it would become code -1 silently, and the models would score a different item.
    ``item``: a validated item (RewardFields, ChallengeFields), or a raw row (``kind`` given)
    whose text fields are checked."""
    if isinstance(item, BaseModel):
        kind = "rewards" if isinstance(item, RewardFields) else "challenges"
        item = item.model_dump()
    errors = []
    for name, (vocab_kind, allowed) in _VOCABULARY_FIELDS[kind or "rewards"].items():
        value = item.get(name)
        if isinstance(value, str) and value not in allowed \
                and value not in vocabulary.values(vocab_kind):
            extra = f" (or {allowed[0]!r})" if allowed else ""
            errors.append((name, _unknown(name, vocab_kind, value, vocabulary, extra)))
    return errors


@dataclass(frozen=True)
class RowError:
    """One reason a row of an import was refused; rows count from 1 (the first data row)."""

    row: int
    field: str
    reason: str


def coerce_row(kind: ItemKind, row: Mapping[str, Any]) -> dict[str, Any]:
    """File values to the types the item model takes strictly: numbers from text (a CSV's
    cells), times as UTC (a date or naive time is taken as UTC); what does not convert is
    left as it is, for the model to refuse naming the field."""
    fields = ITEM_MODELS[kind].model_fields
    out: dict[str, Any] = {}
    for name, value in row.items():
        if value is None:
            continue  # absent: the field's default, or "Field required"
        annotation = fields[name].annotation if name in fields else None
        if annotation in (float, int) and isinstance(value, str | int | float) \
                and not isinstance(value, bool):
            try:
                number = float(value)
                value = (int(number) if annotation is int and number.is_integer()
                         else number if annotation is float else value)
            except ValueError:
                pass
        elif name == "created_at" and isinstance(value, str | datetime):
            try:
                stamp = pd.Timestamp(value)
                value = (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
                         ).to_pydatetime()
            except ValueError:
                pass
        out[name] = value
    return out


def validate_items(kind: ItemKind, rows: Sequence[Mapping[str, Any]], vocabulary: Vocabulary
                   ) -> tuple[list[RewardIn] | list[ChallengeIn], list[RowError]]:
    """Every row (file values, see :func:`coerce_row`) as an item, or why not: shape, then
    vocabulary, then ids repeated in the file (the later row is refused). The whole file is
    applied only when no row is refused."""
    model = ITEM_MODELS[kind]
    id_column = ID_COLUMNS[kind]
    items: list[Any] = []
    errors: list[RowError] = []
    first_row: dict[str, int] = {}
    for n, raw in enumerate(rows, start=1):
        try:
            item = model.model_validate(coerce_row(kind, raw))
        except ValidationError as exc:
            shape = [RowError(n, ".".join(str(p) for p in e["loc"]) or "row", e["msg"])
                     for e in exc.errors()]
            named = {e.field for e in shape}  # and the row's other values, to list them all
            errors.extend(sorted([*shape, *(RowError(n, f, r) for f, r in vocabulary_errors(
                raw, vocabulary, kind) if f not in named)], key=lambda e: e.field))
            continue
        problems = vocabulary_errors(item, vocabulary)
        errors.extend(RowError(n, f, r) for f, r in problems)
        item_id = getattr(item, id_column)
        if item_id in first_row:
            errors.append(RowError(n, id_column, f"{item_id!r} repeats row {first_row[item_id]}"))
        else:
            first_row[item_id] = n
        if not problems:
            items.append(item)
    return items, errors


def validate_vocabulary_rows(rows: Sequence[Mapping[str, Any]]
                             ) -> tuple[list[tuple[str, str]], list[RowError]]:
    """(kind, value) per row of a vocabulary file (columns ``kind``, ``value``, in code order)."""
    pairs: list[tuple[str, str]] = []
    errors: list[RowError] = []
    for n, raw in enumerate(rows, start=1):
        unknown = sorted(set(raw) - {"kind", "value"})
        if unknown:
            errors.append(RowError(n, unknown[0], "unknown column; expected kind, value"))
            continue
        kind, value = raw.get("kind"), raw.get("value")
        if kind not in VOCABULARY_KINDS:
            errors.append(RowError(n, "kind", f"unknown vocabulary kind {kind!r}; expected "
                                              f"one of {list(VOCABULARY_KINDS)}"))
            continue
        problem = value_error(str(kind), value)
        if problem:
            errors.append(RowError(n, "value", problem))
        else:
            pairs.append((str(kind), str(value)))
    return pairs, errors


# -- item features (model inputs) --------------------------------------------------------------

def _timestamps(frame: pd.DataFrame) -> dict[str, pd.Series]:
    # training's item tables carry their load time for Feast; the request path has none
    if "event_timestamp" not in frame:
        return {}
    return {"event_timestamp": frame["event_timestamp"].astype("datetime64[us, UTC]")}


def reward_item_features(rewards: pd.DataFrame, vocabulary: Vocabulary) -> pd.DataFrame:
    """Numeric reward features keyed by reward_id; codes are positions in ``vocabulary``
    (-1 for the category ``any``). Training and serving compute them with this function."""
    return pd.DataFrame({
        "reward_id": rewards["reward_id"].astype(str),
        **_timestamps(rewards),
        "reward_type_code": np.array(vocabulary.codes("reward_type", rewards["reward_type"]),
                                     dtype=np.float32),
        "reward_category_code": np.array(vocabulary.codes("category", rewards["category"]),
                                         dtype=np.float32),
        "reward_cost": rewards["cost"].astype(np.float32),
        "reward_min_tier_rank": np.array(vocabulary.codes("tier", rewards["min_tier"]),
                                         dtype=np.float32),
    })


def challenge_item_features(challenges: pd.DataFrame, vocabulary: Vocabulary) -> pd.DataFrame:
    """Numeric challenge-template features keyed by challenge_id."""
    return pd.DataFrame({
        "challenge_id": challenges["challenge_id"].astype(str),
        **_timestamps(challenges),
        "challenge_kind_code": np.array(vocabulary.codes("challenge_kind", challenges["kind"]),
                                        dtype=np.float32),
        "challenge_duration_days": challenges["duration_days"].astype(np.float32),
        "challenge_min_target": challenges["min_target"].astype(np.float32),
        "challenge_max_target": challenges["max_target"].astype(np.float32),
        "challenge_target_step": challenges["target_step"].astype(np.float32),
        "challenge_points": challenges["points"].astype(np.float32),
    })


# -- new to the model --------------------------------------------------------------------------

def micros(value: datetime) -> int:
    """Microseconds since the epoch of a tz-aware time (the stores' time format)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def model_cutoff_us(data_window: Mapping[str, str], trained_at: str) -> int | None:
    """Microseconds since the epoch from which a catalog item is new to a model: the end of
    the model's data window when its metadata records one, else when it was trained; None
    when neither is known (no item is then treated as new)."""
    for text in (data_window.get("end"), trained_at):
        if not text:
            continue
        try:
            stamp = pd.Timestamp(text)
        except ValueError:
            continue
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return int(stamp.value // 1_000)
    return None


# -- the catalog the request path reads --------------------------------------------------------

@dataclass(frozen=True)
class Catalog:
    """Active rewards and challenge templates: display attributes plus model features.

    Immutable: serving builds a new one when the store's version changes and swaps it in.
    """

    rewards: pd.DataFrame  # reward_id, name, reward_type, category, cost, min_tier + features
    challenges: pd.DataFrame  # challenge_id, name, kind, unit, duration_days, points + features
    targets: pd.DataFrame  # one row per (challenge_id, allowed target) + template features
    vocabulary: Vocabulary = field(default_factory=Vocabulary)
    version: int = 0  # the store's catalog version this was read at
    #: rewards and targets by column (numpy), built from the frames (serving.decisioning.
    #: candidates.CatalogColumns)
    reward_cols: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)
    target_cols: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The request path works on these numpy columns: pandas indexing costs ~10 us a call,
        # and a request would make hundreds of them.
        object.__setattr__(self, "reward_cols", _columns(self.rewards))
        object.__setattr__(self, "target_cols", _columns(self.targets))
        # integer codes for the per-request rules (category caps, one target per template,
        # one challenge per kind): sorting strings on every request costs more than the rules
        for name, frame, column in (("reward_category_index", self.rewards, "category"),
                                    ("target_template_index", self.targets, "challenge_id"),
                                    ("target_kind_index", self.targets, "kind")):
            codes = np.unique(frame[column].to_numpy(), return_inverse=True)[1]
            object.__setattr__(self, name, codes.astype(np.int64).reshape(-1))
        object.__setattr__(self, "template_ids", self.challenges["challenge_id"].tolist())
        # every template's grid rows by target: the flow-zone choice as one argmin per template
        object.__setattr__(self, "target_layout", target_layout(
            self.target_template_index, self.target_cols["target"])  # type: ignore[attr-defined]
            if len(self.targets) else np.zeros((0, 0), dtype=np.int64))

    @classmethod
    def build(cls, rewards: pd.DataFrame, challenges: pd.DataFrame,
              reward_features: pd.DataFrame | None = None,
              challenge_features: pd.DataFrame | None = None, *,
              vocabulary: Vocabulary, version: int = 0) -> Catalog:
        """The catalog from its rows (retired ones are left out) and, when given, their
        features (batch jobs pass the offline parquet); otherwise the features are computed
        from the rows with ``vocabulary`` (the catalog's)."""
        rewards, challenges = _active(rewards), _active(challenges)
        if reward_features is None:
            reward_features = reward_item_features(rewards, vocabulary)
        if challenge_features is None:
            challenge_features = challenge_item_features(challenges, vocabulary)
        rewards = rewards.merge(reward_features, on="reward_id", validate="one_to_one")
        challenges = challenges.merge(challenge_features, on="challenge_id",
                                      validate="one_to_one")
        if "created_us" not in rewards:  # files: no creation time, nothing is new
            rewards["created_us"] = np.zeros(len(rewards), dtype=np.int64)
        rewards["created_us"] = rewards["created_us"].astype(np.int64)
        rewards["min_tier_rank"] = np.array(vocabulary.codes("tier", rewards["min_tier"]),
                                            dtype=np.int64)
        rows = [pd.DataFrame({"challenge_id": c["challenge_id"], "target": np.arange(
                    c["min_target"], c["max_target"] + c["target_step"] / 2, c["target_step"])})
                for _, c in challenges.iterrows()]
        grid = (pd.concat(rows, ignore_index=True) if rows
                else pd.DataFrame({"challenge_id": pd.Series(dtype=object),
                                   "target": pd.Series(dtype=np.float64)}))
        targets = grid.merge(challenges, on="challenge_id")
        return cls(rewards.reset_index(drop=True), challenges.reset_index(drop=True), targets,
                   vocabulary, version)

    def new_rewards(self, cutoff_us: int | None) -> np.ndarray:
        """Per reward (catalog order): created at or after ``cutoff_us``, i.e. new to a model
        whose data ends there (:func:`model_cutoff_us`); all False without a cutoff."""
        created = self.reward_cols["created_us"]
        if cutoff_us is None:
            return np.zeros(len(created), dtype=bool)
        return np.asarray(created >= cutoff_us)


def _active(frame: pd.DataFrame) -> pd.DataFrame:
    if "status" not in frame:
        return frame.copy()
    return frame[frame["status"].ne("retired")].reset_index(drop=True)  # no status: active


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    out = {}
    for c in frame.columns:
        v = frame[c].to_numpy()
        out[c] = v.astype(np.float32) if c in (*REWARD_ITEM_COLUMNS, *CHALLENGE_ITEM_COLUMNS) else v
    return out


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def record_of(kind: ItemKind, row: Mapping[str, Any]) -> RewardRecord | ChallengeRecord:
    """A stored row (``created_us``/``updated_us``) as its public record."""
    fields = {k: v for k, v in row.items() if k not in ("created_us", "updated_us")}
    model: Callable[..., RewardRecord | ChallengeRecord] = (
        RewardRecord if kind == "rewards" else ChallengeRecord)
    return model(**fields, created_at=_from_micros(row["created_us"]),
                 updated_at=_from_micros(row["updated_us"]))
