"""The catalog store: rewards, challenge templates and vocabularies as tables in the event
store's database.

Same database as the event store (same URL, the SQLite/PostgreSQL dialects and portable SQL of
``serving.stores.sql``), so a replica needs no extra service. Tables: ``catalog_rewards``,
``catalog_challenges``, ``catalog_vocabulary`` (kind, code, value: append only, a value's code
is its position) and ``catalog_version``, one counter incremented by every write that changes
something. Serving polls that counter (one indexed row) and re-reads the catalog when it moves.

Writers: ``rewards catalog import|retire`` and the admin routes (``/v1/catalog/...``); each
write is one transaction, and a file is applied whole or not at all. Every write begins by
bumping the counter, which also serializes concurrent catalog writers on PostgreSQL (the
counter's row lock) as SQLite's single writer does.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.contract.vocabulary import (
    VOCABULARY_KINDS, Vocabulary, value_error,
)
from serving.decisioning.catalog import (
    ITEM_MODELS, Catalog, ChallengeIn, ChallengeRecord, ItemKind, RewardIn,
    RewardRecord, RowError, micros, record_of, validate_items, validate_vocabulary_rows,
    vocabulary_errors,
)
from serving.stores.sql import ROWS_PER_STATEMENT, SqlStore, dialect_for

log = logging.getLogger("rewards.catalog")

ImportKind = Literal["rewards", "challenges", "vocabulary"]


class CatalogSettings(BaseSettings):
    """How serving follows the catalog (env prefix ``REWARDS_``, like every setting)."""

    model_config = SettingsConfigDict(env_prefix="REWARDS_", extra="ignore")

    catalog_refresh_seconds: float = Field(
        5.0, gt=0, description="how often serving checks the catalog's version and, when it "
                               "moved, swaps in the new catalog")
    new_reward_epsilon: float = Field(
        0.1, ge=0, le=1, description="probability that a slate's last reward slot shows a "
                                     "reward new to the reward model (README, Catalog)")


_COLUMNS: dict[str, tuple[str, ...]] = {
    "rewards": ("reward_id", "name", "reward_type", "category", "cost", "min_tier", "status",
                "created_us", "updated_us"),
    "challenges": ("challenge_id", "name", "kind", "unit", "duration_days", "min_target",
                   "max_target", "target_step", "points", "status", "created_us", "updated_us"),
}
_TABLES = {"rewards": "catalog_rewards", "challenges": "catalog_challenges"}
#: Columns an upsert compares: an identical row is left alone (no new version, same times).
_FIELDS = {kind: tuple(c for c in cols[1:] if c not in ("created_us", "updated_us"))
           for kind, cols in _COLUMNS.items()}

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS catalog_rewards (
        reward_id VARCHAR(64) PRIMARY KEY,
        name VARCHAR(200) NOT NULL,
        reward_type VARCHAR(32) NOT NULL,
        category VARCHAR(32) NOT NULL,
        cost DOUBLE PRECISION NOT NULL,
        min_tier VARCHAR(32) NOT NULL,
        status VARCHAR(8) NOT NULL,
        created_us BIGINT NOT NULL,
        updated_us BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS catalog_challenges (
        challenge_id VARCHAR(64) PRIMARY KEY,
        name VARCHAR(200) NOT NULL,
        kind VARCHAR(32) NOT NULL,
        unit VARCHAR(32) NOT NULL,
        duration_days INTEGER NOT NULL,
        min_target DOUBLE PRECISION NOT NULL,
        max_target DOUBLE PRECISION NOT NULL,
        target_step DOUBLE PRECISION NOT NULL,
        points BIGINT NOT NULL,
        status VARCHAR(8) NOT NULL,
        created_us BIGINT NOT NULL,
        updated_us BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS catalog_vocabulary (
        kind VARCHAR(16) NOT NULL,
        code INTEGER NOT NULL,
        value VARCHAR(32) NOT NULL,
        created_us BIGINT NOT NULL,
        PRIMARY KEY (kind, code),
        UNIQUE (kind, value))""",
    """CREATE TABLE IF NOT EXISTS catalog_version (
        id INTEGER PRIMARY KEY,
        version BIGINT NOT NULL,
        updated_us BIGINT NOT NULL)""",
    ("INSERT INTO catalog_version (id, version, updated_us) VALUES (1, 0, 0) "
     "ON CONFLICT (id) DO NOTHING"),
)


class CatalogRejected(ValueError):
    """Rows refused by validation; nothing of their write was applied."""

    def __init__(self, errors: Sequence[RowError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(f"{len(self.errors)} error(s), first: row {first.row}: "
                         f"{first.field}: {first.reason}")


class _Unchanged(Exception):
    """Control flow: roll back a write that changed nothing (no new version)."""


@dataclass
class ImportResult:
    """What an import did, or why it did nothing (``errors``, one per refused value)."""

    kind: ImportKind
    rows: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)
    version: int = 0

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.rows, "created": self.created,
                "updated": self.updated, "unchanged": self.unchanged,
                "rejected_rows": len({e.row for e in self.errors}), "version": self.version}


class CatalogStore(SqlStore):
    """The catalog tables; thread-safe (a connection per thread, see ``SqlStore``)."""

    def __init__(self, url: str) -> None:
        super().__init__(dialect_for(url, "catalog store"), _SCHEMA, "catalog store")

    # -- reads ----------------------------------------------------------------------------------

    def version(self) -> int:
        """The catalog's version: it moves on every write that changed something."""
        return int(self._query("SELECT version FROM catalog_version WHERE id = 1")[0][0])

    def vocabulary(self) -> Vocabulary:
        lists: dict[str, list[str]] = {kind: [] for kind in VOCABULARY_KINDS}
        for kind, value in self._query(
                "SELECT kind, value FROM catalog_vocabulary ORDER BY kind, code"):
            lists.setdefault(kind, []).append(value)
        return Vocabulary.from_dict({k: v for k, v in lists.items() if k in VOCABULARY_KINDS})

    def rows(self, kind: ItemKind, include_retired: bool = False,
             ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Stored rows of ``kind`` by id (active ones unless ``include_retired``)."""
        columns = _COLUMNS[kind]
        sql = f"SELECT {', '.join(columns)} FROM {_TABLES[kind]}"
        where, params = [], []
        if not include_retired:
            where.append("status = 'active'")
        if ids is not None:
            if not ids:
                return []
            where.append(f"{columns[0]} IN ({', '.join('?' * len(ids))})")
            params = list(ids)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [dict(zip(columns, r, strict=True))
                for r in self._query(sql + f" ORDER BY {columns[0]}", params)]

    def records(self, kind: ItemKind, include_retired: bool = False
                ) -> list[RewardRecord | ChallengeRecord]:
        return [record_of(kind, r) for r in self.rows(kind, include_retired)]

    def get(self, kind: ItemKind, item_id: str) -> RewardRecord | ChallengeRecord | None:
        found = self.rows(kind, include_retired=True, ids=[item_id])
        return record_of(kind, found[0]) if found else None

    def frame(self, kind: ItemKind, include_retired: bool = False) -> pd.DataFrame:
        return pd.DataFrame(self.rows(kind, include_retired), columns=list(_COLUMNS[kind]))

    def catalog(self, attempts: int = 5) -> Catalog:
        """The active catalog as one consistent snapshot: the reads are retried when a write
        committed between them (the version moved)."""
        for _ in range(attempts):
            version = self.version()
            vocabulary = self.vocabulary()
            rewards, challenges = self.frame("rewards"), self.frame("challenges")
            if self.version() == version:
                return Catalog.build(rewards, challenges, vocabulary=vocabulary,
                                     version=version)
        raise RuntimeError(f"the catalog kept changing during {attempts} reads; try again")

    def is_empty(self) -> bool:
        return not self._query(
            "SELECT 1 FROM catalog_rewards UNION ALL SELECT 1 FROM catalog_challenges "
            "UNION ALL SELECT 1 FROM catalog_vocabulary LIMIT 1")

    # -- writes ---------------------------------------------------------------------------------

    @contextmanager
    def _change(self) -> Iterator[tuple[Any, int]]:
        """A write transaction that starts by bumping the version; a block raising
        ``_Unchanged`` rolls it back (nothing changed: no new version)."""
        now = micros(datetime.now(UTC))
        try:
            with self._write() as cur:
                cur.execute(self._sql("UPDATE catalog_version SET version = version + 1, "
                                      "updated_us = ? WHERE id = 1"), (now,))
                yield cur, now
        except _Unchanged:
            pass

    def append_vocabulary(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Append values to their kinds' lists in the order given (values already there are
        skipped): the new values get the next codes. Returns the (kind, value) pairs added."""
        for kind, value in pairs:
            problem = value_error(kind, value)
            if problem:
                raise ValueError(f"{kind}: {problem}")
        added: list[tuple[str, str]] = []
        with self._change() as (cur, now):
            cur.execute("SELECT kind, value, code FROM catalog_vocabulary")
            known = {(k, v) for k, v, _ in cur.fetchall()}
            cur.execute("SELECT kind, COUNT(*) FROM catalog_vocabulary GROUP BY kind")
            size = {k: int(n) for k, n in cur.fetchall()}
            for kind, value in pairs:
                if (kind, value) in known:
                    continue
                known.add((kind, value))
                code = size.get(kind, 0)
                size[kind] = code + 1
                cur.execute(self._sql("INSERT INTO catalog_vocabulary (kind, code, value, "
                                      "created_us) VALUES (?, ?, ?, ?)"),
                            (kind, code, value, now))
                added.append((kind, value))
            if not added:
                raise _Unchanged
        return added

    def upsert(self, kind: ItemKind, items: Sequence[RewardIn | ChallengeIn]) -> ImportResult:
        """Insert new items and update changed ones, in one transaction, after checking them
        against the vocabulary read in that transaction. CatalogRejected (nothing written)
        when any item uses a value its vocabulary does not hold."""
        result = ImportResult(kind, len(items))
        columns, table = _COLUMNS[kind], _TABLES[kind]
        with self._change() as (cur, now):
            cur.execute("SELECT kind, value FROM catalog_vocabulary ORDER BY kind, code")
            lists: dict[str, list[str]] = {}
            for k, v in cur.fetchall():
                lists.setdefault(k, []).append(v)
            vocabulary = Vocabulary.from_dict(lists)
            errors = [RowError(n, f, r) for n, item in enumerate(items, start=1)
                      for f, r in vocabulary_errors(item, vocabulary)]
            if errors:
                raise CatalogRejected(errors)
            ids = [getattr(item, columns[0]) for item in items]
            stored: dict[str, tuple[Any, ...]] = {}
            for start in range(0, len(ids), ROWS_PER_STATEMENT):
                chunk = ids[start:start + ROWS_PER_STATEMENT]
                cur.execute(self._sql(f"SELECT {', '.join(columns)} FROM {table} WHERE "
                                      f"{columns[0]} IN ({', '.join('?' * len(chunk))})"), chunk)
                stored.update((r[0], tuple(r)) for r in cur.fetchall())
            fresh: list[list[Any]] = []
            for item in items:
                row = _row_of(kind, item, now)
                old = stored.get(row[0])
                if old is None:
                    fresh.append(row)
                    continue
                if item.created_at is None:  # keep when it first entered the catalog
                    row[-2] = old[-2]
                if _same(old[1:-1], row[1:-1]):
                    result.unchanged += 1
                    continue
                cur.execute(self._sql(
                    f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns[1:])} "
                    f"WHERE {columns[0]} = ?"), [*row[1:], row[0]])
                result.updated += 1
            result.created = len(self._insert(cur, table, columns, columns[0], fresh))
            if not (result.created or result.updated):
                raise _Unchanged
        result.version = self.version()
        return result

    def retire(self, kind: ItemKind, item_id: str) -> RewardRecord | ChallengeRecord | None:
        """Mark an item retired (kept, never served again); None when there is no such item.
        Retiring a retired item changes nothing."""
        with self._change() as (cur, now):
            cur.execute(self._sql(f"UPDATE {_TABLES[kind]} SET status = 'retired', "
                                  f"updated_us = ? WHERE {_COLUMNS[kind][0]} = ? "
                                  "AND status <> 'retired'"), (now, item_id))
            if cur.rowcount != 1:
                raise _Unchanged
        return self.get(kind, item_id)


def _row_of(kind: ItemKind, item: RewardIn | ChallengeIn, now: int) -> list[Any]:
    values = item.model_dump()
    created = now if item.created_at is None else micros(item.created_at)
    return [*(values[c] for c in _COLUMNS[kind][:-2]), created, now]


def _same(old: Sequence[Any], new: Sequence[Any]) -> bool:
    return all(a == b or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b))
               for a, b in zip(old, new, strict=True))


def open_catalog_store(url: str) -> CatalogStore:
    """The catalog tables in the database at ``url`` (the event store's URL forms)."""
    return CatalogStore(url)


# -- imports (CLI, simulator, seeding) ----------------------------------------------------------

def import_rows(store: CatalogStore, kind: ImportKind, rows: Sequence[Mapping[str, Any]]
                ) -> ImportResult:
    """Validate every row, then apply all of them in one transaction, or none: the result's
    ``errors`` list every refused value (row numbers from 1)."""
    if kind == "vocabulary":
        pairs, errors = validate_vocabulary_rows(rows)
        result = ImportResult(kind, len(rows), errors=errors)
        if not errors:
            result.created = len(store.append_vocabulary(pairs))
            result.unchanged = len(rows) - result.created
        result.version = store.version()
        return result
    items, errors = validate_items(kind, rows, store.vocabulary())
    if errors:
        return ImportResult(kind, len(rows), errors=errors, version=store.version())
    try:
        return store.upsert(kind, items)
    except CatalogRejected as exc:  # the vocabulary changed between the check and the write
        return ImportResult(kind, len(rows), errors=exc.errors, version=store.version())


def import_frame(store: CatalogStore, kind: ImportKind, frame: pd.DataFrame) -> ImportResult:
    """:func:`import_rows` over a DataFrame (the simulator writes its catalog this way;
    an ``event_timestamp`` column is taken as ``created_at``)."""
    if "event_timestamp" in frame and "created_at" not in frame:
        frame = frame.rename(columns={"event_timestamp": "created_at"})
    return import_rows(store, kind, _records(frame))


def read_rows(path: Path) -> tuple[list[dict[str, Any]], ImportKind | None]:
    """The rows of a CSV, Parquet or JSON file, and the kind its columns say (None when they
    say nothing). JSON: a list of rows, or for vocabularies ``{"category": ["food", ...]}``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = [{k: (None if v == "" else v) for k, v in r.items()}
                for r in frame.to_dict("records")]
    elif suffix in (".parquet", ".pq"):
        rows = _records(pd.read_parquet(path))
    elif suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            rows = [{"kind": k, "value": v} for k, values in data.items() for v in values]
        elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
            rows = data
        else:
            raise ValueError(f"{path}: JSON must be a list of rows or {{kind: [values]}}")
    else:
        raise ValueError(f"{path}: expected a .csv, .parquet or .json file")
    columns = set().union(*rows) if rows else set()
    kind: ImportKind | None = None
    if "reward_id" in columns:
        kind = "rewards"
    elif "challenge_id" in columns:
        kind = "challenges"
    elif {"kind", "value"} <= columns:
        kind = "vocabulary"
    return rows, kind


def check_columns(kind: ImportKind, rows: Sequence[Mapping[str, Any]]) -> None:
    """ValueError naming a column the kind does not have (a typo would drop a whole column)."""
    allowed = ({"kind", "value"} if kind == "vocabulary"
               else set(ITEM_MODELS[kind].model_fields) | {"event_timestamp"})
    unknown = sorted(set().union(*rows) - allowed) if rows else []
    if unknown:
        raise ValueError(f"unknown column(s) {unknown} for {kind}; expected some of "
                         f"{sorted(allowed - {'event_timestamp'})}")


def import_file(store: CatalogStore, path: Path, kind: ImportKind | None = None
                ) -> ImportResult:
    """``rewards catalog import FILE [--kind ...]``: the kind from the columns when not given."""
    rows, found = read_rows(path)
    kind = kind or found
    if kind is None:
        raise ValueError(f"{path}: cannot tell the kind from its columns (reward_id, "
                         "challenge_id or kind+value): pass --kind")
    if kind not in get_args(ImportKind):
        raise ValueError(f"--kind: expected rewards, challenges or vocabulary, got {kind!r}")
    check_columns(kind, rows)
    if kind != "vocabulary":
        rows = [_renamed(r) for r in rows]
    return import_rows(store, kind, rows)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a frame as plain Python values (NaN/NaT -> None, numpy -> Python)."""
    out = []
    for record in frame.to_dict("records"):
        row = {}
        for k, v in record.items():
            if isinstance(v, pd.Timestamp):
                v = None if pd.isna(v) else v.to_pydatetime()
            elif isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and math.isnan(v):
                v = None
            row[str(k)] = v
        out.append(row)
    return out


def _renamed(row: Mapping[str, Any]) -> dict[str, Any]:
    if "event_timestamp" in row and "created_at" not in row:
        return {("created_at" if k == "event_timestamp" else k): v for k, v in row.items()}
    return dict(row)


def load_store_catalog(url: str) -> Catalog:
    """The active catalog of the store at ``url`` (batch jobs, benchmarks): what serving
    answers from."""
    store = open_catalog_store(url)
    try:
        return store.catalog()
    finally:
        store.close()
