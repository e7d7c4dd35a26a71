"""The HTTP API on the production profile: member features from Redis, events and decisions in
PostgreSQL, champions from the MLflow server. Every test of tests/integration/test_api.py runs
here unchanged (same assertions, including the champion swap under traffic through the
server's registry); the tests below check that the production stores are the ones in use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _reuse import reuse
from fastapi.testclient import TestClient

from serving.config import ServeSettings

globals().update(reuse("integration/test_api.py"))
services = globals()["services"]
pytestmark = [pytest.mark.integration, pytest.mark.production, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_client(trained_store, servers) -> Iterator[TestClient]:  # noqa: ANN001
    from serving.main import create_app

    store = trained_store[0]
    # A generous network timeout: the shared 2-core CI machine can stall a thread for longer
    # than the 200 ms default; timeouts themselves are tested with a broken reader.
    settings = ServeSettings(events_url=servers.database("events_api"), model_poll_seconds=0,
                             seed=3, online_timeout_ms=5_000)
    with TestClient(create_app(store, settings)) as client:
        yield client


def test_redis_reader_tells_a_missing_member_from_a_known_one(app_client: TestClient) -> None:
    """Redis answers an unknown key with every feature unset (not with nothing, as SQLite
    does); the reader must still report no row, or the member is not treated as cold-start."""
    reader = services(app_client).reader
    assert reader.read(987_654_321) is None
    known = reader.read(1)
    assert known is not None and known.values["visits_30d"] == known.values["visits_30d"]


def test_production_stores_are_in_use(app_client: TestClient, servers) -> None:  # noqa: ANN001
    svc = services(app_client)
    assert not svc.problems
    assert svc.store.profile == "production" and svc.store.feast_env == "production"
    assert type(svc.reader._online).__name__ == "RedisOnlineStore"
    assert svc.events._dialect.placeholder == "%s"  # the PostgreSQL dialect
    assert svc.models.source.tracking_uri == servers.mlflow_uri


def test_decisions_and_events_land_in_postgres(app_client: TestClient, servers) -> None:  # noqa: ANN001
    """Read back with a separate PostgreSQL connection, not through the service."""
    import psycopg

    ev = {"event_id": "pg-check-1", "event_type": "purchase", "member_id": 5, "amount": 12.5,
          "timestamp": "2026-11-23T10:00:00+00:00"}
    assert app_client.post("/v1/events", json={"events": [ev]}).json()["accepted"] == 1
    recommend(app_client, member_id=6)  # noqa: F821 - from the reused module
    wait_for_decisions(app_client, 1)  # noqa: F821
    url = services(app_client).settings.events_url
    with psycopg.connect(url) as conn:
        amount = conn.execute("SELECT amount FROM events WHERE event_id = 'pg-check-1'").fetchone()
        decided = conn.execute("SELECT COUNT(*) FROM decisions WHERE member_id = 6").fetchone()
    assert amount == (12.5,) and decided[0] >= 1
