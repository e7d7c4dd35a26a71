"""Training sets: logged decisions joined point-in-time with a FeatureService, split by time.

The logged offers and challenge assignments are the labels; Feast supplies the features as they
were at each decision instant. Rows whose outcome was not known by the end of the data window
are dropped, because their label is not final.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from serving.contract.vocabulary import Vocabulary
from training.data.features import built_vocabulary
from training.data.decision_log import closes_at
from training.data.history import HistoryMeta, read_history_meta
from serving.decisioning.candidates import NO_OFFER, REWARD_ITEM_COLUMNS, difficulty_matrix, reward_matrix
from serving.config import StoreSettings
from training.data.feast_ops import historical_features

#: Reward-model classes: P(redeem) = p[2]; P(convert) = p[1] + p[2].
REWARD_CLASSES = ["no_conversion", "converted_not_redeemed", "redeemed"]
DIFFICULTY_CLASSES = ["not_completed", "completed"]
#: What to do when there is too little to train on (every such error ends with it).
MORE_DATA = ("wait for more decisions or import more history (a simulated world: simulate more "
             "days)")


@dataclass(frozen=True)
class TimeSplit:
    """Half-open day boundaries: train [start, valid_from), valid [valid_from, test_from), test."""

    start: pd.Timestamp
    valid_from: pd.Timestamp
    test_from: pd.Timestamp
    end: pd.Timestamp

    @classmethod
    def for_decisions(cls, meta: HistoryMeta, decisions: pd.Series, valid_share: float,
                      test_share: float) -> TimeSplit:
        """Whole-day boundaries over the span of decisions whose outcome is known.

        Splitting that span (not the whole world) keeps every period non-empty when outcomes
        take long to resolve (a 14-day challenge started near the end is not yet labelled).
        """
        start, end = meta.start_ts, meta.end_ts
        # the span runs from the first decision's day: a program whose history predates its
        # first logged decision (a service that started later) still splits its decisions
        first = max(decisions.min().floor("D"), start) if len(decisions) else start
        span = int((decisions.max() - first) / pd.Timedelta(days=1)) + 1 if len(decisions) else 0
        test_days = max(1, round(span * test_share))
        valid_days = max(1, round(span * valid_share))
        if test_days + valid_days >= span:
            raise ValueError(f"decisions span {span} days: too short to split into "
                             f"train/valid/test: {MORE_DATA}")
        test_from = first + pd.Timedelta(days=span - test_days)
        split = cls(start, test_from - pd.Timedelta(days=valid_days), test_from, end)
        if set(split.part(decisions)) == {"train", "valid", "test"}:
            return split
        # Decisions with gaps between them (a service deciding in rounds, a campaign calendar):
        # a share of days can fall in a gap and leave a period empty, so take day boundaries
        # at shares of the decisions instead.
        days = decisions.dt.floor("D").value_counts().sort_index()
        after = days[::-1].cumsum()[::-1] / days.sum()  # share of decisions on or after a day
        test_day = after[after >= test_share].index.max()
        valid_day = after[after >= test_share + valid_share].index.max()
        if not (days.index.min() < valid_day < test_day):
            raise ValueError(f"decisions on {len(days)} days: too few to split into "
                             f"train/valid/test: {MORE_DATA}")
        return cls(start, valid_day, test_day, end)

    def part(self, ts: pd.Series) -> np.ndarray:
        """'train' | 'valid' | 'test' for each decision timestamp."""
        return np.select([ts < self.valid_from, ts < self.test_from], ["train", "valid"], "test")

    def as_dict(self) -> dict[str, str]:
        return {k: str(getattr(self, k).date()) for k in ("start", "valid_from", "test_from", "end")}


@dataclass
class Dataset:
    """Model inputs in model order, labels, and the logged rows they came from."""

    X: np.ndarray
    y: np.ndarray
    part: np.ndarray
    rows: pd.DataFrame
    service_features: list[str]
    derived_features: list[str]
    split: TimeSplit
    #: the catalog vocabulary the features were built with (derived inputs pick by it)
    vocabulary: Vocabulary
    #: per-row training weights (None: all 1), see :func:`logging_weights`
    weight: np.ndarray | None = None

    def subset(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.part == name
        return self.X[mask], self.y[mask]

    def weights(self, name: str) -> np.ndarray | None:
        return None if self.weight is None else self.weight[self.part == name]

    @property
    def input_names(self) -> list[str]:
        return [*self.service_features, *self.derived_features]

    def fingerprint(self) -> str:
        """Stable hash of inputs and labels: two runs on the same data log the same value."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.X).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        h.update(json.dumps(self.input_names).encode())
        return h.hexdigest()[:16]


#: Cap of a row's weight, in multiples of the median weight of its source: a rare action shown
#: with a tiny exploration probability must not dominate a fit.
WEIGHT_CAP = 20.0


def logging_weights(rows: pd.DataFrame, probability: str = "propensity",
                    power: float = 1.0) -> np.ndarray | None:
    """Inverse-probability weights for decisions the service chose with a non-uniform policy.

    The service's model policy shows its favourite items far more often than the rest, so an
    unweighted fit learns the favourites' region well and the others' badly; weighting each of
    its rows by 1 / (logged probability) gives the fit the action mix of a uniform policy.
    Imported rows and rows of uniform policies (cold start) keep weight 1 (their probabilities
    are uniform already, or unknown). Weights are capped at WEIGHT_CAP x their median, raised to
    ``power`` (0.5 tempers them: most of the correction for a fraction of the variance) and
    scaled to mean 1 among the weighted rows. None when no row needs a weight.
    """
    if "policy" not in rows or probability not in rows:
        return None
    chosen = (rows["policy"] == "model").to_numpy()
    p = rows[probability].to_numpy(dtype=np.float64)
    chosen &= np.isfinite(p) & (p > 0)
    if not chosen.any():
        return None
    raw = 1.0 / p[chosen]
    raw = np.minimum(raw, WEIGHT_CAP * float(np.median(raw))) ** power
    weight = np.ones(len(rows))
    weight[chosen] = raw / raw.mean()
    return weight


#: `REWARDS_TRAIN_LOGGING_WEIGHTS`: the power of the 1 / probability weights.
WEIGHT_POWERS = {"inverse": 1.0, "sqrt": 0.5, "none": 0.0}


def reweighted(data: Dataset, how: str, probability: str) -> Dataset:
    """``data`` with the logging weights ``how`` says ("inverse", "sqrt" or "none") of its
    ``probability`` column; the builders below give "inverse"."""
    power = WEIGHT_POWERS[how]
    if data.weight is None or power == 1.0:
        return data
    return replace(data, weight=logging_weights(data.rows, probability, power) if power
                   else None)


def _final_outcomes(logged: pd.DataFrame, meta: HistoryMeta) -> pd.DataFrame:
    known = logged[closes_at(logged) < meta.known_until]
    return known.sort_values(["event_timestamp", "member_id"], kind="stable").reset_index(drop=True)


def reward_dataset(store: StoreSettings, features_dir: Path, shares: tuple[float, float],
                   service: str, service_features: list[str]) -> Dataset:
    """Offers (treated and holdout) with propensity_v1 features; label in REWARD_CLASSES.

    The offers and their outcomes are those `rewards features build` derived from the event
    store (training.data.history), over the same calendar as the features.
    """
    from serving.decisioning.candidates import REWARD_DERIVED

    meta = read_history_meta(features_dir)
    offers = _final_outcomes(pd.read_parquet(features_dir / "offers.parquet"), meta)
    split = TimeSplit.for_decisions(meta, offers["event_timestamp"], *shares)
    entity_df = offers[["member_id", "reward_id", "event_timestamp"]].copy()
    joined = historical_features(store, entity_df, service)
    joined = offers.merge(joined, on=["member_id", "reward_id", "event_timestamp"], how="left",
                          validate="one_to_one")
    for col in REWARD_ITEM_COLUMNS:  # holdout rows have no reward: the control-row sentinel
        joined[col] = joined[col].fillna(NO_OFFER)
    _require_complete(joined, service_features, service)
    cols = {c: joined[c].to_numpy() for c in service_features}
    treated = joined["treated"].to_numpy(dtype=np.float32)
    vocabulary = built_vocabulary(features_dir)
    X = reward_matrix(cols, treated, service_features, vocabulary)
    y = np.where(joined["redeemed"] == 1, 2, np.where(joined["converted"] == 1, 1, 0))
    return Dataset(X, y.astype(np.int64), split.part(joined["event_timestamp"]), joined,
                   list(service_features), list(REWARD_DERIVED), split, vocabulary,
                   logging_weights(joined))


def difficulty_dataset(store: StoreSettings, features_dir: Path, shares: tuple[float, float],
                       service: str, service_features: list[str]) -> Dataset:
    """Challenge assignments with difficulty_v1 features; label = completed."""
    from serving.decisioning.candidates import DIFFICULTY_DERIVED

    meta = read_history_meta(features_dir)
    asg = _final_outcomes(pd.read_parquet(features_dir / "assignments.parquet"), meta)
    split = TimeSplit.for_decisions(meta, asg["event_timestamp"], *shares)
    entity_df = asg[["member_id", "challenge_id", "event_timestamp"]].copy()
    joined = historical_features(store, entity_df, service)
    joined = asg.merge(joined, on=["member_id", "challenge_id", "event_timestamp"], how="left",
                       validate="one_to_one")
    _require_complete(joined, service_features, service)
    cols = {c: joined[c].to_numpy() for c in service_features}
    vocabulary = built_vocabulary(features_dir)
    X = difficulty_matrix(cols, joined["target"].to_numpy(), service_features, vocabulary)
    y = joined["completed"].to_numpy(dtype=np.int64)
    # the target was randomized around the flow-zone pick: weight by its probability
    return Dataset(X, y, split.part(joined["event_timestamp"]), joined,
                   list(service_features), list(DIFFICULTY_DERIVED), split, vocabulary,
                   logging_weights(joined, "target_probability"))


def _require_complete(frame: pd.DataFrame, features: list[str], service: str) -> None:
    """A missing feature value means a broken join (TTL, absent rows): fail, never impute."""
    missing = frame[features].isna().sum()
    bad = missing[missing > 0]
    if len(bad):
        raise ValueError(f"{service}: {int(bad.sum())} missing feature values after the "
                         f"point-in-time join, e.g. {dict(bad.head(3))}; rebuild the features")
