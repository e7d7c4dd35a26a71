"""Point-in-time member features, one row per member per day, plus item features.

A row stamped ``start + d days`` (00:00 UTC) only sees events with a timestamp strictly before
that instant, and offer/challenge outcomes only once they are known (``outcome_timestamp``). So a
Feast point-in-time join of a decision at any time during day ``d`` picks the row of day ``d`` and
can never leak that day's events.

Everything is computed on dense (members x days) arrays with cumulative sums: a windowed count is
the difference of two cumulative columns, so the whole table costs a handful of numpy passes,
with no per-member Python loop. Large worlds are processed in member chunks so memory stays flat.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from serving.contract.vocabulary import MISSING_RATE, NEVER_DAYS, Vocabulary
from serving.decisioning.catalog import challenge_item_features, reward_item_features

DAY = np.timedelta64(1, "D")
WINDOWS = (7, 30, 90)
#: 90-day counts also expressed per observed day: a count over a window longer than the history
#: we have is an underestimate, and the per-day rate stays comparable across history lengths.
RATE_BASES = ("visits", "purchases", "spend", "reviews", "referrals")
TS_DTYPE = "datetime64[us, UTC]"
#: The vocabulary the features were built with (feature names depend on it), beside them.
VOCABULARY_FILE = "vocabulary.json"


@dataclass(frozen=True)
class World:
    """A program's history as features see it (training.data.history builds it from the event
    store): members (member_id str, joined_at, tier, consent), the catalog, every event, and
    the logged decisions with their outcomes (offers, assignments)."""

    start: pd.Timestamp
    days: int
    members: pd.DataFrame
    rewards: pd.DataFrame
    challenges: pd.DataFrame
    events: pd.DataFrame
    offers: pd.DataFrame
    assignments: pd.DataFrame
    #: the catalog's vocabulary: tier codes, and the per-category / type / kind features
    vocabulary: Vocabulary


# --------------------------------------------------------------------------------------------
# dense helpers


def _day_index(ts: pd.Series, start: pd.Timestamp, days: int) -> np.ndarray:
    """Day number of each timestamp, clipped to [0, days] (``days`` = after the window)."""
    delta = (ts - start).to_numpy(dtype="timedelta64[us]")
    return np.clip(np.floor_divide(delta, DAY).astype(np.int64), 0, days)


def _daily(rows: np.ndarray, days_idx: np.ndarray, n_members: int, n_days: int,
           weights: np.ndarray | None = None) -> np.ndarray:
    """Sum per (member, day) into a dense (members, n_days + 1) array; last column = overflow."""
    flat = rows * (n_days + 1) + days_idx
    out = np.bincount(flat, weights=weights, minlength=n_members * (n_days + 1))
    return out.reshape(n_members, n_days + 1)


def _cumulative(daily: np.ndarray) -> np.ndarray:
    """C[:, d] = sum of days < d, for d in 0..days (overflow column excluded)."""
    c = np.zeros((daily.shape[0], daily.shape[1]), dtype=np.float64)
    np.cumsum(daily[:, :-1], axis=1, out=c[:, 1:])
    return c


def _window(c: np.ndarray, w: int) -> np.ndarray:
    """Sum over the ``w`` days before each feature day, from a cumulative array."""
    d = np.arange(c.shape[1])
    return c - c[:, np.maximum(d - w, 0)]


def _ratio(num: np.ndarray, den: np.ndarray, missing: float = MISSING_RATE) -> np.ndarray:
    out = np.full(num.shape, missing, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _last_true_before(mask: np.ndarray) -> np.ndarray:
    """L[:, d] = last day index < d where ``mask`` is true, or -1 (d in 0..days)."""
    n_days = mask.shape[1]
    idx = np.where(mask, np.arange(n_days), -1)
    last = np.maximum.accumulate(idx, axis=1)
    return np.concatenate([np.full((mask.shape[0], 1), -1), last], axis=1)


# --------------------------------------------------------------------------------------------
# feature computation (pure)


def member_feature_names(vocabulary: Vocabulary) -> list[str]:
    """Column order of the member feature table (the Feast feature views declare the same).

    Per-category, per-reward-type and per-challenge-kind features are named from the catalog's
    vocabulary, so a program with other categories gets its own features."""
    names = ["tier_rank", "tenure_days", "observed_days", "consent",
             "days_since_last_visit", "days_since_last_purchase", "current_streak",
             "active_days_30d"]
    for w in WINDOWS:
        names += [f"visits_{w}d", f"purchases_{w}d", f"spend_{w}d"]
    names += ["avg_basket_90d", "reviews_90d", "referrals_90d", "categories_90d",
              "points_balance"]
    names += [f"{n}_per_day_90d" for n in RATE_BASES]
    names += ["active_day_share_90d", "visits_per_active_day_90d", "repeat_active_share_90d",
              "reviews_per_visit_90d", "referrals_per_visit_90d"]
    names += [f"share_{c}_90d" for c in vocabulary.categories]
    names += ["offers_received", "redemption_rate", "conversion_rate_offered",
              "conversion_rate_holdout"]
    names += [f"redeem_rate_{t}" for t in vocabulary.reward_types]
    names += [f"offers_{t}" for t in vocabulary.reward_types]
    names += ["challenges_assigned", "challenge_completion_rate", "mean_completed_target_ratio"]
    names += [f"completion_rate_{k}" for k in vocabulary.challenge_kinds]
    return names


def compute_member_features(world: World, members: pd.DataFrame | None = None) -> pd.DataFrame:
    """Member features for every member in ``members`` (default: all) and every day 0..days.

    Rows are (member_id, event_timestamp); event_timestamp = start + d days, d = 0..days, so the
    last row of a member describes it at the end of the window (what materialize serves).
    """
    members = (world.members if members is None else members).sort_values("member_id")
    ids = members["member_id"].to_numpy(dtype=str)
    n, days, start = len(ids), world.days, world.start
    if n == 0:
        return pd.DataFrame(columns=["member_id", "event_timestamp",
                                     *member_feature_names(world.vocabulary)])

    def rows_of(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        member = frame["member_id"].to_numpy(dtype=str)
        pos = np.searchsorted(ids, member)
        pos_c = np.minimum(pos, n - 1)
        keep = ids[pos_c] == member
        return frame[keep], pos_c[keep]

    ev, ev_rows = rows_of(world.events)
    ev_day = _day_index(ev["event_timestamp"], start, days)
    etype = ev["event_type"].to_numpy()

    def daily_of(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return _daily(ev_rows[mask], ev_day[mask], n, days, w)

    is_visit, is_purchase = etype == "visit", etype == "purchase"
    visits_d = daily_of(is_visit)
    purch_d = daily_of(is_purchase)
    spend_d = daily_of(is_purchase, np.nan_to_num(ev["amount"].to_numpy(dtype=np.float64)))
    active_d = (visits_d + purch_d)[:, :-1] > 0

    f: dict[str, np.ndarray] = {}
    d_axis = np.arange(days + 1)[None, :]
    f["tier_rank"] = np.repeat(
        np.array(world.vocabulary.codes("tier", members["tier"]), dtype=np.float64)[:, None],
        days + 1, axis=1)
    signup = members["joined_at"].dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    day0 = np.datetime64(start.tz_convert(None).to_datetime64(), "us")
    tenure0 = (day0 - signup) / DAY
    f["tenure_days"] = tenure0[:, None] + d_axis
    # Days of history behind the windowed counts: a member seen for 10 days cannot have 30
    # days of visits, and the model must be able to tell "quiet" from "new to us".
    f["observed_days"] = np.clip(np.minimum(f["tenure_days"], d_axis), 0, max(WINDOWS))
    # Consent never recorded counts as not given (0).
    f["consent"] = np.repeat(members["consent"].astype("float64").fillna(0.0).to_numpy()[:, None],
                             days + 1, axis=1)

    def recency(mask_daily: np.ndarray) -> np.ndarray:
        last = _last_true_before(mask_daily)
        return np.where(last >= 0, d_axis - last, NEVER_DAYS)

    f["days_since_last_visit"] = recency(visits_d[:, :-1] > 0)
    f["days_since_last_purchase"] = recency(purch_d[:, :-1] > 0)
    f["current_streak"] = (d_axis - 1) - _last_true_before(~active_d)
    active_c = _cumulative(np.concatenate([active_d, np.zeros((n, 1))], axis=1))
    f["active_days_30d"] = _window(active_c, 30)

    visits_c, purch_c, spend_c = _cumulative(visits_d), _cumulative(purch_d), _cumulative(spend_d)
    for w in WINDOWS:
        f[f"visits_{w}d"] = _window(visits_c, w)
        f[f"purchases_{w}d"] = _window(purch_c, w)
        f[f"spend_{w}d"] = _window(spend_c, w)
    f["avg_basket_90d"] = _ratio(f["spend_90d"], f["purchases_90d"], missing=0.0)
    f["reviews_90d"] = _window(_cumulative(daily_of(etype == "review")), 90)
    f["referrals_90d"] = _window(_cumulative(daily_of(etype == "referral")), 90)
    observed = np.maximum(f["observed_days"], 1.0)
    for base in RATE_BASES:
        f[f"{base}_per_day_90d"] = f[f"{base}_90d"] / observed
    # Habits that tell player types apart: how regular (share of days active), how bursty
    # (visits per active day), how streaky (active days following an active day), how social.
    active_90 = _window(active_c, 90)
    repeat = np.concatenate([np.zeros((n, 1), dtype=bool), active_d[:, 1:] & active_d[:, :-1]],
                            axis=1)
    repeat_90 = _window(_cumulative(np.concatenate([repeat, np.zeros((n, 1))], axis=1)), 90)
    f["active_day_share_90d"] = active_90 / observed
    f["visits_per_active_day_90d"] = _ratio(f["visits_90d"], active_90, missing=0.0)
    f["repeat_active_share_90d"] = _ratio(repeat_90, active_90, missing=0.0)
    f["reviews_per_visit_90d"] = _ratio(f["reviews_90d"], f["visits_90d"], missing=0.0)
    f["referrals_per_visit_90d"] = _ratio(f["referrals_90d"], f["visits_90d"], missing=0.0)
    f["points_balance"] = _cumulative(daily_of(
        np.ones(len(ev), dtype=bool), np.nan_to_num(ev["points"].to_numpy(dtype=np.float64))))

    cat = ev["category"].to_numpy()
    n_categories = np.zeros((n, days + 1))
    for c in world.vocabulary.categories:
        count = _window(_cumulative(daily_of(is_purchase & (cat == c))), 90)
        f[f"share_{c}_90d"] = _ratio(count, f["purchases_90d"], missing=0.0)
        n_categories += count > 0
    f["categories_90d"] = n_categories

    _offer_features(world, rows_of, n, f)
    _challenge_features(world, rows_of, n, f)

    names = member_feature_names(world.vocabulary)
    out = pd.DataFrame({
        "member_id": np.repeat(ids, days + 1),
        "event_timestamp": pd.DatetimeIndex(
            np.tile(day0 + np.arange(days + 1) * DAY, n)).tz_localize("UTC").astype(TS_DTYPE),
    })
    for name in names:
        out[name] = f[name].astype(np.float32).ravel()
    return out


def _offer_features(world: World, rows_of, n: int, f: dict[str, np.ndarray]) -> None:
    """Redemption and conversion history, counted only once each outcome is known."""
    days = world.days
    offers, rows = rows_of(world.offers)
    day = _day_index(offers["outcome_timestamp"], world.start, days)
    treated = offers["treated"].to_numpy(dtype=bool)
    redeemed = offers["redeemed"].to_numpy(dtype=np.float64)
    converted = offers["converted"].to_numpy(dtype=np.float64)

    def cum(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return _cumulative(_daily(rows[mask], day[mask], n, days, w))

    n_treated = cum(treated)
    f["offers_received"] = n_treated
    f["redemption_rate"] = _ratio(cum(treated, redeemed), n_treated)
    f["conversion_rate_offered"] = _ratio(cum(treated, converted), n_treated)
    f["conversion_rate_holdout"] = _ratio(cum(~treated, converted), cum(~treated))

    rtype = offers["reward_id"].map(
        world.rewards.set_index("reward_id")["reward_type"]).fillna("").to_numpy()
    for t in world.vocabulary.reward_types:
        m = treated & (rtype == t)
        f[f"offers_{t}"] = cum(m)  # how much evidence stands behind the rate
        f[f"redeem_rate_{t}"] = _ratio(cum(m, redeemed), f[f"offers_{t}"])


def _challenge_features(world: World, rows_of, n: int, f: dict[str, np.ndarray]) -> None:
    """Challenge history: completion rates overall and per kind, and how hard the wins were."""
    days = world.days
    asg, rows = rows_of(world.assignments)
    day = _day_index(asg["outcome_timestamp"], world.start, days)
    templates = world.challenges.set_index("challenge_id")
    lo = asg["challenge_id"].map(templates["min_target"]).to_numpy(dtype=np.float64)
    hi = asg["challenge_id"].map(templates["max_target"]).to_numpy(dtype=np.float64)
    ratio = _ratio(asg["target"].to_numpy(dtype=np.float64) - lo, hi - lo, missing=0.0)
    done = asg["completed"].to_numpy(dtype=np.float64)
    kind = asg["challenge_id"].map(templates["kind"]).to_numpy()

    def cum(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return _cumulative(_daily(rows[mask], day[mask], n, days, w))

    every = np.ones(len(asg), dtype=bool)
    n_assigned, n_done = cum(every), cum(every, done)
    f["challenges_assigned"] = n_assigned
    f["challenge_completion_rate"] = _ratio(n_done, n_assigned)
    f["mean_completed_target_ratio"] = _ratio(cum(every, done * ratio), n_done)
    for k in world.vocabulary.challenge_kinds:
        m = kind == k
        f[f"completion_rate_{k}"] = _ratio(cum(m, done), cum(m))


# --------------------------------------------------------------------------------------------
# I/O


def _member_chunks(world: World, chunk_size: int) -> Iterator[World]:
    """Slice the world by member so each chunk's dense arrays stay small."""
    ids = np.sort(world.members["member_id"].to_numpy(dtype=str))
    frames = {name: getattr(world, name).sort_values("member_id", kind="stable")
              for name in ("events", "offers", "assignments")}
    columns = {name: frame["member_id"].to_numpy(dtype=str) for name, frame in frames.items()}
    for lo in range(0, len(ids), chunk_size):
        chunk_ids = ids[lo:lo + chunk_size]
        first, last = chunk_ids[0], chunk_ids[-1]
        sliced = {}
        for name, frame in frames.items():
            col = columns[name]
            a, b = np.searchsorted(col, first, "left"), np.searchsorted(col, last, "right")
            sliced[name] = frame.iloc[a:b]
        yield World(world.start, world.days,
                    world.members[world.members["member_id"].isin(chunk_ids)],
                    world.rewards, world.challenges, **sliced, vocabulary=world.vocabulary)


def build_features(world: World, out_dir: Path, chunk_size: int = 20_000,
                   progress: bool = True) -> dict[str, int]:
    """Write member/reward/challenge feature parquet files for Feast; returns row counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    member_path = out_dir / "member_features.parquet"
    tmp = member_path.with_suffix(".parquet.tmp")
    rows = 0
    writer: pq.ParquetWriter | None = None
    n_chunks = -(-len(world.members) // chunk_size)
    try:
        for chunk in tqdm(_member_chunks(world, chunk_size), total=n_chunks,
                          desc="member features", unit="chunk", disable=not progress):
            table = pa.Table.from_pandas(compute_member_features(chunk), preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(member_path)  # readers never see a half-written table
    # Catalog attributes are static (an edit replaces them), so every item's row is stamped
    # before the history: a point-in-time join of any logged decision finds it.
    stamp = world.start - pd.Timedelta(days=1)
    reward_item_features(world.rewards.assign(event_timestamp=stamp), world.vocabulary).to_parquet(
        out_dir / "reward_features.parquet", index=False)
    challenge_item_features(world.challenges.assign(event_timestamp=stamp),
                            world.vocabulary).to_parquet(
        out_dir / "challenge_features.parquet", index=False)
    (out_dir / VOCABULARY_FILE).write_text(json.dumps(world.vocabulary.as_dict(), indent=2) + "\n")
    return {"member_features": rows, "reward_features": len(world.rewards),
            "challenge_features": len(world.challenges)}


def built_vocabulary(features_dir: Path) -> Vocabulary:
    """The vocabulary the features in ``features_dir`` were built with (the Feast repo names
    its member features from it); FileNotFoundError saying what to run when absent."""
    path = features_dir / VOCABULARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {VOCABULARY_FILE} in {features_dir}: run `rewards features "
                                "build` first")
    return Vocabulary.from_dict(json.loads(path.read_text()))
