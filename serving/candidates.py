"""Model input rows, built by the same code in training and serving.

A model's input is its FeatureService's features (in the service's order) followed by a few
derived columns that depend on the (member, item) pair. Training calls these functions on
logged pairs; serving calls them on a member crossed with every candidate. Any difference
between the two would be training/serving skew, so there is exactly one implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serving.contract import CATEGORIES, CHALLENGE_KINDS, MISSING_RATE, REWARD_TYPES

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
    """Per row, the column ``names[index]``; ``missing`` where index is -1."""
    values = [np.asarray(cols[n], dtype=np.float32) for n in names]
    safe = np.clip(index, 0, len(names) - 1)
    if all(v.ndim == 0 for v in values):  # one member's scalars (the request path): a lookup
        picked = np.array(values, dtype=np.float32)[safe]
    else:
        stacked = np.stack(values, axis=1)
        picked = stacked[np.arange(len(index)), safe]
    return np.where(index >= 0, picked, np.float32(missing)).astype(np.float32)


def reward_derived(cols: Columns, treated: np.ndarray) -> dict[str, np.ndarray]:
    """Pair features: the member's history with this reward's type and category."""
    type_code = np.asarray(cols["reward_type_code"]).astype(np.int64)
    cat_code = np.asarray(cols["reward_category_code"]).astype(np.int64)
    treated = np.asarray(treated, dtype=np.float32)
    type_rate = _pick(cols, [f"redeem_rate_{t}" for t in REWARD_TYPES], type_code, MISSING_RATE)
    type_offers = _pick(cols, [f"offers_{t}" for t in REWARD_TYPES], type_code, 0.0)
    share = _pick(cols, [f"share_{c}_90d" for c in CATEGORIES], cat_code, 0.0)
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


def difficulty_derived(cols: Columns, target: np.ndarray) -> dict[str, np.ndarray]:
    """Pair features: the target, how hard it is within the template, the member's kind record."""
    target = np.asarray(target, dtype=np.float32)
    lo = np.asarray(cols["challenge_min_target"], dtype=np.float32)
    hi = np.asarray(cols["challenge_max_target"], dtype=np.float32)
    span = np.where(hi > lo, hi - lo, np.float32(1.0))
    kind = np.asarray(cols["challenge_kind_code"]).astype(np.int64)
    return {
        "target": target,
        "target_ratio": ((target - lo) / span).astype(np.float32),
        "kind_completion_rate": _pick(
            cols, [f"completion_rate_{k}" for k in CHALLENGE_KINDS], kind, MISSING_RATE),
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


def reward_matrix(cols: Columns, treated: np.ndarray, service_features: Sequence[str]) -> np.ndarray:
    """Reward-model inputs for (member, reward) rows; treated=0 rows are the no-offer control."""
    return assemble(cols, reward_derived(cols, treated), service_features, REWARD_DERIVED)


def difficulty_matrix(cols: Columns, target: np.ndarray,
                      service_features: Sequence[str]) -> np.ndarray:
    """Difficulty-model inputs for (member, template, target) rows."""
    return assemble(cols, difficulty_derived(cols, target), service_features, DIFFICULTY_DERIVED)


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
