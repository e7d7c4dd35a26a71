"""The event and decision store on PostgreSQL: the engine-independent tests of
tests/unit/test_events.py (idempotency, concurrent writers on two store objects, decisions,
known-answer rule queries, erasure, member profiles, bulk imports and their deferred indexes,
training frames, the upgrade of a store with integer member ids) and of tests/unit/test_import.py
(the foreign program, re-imports, rejects, the CLI) run here unchanged, and acknowledged events
survive the writer being killed. Each test starts from an empty schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _reuse import reuse

from serving.stores.events import open_event_store

globals().update(reuse("unit/test_events.py", exclude=(
    # SQLite specifics (pragmas, sqlite3 integrity check): their PostgreSQL counterparts follow
    "test_store_runs_wal_with_full_sync", "test_acknowledged_events_survive_sigkill",
    # pure validation, no database involved: running it twice adds nothing
    "test_decision_record_rejects_an_item_offered_twice", "test_open_rejects_relative_or_unknown_urls",
)))
# The imports' store-facing tests too (the foreign program, re-imports, rejects, the CLI).
globals().update(reuse("unit/test_import.py", exclude=(
    # pure parsing and validation: no database involved
    "test_dates", "test_content_ids_are_stable_whatever_carries_the_row",
    "test_import_accepts_exactly_what_the_api_accepts", "test_members_rules",
    # SQLite specific: polls the database file while a child process writes it
    "test_a_killed_import_leaves_whole_chunks_and_resumes",
)))
kill_writer_and_check = globals()["kill_writer_and_check"]
pytestmark = [pytest.mark.integration, pytest.mark.production]


@pytest.fixture(scope="module")
def database(servers) -> str:  # noqa: ANN001
    return servers.database("events")


@pytest.fixture
def url(database: str) -> Iterator[str]:
    """The module's database with an empty public schema (whatever tables the store creates)."""
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    yield database


def test_postgres_dialect_is_used(url: str) -> None:
    store = open_event_store(url)
    try:
        conn = store._connection()  # type: ignore[attr-defined]
        assert conn.info.server_version >= 150000
        # commits wait for the WAL flush: acknowledged means on disk
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert conn.execute("SHOW fsync").fetchone()[0] == "on"
    finally:
        store.close()


def test_acknowledged_events_survive_sigkill_on_postgres(url: str) -> None:
    kill_writer_and_check(url, stall_seconds=30.0)
