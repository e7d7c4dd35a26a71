"""Durable store of feedback events and recommendation decisions.

"Nothing acknowledged is ever lost": every write method returns only after its transaction has
committed (SQLite runs in WAL mode with ``synchronous=FULL``, so each commit fsyncs the WAL), so
the API may acknowledge a request as soon as the call returns. Events are idempotent by
``event_id``: a replay is reported and counted, and never overwrites the first copy.

One SQL schema serves SQLite (the embedded default) and PostgreSQL (production). Times are stored
as BIGINT microseconds since the epoch, UTC: the two engines share no timestamp type (SQLite has
none), while integers compare, index and round-trip identically in both.

Writes block on an fsync (about a millisecond or more): call them from a worker thread, not from
the event loop. The store is thread-safe: one connection per thread (``SqlStore``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pandas as pd

from serving.contract.events import DecisionRecord, EventIn, ExposureRecord
from serving.stores.sql import ROWS_PER_STATEMENT, Dialect, SqlStore, dialect_for

log = logging.getLogger(__name__)


class EventStore(Protocol):
    """What the service needs from the event and decision store, whatever the database."""

    def add_events(self, events: Sequence[EventIn]) -> list[tuple[str, bool]]: ...
    def replay_counts(self) -> dict[str, int]: ...
    def log_decision(self, decision: DecisionRecord) -> None: ...
    def log_decisions(self, decisions: Sequence[DecisionRecord]) -> None: ...
    def recent_offers(self, member_id: int, since: datetime) -> dict[str, datetime]: ...
    def reward_redemptions_since(self, since: datetime) -> dict[str, int]: ...
    def spend_since(self, since: datetime) -> float: ...
    def consent(self, member_id: int) -> bool | None: ...
    def member_context(self, member_id: int, since: datetime
                       ) -> tuple[dict[str, datetime], bool | None]: ...
    def member_events(self, member_id: int) -> list[dict[str, Any]]: ...
    def count_events(self) -> int: ...
    def count_decisions(self) -> int: ...
    def events_between(self, start: datetime, end: datetime,
                       event_types: Sequence[str] | None = None) -> pd.DataFrame: ...
    def decisions_between(self, start: datetime, end: datetime) -> pd.DataFrame: ...
    def erase_member(self, member_id: int) -> dict[str, int]: ...
    def add_experiment(self, experiment_id: str, name: str, start: datetime, end: datetime,
                       definition: str) -> bool: ...
    def experiments(self) -> list[str]: ...
    def log_exposures(self, exposures: Sequence[ExposureRecord]) -> None: ...
    def exposures(self, experiment_id: str) -> pd.DataFrame: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


# The member's offers since a time (parameters: member, since; three times) and latest consent
# choice (parameter: member), shared by the single queries and member_context's combined one.
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
_MEMBER_CONTEXT = (  # both in one query: rows tagged 'o' (an offer) or 'c' (the consent)
    f"SELECT 'o', item_id, MAX(t) FROM ({_RECENT_OFFERS_UNION}) offers GROUP BY item_id "
    f"UNION ALL SELECT 'c', event_type, NULL FROM ({_LATEST_CONSENT}) latest")

# Portable DDL: the same statements run on SQLite and PostgreSQL.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        event_id VARCHAR(64) PRIMARY KEY,
        event_type VARCHAR(32) NOT NULL,
        member_id BIGINT NOT NULL,
        ts_us BIGINT NOT NULL,
        decision_id VARCHAR(64),
        challenge_id VARCHAR(16),
        reward_id VARCHAR(16),
        amount DOUBLE PRECISION,
        cost DOUBLE PRECISION,
        properties TEXT,
        received_us BIGINT NOT NULL,
        payload_sha256 CHAR(64) NOT NULL)""",
    # event_type sits in the member index so that, without table statistics, SQLite still
    # prefers it to events_type_ts for per-member lookups (one member vs every member's events).
    "CREATE INDEX IF NOT EXISTS events_member_type_ts ON events (member_id, event_type, ts_us)",
    "CREATE INDEX IF NOT EXISTS events_type_ts ON events (event_type, ts_us)",
    """CREATE TABLE IF NOT EXISTS decisions (
        decision_id VARCHAR(64) PRIMARY KEY,
        member_id BIGINT NOT NULL,
        created_us BIGINT NOT NULL,
        channel VARCHAR(32) NOT NULL,
        arm VARCHAR(32),
        experiment_id VARCHAR(64),
        model_versions TEXT NOT NULL,
        flags TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS decisions_member_ts ON decisions (member_id, created_us)",
    "CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (created_us)",
    # member_id and created_us are copied from the decision so that per-member lookups and
    # erasure need no join.
    """CREATE TABLE IF NOT EXISTS decision_items (
        decision_id VARCHAR(64) NOT NULL,
        item_type VARCHAR(16) NOT NULL,
        item_id VARCHAR(16) NOT NULL,
        member_id BIGINT NOT NULL,
        created_us BIGINT NOT NULL,
        item_rank INTEGER NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        shown_probability DOUBLE PRECISION NOT NULL,
        target DOUBLE PRECISION,
        cost DOUBLE PRECISION,
        PRIMARY KEY (decision_id, item_type, item_id))""",
    "CREATE INDEX IF NOT EXISTS decision_items_member_ts ON decision_items (member_id, created_us)",
    # Experiments (definition as JSON, validated by serving.experiments.definition) and each
    # member's first exposure to one: the start of its attribution window, its arm, and the
    # model's uplift score at that moment (logged in every arm, for the report's Qini curve).
    """CREATE TABLE IF NOT EXISTS experiments (
        experiment_id VARCHAR(64) PRIMARY KEY,
        name VARCHAR(80) NOT NULL,
        start_us BIGINT NOT NULL,
        end_us BIGINT NOT NULL,
        definition TEXT NOT NULL,
        created_us BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS experiment_exposures (
        experiment_id VARCHAR(64) NOT NULL,
        member_id BIGINT NOT NULL,
        arm VARCHAR(32) NOT NULL,
        exposed_us BIGINT NOT NULL,
        decision_id VARCHAR(64) NOT NULL,
        channel VARCHAR(32) NOT NULL,
        tier VARCHAR(16),
        uplift_score DOUBLE PRECISION,
        PRIMARY KEY (experiment_id, member_id))""",
    "CREATE INDEX IF NOT EXISTS experiment_exposures_member ON experiment_exposures (member_id)",
)
_EXPOSURE_COLUMNS = ("experiment_id", "member_id", "arm", "exposed_us", "decision_id", "channel",
                     "tier", "uplift_score")
_EVENT_COLUMNS = ("event_id", "event_type", "member_id", "ts_us", "decision_id", "challenge_id",
                  "reward_id", "amount", "cost", "properties", "received_us", "payload_sha256")
_DECISION_COLUMNS = ("decision_id", "member_id", "created_us", "channel", "arm", "experiment_id",
                     "model_versions", "flags")
_ITEM_COLUMNS = ("decision_id", "item_type", "item_id", "member_id", "created_us", "item_rank",
                 "score", "shown_probability", "target", "cost")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware time")
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _digest(event: EventIn) -> str:
    """Fingerprint of the payload, to tell an honest retry from a reused id with new content."""
    return hashlib.sha256(_json(event.model_dump(mode="json")).encode()).hexdigest()


class SqlEventStore(SqlStore):
    """The event store over a DB-API driver; see :func:`open_event_store`."""

    def __init__(self, dialect: Dialect) -> None:
        self._stats_lock = threading.Lock()
        self._replayed = 0
        self._conflicting = 0
        super().__init__(dialect, _SCHEMA, "event store")

    # -- writes ------------------------------------------------------------------------------

    def add_events(self, events: Sequence[EventIn]) -> list[tuple[str, bool]]:
        """Store a batch in one transaction; ``(event_id, inserted)`` per event, in order.

        ``inserted`` is False for a replay: an id already stored, or repeated earlier in the
        batch. The first copy always wins; a replay whose payload differs is counted as
        conflicting (see :meth:`replay_counts`) and logged, never written.
        """
        if not events:
            return []
        received = _micros(datetime.now(UTC))
        digests: dict[str, str] = {}
        rows = []
        for event in events:
            if event.event_id in digests:
                continue
            digests[event.event_id] = _digest(event)
            rows.append((
                event.event_id, event.event_type, event.member_id, _micros(event.timestamp),
                event.decision_id, event.challenge_id, event.reward_id, event.amount, event.cost,
                None if event.properties is None else _json(event.properties), received,
                digests[event.event_id],
            ))
        with self._write() as cur:
            added = self._insert(cur, "events", _EVENT_COLUMNS, "event_id", rows)
        # Stored rows are never updated, so reading the kept payloads after commit is safe.
        stored = [event_id for event_id in digests if event_id not in added]
        for start in range(0, len(stored), ROWS_PER_STATEMENT):
            chunk = stored[start:start + ROWS_PER_STATEMENT]
            kept = self._query("SELECT event_id, payload_sha256 FROM events "
                               f"WHERE event_id IN ({', '.join(['?'] * len(chunk))})", chunk)
            digests.update({event_id: digest for event_id, digest in kept})
        results: list[tuple[str, bool]] = []
        conflicting: list[str] = []
        seen: set[str] = set()
        for event in events:
            inserted = event.event_id in added and event.event_id not in seen
            seen.add(event.event_id)
            results.append((event.event_id, inserted))
            if not inserted and _digest(event) != digests[event.event_id]:
                conflicting.append(event.event_id)
        replayed = sum(not inserted for _, inserted in results)
        if replayed:
            with self._stats_lock:
                self._replayed += replayed
                self._conflicting += len(conflicting)
        if conflicting:
            log.warning("replayed event ids with a different payload kept their first copy: %s",
                        conflicting[:20])
        return results

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
        created = {d.decision_id: _micros(d.created_at) for d in unique.values()}
        with self._write() as cur:
            added = self._insert(cur, "decisions", _DECISION_COLUMNS, "decision_id", [
                (d.decision_id, d.member_id, created[d.decision_id], d.channel, d.arm,
                 d.experiment_id, _json(d.model_versions), _json(d.flags))
                for d in unique.values()
            ])
            self._insert(cur, "decision_items", _ITEM_COLUMNS, "decision_id, item_type, item_id", [
                (d.decision_id, i.item_type, i.item_id, d.member_id, created[d.decision_id],
                 i.rank, i.score, i.shown_probability, i.target, i.cost)
                for d in unique.values() if d.decision_id in added for i in d.items
            ])

    def erase_member(self, member_id: int) -> dict[str, int]:
        """Delete every row about a member (privacy request); rows deleted per table."""
        counts: dict[str, int] = {}
        with self._write() as cur:
            for table in ("events", "decisions", "decision_items", "experiment_exposures"):
                cur.execute(self._sql(f"DELETE FROM {table} WHERE member_id = ?"), (member_id,))
                counts[table] = cur.rowcount
        return counts

    # -- queries for the business rules (each served by an index) ---------------------------

    def recent_offers(self, member_id: int, since: datetime) -> dict[str, datetime]:
        """Item id -> last time it was offered to the member (decisions or impressions)."""
        rows = self._query(_RECENT_OFFERS, (member_id, _micros(since)) * 3)
        return {item_id: _from_micros(last) for item_id, last in rows}

    def member_context(self, member_id: int, since: datetime
                       ) -> tuple[dict[str, datetime], bool | None]:
        """``recent_offers`` and ``consent`` in one round trip: every recommendation needs
        both, and a query costs more in its execution overhead than in its rows."""
        rows = self._query(_MEMBER_CONTEXT, (member_id, _micros(since)) * 3 + (member_id,))
        recent = {item: _from_micros(last) for kind, item, last in rows if kind == "o"}
        consent = next((item == "consent_granted" for kind, item, _ in rows if kind == "c"), None)
        return recent, consent

    def reward_redemptions_since(self, since: datetime) -> dict[str, int]:
        """Redemptions per reward since a time, for per-reward budget caps."""
        rows = self._query(
            """SELECT reward_id, COUNT(*) FROM events
                WHERE event_type = 'redemption' AND ts_us >= ? AND reward_id IS NOT NULL
                GROUP BY reward_id""", (_micros(since),))
        return {reward_id: int(n) for reward_id, n in rows}

    def spend_since(self, since: datetime) -> float:
        """Cost of redemptions since a time: the event's cost, else the offering decision's."""
        rows = self._query(
            """SELECT COALESCE(SUM(COALESCE(e.cost, i.cost, 0)), 0) FROM events e
                 LEFT JOIN decision_items i ON i.decision_id = e.decision_id
                  AND i.item_type = CASE WHEN e.reward_id IS NULL THEN 'challenge' ELSE 'reward' END
                  AND i.item_id = COALESCE(e.reward_id, e.challenge_id)
                WHERE e.event_type = 'redemption' AND e.ts_us >= ?""", (_micros(since),))
        return float(rows[0][0])

    def consent(self, member_id: int) -> bool | None:
        """The member's latest consent choice; None if never given. A tie means withdrawn."""
        rows = self._query(_LATEST_CONSENT, (member_id,))
        return None if not rows else rows[0][0] == "consent_granted"

    def member_events(self, member_id: int) -> list[dict[str, Any]]:
        """Every event of a member in time order, as EventIn fields plus ``received_at``."""
        rows = self._query(
            f"SELECT {', '.join(_EVENT_COLUMNS[:-1])} FROM events WHERE member_id = ? "
            "ORDER BY ts_us, event_id", (member_id,))
        names = ("event_id", "event_type", "member_id", "timestamp", "decision_id",
                 "challenge_id", "reward_id", "amount", "cost", "properties", "received_at")
        out = []
        for row in rows:
            record = dict(zip(names, row, strict=True))
            record["timestamp"] = _from_micros(record["timestamp"])
            record["received_at"] = _from_micros(record["received_at"])
            record["properties"] = _loads(record["properties"])
            out.append(record)
        return out

    def count_events(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM events")[0][0])

    def count_decisions(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM decisions")[0][0])

    # -- frames for reports and training ------------------------------------------------------

    def events_between(self, start: datetime, end: datetime,
                       event_types: Sequence[str] | None = None) -> pd.DataFrame:
        """Events with ``start <= timestamp < end``, one row each, time in ``event_timestamp``
        (the project's point-in-time column name)."""
        sql = (f"SELECT {', '.join(_EVENT_COLUMNS[:-1])} FROM events "
               "WHERE ts_us >= ? AND ts_us < ?")
        params: list[Any] = [_micros(start), _micros(end)]
        if event_types is not None:
            # IN (NULL) matches nothing: an empty list selects no event.
            sql += f" AND event_type IN ({', '.join(['?'] * len(event_types)) or 'NULL'})"
            params += event_types
        frame = pd.DataFrame.from_records(
            self._query(sql + " ORDER BY ts_us, event_id", params),
            columns=["event_id", "event_type", "member_id", "event_timestamp", "decision_id",
                     "challenge_id", "reward_id", "amount", "cost", "properties", "received_at"])
        frame["properties"] = frame["properties"].map(_loads)
        return _with_times(frame, "event_timestamp", "received_at")

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
            (_micros(start), _micros(end))),
            columns=["decision_id", "member_id", "event_timestamp", "channel", "arm",
                     "experiment_id", "model_versions", "flags", "item_type", "item_id", "rank",
                     "score", "shown_probability", "target", "cost"])
        for column in ("model_versions", "flags"):
            frame[column] = frame[column].map(_loads)
        return _with_times(frame, "event_timestamp")

    # -- experiments ---------------------------------------------------------------------------

    def add_experiment(self, experiment_id: str, name: str, start: datetime, end: datetime,
                       definition: str) -> bool:
        """Store an experiment's definition (JSON); False if the id exists (kept unchanged)."""
        with self._write() as cur:
            added = self._insert(cur, "experiments", (
                "experiment_id", "name", "start_us", "end_us", "definition", "created_us"),
                "experiment_id", [(experiment_id, name, _micros(start), _micros(end), definition,
                                   _micros(datetime.now(UTC)))])
        return bool(added)

    def experiments(self) -> list[str]:
        """Every experiment's definition (JSON), oldest start first."""
        rows = self._query("SELECT definition FROM experiments ORDER BY start_us, experiment_id")
        return [row[0] for row in rows]

    def log_exposures(self, exposures: Sequence[ExposureRecord]) -> None:
        """Record first exposures in one transaction; a member already exposed keeps the first."""
        if not exposures:
            return
        unique: dict[tuple[str, int], ExposureRecord] = {}
        for e in exposures:
            unique.setdefault((e.experiment_id, e.member_id), e)
        with self._write() as cur:
            self._insert(cur, "experiment_exposures", _EXPOSURE_COLUMNS,
                         "experiment_id, member_id", [
                             (e.experiment_id, e.member_id, e.arm, _micros(e.exposed_at),
                              e.decision_id, e.channel, e.tier, e.uplift_score)
                             for e in unique.values()])

    def exposures(self, experiment_id: str) -> pd.DataFrame:
        """One row per exposed member of an experiment; time in ``exposed_at``."""
        frame = pd.DataFrame.from_records(self._query(
            f"SELECT {', '.join(_EXPOSURE_COLUMNS)} FROM experiment_exposures "
            "WHERE experiment_id = ? ORDER BY member_id", (experiment_id,)),
            columns=[c if c != "exposed_us" else "exposed_at" for c in _EXPOSURE_COLUMNS])
        frame["uplift_score"] = frame["uplift_score"].astype("float64")
        return _with_times(frame, "exposed_at")

    # -- lifecycle ----------------------------------------------------------------------------

    def ping(self) -> bool:
        """True when the database answers; for the readiness probe."""
        try:
            return bool(self._query("SELECT 1")[0][0] == 1)
        except Exception:  # any driver error means "not ready"
            log.warning("event store ping failed", exc_info=True)
            return False


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _with_times(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    for column in columns:
        frame[column] = pd.to_datetime(frame[column].astype("int64"), unit="us", utc=True
                                       ).astype("datetime64[us, UTC]")
    return frame


def open_event_store(url: str) -> EventStore:
    """Open (creating the schema if needed) the store at ``url``.

    ``sqlite:////abs/path/events.db`` (SQLAlchemy's form: three slashes, then an absolute path,
    since a relative one would depend on the working directory) or
    ``postgresql://user:pass@host:port/db``.
    """
    return SqlEventStore(dialect_for(url, "event store"))
