"""The event store as the system of record: member profiles, bulk event imports, and the frames
the feature pipeline and training read.

Imports arrive a chunk at a time (``rewards import``, the simulator), each chunk one transaction:
committed whole or not at all, so a crash leaves whole chunks and re-running an import only
skips what is stored (idempotent by ``event_id``; an event is never overwritten). Reads return
columnar frames built from batches of rows, never a dict per row: a history has millions.
The per-request side (the API's events, decisions, business-rule queries) is in ``store``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from serving.stores.events.schema import (
    EVENT_INDEXES,
    FIELD_COLUMNS,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    dumps,
    loads,
    micros,
)
from serving.stores.sql import ROWS_PER_STATEMENT, SqlStore, paused_gc

#: events_frame's columns and the stored column each comes from (times as timestamps).
FRAME_COLUMNS: dict[str, str] = {
    "event_id": "event_id", "event_type": "event_type", "member_id": "member_id",
    "event_timestamp": "ts_us", "decision_id": "decision_id",
    **{c: c for c in FIELD_COLUMNS}, "properties": "properties", "received_at": "received_us"}
#: decision_log's two frames: one row per decision, and one row per item (a slot) served.
DECISION_LOG_COLUMNS = ("decision_id", "member_id", "event_timestamp", "channel", "arm",
                        "experiment_id", "policy", "no_offer", "no_offer_probability",
                        "model_versions", "features", "personalized", "cold_start", "degraded",
                        "ranking", "reward_model", "difficulty_model")
DECISION_ITEM_COLUMNS = ("decision_id", "member_id", "event_timestamp", "item_type", "item_id",
                         "item_rank", "score", "shown_probability", "target",
                         "target_probability", "cost")
#: the flags stored as canonical JSON (schema.dumps) that decision_log spreads into columns
_DECISION_FLAGS = ("no_offer", "personalized", "cold_start", "degraded")
#: per family, whether its model chose the family's items (spread as nullable booleans: NA in
#: decisions logged before the flag existed, whose ``policy`` then says it for both)
_FAMILY_FLAGS = ("reward_model", "difficulty_model")
_REQUIRED = ("event_id", "event_type", "member_id", "event_timestamp")


def _family_flag(flag_text: pd.Series, flag: str) -> pd.array:
    """A family flag of the canonical flags JSON: True, False, or NA where not recorded."""
    present = flag_text.str.contains(f'"{flag}":', regex=False).to_numpy(dtype=bool)
    value = flag_text.str.contains(f'"{flag}":true', regex=False).to_numpy(dtype=bool)
    return pd.array(np.where(present, value, None), dtype="boolean")
#: Optional columns of an import frame, stored only for the event types that carry a value.
_OPTIONAL = ("decision_id", *FIELD_COLUMNS, "properties")
_MEMBER_CHANGED = " OR ".join(f"members.{c} IS DISTINCT FROM excluded.{c}" for c in (
    "joined_us", "tier", "region", "consent", "attributes"))
_UPSERT_MEMBER_TAIL = (
    "ON CONFLICT (member_id) DO UPDATE SET joined_us = excluded.joined_us, "
    "tier = excluded.tier, region = excluded.region, consent = excluded.consent, "
    f"attributes = excluded.attributes, updated_us = excluded.updated_us WHERE {_MEMBER_CHANGED}")


class RecordStore(SqlStore):
    """Members, bulk imports and training frames over the event store's tables."""

    # -- members ---------------------------------------------------------------------------------

    def upsert_members(self, members: pd.DataFrame) -> int:
        """Create or replace profiles in one transaction; the rows created or changed.

        Columns: member_id, joined_at (tz-aware), tier, and optionally region, consent
        (nullable bool) and attributes (dict or JSON text). A member repeated in the frame
        keeps its last row. A profile whose values are all unchanged is not written, so its
        ``updated_us`` (what :meth:`members_changed_since` looks at) stays put.
        """
        if members.empty:
            return 0
        members = members.drop_duplicates("member_id", keep="last")
        n = len(members)
        rows = np.empty((n, 7), dtype=object)
        rows[:, 0] = _cells(members["member_id"])
        rows[:, 1] = _micros_of(members["joined_at"]).astype(object)
        rows[:, 2] = _cells(members["tier"])
        for j, name in ((3, "region"), (4, "consent"), (5, "attributes")):
            rows[:, j] = _cells(members[name]) if name in members else None
        if "consent" in members:
            rows[:, 4] = [None if v is None else int(bool(v)) for v in rows[:, 4]]
        if "attributes" in members:
            rows[:, 5] = [_json_text(v) for v in rows[:, 5]]
        with self._write() as cur:
            rows[:, 6] = micros(datetime.now(UTC))
            return self._insert_values(
                cur, "INSERT INTO members (member_id, joined_us, tier, region, consent, "
                     "attributes, updated_us)", _UPSERT_MEMBER_TAIL, rows)

    def upsert_member(self, member_id: str, joined_at: datetime, tier: str, region: str | None,
                      consent: bool | None, attributes: Mapping[str, Any] | None) -> bool:
        """Create or replace one profile (``PUT /v1/members/{id}``); True if it was created.

        Insert-or-nothing first, then update: whoever's insert lands is the creator, so two
        concurrent first PUTs cannot both answer "created".
        """
        values = [micros(joined_at), tier, region, None if consent is None else int(consent),
                  None if attributes is None else dumps(dict(attributes))]
        with self._write() as cur:
            now = micros(datetime.now(UTC))
            cur.execute(self._sql(
                "INSERT INTO members (member_id, joined_us, tier, region, consent, attributes, "
                "updated_us) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (member_id) DO NOTHING "
                "RETURNING member_id"), [member_id, *values, now])
            if cur.fetchall():
                return True
            cur.execute(self._sql(
                "UPDATE members SET joined_us = ?, tier = ?, region = ?, consent = ?, "
                "attributes = ?, updated_us = ? WHERE member_id = ? AND ("
                + " OR ".join(f"{c} IS DISTINCT FROM ?" for c in (
                    "joined_us", "tier", "region", "consent", "attributes")) + ")"),
                [*values, now, member_id, *values])
        return False

    def members_frame(self, member_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """Profiles (all, or these members'), by member_id: member_id, joined_at
        (datetime64[us, UTC]), tier, region, consent (boolean, NA when unknown), attributes
        (dict or None)."""
        sql = ("SELECT CAST(member_id AS TEXT), joined_us, tier, region, consent, attributes "
               "FROM members")
        member_id, joined, tier, region, consent, attributes = self._fetch_ordered(
            sql, (), 6, member_ids, (), f"member_id COLLATE {self._dialect.binary_collation}")
        return pd.DataFrame({
            "member_id": np.array(member_id, dtype=object), "joined_at": _timestamps(joined),
            "tier": np.array(tier, dtype=object), "region": np.array(region, dtype=object),
            "consent": pd.array([None if c is None else bool(c) for c in consent],
                                dtype="boolean"),
            "attributes": np.array([loads(a) for a in attributes], dtype=object)})

    # -- bulk events -----------------------------------------------------------------------------

    def import_events(self, events: pd.DataFrame) -> int:
        """Store a validated chunk of events in ONE transaction; the number inserted.

        Columns: event_id, event_type, member_id, event_timestamp (tz-aware), and any of
        decision_id, the per-type fields and properties (JSON text or dict); an absent column
        is NULL. An event_id already stored, or repeated in the chunk, is skipped: the first
        copy wins and nothing is overwritten. Rows go in many per statement, grouped by event
        type so that each statement binds only the columns its type fills (a visit binds five
        values, not nineteen): what makes millions of rows a minute's work on SQLite.
        """
        missing = [c for c in _REQUIRED if c not in events]
        if missing:
            raise ValueError(f"import_events: missing column(s) {missing}")
        if events.empty:
            return 0
        cells = {c: _cells(events[c]) for c in ("event_id", "event_type", "member_id")}
        cells["ts_us"] = _micros_of(events["event_timestamp"]).astype(object)
        for column in _OPTIONAL:
            if column in events:
                cells[column] = _cells(events[column], kind=_kind(column))
        if "properties" in cells:
            cells["properties"] = np.array([_json_text(p) for p in cells["properties"]],
                                           dtype=object)
        present = {c: ~pd.isna(cells[c]) for c in _OPTIONAL if c in cells}
        # Grouped by type, each group in event_id order: ids a program draws at random (UUIDs)
        # then reach the id index in key order (a quarter faster than in file order).
        by_id = np.asarray(pc.sort_indices(pa.array(cells["event_id"], pa.string())))
        codes = pd.factorize(cells["event_type"][by_id])[0]
        order = by_id[np.argsort(codes, kind="stable")]
        bounds = np.flatnonzero(np.diff(np.sort(codes))) + 1
        inserted = 0
        with self._write() as cur:
            received = micros(datetime.now(UTC))
            for group in np.split(order, bounds):
                used = ["event_id", "event_type", "member_id", "ts_us",
                        *(c for c in present if present[c][group].any())]
                rows = np.empty((len(group), len(used) + 1), dtype=object)
                for j, column in enumerate(used):
                    rows[:, j] = cells[column][group]
                rows[:, -1] = received
                inserted += self._insert_values(
                    cur, f"INSERT INTO events ({', '.join(used)}, received_us)",
                    "ON CONFLICT (event_id) DO NOTHING", rows)
        return inserted

    @contextmanager
    def bulk_load(self) -> Iterator[bool]:
        """A session for importing many chunks from this thread; yields whether the events
        table's member and type indexes were deferred.

        Its connection gets a larger page cache (and, on SQLite, sorter threads) for the
        session. When the events table is empty at the start, the indexes by member and by type
        (EVENT_INDEXES) are dropped and built once at the end: a sort, about 4x cheaper than
        inserting millions of rows into B-trees whose keys (member, or time) arrive in random
        order. The id index stays (it is what makes a chunk idempotent), and so does the index
        by arrival time (its keys arrive in order). Only when empty: a store that already
        serves requests keeps every index, since its per-member queries would scan the table
        without them. Queries stay correct meanwhile, only slower; should the process die
        mid-import, the next process to open the store rebuilds them (the schema runs at every
        open).
        """
        conn = self._connection()
        deferred = not self._query("SELECT 1 FROM events LIMIT 1")
        if deferred:
            with self._write() as cur:
                for name in EVENT_INDEXES:
                    cur.execute(f"DROP INDEX IF EXISTS {name}")
        for statement in self._dialect.bulk_session:
            conn.execute(statement)
        try:
            yield deferred
        finally:
            try:
                with self._write() as cur:  # present again whatever happened
                    for statement in EVENT_INDEXES.values():
                        cur.execute(statement)
            finally:
                for statement in self._dialect.normal_session:
                    conn.execute(statement)

    # -- frames for features and training --------------------------------------------------------

    def events_frame(self, *, member_ids: Sequence[str] | None = None,
                     until: datetime | None = None, event_types: Sequence[str] | None = None,
                     columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Events (optionally only these members', before ``until``, of these types), ordered by
        member_id, event_timestamp, event_id.

        Columns (all by default, or ``columns``): see FRAME_COLUMNS. event_timestamp and
        received_at are datetime64[us, UTC]; ids and texts are str or None; amount, cost,
        target, value and propensity float64 (NaN when missing); quantity and points Int64;
        properties a dict or None.
        """
        names = list(FRAME_COLUMNS) if columns is None else list(columns)
        unknown = [n for n in names if n not in FRAME_COLUMNS]
        if unknown:
            raise ValueError(f"events_frame: unknown column(s) {unknown}; "
                             f"expected some of {list(FRAME_COLUMNS)}")
        where: list[str] = []
        params: list[Any] = []
        if until is not None:
            where.append("ts_us < ?")
            params.append(micros(until))
        if event_types is not None:
            # IN (NULL) matches nothing: an empty list selects no event.
            where.append(f"event_type IN ({', '.join(['?'] * len(event_types)) or 'NULL'})")
            params += list(event_types)
        # Text in code-point order (Python's), whatever the database's collation.
        binary = self._dialect.binary_collation
        with paused_gc():
            raw = self._fetch_ordered(
                f"SELECT {', '.join(frame_sql(n) for n in names)} FROM events", params,
                len(names), member_ids, where,
                f"member_id COLLATE {binary}, ts_us, event_id COLLATE {binary}")
            return pd.DataFrame({n: typed_column(n, raw.pop(0)) for n in names}, copy=False)

    def members_changed_since(self, received_after: datetime) -> list[str]:
        """Members with an event received, a profile changed or a decision made after a time
        (sorted).

        For incremental feature refreshes: a decision counts among the member's offers (its
        time is the service's clock when it was logged). A write takes its time when its
        transaction starts, so an import chunk committing as you ask may carry a time just
        before your call: ask from a little before your previous call (recomputing a member
        twice is harmless).
        """
        after = micros(received_after)
        rows = self._query("SELECT member_id FROM events WHERE received_us > ? "
                           "UNION SELECT member_id FROM members WHERE updated_us > ? "
                           "UNION SELECT CAST(member_id AS TEXT) FROM decisions "
                           "WHERE created_us > ?", (after, after, after))
        return sorted(str(row[0]) for row in rows)

    def decision_log(self, since: datetime | None = None, until: datetime | None = None,
                     member_ids: Sequence[str] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The service's decisions made at ``since <= time < until`` (either bound optional),
        optionally only these members' (through the member index: a feature refresh of a few
        members reads their decisions, not the whole log), as training and off-policy
        evaluation read them: (decisions, items).

        decisions, one row each (DECISION_LOG_COLUMNS): member_id str, event_timestamp
        datetime64[us, UTC] (the decision time), policy ("model", "cold_start", "fallback";
        None for decisions logged before it was), no_offer_probability float64 (1 in an
        experiment's holdout arm; NaN: its other arms, no reward asked for, or logged before),
        model_versions and features as JSON text (features None when no model served), the
        flags as bools (a flag a decision did not record reads False), and the reward
        ranking's context as JSON text (RankingContext; None when none was logged).

        items, one row per item served (DECISION_ITEM_COLUMNS): its slot (item_type,
        item_rank), score, shown_probability (the logging propensity: the no-offer share and,
        for a challenge, the target's draw included), target and target_probability
        (challenges), cost (rewards); numbers float64, NaN when missing.

        Both are ordered by time then decision id (items then rewards before challenges, by
        rank), read as columns in batches (no Python object per row), without a join.
        """
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("created_us >= ?")
            params.append(micros(since))
        if until is not None:
            where.append("created_us < ?")
            params.append(micros(until))
        binary = self._dialect.binary_collation
        with paused_gc():
            (decision_id, member_id, created, channel, arm, experiment_id, policy,
             no_offer_p, versions, features, flags, ranking) = self._fetch_members(
                "SELECT decision_id, CAST(member_id AS TEXT), created_us, channel, arm, "
                "experiment_id, policy, no_offer_probability, model_versions, features, flags, "
                "ranking FROM decisions", params, 12, member_ids, where,
                f"created_us, decision_id COLLATE {binary}")
            flag_text = pd.Series(flags, dtype=object)
            decisions = pd.DataFrame({
                "decision_id": np.array(decision_id, dtype=object),
                "member_id": np.array(member_id, dtype=object),
                "event_timestamp": _timestamps(created),
                "channel": np.array(channel, dtype=object),
                "arm": np.array(arm, dtype=object),
                "experiment_id": np.array(experiment_id, dtype=object),
                "policy": np.array(policy, dtype=object),
                "no_offer_probability": _floats(no_offer_p),
                "model_versions": np.array(versions, dtype=object),
                "features": np.array(features, dtype=object),
                "ranking": np.array(ranking, dtype=object),
                # canonical JSON (sorted keys, no spaces): a substring test per flag, no parse
                **{flag: flag_text.str.contains(f'"{flag}":true', regex=False)
                   .to_numpy(dtype=bool) for flag in _DECISION_FLAGS},
                **{flag: _family_flag(flag_text, flag) for flag in _FAMILY_FLAGS},
            }, columns=list(DECISION_LOG_COLUMNS))
            if member_ids is not None:  # read member by member: back in time, then id order
                decisions = decisions.sort_values(["event_timestamp", "decision_id"],
                                                  kind="stable", ignore_index=True)
            # the items in table order, put in the decisions' order here: a sort in SQL of a
            # row per slot costs more than the read itself; their member and time are the
            # decision's. Items of a decision committed after the decisions were read (a live
            # store) are left out: both frames describe the same decisions.
            raw = self._fetch_members(
                "SELECT decision_id, item_type, item_id, item_rank, score, shown_probability, "
                "target, target_probability, cost FROM decision_items", params, 9, member_ids,
                where)
            at = pd.Index(decisions["decision_id"]).get_indexer(
                np.array(raw[0], dtype=object))
            rank = np.asarray(raw[3], dtype=np.int64)
            kind = np.array(raw[1], dtype=object)
            order = np.lexsort((rank, kind != "reward", at))
            order = order[at[order] >= 0]
            at = at[order]
            items = pd.DataFrame({
                "decision_id": decisions["decision_id"].to_numpy()[at],
                "member_id": decisions["member_id"].to_numpy()[at],
                "event_timestamp": decisions["event_timestamp"].array[at],
                "item_type": kind[order],
                "item_id": np.array(raw[2], dtype=object)[order],
                "item_rank": rank[order],
                **{name: _floats(values)[order] for name, values in zip(
                    DECISION_ITEM_COLUMNS[6:], raw[4:], strict=True)},
            }, columns=list(DECISION_ITEM_COLUMNS))
        return decisions, items

    # -- helpers -----------------------------------------------------------------------------------

    def _fetch_members(self, sql: str, params: Sequence[Any], width: int,
                       member_ids: Sequence[str] | None, where: Sequence[str],
                       order: str | None = None) -> list[list[Any]]:
        """``sql`` with ``where`` as columns: the whole table in ``order`` (if any), or for a
        list of members, in member order (:meth:`_fetch_ordered`; the caller re-sorts)."""
        if member_ids is not None:
            return self._fetch_ordered(sql, params, width, member_ids, where, "member_id")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        tail = f" ORDER BY {order}" if order else ""
        return self._fetch_columns(f"{sql}{clause}{tail}", params, width)

    def _fetch_ordered(self, sql: str, params: Sequence[Any], width: int,
                       member_ids: Sequence[str] | None, where: Sequence[str], order: str
                       ) -> list[list[Any]]:
        """``sql`` with ``where`` and ``ORDER BY order`` (which starts with member_id), as
        columns; for a list of members, a bounded IN list at a time (the member index serves
        each), in member order so that the parts concatenate in order."""
        if member_ids is None:
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            return self._fetch_columns(f"{sql}{clause} ORDER BY {order}", params, width)
        ids = sorted(set(member_ids))
        columns: list[list[Any]] = [[] for _ in range(width)]
        for start in range(0, len(ids), ROWS_PER_STATEMENT):
            chunk = ids[start:start + ROWS_PER_STATEMENT]
            clauses = [*where, f"member_id IN ({', '.join(['?'] * len(chunk))})"]
            part = self._fetch_columns(f"{sql} WHERE {' AND '.join(clauses)} ORDER BY {order}",
                                       [*params, *chunk], width)
            for column, values in zip(columns, part, strict=True):
                column.extend(values)
        return columns


def _kind(column: str) -> str:
    return "float" if column in FLOAT_COLUMNS else "int" if column in INT_COLUMNS else "object"


def _cells(series: pd.Series, kind: str = "object") -> np.ndarray:
    """A column as Python values in an object array, missing values as None (what drivers
    bind as NULL; a float NaN would be stored as NaN by PostgreSQL)."""
    if kind == "float":
        values = series.to_numpy(dtype=float, na_value=np.nan)
        out = values.astype(object)
        out[np.isnan(values)] = None
        return out
    if kind == "int":
        return series.astype("Int64").to_numpy(dtype=object, na_value=None)
    return series.to_numpy(dtype=object, na_value=None)


def _micros_of(series: pd.Series) -> np.ndarray:
    """Microseconds since the epoch (int64) of a tz-aware datetime column."""
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        raise ValueError(  # noqa: TRY004 - a bad value for the caller, as the CLI reports it
            f"{series.name}: expected tz-aware timestamps, got {series.dtype}")
    if series.isna().any():
        raise ValueError(f"{series.name}: missing timestamps")
    return pd.DatetimeIndex(series).tz_convert("UTC").as_unit("us").asi8


def _json_text(value: Any) -> str | None:
    """Properties or attributes as canonical JSON text (given as a dict or as JSON text)."""
    if value is None:
        return None
    return dumps(value if isinstance(value, dict) else loads(value))


def _timestamps(values: Sequence[int]) -> pd.arrays.DatetimeArray:
    """Microseconds since the epoch as datetime64[us, UTC]."""
    micros = np.asarray(values, dtype=np.int64).view("datetime64[us]")
    return pd.DatetimeIndex(micros).tz_localize("UTC").array


def _floats(values: Sequence[Any]) -> np.ndarray:
    """Numbers (None for NULL) as float64, NaN for the NULLs."""
    return pa.array(values, pa.float64()).to_numpy(zero_copy_only=False)


def frame_sql(name: str) -> str:
    """The SQL of one events_frame column. Ids come back as text even from a store upgraded
    from integer member ids (SQLite keeps a number there as a number)."""
    column = FRAME_COLUMNS[name]
    return "CAST(member_id AS TEXT)" if column == "member_id" else column


def typed_column(name: str, values: Sequence[Any]) -> Any:
    """One fetched column in events_frame's dtype; numbers go through arrow, which reads a
    list with None in one pass."""
    if name in ("event_timestamp", "received_at"):
        return _timestamps(values)
    if name in FLOAT_COLUMNS:
        return pa.array(values, pa.float64()).to_numpy(zero_copy_only=False)
    if name in INT_COLUMNS:
        ints = pa.array(values, pa.int64())
        return pd.arrays.IntegerArray(
            np.asarray(ints.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64),
            np.asarray(ints.is_null().to_numpy(zero_copy_only=False), dtype=bool))
    if name == "properties":
        return np.array([loads(v) for v in values], dtype=object)
    return np.array(values, dtype=object)
