"""A program's history as the feature pipeline and training read it, from the event store.

The event store is the system of record: members (profiles) and events of every type. Logged
decisions are events too: an ``impression`` of a reward (a treated offer), a ``holdout`` (a
member kept out of an offer: the control group), an ``impression`` of a challenge with its
``target`` (an assignment). Their outcomes are the events that carry the decision's
``decision_id``: purchases and redemptions within the attribution window, a challenge
completion. That is how a CRM reports what happened, and how the simulator reports it too.

``derive_offers`` and ``derive_assignments`` are pure: events in, labelled decisions out.
``HistoryMeta`` (``history.json`` beside the features) records the calendar the features were
built for, so training splits and labels against the same window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from training.data.decision_log import (
    ASSIGNMENT_COLUMNS, OFFER_COLUMNS, assignments_from_log, attribute_by_item, combine,
    offers_from_log,
)
from training.data.features import World, build_features
from training.data.snapshots import input_digest, write_input_digest

if TYPE_CHECKING:
    from serving.contract.vocabulary import Vocabulary
    from serving.stores.events import EventStore

META_FILE = "history.json"
#: Where `rewards features refresh` resumes: members with events received after this time.
STATE_FILE = "refresh.json"
#: Events whose transaction is still open when the store is read are caught by the next refresh.
SAFETY = timedelta(seconds=5)
TS_DTYPE = "datetime64[us, UTC]"
DAY = pd.Timedelta(days=1)
#: Columns of the events frame the history needs (the store's names).
EVENT_COLUMNS = ("member_id", "event_timestamp", "event_type", "decision_id", "reward_id",
                 "challenge_id", "amount", "category", "points", "target", "propensity")


class HistoryMeta(BaseModel):
    """The calendar and constants the features and labels were built with."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    start: str = Field(description="first day of the history (UTC), ISO date")
    days: int = Field(gt=0)
    members: int = Field(ge=0)
    events: int = Field(0, ge=0)
    margin: float = Field(0.3, gt=0)
    attribution_window_days: int = Field(7, gt=0)
    as_of: str | None = Field(None, description="the instant the store was read as of (a "
                              "retrain's snapshot); None: through the end of the calendar")

    @property
    def start_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.start, tz="UTC")

    @property
    def end_ts(self) -> pd.Timestamp:
        """First instant after the history (outcomes at or after it are not known yet)."""
        return self.start_ts + pd.Timedelta(days=self.days)

    @property
    def known_until(self) -> pd.Timestamp:
        """Outcomes at or after this instant were not known when the history was read."""
        return pd.Timestamp(self.as_of) if self.as_of else self.end_ts


def history_exists(features_dir: Path) -> bool:
    return (features_dir / META_FILE).is_file()


def read_history_meta(features_dir: Path) -> HistoryMeta:
    """The calendar of the built features; FileNotFoundError saying what to run if absent."""
    path = features_dir / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no features at {features_dir} ({META_FILE} missing): run "
                                "`rewards features build` first")
    return HistoryMeta.model_validate(json.loads(path.read_text()))


def write_history_meta(features_dir: Path, meta: HistoryMeta) -> None:
    features_dir.mkdir(parents=True, exist_ok=True)
    tmp = features_dir / f"{META_FILE}.tmp"
    tmp.write_text(meta.model_dump_json(indent=2) + "\n")
    tmp.replace(features_dir / META_FILE)


def read_watermark(features_dir: Path) -> datetime | None:
    path = features_dir / STATE_FILE
    if not path.is_file():
        return None
    return datetime.fromisoformat(json.loads(path.read_text())["received_after"])


def write_watermark(features_dir: Path, when: datetime) -> None:
    tmp = features_dir / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"received_after": when.isoformat()}) + "\n")
    tmp.replace(features_dir / STATE_FILE)


def calendar(events: pd.Series, start: pd.Timestamp | None = None,
             end: pd.Timestamp | None = None) -> tuple[pd.Timestamp, int]:
    """(first day, number of days) covering the events: midnight UTC of the earliest event to
    the midnight after the latest, unless given. Any era works (1997 as well as 2026)."""
    if start is None:
        if events.empty:
            raise ValueError("no events: import a program's events first (`rewards import "
                             "events FILE`)")
        start = events.min().floor("D")
    if end is None:
        end = (events.max().floor("D") + DAY) if not events.empty else start + DAY
    start, end = pd.Timestamp(start).floor("D"), pd.Timestamp(end).ceil("D")
    days = int((end - start) / DAY)
    if days <= 0:
        raise ValueError(f"empty calendar: start {start.date()} is not before end {end.date()}")
    return start, days


def offer_rows(events: pd.DataFrame) -> pd.DataFrame:
    """Reward decisions of an imported history: impressions of a reward (treated offers) and
    holdouts (controls), with the probability the program logged, if any."""
    kind = events["event_type"]
    is_offer = ((kind == "impression") & events["reward_id"].notna()) | (kind == "holdout")
    offers = events.loc[is_offer, ["decision_id", "member_id", "event_timestamp", "reward_id",
                                   "propensity"]].copy()
    offers = offers[offers["decision_id"].notna()]
    offers["treated"] = (kind[offers.index] == "impression").to_numpy()
    offers["reward_id"] = offers["reward_id"].fillna("").astype(str)
    offers = offers.drop_duplicates(["decision_id", "reward_id"])
    offers["source"], offers["policy"], offers["slot"], offers["arm"] = "import", "", 0, ""
    offers["model_versions"] = ""
    return offers[OFFER_COLUMNS].reset_index(drop=True)


def assignment_rows(events: pd.DataFrame) -> pd.DataFrame:
    """Challenge decisions of an imported history: impressions of a template with a target."""
    kind = events["event_type"]
    rows = events[(kind == "impression") & events["challenge_id"].notna()
                  & events["decision_id"].notna() & events["target"].notna()]
    asg = rows[["decision_id", "member_id", "event_timestamp", "challenge_id", "target",
                "propensity"]].drop_duplicates(["decision_id", "challenge_id"]).copy()
    asg["target_probability"] = np.nan
    asg["source"], asg["policy"], asg["slot"], asg["arm"] = "import", "", 0, ""
    return asg[ASSIGNMENT_COLUMNS].reset_index(drop=True)


def label_offers(offers: pd.DataFrame, events: pd.DataFrame, window_days: int) -> pd.DataFrame:
    """Offers with their outcomes: redeemed, converted, spend, outcome_timestamp (the window's
    end). An outcome counts when its event carries the decision's id (given, or attributed by
    ``training.data.decision_log.attribute_by_item``) and happens before the window closes; a
    redemption must also name the offered reward when it names one."""
    offers = offers.copy()
    offers["outcome_timestamp"] = offers["event_timestamp"] + pd.Timedelta(days=window_days)
    offers["window_end"] = offers["outcome_timestamp"]
    kind = events["event_type"]
    outcomes = events[events["decision_id"].notna()
                      & kind.isin(("purchase", "redemption"))]
    keyed = offers[["decision_id", "reward_id", "event_timestamp", "outcome_timestamp"]]
    joined = outcomes.merge(keyed, on="decision_id", suffixes=("", "_offer"))
    in_window = ((joined["event_timestamp"] >= joined["event_timestamp_offer"])
                 & (joined["event_timestamp"] < joined["outcome_timestamp"]))
    joined = joined[in_window]
    key = ["decision_id", "reward_id_offer"]
    purchases = joined[joined["event_type"] == "purchase"]
    spend = purchases.groupby(key)["amount"].sum()
    redemptions = joined[(joined["event_type"] == "redemption")
                         & (joined["reward_id"].isna()
                            | (joined["reward_id"] == joined["reward_id_offer"]))]
    index = pd.MultiIndex.from_frame(offers[["decision_id", "reward_id"]], names=key)
    offers["redeemed"] = index.isin(redemptions.set_index(key).index).astype(np.int8)
    converted = index.isin(purchases.set_index(key).index) | (offers["redeemed"] == 1)
    offers["converted"] = converted.astype(np.int8)
    offers["spend"] = np.round(spend.reindex(index).astype("float64").fillna(0.0).to_numpy(), 2)
    offers["propensity"] = offers["propensity"].astype("float64")
    return _ordered(offers, [*OFFER_COLUMNS, "redeemed", "converted", "spend",
                             "outcome_timestamp", "window_end"])


def label_assignments(asg: pd.DataFrame, events: pd.DataFrame,
                      challenges: pd.DataFrame) -> pd.DataFrame:
    """Assignments with their outcomes: completed, outcome_timestamp (the completion, else the
    end of the challenge's duration) and window_end (the end of the duration: when the label is
    final, see :func:`closes_at`). Templates the catalog does not know are left out."""
    kind = events["event_type"]
    duration = asg["challenge_id"].map(challenges.set_index("challenge_id")["duration_days"])
    asg = asg[duration.notna()].copy()
    end = asg["event_timestamp"] + pd.to_timedelta(duration[asg.index].astype("int64"), unit="D")
    done = events[(kind == "challenge_completed") & events["decision_id"].notna()]
    done = done.merge(asg[["decision_id", "challenge_id", "event_timestamp"]],
                      on=["decision_id", "challenge_id"], suffixes=("", "_asg"))
    done = done[(done["event_timestamp"] >= done["event_timestamp_asg"])]
    first = done.groupby(["decision_id", "challenge_id"])["event_timestamp"].min()
    key = pd.MultiIndex.from_frame(asg[["decision_id", "challenge_id"]])
    # .array keeps the time zone (.to_numpy() gives objects, read back naive when every
    # value is NaT: a store where no assignment has been completed yet)
    finished_ts = pd.Series(first.reindex(key).array, index=asg.index).astype(TS_DTYPE)
    completed = finished_ts.notna() & (finished_ts < end)
    asg["completed"] = completed.astype(np.int8)
    asg["outcome_timestamp"] = finished_ts.where(completed, end)
    asg["window_end"] = end
    asg["target"] = asg["target"].astype("float64")
    asg["propensity"] = asg["propensity"].astype("float64")
    return _ordered(asg, [*ASSIGNMENT_COLUMNS, "completed", "outcome_timestamp", "window_end"])


def derive_offers(events: pd.DataFrame, window_days: int) -> pd.DataFrame:
    """Reward decisions of an imported history with their outcomes (:func:`offer_rows`,
    :func:`label_offers`)."""
    return label_offers(offer_rows(events), events, window_days)


def derive_assignments(events: pd.DataFrame, challenges: pd.DataFrame) -> pd.DataFrame:
    """Challenge decisions of an imported history with their outcomes."""
    return label_assignments(assignment_rows(events), events, challenges)


@dataclass
class Decisions:
    """Labelled decisions of both sources, and the attributed outcome events (for the report)."""

    offers: pd.DataFrame
    assignments: pd.DataFrame
    events: pd.DataFrame
    imported_duplicates: int


def labelled_decisions(events: pd.DataFrame, decisions: pd.DataFrame, items: pd.DataFrame,
                       challenges: pd.DataFrame, window_days: int) -> Decisions:
    """Imported decisions and the service's own (its decision log), outcomes attributed by
    decision id, else by member and item within the window, then labelled."""
    offers, dup_o = combine(offer_rows(events), offers_from_log(decisions, items))
    asg, dup_a = combine(assignment_rows(events), assignments_from_log(decisions, items))
    durations = challenges.set_index("challenge_id")["duration_days"]
    attributed = attribute_by_item(events, offers, asg, window_days, durations)
    return Decisions(label_offers(offers, attributed, window_days),
                     label_assignments(asg, attributed, challenges), attributed, dup_o + dup_a)


def _ordered(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = frame[columns].sort_values(["member_id", "event_timestamp", "decision_id"],
                                     kind="stable").reset_index(drop=True)
    for column in ("event_timestamp", "outcome_timestamp", "window_end"):
        if column in out:
            out[column] = out[column].astype(TS_DTYPE)
    out["member_id"] = out["member_id"].astype(str)
    return out


def load_history(events_store: EventStore, rewards: pd.DataFrame, challenges: pd.DataFrame,
                 vocabulary: Vocabulary, *, window_days: int,
                 start: pd.Timestamp | None = None, end: pd.Timestamp | None = None,
                 as_of: pd.Timestamp | None = None) -> World:
    """Members, events and labelled decisions from the event store, over a calendar.

    Events at or after ``end`` (or ``as_of``, an exact instant) are left out (a history "as of"
    that time); the calendar defaults to the span of the events and logged decisions.
    """
    return read_history(events_store, rewards, challenges, vocabulary, window_days=window_days,
                        start=start, end=end, as_of=as_of)[0]


def read_history(events_store: EventStore, rewards: pd.DataFrame, challenges: pd.DataFrame,
                 vocabulary: Vocabulary, *, window_days: int,
                 start: pd.Timestamp | None = None, end: pd.Timestamp | None = None,
                 as_of: pd.Timestamp | None = None,
                 columns: tuple[str, ...] = EVENT_COLUMNS) -> tuple[World, Decisions]:
    """:func:`load_history`, and the decisions with their attributed outcome events."""
    members = events_store.members_frame()
    if as_of is not None:
        as_of = pd.Timestamp(as_of)
        if as_of.tzinfo is not None:  # days are UTC days, however --as-of was written
            as_of = as_of.tz_convert("UTC")
        end = as_of.ceil("D") if end is None else min(pd.Timestamp(end), as_of.ceil("D"))
    cut = as_of if as_of is not None else end
    until = None if cut is None else pd.Timestamp(cut).to_pydatetime()
    events = events_store.events_frame(until=until, columns=list(columns))
    decisions, items = events_store.decision_log(until=until)
    first, days = calendar(pd.concat([events["event_timestamp"],
                                      decisions["event_timestamp"].astype(TS_DTYPE)]),
                           start, end)
    events = events[events["event_timestamp"] >= first].reset_index(drop=True)
    decisions = decisions[decisions["event_timestamp"] >= first]
    items = items[items["event_timestamp"] >= first]
    labelled = labelled_decisions(events, decisions, items, challenges, window_days)
    world = World(start=first, days=days, members=members, rewards=rewards,
                  challenges=challenges, events=events, offers=labelled.offers,
                  assignments=labelled.assignments, vocabulary=vocabulary)
    return world, labelled


def build_from_store(events_store: EventStore, rewards: pd.DataFrame,
                     challenges: pd.DataFrame, vocabulary: Vocabulary, out_dir: Path, *,
                     window_days: int,
                     margin: float, start: pd.Timestamp | None = None,
                     end: pd.Timestamp | None = None, as_of: pd.Timestamp | None = None,
                     chunk_size: int = 20_000,
                     progress: bool = True) -> tuple[HistoryMeta, dict[str, int]]:
    """`rewards features build`: features, labelled decisions and ``history.json``.

    The labelled decisions (``offers.parquet``, ``assignments.parquet``) are what training joins
    point-in-time with the features; ``history.json`` is written last, so its presence means a
    complete build.
    """
    read_at = datetime.now(UTC)
    world = load_history(events_store, rewards, challenges, vocabulary,
                         window_days=window_days, start=start, end=end, as_of=as_of)
    (out_dir / META_FILE).unlink(missing_ok=True)
    counts = build_features(world, out_dir, chunk_size=chunk_size, progress=progress)
    for name in ("offers", "assignments"):
        frame = getattr(world, name)
        frame.to_parquet(out_dir / f"{name}.parquet.tmp", index=False)
        (out_dir / f"{name}.parquet.tmp").replace(out_dir / f"{name}.parquet")
        counts[name] = len(frame)
    meta = HistoryMeta(start=str(world.start.date()), days=world.days,
                       members=len(world.members), events=len(world.events), margin=margin,
                       attribution_window_days=window_days,
                       as_of=None if as_of is None else pd.Timestamp(as_of).isoformat())
    write_input_digest(out_dir, input_digest(world.members, world.events, {
        "rewards": world.rewards, "challenges": world.challenges}))
    write_history_meta(out_dir, meta)
    # The build counted every event received before it read the store: `features refresh`
    # starts from there (members with later events), not from the history's end.
    write_watermark(out_dir, read_at - SAFETY)
    return meta, counts
