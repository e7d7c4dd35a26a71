"""Fresh features for members who just did something, and one member's features on demand.

`rewards features build` computes every member's daily history; between builds, members keep
acting (events posted to `/v1/events` or imported). ``refresh`` recomputes only the members with
events received since the last refresh (the event store's ``received_us``), over the same
calendar as the build, and writes each one's current row to the online store with Feast's
``write_to_online_store``: serving sees it at the next request, with no materialize and no
restart. The row is computed "as of the next midnight", so it counts every event up to now.

The watermark (``refresh.json`` beside the features) is moved to the refresh's start minus a
safety margin: an event whose transaction commits while a refresh reads is picked up by the next
one; recomputing a member twice is harmless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from training.data.features import World, compute_member_features, member_feature_names
from training.data.history import (
    EVENT_COLUMNS,
    SAFETY,
    HistoryMeta,
    labelled_decisions,
    read_watermark,
    write_watermark,
)

if TYPE_CHECKING:
    from serving.contract.vocabulary import Vocabulary
    from serving.stores.events import EventStore

MEMBER_VIEW = "member_daily"
#: Member-days computed per chunk: the dense arrays are members x days x ~80 features.
CELLS_PER_CHUNK = 500_000


@dataclass(frozen=True)
class RefreshResult:
    members: int
    rows_written: int
    seconds: float
    watermark: datetime


def current_rows(events_store: EventStore, member_ids: list[str], rewards: pd.DataFrame,
                 challenges: pd.DataFrame, vocabulary: Vocabulary, meta: HistoryMeta,
                 now: datetime) -> pd.DataFrame:
    """Each member's feature row counting every event before the midnight after ``now``,
    stamped ``now`` (what the online store serves from then on)."""
    start = meta.start_ts
    end = pd.Timestamp(now).ceil("D")
    if end == pd.Timestamp(now):
        end += pd.Timedelta(days=1)
    days = int((end - start) / pd.Timedelta(days=1))
    per_chunk = max(1, CELLS_PER_CHUNK // max(days, 1))
    out = []
    for lo in range(0, len(member_ids), per_chunk):
        ids = member_ids[lo:lo + per_chunk]
        members = events_store.members_frame(ids)
        if members.empty:
            continue
        events = events_store.events_frame(member_ids=ids, until=end.to_pydatetime(),
                                           columns=list(EVENT_COLUMNS))
        events = events[events["event_timestamp"] >= start]
        # the service's own decisions count in the features as in a full build: these
        # members' only, read through the member index (not the whole log per refresh)
        log_decisions, log_items = events_store.decision_log(until=end.to_pydatetime(),
                                                             member_ids=ids)
        labelled = labelled_decisions(events, log_decisions, log_items, challenges,
                                      meta.attribution_window_days)
        world = World(start=start, days=days, members=members, rewards=rewards,
                      challenges=challenges, events=events, offers=labelled.offers,
                      assignments=labelled.assignments, vocabulary=vocabulary)
        rows = compute_member_features(world)
        last = rows.groupby("member_id", sort=False).tail(1)
        out.append(last)
    if not out:
        return pd.DataFrame(columns=["member_id", "event_timestamp",
                                     *member_feature_names(vocabulary)])
    frame = pd.concat(out, ignore_index=True)
    frame["event_timestamp"] = pd.Timestamp(now).tz_convert("UTC")
    return frame


def refresh(events_store: EventStore, feast_store: Any, rewards: pd.DataFrame,
            challenges: pd.DataFrame, vocabulary: Vocabulary, meta: HistoryMeta,
            features_dir: Path, *,
            since: datetime | None = None, now: Callable[[], datetime] | None = None
            ) -> RefreshResult:
    """Recompute and push the members with events received after the watermark (or ``since``).

    `rewards features build` leaves the watermark at the moment it read the store; without one
    (features built elsewhere), the history's end is used.
    """
    clock = now or (lambda: datetime.now(UTC))
    started = clock()
    t0 = time.perf_counter()
    after = since or read_watermark(features_dir) or meta.end_ts.to_pydatetime()
    members = sorted(events_store.members_changed_since(after))
    written = push_members(events_store, feast_store, members, rewards, challenges, vocabulary,
                           meta, started)
    watermark = started - SAFETY
    write_watermark(features_dir, watermark)
    return RefreshResult(len(members), written, round(time.perf_counter() - t0, 3), watermark)


def push_members(events_store: EventStore, feast_store: Any, member_ids: list[str],
                 rewards: pd.DataFrame, challenges: pd.DataFrame, vocabulary: Vocabulary,
                 meta: HistoryMeta, now: datetime) -> int:
    """Write these members' :func:`current_rows` to the online store; the rows written.

    ``refresh`` picks the members by when their events were received; a caller that knows
    who changed (the learning-loop bench, whose clock is simulated) names them."""
    rows = current_rows(events_store, member_ids, rewards, challenges, vocabulary, meta, now)
    if len(rows):
        values = rows.astype({name: np.float32 for name in member_feature_names(vocabulary)})
        feast_store.write_to_online_store(MEMBER_VIEW, values)
    return len(rows)


def member_at(feast_store: Any, service_name: str, member_id: str,
              as_of: datetime) -> dict[str, float | None]:
    """The member's feature values as a training set built at ``as_of`` would hold them: a
    point-in-time join on the offline store, for the member features of the FeatureService
    (names as the service lists them). ``None`` for a value the join finds nothing for
    (no row before ``as_of`` within the view's TTL)."""
    service = feast_store.get_feature_service(service_name)
    refs = [f"{p.name}:{f.name}" for p in service.feature_view_projections
            for f in p.features if p.name == MEMBER_VIEW]
    entity = pd.DataFrame({"member_id": [member_id],
                           "event_timestamp": [pd.Timestamp(as_of).tz_convert("UTC")]})
    row = feast_store.get_historical_features(entity_df=entity, features=refs).to_df()
    names = [ref.split(":", 1)[1] for ref in refs]
    record = row.iloc[0]
    return {name: (None if pd.isna(record[name]) else float(record[name])) for name in names}
