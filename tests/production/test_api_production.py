"""The HTTP API on the production profile: member features from Redis, events and decisions in
PostgreSQL, champions from the MLflow server. Every test of tests/integration/test_api.py runs
here unchanged (same assertions, including the champion swap under traffic through the
server's registry); the tests below check that the production stores are the ones in use."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from _reuse import reuse
from fastapi.testclient import TestClient

from serving.config import ServeSettings

globals().update(reuse("integration/test_api.py"))
services = globals()["services"]
pytestmark = [pytest.mark.integration, pytest.mark.production, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_client(trained_store, servers, make_api_key,  # noqa: ANN001
               with_catalog) -> Iterator[TestClient]:  # noqa: ANN001
    from serving.main import create_app

    store = trained_store[0]
    # A generous network timeout: the shared 2-core CI machine can stall a thread for longer
    # than the 200 ms default; timeouts themselves are tested with a broken reader.
    settings = ServeSettings(events_url=with_catalog(servers.database("events_api")),
                             model_poll_seconds=0,
                             seed=3, online_timeout_ms=5_000)
    # Keys live in PostgreSQL beside the events, as in a deployment.
    key = make_api_key(settings.events_url, "recommend", "events", "admin")
    with TestClient(create_app(store, settings),
                    headers={"Authorization": f"Bearer {key}"}) as client:
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

    ev = {"event_id": "pg-check-1", "event_type": "purchase", "member_id": "5", "amount": 12.5,
          "timestamp": "2026-11-23T10:00:00+00:00"}
    assert app_client.post("/v1/events", json={"events": [ev]}).json()["accepted"] == 1
    recommend(app_client, member_id="6")  # noqa: F821 - from the reused module
    wait_for_decisions(app_client, 1)  # noqa: F821
    url = services(app_client).settings.events_url
    with psycopg.connect(url) as conn:
        amount = conn.execute("SELECT amount FROM events WHERE event_id = 'pg-check-1'").fetchone()
        decided = conn.execute("SELECT COUNT(*) FROM decisions WHERE member_id = '6'").fetchone()
    assert amount == (12.5,) and decided[0] >= 1


def test_erasure_reaches_redis_and_postgres(app_client: TestClient, trained_store) -> None:  # noqa: ANN001
    """DELETE /v1/members/{id} on the production stores: the member's Redis hash and PostgreSQL
    rows are gone when checked with separate clients; the online row is restored afterwards."""
    import pandas as pd
    import psycopg
    import redis

    from feast.infra.online_stores.helpers import _redis_key

    svc = services(app_client)
    members = pd.read_parquet(trained_store[0].world_dir / "members.parquet")
    member_id = str(members[members["consent"]].iloc[-2]["member_id"])
    reader = svc.reader
    config = reader._store.config
    key = reader._entity_key(join_keys=["member_id"],
                             entity_values=[reader._value(string_val=member_id)])
    [(ts, saved)] = reader._online.online_read(config, reader._view, [key],
                                               reader.feature_names)
    assert saved and reader.read(member_id) is not None
    host, port = config.online_store.connection_string.split(",")[0].split(":")
    raw = redis.Redis(host=host, port=int(port))
    redis_key = _redis_key(config.project, key,
                           entity_key_serialization_version=config.entity_key_serialization_version)
    assert raw.exists(redis_key) == 1
    try:
        recommend(app_client, member_id=member_id)  # noqa: F821
        wait_for_decisions(app_client, 1)  # noqa: F821
        ev = {"event_id": f"pg-erase-{member_id}", "event_type": "purchase",
              "member_id": member_id, "amount": 3.0, "timestamp": "2026-11-23T10:00:00+00:00"}
        assert app_client.post("/v1/events", json={"events": [ev]}).json()["accepted"] == 1
        r = app_client.delete(f"/v1/members/{member_id}")
        assert r.status_code == 200, r.text
        erased = r.json()["erased"]
        assert erased["events"] == 1 and erased["decisions"] >= 1
        assert erased["online_features"] == len(saved)
        assert raw.exists(redis_key) == 0
        with psycopg.connect(svc.settings.events_url) as conn:
            for table in ("events", "decisions"):
                n = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE member_id = %s",
                                 (member_id,)).fetchone()
                assert n == (0,), table
        assert app_client.post("/v1/recommendations",
                               json={"member_id": member_id}).json()["cold_start"]
    finally:
        reader._online.online_write_batch(config, reader._view, [(key, saved, ts, None)], None)
        raw.close()
    assert reader.read(member_id) is not None


def test_redis_that_hangs_degrades_answers_then_recovers(trained_store, servers,  # noqa: ANN001
                                                        make_api_key,  # noqa: ANN001
                                                        with_catalog) -> None:  # noqa: ANN001
    """Redis stops answering (CLIENT PAUSE: connections stay open, replies wait): each request
    gives up after REWARDS_ONLINE_TIMEOUT_MS with a 200 flagged degraded, not a hang or a 5xx;
    when Redis answers again, so does personalization, without a restart."""
    import redis

    from serving.main import create_app

    settings = ServeSettings(events_url=with_catalog(servers.database("events_hang")),
                             model_poll_seconds=0, seed=3, online_timeout_ms=150)
    key = make_api_key(settings.events_url, "recommend")
    host, port = servers.redis_url.split(":")
    raw = redis.Redis(host=host, port=int(port))
    body = {"member_id": "3", "k_rewards": 2, "k_challenges": 2}
    with TestClient(create_app(trained_store[0], settings),
                    headers={"Authorization": f"Bearer {key}"}) as client:
        before = client.post("/v1/recommendations", json=body).json()
        assert before["personalized"] and not before["degraded"]
        raw.execute_command("CLIENT", "PAUSE", "2000", "ALL")
        try:
            answers, started = [], time.monotonic()
            for member_id in ("3", "4", "5"):
                t0 = time.monotonic()
                r = client.post("/v1/recommendations", json={**body, "member_id": member_id})
                answers.append((r.status_code, r.json(), time.monotonic() - t0))
            assert time.monotonic() - started < 1.8, "the answers came before Redis was back"
        finally:
            raw.execute_command("CLIENT", "UNPAUSE")
        for status, answer, seconds in answers:
            assert status == 200 and answer["degraded"] and not answer["personalized"]
            assert "online store timeout" in answer["degraded_reasons"]
            assert answer["rewards"] and seconds < 1.0  # a default answer, within the timeout
        deadline = time.monotonic() + 10
        while True:  # the reader's stuck call returns once Redis answers again
            after = client.post("/v1/recommendations", json=body).json()
            if not after["degraded"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert after["personalized"] and not after["degraded"]
        metrics = client.get("/metrics").text
        assert 'rewards_fallbacks_total{kind="degraded"}' in metrics
    raw.close()
