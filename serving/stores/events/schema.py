"""The event store's tables, columns and value conventions, and the upgrade of older schemas.

One SQL schema serves SQLite (the embedded default) and PostgreSQL (production). Times are
BIGINT microseconds since the epoch, UTC: the two engines share no timestamp type (SQLite has
none), while integers compare, index and round-trip identically in both (and a history from 1969
is just a negative number). Ids are VARCHAR(64) everywhere: a program names its members
(``M-000172``, UUIDs, ``"42"``) and the store never reads meaning into them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

#: Per-type columns of an event, as in serving.contract.events.EVENT_FIELDS; an event object
#: (one pydantic model per type) is read with ``getattr(event, name, None)``.
FIELD_COLUMNS = ("reward_id", "challenge_id", "amount", "cost", "category", "quantity", "points",
                 "tier", "target", "value", "propensity")
#: What an event says, in stored order: the fingerprint of a payload covers exactly these.
PAYLOAD_COLUMNS = ("event_id", "event_type", "member_id", "ts_us", "decision_id", *FIELD_COLUMNS,
                   "properties")
EVENT_COLUMNS = (*PAYLOAD_COLUMNS, "received_us", "payload_sha256")
FLOAT_COLUMNS = frozenset({"amount", "cost", "target", "value", "propensity"})
INT_COLUMNS = frozenset({"quantity", "points"})
MEMBER_COLUMNS = ("member_id", "joined_us", "tier", "region", "consent", "attributes",
                  "updated_us")

# Portable DDL: the same statements run on SQLite and PostgreSQL.
TABLES = (
    # payload_sha256 fingerprints what was posted, to tell an honest retry from a reused id with
    # new content. Bulk imports leave it NULL: it is a function of the stored columns
    # (payload_digest), recomputed from them when a replay needs it.
    # NOT NULL on the text keys: SQLite would otherwise take a NULL primary key.
    """CREATE TABLE IF NOT EXISTS events (
        event_id VARCHAR(64) NOT NULL PRIMARY KEY,
        event_type VARCHAR(32) NOT NULL,
        member_id VARCHAR(64) NOT NULL,
        ts_us BIGINT NOT NULL,
        decision_id VARCHAR(64),
        reward_id VARCHAR(64),
        challenge_id VARCHAR(64),
        amount DOUBLE PRECISION,
        cost DOUBLE PRECISION,
        category VARCHAR(32),
        quantity INTEGER,
        points BIGINT,
        tier VARCHAR(16),
        target DOUBLE PRECISION,
        value DOUBLE PRECISION,
        propensity DOUBLE PRECISION,
        properties TEXT,
        received_us BIGINT NOT NULL,
        payload_sha256 CHAR(64))""",
    # Profiles. consent: 1 granted, 0 withdrawn, NULL unknown; attributes: JSON text.
    # updated_us moves only when a value changes, so re-importing a file marks nobody changed.
    """CREATE TABLE IF NOT EXISTS members (
        member_id VARCHAR(64) NOT NULL PRIMARY KEY,
        joined_us BIGINT NOT NULL,
        tier VARCHAR(16) NOT NULL,
        region VARCHAR(32),
        consent SMALLINT,
        attributes TEXT,
        updated_us BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS members_updated ON members (updated_us)",
    # The decision log (what learning reads): policy ("model", "cold_start", "fallback"),
    # the no-offer share of the draw, the member's feature values as canonical JSON.
    """CREATE TABLE IF NOT EXISTS decisions (
        decision_id VARCHAR(64) PRIMARY KEY,
        member_id VARCHAR(64) NOT NULL,
        created_us BIGINT NOT NULL,
        channel VARCHAR(32) NOT NULL,
        arm VARCHAR(32),
        experiment_id VARCHAR(64),
        model_versions TEXT NOT NULL,
        flags TEXT NOT NULL,
        policy VARCHAR(16),
        no_offer_probability DOUBLE PRECISION,
        features TEXT,
        ranking TEXT)""",
    "CREATE INDEX IF NOT EXISTS decisions_member_ts ON decisions (member_id, created_us)",
    "CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (created_us)",
    # member_id and created_us are copied from the decision so that per-member lookups and
    # erasure need no join. target_probability: a challenge's P(target | template).
    """CREATE TABLE IF NOT EXISTS decision_items (
        decision_id VARCHAR(64) NOT NULL,
        item_type VARCHAR(16) NOT NULL,
        item_id VARCHAR(64) NOT NULL,
        member_id VARCHAR(64) NOT NULL,
        created_us BIGINT NOT NULL,
        item_rank INTEGER NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        shown_probability DOUBLE PRECISION NOT NULL,
        target DOUBLE PRECISION,
        cost DOUBLE PRECISION,
        target_probability DOUBLE PRECISION,
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
        member_id VARCHAR(64) NOT NULL,
        arm VARCHAR(32) NOT NULL,
        exposed_us BIGINT NOT NULL,
        decision_id VARCHAR(64) NOT NULL,
        channel VARCHAR(32) NOT NULL,
        tier VARCHAR(16),
        uplift_score DOUBLE PRECISION,
        PRIMARY KEY (experiment_id, member_id))""",
    "CREATE INDEX IF NOT EXISTS experiment_exposures_member ON experiment_exposures (member_id)",
    # Who had events arrive since a time (incremental feature refreshes). Kept up to date even
    # during bulk imports: a chunk shares one received_us, so its entries go to the index's end.
    "CREATE INDEX IF NOT EXISTS events_received ON events (received_us, member_id)",
)
#: The events table's secondary indexes: what a bulk import into an empty store builds once at
#: the end instead of row by row (serving.stores.events.records.RecordStore.deferred_indexes).
EVENT_INDEXES = {
    # event_type sits in the member index so that, without table statistics, SQLite still
    # prefers it to events_type_ts for per-member lookups (one member vs every member's events).
    "events_member_type_ts": "CREATE INDEX IF NOT EXISTS events_member_type_ts "
                             "ON events (member_id, event_type, ts_us)",
    "events_type_ts": "CREATE INDEX IF NOT EXISTS events_type_ts ON events (event_type, ts_us)",
}
SCHEMA = (*TABLES, *EVENT_INDEXES.values())

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(value: datetime) -> int:
    """Microseconds since the epoch; a naive time is refused (whose midnight would it be?)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware time")
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): equal dicts store equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def feature_json(features: Mapping[str, float] | None) -> str | None:
    """A decision's feature values as canonical JSON, each number rounded to 6 significant
    digits (about what the float32 model inputs hold, in half the text of a full repr) and a
    non-finite one as null (JSON has no NaN)."""
    if features is None:
        return None
    return dumps({name: float(f"{v:.6g}") if math.isfinite(v) else None
                  for name, v in features.items()})


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def payload_digest(values: Sequence[Any]) -> str:
    """SHA-256 of an event's stored payload (values in PAYLOAD_COLUMNS order).

    Computed from stored values, not from the request body, so an event posted to the API and
    the same event read back from an import compare equal: a replay of either is honest.
    """
    return hashlib.sha256(dumps(list(values)).encode()).hexdigest()


# -- upgrades --------------------------------------------------------------------------------------

_MEMBER_TABLES = ("events", "decisions", "decision_items", "experiment_exposures")


def _columns(cur: Any, table: str) -> list[str] | None:
    """A table's column names, or None when it does not exist (portable: no catalog query)."""
    cur.execute("SAVEPOINT probe")  # PostgreSQL aborts a transaction at its first error
    try:
        cur.execute(f"SELECT * FROM {table} WHERE 1 = 0")
        cur.fetchall()
        names: list[str] | None = [d[0].lower() for d in cur.description]
    except Exception:  # noqa: BLE001 - "no such table" has no portable error class
        cur.execute("ROLLBACK TO SAVEPOINT probe")
        names = None
    cur.execute("RELEASE SAVEPOINT probe")
    return names


#: Columns added to a table after its first release: (column, type), each added in place to an
#: older store (``ALTER TABLE ... ADD COLUMN``, NULL in its rows) when it is opened.
ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    # the decision log fit for learning (issue 21)
    "decisions": (("policy", "VARCHAR(16)"), ("no_offer_probability", "DOUBLE PRECISION"),
                  ("features", "TEXT"), ("ranking", "TEXT")),
    "decision_items": (("target_probability", "DOUBLE PRECISION"),),
}


def migrate(cur: Any) -> None:
    """Bring an older store up to date in place, keeping every row: the rebuild of a store
    from before string member ids, then the columns added since (:data:`ADDED_COLUMNS`)."""
    _string_ids(cur)
    add_columns(cur)


def add_columns(cur: Any) -> None:
    """Add the :data:`ADDED_COLUMNS` a table lacks. ``ADD COLUMN`` of a nullable column is
    portable (SQLite and PostgreSQL) and rewrites no row; a table not created yet is left to
    the schema, whose DDL has every column."""
    for table, added in ADDED_COLUMNS.items():
        present = _columns(cur, table)
        if present is None:
            continue
        for column, kind in added:
            if column not in present:
                cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _string_ids(cur: Any) -> None:
    """Bring a store written before string member ids up to date, keeping every row.

    That schema had BIGINT member ids, 16-character item ids, fewer event columns and a NOT NULL
    payload digest. Each of its tables is rebuilt (create the new table, copy, drop the old,
    rename), the portable way to change column types; the digests are cleared, since they
    fingerprinted the old request bodies (replays recompute them from the stored columns).
    Runs inside the schema transaction, so replicas starting together upgrade once.
    """
    old = _columns(cur, "events")
    if old is None or "category" in old:
        return
    creates = {table: next(s for s in TABLES if f"EXISTS {table} (" in s)
               for table in _MEMBER_TABLES}
    for table in _MEMBER_TABLES:
        columns = _columns(cur, table)
        if columns is None:
            continue
        cur.execute(creates[table].replace(f"EXISTS {table} (", f"EXISTS {table}_v2 ("))
        kept = [c for c in columns if c != "payload_sha256"]
        selected = [f"CAST({c} AS VARCHAR(64))" if c in ("member_id", "item_id") else c
                    for c in kept]
        cur.execute(f"INSERT INTO {table}_v2 ({', '.join(kept)}) "
                    f"SELECT {', '.join(selected)} FROM {table}")
        cur.execute(f"DROP TABLE {table}")  # its indexes go with it; SCHEMA recreates them
        cur.execute(f"ALTER TABLE {table}_v2 RENAME TO {table}")
