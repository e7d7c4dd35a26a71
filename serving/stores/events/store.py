"""The event store as the service uses it: events posted to the API, decisions, experiment
exposures, and the indexed queries behind the business rules.

"Nothing acknowledged is ever lost": every write method returns only after its transaction has
committed (SQLite runs in WAL mode with ``synchronous=FULL``, so each commit fsyncs the WAL), so
the API may acknowledge a request as soon as the call returns. Events are idempotent by
``event_id``: a replay is reported and counted, and never overwrites the first copy.

Writes block on an fsync (about a millisecond or more): call them from a worker thread, not from
the event loop. The store is thread-safe: one connection per thread (``SqlStore``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

import pandas as pd

from serving.contract.events import DecisionRecord, ExposureRecord
from serving.stores.events.records import FRAME_COLUMNS, RecordStore, frame_sql, typed_column
from serving.stores.events.schema import (
    EVENT_COLUMNS,
    FIELD_COLUMNS,
    PAYLOAD_COLUMNS,
    SCHEMA,
    dumps,
    feature_json,
    from_micros,
    loads,
    micros,
    migrate,
    payload_digest,
)
from serving.stores.sql import ROWS_PER_STATEMENT, Dialect, dialect_for

log = logging.getLogger(__name__)


class EventStore(Protocol):
    """What the service, the imports and the feature pipeline need from the event store,
    whatever the database."""

    def add_events(self, events: Sequence[Any]) -> list[tuple[str, bool]]: ...
    def replay_counts(self) -> dict[str, int]: ...
    def log_decision(self, decision: DecisionRecord) -> None: ...
    def log_decisions(self, decisions: Sequence[DecisionRecord]) -> None: ...
    def recent_offers(self, member_id: str, since: datetime) -> dict[str, datetime]: ...
    def reward_redemptions_since(self, since: datetime) -> dict[str, int]: ...
    def spend_since(self, since: datetime) -> float: ...
    def consent(self, member_id: str) -> bool | None: ...
    def member_context(self, member_id: str, since: datetime
                       ) -> tuple[dict[str, datetime], bool | None]: ...
    def member_events(self, member_id: str) -> list[dict[str, Any]]: ...
    def count_events(self) -> int: ...
    def count_decisions(self) -> int: ...
    def events_between(self, start: datetime, end: datetime,
                       event_types: Sequence[str] | None = None) -> pd.DataFrame: ...
    def decisions_between(self, start: datetime, end: datetime) -> pd.DataFrame: ...
    def decision_log(self, since: datetime | None = None, until: datetime | None = None,
                     member_ids: Sequence[str] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]: ...
    def erase_member(self, member_id: str) -> dict[str, int]: ...
    def upsert_members(self, members: pd.DataFrame) -> int: ...
    def upsert_member(self, member_id: str, joined_at: datetime, tier: str, region: str | None,
                      consent: bool | None, attributes: Mapping[str, Any] | None) -> bool: ...
    def members_frame(self, member_ids: Sequence[str] | None = None) -> pd.DataFrame: ...
    def import_events(self, events: pd.DataFrame) -> int: ...
    def bulk_load(self) -> AbstractContextManager[bool]: ...
    def events_frame(self, *, member_ids: Sequence[str] | None = None,
                     until: datetime | None = None, event_types: Sequence[str] | None = None,
                     columns: Sequence[str] | None = None) -> pd.DataFrame: ...
    def members_changed_since(self, received_after: datetime) -> list[str]: ...
    def add_experiment(self, experiment_id: str, name: str, start: datetime, end: datetime,
                       definition: str) -> bool: ...
    def experiments(self) -> list[str]: ...
    def log_exposures(self, exposures: Sequence[ExposureRecord]) -> None: ...
    def exposures(self, experiment_id: str) -> pd.DataFrame: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


# The member's offers since a time (parameters: member, since; three times), latest consent event
# (parameter: member) and profile consent (parameter: member), shared by the single queries and
# member_context's combined one.
_RECENT_OFFERS_UNION = """
    SELECT item_id, created_us AS t FROM decision_items WHERE member_id = ? AND created_us >= ?
    UNION ALL
    SELECT reward_id, ts_us FROM events WHERE member_id = ? AND ts_us >= ?
       AND event_type = 'impression' AND reward_id IS NOT NULL
    UNION ALL
    SELECT challenge_id, ts_us FROM events WHERE member_id = ? AND ts_us >= ?
       AND event_type = 'impression' AND challenge_id IS NOT NULL"""
_RECENT_OFFERS = f"SELECT item_id, MAX(t) FROM ({_RECENT_OFFERS_UNION}) offers GROUP BY item_id"
_LATEST_CONSENT = """
    SELECT event_type FROM events WHERE member_id = ?
       AND event_type IN ('consent_granted', 'consent_withdrawn')
     ORDER BY ts_us DESC, CASE WHEN event_type = 'consent_withdrawn' THEN 0 ELSE 1 END
     LIMIT 1"""
_CONSENT = (  # rows tagged 'c' (the latest consent event) and 'p' (the profile's choice)
    f"SELECT 'c', event_type, NULL FROM ({_LATEST_CONSENT}) latest "
    "UNION ALL SELECT 'p', CASE WHEN consent = 1 THEN 'consent_granted' "
    "ELSE 'consent_withdrawn' END, NULL FROM members WHERE member_id = ? AND consent IS NOT NULL")
_MEMBER_CONTEXT = (  # both in one query: rows tagged 'o' (an offer), 'c' or 'p' (consent)
    f"SELECT 'o', item_id, MAX(t) FROM ({_RECENT_OFFERS_UNION}) offers GROUP BY item_id "
    f"UNION ALL {_CONSENT}")
_EXPOSURE_COLUMNS = ("experiment_id", "member_id", "arm", "exposed_us", "decision_id", "channel",
                     "tier", "uplift_score")
_DECISION_COLUMNS = ("decision_id", "member_id", "created_us", "channel", "arm", "experiment_id",
                     "model_versions", "flags", "policy", "no_offer_probability", "features",
                     "ranking")
_ITEM_COLUMNS = ("decision_id", "item_type", "item_id", "member_id", "created_us", "item_rank",
                 "score", "shown_probability", "target", "cost", "target_probability")
#: member_events' keys, in stored order (the API's field names: ``timestamp``).
_RECORD_KEYS = ("event_id", "event_type", "member_id", "timestamp", "decision_id", *FIELD_COLUMNS,
                "properties", "received_at")


def _payload(event: Any) -> tuple[Any, ...]:
    """An event object's stored values in PAYLOAD_COLUMNS order; each per-type model declares
    only its own fields, so the others read as None."""
    properties = getattr(event, "properties", None)
    return (event.event_id, event.event_type, event.member_id, micros(event.timestamp),
            getattr(event, "decision_id", None),
            *(getattr(event, column, None) for column in FIELD_COLUMNS),
            None if properties is None else dumps(properties))


def _consent(rows: Sequence[Sequence[Any]]) -> bool | None:
    """The member's consent from the 'c' and 'p' rows: None when neither the events nor the
    profile say anything, withdrawn when either says withdrawn (a "no" from any source of
    record stops personalization until that source says yes), granted otherwise."""
    choices = [item == "consent_granted" for kind, item, *_ in rows if kind in ("c", "p")]
    return None if not choices else all(choices)


class SqlEventStore(RecordStore):
    """The event store over a DB-API driver; see :func:`open_event_store`."""

    def __init__(self, dialect: Dialect) -> None:
        self._stats_lock = threading.Lock()
        self._replayed = 0
        self._conflicting = 0
        super().__init__(dialect, SCHEMA, "event store", migrate)

    # -- writes ------------------------------------------------------------------------------

    def add_events(self, events: Sequence[Any]) -> list[tuple[str, bool]]:
        """Store a batch in one transaction; ``(event_id, inserted)`` per event, in order.

        ``inserted`` is False for a replay: an id already stored, or repeated earlier in the
        batch. The first copy always wins; a replay whose payload differs is counted as
        conflicting (see :meth:`replay_counts`) and logged, never written.
        """
        if not events:
            return []
        payloads = [_payload(event) for event in events]
        digests = [payload_digest(payload) for payload in payloads]
        first: dict[str, int] = {}
        for i, payload in enumerate(payloads):
            first.setdefault(payload[0], i)
        with self._write() as cur:
            received = micros(datetime.now(UTC))
            added = self._insert(cur, "events", EVENT_COLUMNS, "event_id", [
                (*payloads[i], received, digests[i]) for i in first.values()])
        kept = {event_id: digests[i] for event_id, i in first.items() if event_id in added}
        kept.update(self._stored_digests([e for e in first if e not in added]))
        results: list[tuple[str, bool]] = []
        conflicting: list[str] = []
        for i, payload in enumerate(payloads):
            event_id = payload[0]
            inserted = event_id in added and first[event_id] == i
            results.append((event_id, inserted))
            if not inserted and digests[i] != kept[event_id]:
                conflicting.append(event_id)
        replayed = sum(not inserted for _, inserted in results)
        if replayed:
            with self._stats_lock:
                self._replayed += replayed
                self._conflicting += len(conflicting)
        if conflicting:
            log.warning("replayed event ids with a different payload kept their first copy: %s",
                        conflicting[:20])
        return results

    def _stored_digests(self, event_ids: Sequence[str]) -> dict[str, str]:
        """Fingerprints of stored events: the recorded one, or (bulk-imported rows record
        none) recomputed from the stored columns. Stored rows are never updated, so reading
        them after the insert's commit is safe."""
        out: dict[str, str] = {}
        for start in range(0, len(event_ids), ROWS_PER_STATEMENT):
            chunk = event_ids[start:start + ROWS_PER_STATEMENT]
            rows = self._query(
                f"SELECT payload_sha256, {', '.join(PAYLOAD_COLUMNS)} FROM events "
                f"WHERE event_id IN ({', '.join(['?'] * len(chunk))})", chunk)
            out.update({row[1]: row[0] or payload_digest(row[1:]) for row in rows})
        return out

    def replay_counts(self) -> dict[str, int]:
        """Replays seen by this process since it opened the store, and how many conflicted."""
        with self._stats_lock:
            return {"replayed": self._replayed, "conflicting": self._conflicting}

    def log_decision(self, decision: DecisionRecord) -> None:
        self.log_decisions([decision])

    def log_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        """Store decisions and their items in one transaction; a decision_id seen before is kept
        as first logged, so a retried request cannot double its offers."""
        if not decisions:
            return
        unique: dict[str, DecisionRecord] = {}
        for decision in decisions:
            unique.setdefault(decision.decision_id, decision)  # the first copy of an id wins
        created = {d.decision_id: micros(d.created_at) for d in unique.values()}
        with self._write() as cur:
            added = self._insert(cur, "decisions", _DECISION_COLUMNS, "decision_id", [
                (d.decision_id, d.member_id, created[d.decision_id], d.channel, d.arm,
                 d.experiment_id, dumps(d.model_versions), dumps(d.flags), d.policy,
                 d.no_offer_probability, feature_json(d.features),
                 None if d.ranking is None else dumps(d.ranking.model_dump()))
                for d in unique.values()
            ])
            self._insert(cur, "decision_items", _ITEM_COLUMNS, "decision_id, item_type, item_id", [
                (d.decision_id, i.item_type, i.item_id, d.member_id, created[d.decision_id],
                 i.rank, i.score, i.shown_probability, i.target, i.cost, i.target_probability)
                for d in unique.values() if d.decision_id in added for i in d.items
            ])

    def erase_member(self, member_id: str) -> dict[str, int]:
        """Delete every row about a member, profile included (privacy request); rows deleted
        per table."""
        counts: dict[str, int] = {}
        with self._write() as cur:
            for table in ("events", "decisions", "decision_items", "experiment_exposures",
                          "members"):
                cur.execute(self._sql(f"DELETE FROM {table} WHERE member_id = ?"), (member_id,))
                counts[table] = cur.rowcount
        return counts

    # -- queries for the business rules (each served by an index) ---------------------------

    def recent_offers(self, member_id: str, since: datetime) -> dict[str, datetime]:
        """Item id -> last time it was offered to the member (decisions or impressions)."""
        rows = self._query(_RECENT_OFFERS, (member_id, micros(since)) * 3)
        return {item_id: from_micros(last) for item_id, last in rows}

    def member_context(self, member_id: str, since: datetime
                       ) -> tuple[dict[str, datetime], bool | None]:
        """``recent_offers`` and ``consent`` in one round trip: every recommendation needs
        both, and a query costs more in its execution overhead than in its rows."""
        rows = self._query(_MEMBER_CONTEXT, (member_id, micros(since)) * 3 + (member_id,) * 2)
        recent = {item: from_micros(last) for kind, item, last in rows if kind == "o"}
        return recent, _consent(rows)

    def reward_redemptions_since(self, since: datetime) -> dict[str, int]:
        """Redemptions per reward since a time, for per-reward budget caps."""
        rows = self._query(
            """SELECT reward_id, COUNT(*) FROM events
                WHERE event_type = 'redemption' AND ts_us >= ? AND reward_id IS NOT NULL
                GROUP BY reward_id""", (micros(since),))
        return {reward_id: int(n) for reward_id, n in rows}

    def spend_since(self, since: datetime) -> float:
        """Cost of redemptions since a time: the event's cost, else the offering decision's."""
        rows = self._query(
            """SELECT COALESCE(SUM(COALESCE(e.cost, i.cost, 0)), 0) FROM events e
                 LEFT JOIN decision_items i ON i.decision_id = e.decision_id
                  AND i.item_type = CASE WHEN e.reward_id IS NULL THEN 'challenge' ELSE 'reward' END
                  AND i.item_id = COALESCE(e.reward_id, e.challenge_id)
                WHERE e.event_type = 'redemption' AND e.ts_us >= ?""", (micros(since),))
        return float(rows[0][0])

    def consent(self, member_id: str) -> bool | None:
        """The member's consent: the latest consent event (a tie means withdrawn) and the
        profile's flag, combined as in :func:`_consent`; None if neither says anything."""
        return _consent(self._query(_CONSENT, (member_id, member_id)))

    def member_events(self, member_id: str) -> list[dict[str, Any]]:
        """Every event of a member in time order, as the API's fields plus ``received_at``."""
        rows = self._query(
            f"SELECT {', '.join(PAYLOAD_COLUMNS)}, received_us FROM events WHERE member_id = ? "
            "ORDER BY ts_us, event_id", (member_id,))
        out = []
        for row in rows:
            record = dict(zip(_RECORD_KEYS, row, strict=True))
            record["member_id"] = str(record["member_id"])
            record["timestamp"] = from_micros(record["timestamp"])
            record["received_at"] = from_micros(record["received_at"])
            record["properties"] = loads(record["properties"])
            out.append(record)
        return out

    def count_events(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM events")[0][0])

    def count_decisions(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM decisions")[0][0])

    # -- frames for reports ----------------------------------------------------------------------

    def events_between(self, start: datetime, end: datetime,
                       event_types: Sequence[str] | None = None) -> pd.DataFrame:
        """Events with ``start <= timestamp < end`` in time order, every column of
        :meth:`events_frame` (time in ``event_timestamp``, the project's point-in-time name)."""
        names = list(FRAME_COLUMNS)
        sql = (f"SELECT {', '.join(frame_sql(n) for n in names)} FROM events "
               "WHERE ts_us >= ? AND ts_us < ?")
        params: list[Any] = [micros(start), micros(end)]
        if event_types is not None:
            sql += f" AND event_type IN ({', '.join(['?'] * len(event_types)) or 'NULL'})"
            params += event_types
        raw = self._fetch_columns(
            f"{sql} ORDER BY ts_us, event_id COLLATE {self._dialect.binary_collation}", params,
            len(names))
        return pd.DataFrame({n: typed_column(n, v) for n, v in zip(names, raw, strict=True)})

    def decisions_between(self, start: datetime, end: datetime) -> pd.DataFrame:
        """Decisions with ``start <= created_at < end``, one row per item.

        A decision without items (e.g. a holdout) keeps one row with empty item columns, so arm
        exposure counts stay right in experiment reports.
        """
        frame = pd.DataFrame.from_records(self._query(
            """SELECT d.decision_id, d.member_id, d.created_us, d.channel, d.arm, d.experiment_id,
                      d.model_versions, d.flags, i.item_type, i.item_id, i.item_rank, i.score,
                      i.shown_probability, i.target, i.cost
                 FROM decisions d LEFT JOIN decision_items i ON i.decision_id = d.decision_id
                WHERE d.created_us >= ? AND d.created_us < ?
                ORDER BY d.created_us, d.decision_id, i.item_rank""",
            (micros(start), micros(end))),
            columns=["decision_id", "member_id", "event_timestamp", "channel", "arm",
                     "experiment_id", "model_versions", "flags", "item_type", "item_id", "rank",
                     "score", "shown_probability", "target", "cost"])
        for column in ("model_versions", "flags"):
            frame[column] = frame[column].map(loads)
        frame["member_id"] = frame["member_id"].astype(str)
        return _with_times(frame, "event_timestamp")

    # -- experiments ---------------------------------------------------------------------------

    def add_experiment(self, experiment_id: str, name: str, start: datetime, end: datetime,
                       definition: str) -> bool:
        """Store an experiment's definition (JSON); False if the id exists (kept unchanged)."""
        with self._write() as cur:
            added = self._insert(cur, "experiments", (
                "experiment_id", "name", "start_us", "end_us", "definition", "created_us"),
                "experiment_id", [(experiment_id, name, micros(start), micros(end), definition,
                                   micros(datetime.now(UTC)))])
        return bool(added)

    def experiments(self) -> list[str]:
        """Every experiment's definition (JSON), oldest start first."""
        rows = self._query("SELECT definition FROM experiments ORDER BY start_us, experiment_id")
        return [row[0] for row in rows]

    def log_exposures(self, exposures: Sequence[ExposureRecord]) -> None:
        """Record first exposures in one transaction; a member already exposed keeps the first."""
        if not exposures:
            return
        unique: dict[tuple[str, str], ExposureRecord] = {}
        for e in exposures:
            unique.setdefault((e.experiment_id, e.member_id), e)
        with self._write() as cur:
            self._insert(cur, "experiment_exposures", _EXPOSURE_COLUMNS,
                         "experiment_id, member_id", [
                             (e.experiment_id, e.member_id, e.arm, micros(e.exposed_at),
                              e.decision_id, e.channel, e.tier, e.uplift_score)
                             for e in unique.values()])

    def exposures(self, experiment_id: str) -> pd.DataFrame:
        """One row per exposed member of an experiment; time in ``exposed_at``."""
        frame = pd.DataFrame.from_records(self._query(
            f"SELECT {', '.join(_EXPOSURE_COLUMNS)} FROM experiment_exposures "
            "WHERE experiment_id = ? ORDER BY member_id", (experiment_id,)),
            columns=[c if c != "exposed_us" else "exposed_at" for c in _EXPOSURE_COLUMNS])
        frame["uplift_score"] = frame["uplift_score"].astype("float64")
        frame["member_id"] = frame["member_id"].astype(str)
        return _with_times(frame, "exposed_at")

    # -- lifecycle ----------------------------------------------------------------------------

    def ping(self) -> bool:
        """True when the database answers; for the readiness probe."""
        try:
            return bool(self._query("SELECT 1")[0][0] == 1)
        except Exception:  # any driver error means "not ready"
            log.warning("event store ping failed", exc_info=True)
            return False


def _with_times(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    for column in columns:
        frame[column] = pd.to_datetime(frame[column].astype("int64"), unit="us", utc=True
                                       ).astype("datetime64[us, UTC]")
    return frame


def open_event_store(url: str) -> SqlEventStore:
    """Open (creating or upgrading the schema if needed) the store at ``url``.

    ``sqlite:////abs/path/events.db`` (SQLAlchemy's form: three slashes, then an absolute path,
    since a relative one would depend on the working directory) or
    ``postgresql://user:pass@host:port/db``.
    """
    return SqlEventStore(dialect_for(url, "event store"))

