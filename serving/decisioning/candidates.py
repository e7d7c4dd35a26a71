"""Model input rows, built by the same code in training and serving.

A model's input is its FeatureService's features (in the service's order) followed by a few
derived columns that depend on the (member, item) pair. Training calls these functions on
logged pairs; serving calls them on a member crossed with every candidate. Any difference
between the two would be training/serving skew, so there is exactly one implementation.

The derived picks (the member's redeem rate for the reward's type, share of its category, ...)
read member features named after the catalog's vocabulary (``redeem_rate_<type>``); a value
appended to the vocabulary after the features were defined has no such feature yet, and reads
as "no history" (MISSING_RATE, or 0 for counts and shares) until it does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from serving.contract.vocabulary import MISSING_RATE, NEVER_DAYS, Vocabulary

Columns = Mapping[str, np.ndarray]

REWARD_DERIVED: tuple[str, ...] = (
    "treated", "type_redeem_rate", "type_offers", "category_share", "tier_gap")
DIFFICULTY_DERIVED: tuple[str, ...] = ("target", "target_ratio", "kind_completion_rate")
#: Columns the difficulty model is constrained to be monotone decreasing in.
DIFFICULTY_DECREASING: tuple[str, ...] = ("target", "target_ratio")
#: Reward attributes of the "no offer" control row.
NO_OFFER = -1.0
REWARD_ITEM_COLUMNS: tuple[str, ...] = (
    "reward_type_code", "reward_category_code", "reward_cost", "reward_min_tier_rank")
#: Template attributes (challenge_attributes view). Listed, not matched by prefix: the member
#: feature challenge_completion_rate shares the prefix and must never come from the item side.
CHALLENGE_ITEM_COLUMNS: tuple[str, ...] = (
    "challenge_kind_code", "challenge_duration_days", "challenge_min_target",
    "challenge_max_target", "challenge_target_step", "challenge_points")


def _pick(cols: Columns, names: Sequence[str], index: np.ndarray, missing: float) -> np.ndarray:
    """Per row, the column ``names[index]``; ``missing`` where index is -1 or the column is
    absent (a vocabulary value without its member feature)."""
    index = np.asarray(index)
    if not names:  # an empty vocabulary: nothing to pick from
        return np.full(index.shape, missing, dtype=np.float32)
    values = [np.asarray(cols[n], dtype=np.float32) if n in cols else np.float32(missing)
              for n in names]
    if any(v.ndim for v in values):  # rows of members: a missing column is a column of missing
        rows = len(index)
        values = [v if v.ndim else np.full(rows, v, dtype=np.float32) for v in values]
    safe = np.clip(index, 0, len(names) - 1)
    if all(v.ndim == 0 for v in values):  # one member's scalars (the request path): a lookup
        picked = np.array(values, dtype=np.float32)[safe]
    else:
        stacked = np.stack(values, axis=1)
        picked = stacked[np.arange(len(index)), safe]
    return np.where(index >= 0, picked, np.float32(missing)).astype(np.float32)


def reward_derived(cols: Columns, treated: np.ndarray, vocabulary: Vocabulary
                   ) -> dict[str, np.ndarray]:
    """Pair features: the member's history with this reward's type and category.

    ``vocabulary``: the catalog's, which names the member features picked."""
    vocab = vocabulary
    type_code = np.asarray(cols["reward_type_code"]).astype(np.int64)
    cat_code = np.asarray(cols["reward_category_code"]).astype(np.int64)
    treated = np.asarray(treated, dtype=np.float32)
    type_rate = _pick(cols, [f"redeem_rate_{t}" for t in vocab.reward_types], type_code,
                      MISSING_RATE)
    type_offers = _pick(cols, [f"offers_{t}" for t in vocab.reward_types], type_code, 0.0)
    share = _pick(cols, [f"share_{c}_90d" for c in vocab.categories], cat_code, 0.0)
    tier_gap = (np.asarray(cols["tier_rank"], dtype=np.float32)
                - np.asarray(cols["reward_min_tier_rank"], dtype=np.float32))
    off = treated == 0
    return {
        "treated": treated,
        "type_redeem_rate": np.where(off, NO_OFFER, type_rate).astype(np.float32),
        "type_offers": np.where(off, NO_OFFER, type_offers).astype(np.float32),
        "category_share": np.where(off, NO_OFFER, share).astype(np.float32),
        "tier_gap": np.where(off, NO_OFFER, tier_gap).astype(np.float32),
    }


def difficulty_derived(cols: Columns, target: np.ndarray, vocabulary: Vocabulary
                       ) -> dict[str, np.ndarray]:
    """Pair features: the target, how hard it is within the template, the member's kind record."""
    vocab = vocabulary
    target = np.asarray(target, dtype=np.float32)
    lo = np.asarray(cols["challenge_min_target"], dtype=np.float32)
    hi = np.asarray(cols["challenge_max_target"], dtype=np.float32)
    span = np.where(hi > lo, hi - lo, np.float32(1.0))
    kind = np.asarray(cols["challenge_kind_code"]).astype(np.int64)
    return {
        "target": target,
        "target_ratio": ((target - lo) / span).astype(np.float32),
        "kind_completion_rate": _pick(
            cols, [f"completion_rate_{k}" for k in vocab.challenge_kinds], kind, MISSING_RATE),
    }


def assemble(cols: Columns, derived: Mapping[str, np.ndarray], service_features: Sequence[str],
             derived_names: Sequence[str]) -> np.ndarray:
    """The float32 input matrix in model order: service features, then derived columns.

    A column is an array with one value per row, or a scalar (0-d) shared by every row: the
    request path passes one member's features as scalars next to the candidates' arrays, which
    gives the same matrix as crossing them without materializing a column per feature."""
    names = [*service_features, *derived_names]
    rows = len(next(iter(derived.values())))
    X = np.empty((rows, len(names)), dtype=np.float32)
    scalar_at, scalars = [], []
    for j, name in enumerate(service_features):
        value = cols[name]
        if isinstance(value, np.ndarray) and value.ndim:
            X[:, j] = value
        else:  # one member's feature, the same on every row
            scalar_at.append(j)
            scalars.append(value)
    if scalar_at:  # one broadcast assignment instead of one per member feature
        X[:, scalar_at] = np.asarray(scalars, dtype=np.float32)
    for j, name in enumerate(derived_names, start=len(service_features)):
        X[:, j] = derived[name]
    return X


def reward_matrix(cols: Columns, treated: np.ndarray, service_features: Sequence[str],
                  vocabulary: Vocabulary) -> np.ndarray:
    """Reward-model inputs for (member, reward) rows; treated=0 rows are the no-offer control."""
    return assemble(cols, reward_derived(cols, treated, vocabulary), service_features,
                    REWARD_DERIVED)


def difficulty_matrix(cols: Columns, target: np.ndarray, service_features: Sequence[str],
                      vocabulary: Vocabulary) -> np.ndarray:
    """Difficulty-model inputs for (member, template, target) rows."""
    return assemble(cols, difficulty_derived(cols, target, vocabulary), service_features,
                    DIFFICULTY_DERIVED)


def cross(members: Columns, items: Columns) -> dict[str, np.ndarray]:
    """Every member crossed with every item, member-major: row i*m + j = (member i, item j).

    Evaluation and batch scoring pass chunks of members; the request path does not cross at
    all: it passes one member's values as scalars, which ``assemble`` broadcasts.
    """
    n = len(next(iter(members.values())))
    m = len(next(iter(items.values())))
    out = {name: np.repeat(np.asarray(v), m) for name, v in members.items()}
    out.update({name: np.tile(np.asarray(v), n) for name, v in items.items()})
    return out


def no_offer_items(n: int = 1) -> dict[str, np.ndarray]:
    """Reward columns of the control ("no offer") row."""
    return {name: np.full(n, NO_OFFER, dtype=np.float32) for name in REWARD_ITEM_COLUMNS}


class MemberRows:
    """One model's candidate matrix for a fixed item set, with the member's values left open.

    The request path builds the same matrix for every member: only the member's values change.
    Every entry of ``build``'s output is an item constant plus at most one member feature (the
    member's own columns; derived picks such as the redeem rate of the reward's type; shifts
    such as tier_rank - min tier), so the matrix is ``base`` plus the member's values scattered
    into fixed places. This class finds those places by probing ``build`` (the reference
    builder above, via reward_inputs/difficulty_inputs below) with unit members,
    checks the result against ``build`` on random members, and then assembles a request's
    matrix with one copy, one broadcast (columns that are a member feature on every row) and
    one scatter (the derived entries): ~35 us instead of ~220 us of small numpy calls.
    If ``build`` ever stops having that shape (a derived column that multiplies two member
    features, say), construction raises instead of returning different rows.
    """

    def __init__(self, build: Callable[[dict[str, float]], np.ndarray],
                 member_names: Sequence[str], checks: int = 8, seed: int = 0) -> None:
        self.member_names = list(member_names)
        zero = dict.fromkeys(self.member_names, 0.0)
        base = build(zero)
        source = np.full(base.shape, -1, dtype=np.int64)
        for k, name in enumerate(self.member_names):
            changed = build({**zero, name: 1.0}) != base
            if (source[changed] >= 0).any():
                raise ValueError(f"an input depends on {name!r} and another member feature")
            source[changed] = k
        self.base = base
        # a column that copies one member feature on every row is a broadcast assignment; the
        # rest (derived picks and shifts) a scatter-add at flat positions
        # (no candidate at all, e.g. every template retired: nothing to place, and matrix
        # returns the empty matrix)
        whole = [j for j in range(base.shape[1]) if len(base) and source[0, j] >= 0
                 and (source[:, j] == source[0, j]).all() and not base[:, j].any()]
        self._broadcast_cols = np.array(whole, dtype=np.int64)
        self._broadcast_source = source[0, whole] if whole else np.zeros(0, dtype=np.int64)
        scattered = source.copy()
        scattered[:, whole] = -1
        self._flat = np.flatnonzero(scattered >= 0)
        self._flat_source = scattered.ravel()[self._flat]
        rng = np.random.default_rng(seed)
        for _ in range(checks):  # shifts and copies only: verified, not assumed
            values = rng.normal(0.0, 3.0, len(self.member_names)).astype(np.float32)
            values[rng.random(len(values)) < 0.1] = np.nan
            member = dict(zip(self.member_names, values.tolist(), strict=True))
            if not np.array_equal(self.matrix(member), build(member), equal_nan=True):
                raise ValueError("the candidate builder is not a member shift of its items")

    def matrix(self, features: Mapping[str, float], rows: np.ndarray | None = None) -> np.ndarray:
        """The model input for one member, optionally only some candidate ``rows`` (in order)."""
        member = np.array([features.get(n, 0.0) for n in self.member_names], dtype=np.float32)
        X = self.base.copy()
        for start, stop, source in self._broadcast_runs:  # slices: cheaper than a column list
            X[:, start:stop] = member[source]
        X.ravel()[self._flat] += member[self._flat_source]  # ravel of a fresh copy: a view
        return X if rows is None else X[rows]

    def stack(self, members: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
        """The inputs of many members at once, member-major: rows ``i * R`` to ``i * R + R - 1``
        are ``matrix`` of member ``i``, whose values (in ``member_names`` order) are ``members[i]``.

        Batch scoring builds a chunk this way: a broadcast and a scatter over the whole chunk
        instead of one crossed column per feature. The scattered entries are summed in float32
        as in ``matrix``, so ``dtype=np.float64`` holds exactly the float32 matrix's values, for
        a runtime that reads float64 without converting a copy.
        """
        values = np.asarray(members, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != len(self.member_names):
            raise ValueError(f"members must be (n, {len(self.member_names)}), got {values.shape}")
        n, (r, f) = len(values), self.base.shape
        X = np.empty((n, r, f), dtype=dtype)
        X[:] = self.base
        for start, stop, source in self._broadcast_runs:  # slices: ~3x faster than a column list
            X[:, :, start:stop] = values[:, None, source]
        X.reshape(n, r * f)[:, self._flat] = (self.base.ravel()[self._flat]
                                              + values[:, self._flat_source])
        return X.reshape(n * r, f)

    @functools.cached_property
    def _broadcast_runs(self) -> list[tuple[int, int, np.ndarray]]:
        """The broadcast columns as runs of adjacent columns: (start, stop, member indices)."""
        cols, source = self._broadcast_cols, self._broadcast_source
        breaks = np.flatnonzero(np.diff(cols) != 1) + 1
        return [(int(c[0]), int(c[-1]) + 1, s)
                for c, s in zip(np.split(cols, breaks), np.split(source, breaks), strict=True)
                if len(c)]


def cold_start_features(names: list[str], tier: str | None,
                        vocabulary: Vocabulary) -> dict[str, float]:
    """A brand-new member of the given tier (the lowest when none or unknown): no history,
    every rate 'unknown'. Tier ranks are positions in the catalog's ``vocabulary``."""
    tiers = vocabulary.tiers
    values = {}
    for n in names:
        if n.startswith(("redeem_rate_", "completion_rate_")) or n.endswith("_rate") or n in (
                "redemption_rate", "conversion_rate_offered", "conversion_rate_holdout",
                "challenge_completion_rate", "mean_completed_target_ratio"):
            values[n] = MISSING_RATE
        elif n.startswith("days_since"):
            values[n] = NEVER_DAYS
        else:
            values[n] = 0.0
    values["tier_rank"] = float(max(tiers.index(tier) if tier in tiers else 0, 0))
    return values


def reward_inputs(features: dict[str, float], rewards: Mapping[str, Any],
                  names: list[str], vocabulary: Vocabulary) -> np.ndarray:
    """Model rows for one member x every candidate reward, then the member's no-offer row."""
    member: dict[str, Any] = {f: features.get(f, 0.0) for f in names
                              if f not in REWARD_ITEM_COLUMNS}
    items = {c: np.asarray(rewards[c], dtype=np.float32) for c in REWARD_ITEM_COLUMNS}
    m = len(items[REWARD_ITEM_COLUMNS[0]])
    # the member's values are scalars broadcast over the candidates: the same rows as
    # reward_matrix(cross(...)) (tests/unit/test_serving_logic.py), without a column per feature
    control = no_offer_items(1)
    both = {c: np.append(items[c], control[c]) for c in REWARD_ITEM_COLUMNS}
    return reward_matrix({**member, **both}, np.append(np.ones(m), 0.0), names, vocabulary)


def difficulty_inputs(features: dict[str, float], grid: Mapping[str, Any],
                      names: list[str], vocabulary: Vocabulary) -> np.ndarray:
    """Model rows for one member x every (template, allowed target) in ``grid``."""
    member: dict[str, Any] = {f: features.get(f, 0.0) for f in names
                              if f not in CHALLENGE_ITEM_COLUMNS}
    items = {c: np.asarray(grid[c], dtype=np.float32) for c in CHALLENGE_ITEM_COLUMNS}
    return difficulty_matrix({**member, **items}, np.asarray(grid["target"]), names, vocabulary)


def item_rows(kind: str, items: Mapping[str, Any], service_features: Sequence[str],
              vocabulary: Vocabulary) -> MemberRows:
    """A model's compiled candidate matrix over ``items`` (columns by name): every reward then
    the no-offer row (``kind`` "reward"), or every (template, target) row ("difficulty").
    ``vocabulary`` (the catalog's) names the member features the derived columns pick."""
    names = list(service_features)
    if kind == "reward":
        build = lambda m: reward_inputs(m, items, names, vocabulary)  # noqa: E731
        item_names = REWARD_ITEM_COLUMNS
    else:
        build = lambda m: difficulty_inputs(m, items, names, vocabulary)  # noqa: E731
        item_names = CHALLENGE_ITEM_COLUMNS
    return MemberRows(build, [f for f in names if f not in item_names])


class CatalogColumns(Protocol):
    """What candidate rows read of a catalog (serving.decisioning.catalog.Catalog, which
    imports this module): its rewards and its template x target grid by column, and the
    vocabulary the derived columns pick member features by."""

    @property
    def reward_cols(self) -> Mapping[str, Any]: ...
    @property
    def target_cols(self) -> Mapping[str, Any]: ...
    @property
    def vocabulary(self) -> Vocabulary: ...


def candidate_rows(catalog: CatalogColumns, kind: str,
                   service_features: Sequence[str]) -> MemberRows:
    """:func:`item_rows` over the whole catalog: every reward (``kind`` "reward") or every
    template x allowed target ("difficulty"). The request path (one member), batch scoring
    (member chunks) and offline evaluation all build their rows this way."""
    cols = catalog.reward_cols if kind == "reward" else catalog.target_cols
    return item_rows(kind, cols, service_features, catalog.vocabulary)
