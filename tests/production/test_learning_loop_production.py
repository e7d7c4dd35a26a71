"""The learning loop on the production profile: decisions and outcomes in PostgreSQL, member
features in Redis, runs, versions and the champion and trial aliases on an MLflow tracking
server. Every test of tests/integration/test_learning_loop.py runs here unchanged (cold start,
retrain, gate, promotion, trial traffic, idempotence, the join report, backfills); the test
below checks that the production stores are the ones that carried it."""

from __future__ import annotations

import pytest
from _reuse import reuse

globals().update(reuse("integration/test_learning_loop.py"))
pytestmark = [pytest.mark.integration, pytest.mark.production, pytest.mark.slow]

#: A Redis database of the module's own: the session's other modules keep theirs (db 0).
REDIS_DB = 5


@pytest.fixture(scope="module")
def loop_world(servers, own_mlflow, tmp_path_factory):  # noqa: ANN001, ANN201
    """As the local fixture (a 1,500-member, 35-day world imported without any logged offer),
    its events in a fresh PostgreSQL database, its online store in Redis."""
    from serving.config import StoreSettings, get_serve_settings
    from training.cli.data import build_store_features, materialize
    from training.simulate import WorldConfig, simulate_world
    from training.simulate.loop import onboard_without_offers

    root = tmp_path_factory.mktemp("loop_production")
    events_url = servers.database("events_loop")
    patch = pytest.MonkeyPatch()
    patch.setenv("REWARDS_EVENTS_URL", events_url)  # what the tests' ServeSettings() read
    get_serve_settings.cache_clear()  # and the commands' (cached per process)
    try:
        store = StoreSettings(profile="production", data_dir=root / "data",
                              models_dir=root / "models",
                              redis_url=f"{servers.redis_url},db={REDIS_DB}",
                              mlflow_tracking_uri=own_mlflow)
        simulate_world(WorldConfig(members=1_500, days=35, seed=3), store.world_dir,
                       progress=False)
        counts = onboard_without_offers(store.world_dir, events_url)
        assert 0 < counts["imported"] < counts["events_in_world"]
        build_store_features(store, progress=False)
        materialize(store, apply=True, echo=False)
        yield store
    finally:
        patch.undo()
        get_serve_settings.cache_clear()


def test_the_loop_ran_on_the_production_stores(loop_world, servers, own_mlflow  # noqa: ANN001
                                               ) -> None:
    import os

    import psycopg
    import redis
    from mlflow import MlflowClient

    url = os.environ["REWARDS_EVENTS_URL"]
    assert url.startswith("postgresql://") and "events_loop" in url
    with psycopg.connect(url) as conn:
        decisions = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    assert decisions >= 1_500  # the reused tests' rounds, logged in PostgreSQL
    host, port = servers.redis_url.split(":")
    assert redis.Redis(host=host, port=int(port), db=REDIS_DB).dbsize() >= 1_500
    client = MlflowClient(tracking_uri=own_mlflow, registry_uri=own_mlflow)
    versions = client.search_model_versions("name='reward'")
    assert len(versions) >= 2  # the retrains registered their candidates on the server
    run = client.get_run(versions[0].run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert run.data.tags["dataset.hash"]
