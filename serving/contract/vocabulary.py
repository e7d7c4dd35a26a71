"""Vocabularies: the program's tiers, regions, purchase categories, reward types and challenge
kinds, and the few values that are truly fixed.

A program's vocabularies are data: they live in the catalog store (``serving.stores.catalog``,
managed with ``rewards catalog import`` and ``PUT /v1/catalog/vocabularies/{kind}``) and arrive
here as a :class:`Vocabulary`. A value's code is its position in its list, and codes are model
features, so the lists are append only: a code never changes once given out. Tiers are listed
from the lowest to the highest (a reward's ``min_tier`` compares codes).

They live in ``serving`` because serving is the runtime contract: training may import serving,
never the reverse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

#: Value used for a rate with no history (the trees learn to split it off).
MISSING_RATE = -1.0
#: Recency reported for "never happened", in days.
NEVER_DAYS = 365.0
#: A reward's category when it applies to every category (code -1, like an unknown value).
ANY_CATEGORY = "any"

VocabularyKind = Literal["tier", "region", "category", "reward_type", "challenge_kind"]
VOCABULARY_KINDS: tuple[VocabularyKind, ...] = (
    "tier", "region", "category", "reward_type", "challenge_kind")
#: Categories, reward types and challenge kinds become parts of feature names
#: (``share_<category>_90d``, ``redeem_rate_<type>``, ``completion_rate_<kind>``), so they are
#: restricted to characters every store and query engine takes safely.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
#: Tiers and regions are only ever compared, never named in features: any printable text, as
#: members and events carry them (a tier at most 16 characters, as a ``tier_change`` event's).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]{1,32}$"
MAX_TIER_LENGTH = 16
#: Any vocabulary value (the loosest of the two; each kind's own rule: :func:`value_error`).
VALUE_PATTERN = TEXT_PATTERN
_NAME, _TEXT = re.compile(NAME_PATTERN), re.compile(TEXT_PATTERN)
_FEATURE_KINDS = ("category", "reward_type", "challenge_kind")
_FIELDS: dict[str, str] = {"tier": "tiers", "region": "regions", "category": "categories",
                           "reward_type": "reward_types", "challenge_kind": "challenge_kinds"}


def value_error(kind: str, value: object) -> str | None:
    """Why ``value`` cannot join the ``kind`` vocabulary; None when it can."""
    if kind not in _FIELDS:
        return f"unknown vocabulary kind {kind!r}; expected one of {list(VOCABULARY_KINDS)}"
    if kind in _FEATURE_KINDS:
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            return (f"{value!r} is not 1-32 characters of letters, digits, '_' or '-' "
                    f"(a {kind} becomes part of feature names)")
    elif not isinstance(value, str) or not _TEXT.fullmatch(value):
        return f"{value!r} is not 1-32 printable characters"
    if kind == "tier" and len(value) > MAX_TIER_LENGTH:
        return f"a tier is at most {MAX_TIER_LENGTH} characters, got {len(value)}"
    if kind == "category" and value == ANY_CATEGORY:
        return f"{ANY_CATEGORY!r} is reserved: a reward's category for every category"
    return None


@dataclass(frozen=True)
class Vocabulary:
    """The ordered values of each kind; ``code(kind, value)`` is the value's position.

    Immutable: a changed vocabulary is a new object (``appended``), swapped in with the catalog.
    """

    tiers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    reward_types: tuple[str, ...] = ()
    challenge_kinds: tuple[str, ...] = ()
    _index: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # dict lookups: code() runs per catalog item and per request (a tier hint)
        object.__setattr__(self, "_index", {
            kind: {v: i for i, v in enumerate(getattr(self, name))}
            for kind, name in _FIELDS.items()})

    def values(self, kind: str) -> tuple[str, ...]:
        """The ``kind`` values in code order; KeyError for an unknown kind."""
        return getattr(self, _FIELDS[kind])  # type: ignore[no-any-return]

    def code(self, kind: str, value: str | None) -> int:
        """Integer code of a value; -1 for anything unknown, None or ``any`` (every category)."""
        if value is None:
            return -1
        return self._index[kind].get(value, -1)

    def codes(self, kind: str, values: Iterable[str | None]) -> list[int]:
        lookup = self._index[kind]
        return [-1 if v is None else lookup.get(v, -1) for v in values]

    def __contains__(self, item: tuple[str, str]) -> bool:
        kind, value = item
        return value in self._index.get(kind, {})

    def appended(self, kind: str, values: Iterable[str]) -> Vocabulary:
        """This vocabulary with the values not yet in ``kind`` appended, in the order given."""
        current = list(self.values(kind))
        for v in values:
            if v not in current:
                current.append(v)
        return Vocabulary(**{**self.as_lists(), _FIELDS[kind]: tuple(current)})  # type: ignore[arg-type]

    def as_lists(self) -> dict[str, tuple[str, ...]]:
        """Field name -> values (the constructor's keywords)."""
        return {name: getattr(self, name) for name in _FIELDS.values()}

    def as_dict(self) -> dict[str, list[str]]:
        """Kind -> values, as the API and ``rewards catalog list --kind vocabulary`` show them."""
        return {kind: list(self.values(kind)) for kind in VOCABULARY_KINDS}

    @classmethod
    def from_dict(cls, kinds: Mapping[str, Iterable[str]]) -> Vocabulary:
        """From kind -> values (missing kinds are empty); ValueError naming a bad kind or value."""
        lists: dict[str, tuple[str, ...]] = {}
        for kind, values in kinds.items():
            if kind not in _FIELDS:
                raise ValueError(f"unknown vocabulary kind {kind!r}; expected one of "
                                 f"{list(VOCABULARY_KINDS)}")
            values = tuple(values)
            for v in values:
                problem = value_error(kind, v)
                if problem:
                    raise ValueError(f"{kind}: {problem}")
            if len(set(values)) != len(values):
                raise ValueError(f"{kind}: repeated values in {list(values)}")
            lists[_FIELDS[kind]] = values
        return cls(**lists)  # type: ignore[arg-type]
