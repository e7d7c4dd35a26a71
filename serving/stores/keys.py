"""API keys: created once, stored hashed, looked up by a public prefix, revocable.

A key reads ``rk_<key_id>_<secret>``: ``key_id`` (10 characters) is public and indexes the row;
``secret`` is 32 random bytes (256 bits, base64url). Only SHA-256 of the whole key is stored: a
fast hash is enough because the secret has full entropy (nothing to brute-force as with a
password), and lookups stay cheap. Comparison is constant-time.

The table lives in the same database as the event store (same URL, same SQLite/PostgreSQL
dialects and portable DDL), so a replica needs no extra service. A second small table holds
server secrets shared by every process on the database (the HMAC key of login cookies), so
replicas and workers accept each other's cookies without configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from serving.stores.sql import Dialect as _Dialect
from serving.stores.sql import dialect_for

#: Every scope a key may hold; routes ask for exactly one.
SCOPES: tuple[str, ...] = ("recommend", "events", "experiments:read", "experiments:write",
                           "admin")
KEY_PREFIX = "rk_"
_KEY_ID_CHARS = "abcdefghijkmnopqrstuvwxyz23456789"  # no 0/1/l/o: read aloud without confusion
_KEY_ID_LENGTH = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_id VARCHAR(16) PRIMARY KEY,
        name VARCHAR(64) NOT NULL,
        key_sha256 CHAR(64) NOT NULL,
        scopes VARCHAR(256) NOT NULL,
        rate_limit DOUBLE PRECISION,
        created_us BIGINT NOT NULL,
        revoked_us BIGINT)""",
    """CREATE TABLE IF NOT EXISTS server_secrets (
        name VARCHAR(64) PRIMARY KEY,
        value VARCHAR(128) NOT NULL)""",
)


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    name: str
    key_sha256: str
    scopes: frozenset[str]
    rate_limit: float | None  # requests per second; None = the server's default
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        """What `rewards keys list` shows: never the hash."""
        return {"key_id": self.key_id, "name": self.name, "scopes": sorted(self.scopes),
                "rate_limit": self.rate_limit, "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def parse_key_id(raw: str) -> str | None:
    """The public id inside a presented key; None when it is not shaped like one of ours."""
    if not raw.startswith(KEY_PREFIX) or len(raw) > 128:
        return None
    key_id, sep, secret = raw[len(KEY_PREFIX):].partition("_")
    if not sep or len(key_id) != _KEY_ID_LENGTH or not secret:
        return None
    if any(c not in _KEY_ID_CHARS for c in key_id):
        return None
    return key_id


def matches(key: ApiKey, raw: str) -> bool:
    """Constant-time check that ``raw`` is the key whose hash is stored."""
    return hmac.compare_digest(key.key_sha256, hash_key(raw))


def validate_scopes(scopes: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(scopes)
    unknown = sorted(chosen - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; expected some of {list(SCOPES)}")
    if not chosen:
        raise ValueError("a key needs at least one scope")
    return chosen


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=int(value))


class KeyStore:
    """Keys in SQL. One connection behind a lock: lookups are rare (the authenticator caches
    them), so a connection per thread would buy nothing."""

    def __init__(self, dialect: _Dialect) -> None:
        self._dialect = dialect
        self._lock = threading.Lock()
        self._conn: Any = None
        with self._transaction() as cur:
            if dialect.schema_lock:
                cur.execute(dialect.schema_lock)
            for statement in _SCHEMA:
                cur.execute(statement)

    # -- plumbing ---------------------------------------------------------------------------

    def _cursor(self) -> Any:
        if self._conn is None or getattr(self._conn, "closed", False):
            self._conn = self._dialect.connect()
        return self._conn.cursor()

    def _sql(self, sql: str) -> str:
        return self._dialect.sql(sql)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One write transaction, committed when the block exits without error."""
        with self._lock:
            cur = self._cursor()
            cur.execute(self._dialect.begin)
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                with suppress(Exception):
                    cur.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cur = self._cursor()
            cur.execute(self._sql(sql), tuple(params))
            return list(cur.fetchall())

    @staticmethod
    def _row(row: Sequence[Any]) -> ApiKey:
        key_id, name, digest, scopes, rate, created, revoked = row
        return ApiKey(key_id, name, digest, frozenset(json.loads(scopes)),
                      None if rate is None else float(rate), _from_micros(created),  # type: ignore[arg-type]
                      _from_micros(revoked))

    # -- keys ---------------------------------------------------------------------------------

    def create(self, name: str, scopes: Iterable[str], rate_limit: float | None = None
               ) -> tuple[ApiKey, str]:
        """A new key; returns the record and the plaintext key, which is never stored."""
        if not 1 <= len(name) <= 64:
            raise ValueError("--name: 1 to 64 characters")
        if rate_limit is not None and not 0 < rate_limit <= 1_000_000:
            raise ValueError("--rate-limit: requests per second, > 0")
        chosen = validate_scopes(scopes)
        key_id = "".join(secrets.choice(_KEY_ID_CHARS) for _ in range(_KEY_ID_LENGTH))
        raw = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = datetime.now(UTC)
        with self._transaction() as cur:
            cur.execute(self._sql(
                "INSERT INTO api_keys (key_id, name, key_sha256, scopes, rate_limit, created_us, "
                "revoked_us) VALUES (?, ?, ?, ?, ?, ?, NULL)"),
                (key_id, name, hash_key(raw), json.dumps(sorted(chosen)), rate_limit,
                 _micros(now)))
        return ApiKey(key_id, name, hash_key(raw), chosen, rate_limit, now, None), raw

    def get(self, key_id: str) -> ApiKey | None:
        rows = self._query("SELECT key_id, name, key_sha256, scopes, rate_limit, created_us, "
                           "revoked_us FROM api_keys WHERE key_id = ?", (key_id,))
        return self._row(rows[0]) if rows else None

    def list_keys(self) -> list[ApiKey]:
        return [self._row(r) for r in self._query(
            "SELECT key_id, name, key_sha256, scopes, rate_limit, created_us, revoked_us "
            "FROM api_keys ORDER BY created_us, key_id")]

    def revoke(self, key_id: str) -> bool:
        """Mark a key revoked (kept for the audit trail); False if unknown or already revoked."""
        with self._transaction() as cur:
            cur.execute(self._sql("UPDATE api_keys SET revoked_us = ? "
                                  "WHERE key_id = ? AND revoked_us IS NULL"),
                        (_micros(datetime.now(UTC)), key_id))
            return bool(cur.rowcount == 1)

    # -- shared secrets -----------------------------------------------------------------------

    def server_secret(self, name: str) -> str:
        """A random secret shared by every process on this database, created on first use."""
        with self._transaction() as cur:
            cur.execute(self._sql("INSERT INTO server_secrets (name, value) VALUES (?, ?) "
                                  "ON CONFLICT (name) DO NOTHING"),
                        (name, secrets.token_hex(32)))
        return str(self._query("SELECT value FROM server_secrets WHERE name = ?", (name,))[0][0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def open_key_store(url: str) -> KeyStore:
    """The key table in the database at ``url`` (the event store's URL forms)."""
    return KeyStore(dialect_for(url, "key store"))
