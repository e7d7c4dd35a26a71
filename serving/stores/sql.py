"""The SQL engines behind the event and key stores: SQLite (embedded) and PostgreSQL.

Both stores write one portable SQL (``?`` placeholders, ``ON CONFLICT ... DO NOTHING``,
``RETURNING``, ``IS DISTINCT FROM``); a ``Dialect`` holds the little that differs: how to
connect, the placeholder, how a write transaction begins, and whether writes queue in-process.
``dialect_for`` picks one from a store URL. ``SqlStore`` is the connection and transaction
discipline of a store that many threads use at once, plus the two bulk paths (many rows per
statement in, column batches out) that imports and training reads need.
"""

from __future__ import annotations

import gc
import importlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

#: Rows per multi-row INSERT: 500 x 12 parameters stays far below both engines' limits.
ROWS_PER_STATEMENT = 500
#: Parameters per bulk statement (SQLite allows 32,766, PostgreSQL 65,535): a statement of a few
#: hundred rows costs SQLite half as much per row as one statement per row.
PARAMETERS_PER_STATEMENT = 4_000
#: Rows fetched per round trip by :meth:`SqlStore._fetch_columns`.
FETCH_ROWS = 50_000


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines; everything else is shared SQL."""

    connect: Callable[[], Any]
    placeholder: str
    #: SQLite takes the write lock at BEGIN IMMEDIATE, so a second writer waits (busy_timeout)
    #: instead of failing when a read transaction tries to upgrade.
    begin: str
    #: SQLite has a single writer: threads queue on a Python lock rather than in SQLite's
    #: sleep-and-retry busy handler, which adds milliseconds of latency under contention.
    serialize_writes: bool
    #: Statement run before the DDL so that replicas starting together do not race on it.
    schema_lock: str | None
    #: Session settings of a connection importing many chunks (``bulk_load``), and their undo.
    bulk_session: tuple[str, ...] = ()
    normal_session: tuple[str, ...] = ()
    #: The collation that orders text as Python does (by code point), for ORDER BY.
    binary_collation: str = "BINARY"

    def sql(self, sql: str) -> str:
        """Statements are written with ``?`` placeholders; PostgreSQL's driver wants ``%s``."""
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)


class SqlStore:
    """A store over a DB-API driver: one connection per thread, write transactions that have
    committed when they return, and multi-row inserts that skip existing keys.

    Creates its ``schema`` (idempotent DDL) on open, after ``migrate`` (given the open cursor,
    in the same transaction) has brought an older schema up to date; ``what`` names the store
    in errors.
    """

    def __init__(self, dialect: Dialect, schema: Sequence[str], what: str,
                 migrate: Callable[[Any], None] | None = None) -> None:
        self._dialect = dialect
        self._what = what
        self._write_lock: AbstractContextManager[Any] = (
            threading.Lock() if dialect.serialize_writes else nullcontext())
        self._connections: dict[threading.Thread, Any] = {}
        self._connections_lock = threading.Lock()
        self._closed = False
        with self._write() as cur:
            if dialect.schema_lock:
                cur.execute(dialect.schema_lock)
            if migrate is not None:
                migrate(cur)
            for statement in schema:
                cur.execute(statement)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _connection(self) -> Any:
        """This thread's connection; opened on first use, and again if the server dropped it."""
        thread = threading.current_thread()
        conn = self._connections.get(thread)
        if conn is not None and not getattr(conn, "closed", False):  # psycopg marks lost ones
            return conn
        with self._connections_lock:
            if self._closed:
                raise RuntimeError(f"the {self._what} is closed")
            # Worker threads come and go (anyio retires idle ones): drop their connections.
            for dead in [t for t in self._connections if not t.is_alive()]:
                self._connections.pop(dead).close()
            conn = self._connections[thread] = self._dialect.connect()
        return conn

    def _sql(self, sql: str) -> str:
        return self._dialect.sql(sql)

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One write transaction; it has committed when the block exits without error."""
        conn = self._connection()
        with self._write_lock:
            cur = conn.cursor()
            cur.execute(self._dialect.begin)
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                with suppress(Exception):  # the original error is the one worth raising
                    cur.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._connection().cursor()
        cur.execute(self._sql(sql), tuple(params))
        return list(cur.fetchall())

    def _insert(self, cur: Any, table: str, columns: Sequence[str], key: str,
                rows: Sequence[Sequence[Any]]) -> set[Any]:
        """Insert rows, skipping existing keys; returns the first key column of the rows added."""
        added: set[Any] = set()
        row_marks = "(" + ", ".join(["?"] * len(columns)) + ")"
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start:start + ROWS_PER_STATEMENT]
            cur.execute(self._sql(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                f"{', '.join([row_marks] * len(chunk))} "
                f"ON CONFLICT ({key}) DO NOTHING RETURNING {columns[0]}"
            ), [value for row in chunk for value in row])
            added.update(row[0] for row in cur.fetchall())
        return added

    def _insert_values(self, cur: Any, head: str, tail: str, rows: np.ndarray) -> int:
        """``head VALUES (..), (..) tail`` over the rows of a 2-D object array (None is NULL),
        many rows per statement; the number of rows the statements changed.

        The bulk path of imports: one bound parameter per cell and no Python per row.
        """
        n, width = rows.shape
        if n == 0:
            return 0
        per = max(1, PARAMETERS_PER_STATEMENT // max(width, 1))
        mark = "(" + ", ".join(["?"] * width) + ")"
        changed = 0
        full = n - n % per
        if full:
            cur.executemany(self._sql(f"{head} VALUES {', '.join([mark] * per)} {tail}"),
                            rows[:full].reshape(-1, per * width).tolist())
            changed += max(cur.rowcount, 0)
        if full < n:
            cur.execute(self._sql(f"{head} VALUES {', '.join([mark] * (n - full))} {tail}"),
                        rows[full:].ravel().tolist())
            changed += max(cur.rowcount, 0)
        return changed

    def _fetch_columns(self, sql: str, params: Sequence[Any], width: int) -> list[list[Any]]:
        """The result of a query as one list per column (None for NULL).

        Rows are fetched in batches and transposed batch by batch (``zip``), so reading millions
        of rows builds no dict and no DataFrame row by row: the driver's Python value per cell
        is the only cost per cell left.
        """
        cur = self._connection().cursor()
        cur.execute(self._sql(sql), tuple(params))
        columns: list[list[Any]] = [[] for _ in range(width)]
        with paused_gc():
            while rows := cur.fetchmany(FETCH_ROWS):
                for column, values in zip(columns, zip(*rows, strict=True), strict=True):
                    column.extend(values)
        return columns

    def close(self) -> None:
        with self._connections_lock:
            self._closed = True
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection within (nested uses are fine).

    Reading millions of rows makes millions of objects and no reference cycle: the collector
    would only walk the growing columns again and again (it tripled a 5-million-row read).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def dialect_for(url: str, what: str) -> Dialect:
    """The engine behind a store URL (the event store's and the key store's forms)."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            raise ValueError(f"{url!r}: give an absolute path, e.g. sqlite:////data/events.db")
        return _sqlite_dialect(path)
    if url.startswith(("postgresql://", "postgres://")):
        return _postgres_dialect(url)
    raise ValueError(f"unsupported {what} URL {url!r}: use sqlite:/// or postgresql://")


def _sqlite_dialect(path: Path) -> Dialect:
    if sqlite3.sqlite_version_info < (3, 39):
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} lacks IS DISTINCT FROM (and maybe "
                           "RETURNING); 3.39+ is needed")
    path.parent.mkdir(parents=True, exist_ok=True)

    def connect() -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            conn.close()
            raise RuntimeError(f"{path}: SQLite refused WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")  # per connection: fsync the WAL at each commit
        return conn

    # A bulk import touches index pages all over the file: a 256 MiB page cache (instead of
    # 2 MiB) keeps them in memory, and worker threads sort when its indexes are built at the end.
    return Dialect(connect=connect, placeholder="?", begin="BEGIN IMMEDIATE",
                   serialize_writes=True, schema_lock=None,
                   bulk_session=("PRAGMA cache_size=-262144", "PRAGMA threads=2"),
                   normal_session=("PRAGMA cache_size=-2000", "PRAGMA threads=0"))


def _postgres_dialect(url: str) -> Dialect:
    for name in ("psycopg", "psycopg2"):  # imported here: only PostgreSQL users need a driver
        try:
            driver = importlib.import_module(name)
            break
        except ImportError:
            continue
    else:
        raise RuntimeError("a postgresql:// event store needs psycopg 3 "
                           "(pip install 'psycopg[binary]') or psycopg2")

    def connect() -> Any:
        conn = driver.connect(url)
        conn.autocommit = True  # as with SQLite: reads stand alone, writes BEGIN explicitly
        return conn

    return Dialect(connect=connect, placeholder="%s", begin="BEGIN", serialize_writes=False,
                   schema_lock="SELECT pg_advisory_xact_lock(7215480111)",
                   bulk_session=("SET maintenance_work_mem = '256MB'",),
                   normal_session=("RESET maintenance_work_mem",), binary_collation='"C"')
