"""The Feast round trip with the Redis online store: the tests of
tests/integration/test_feast_roundtrip.py run here unchanged on the production
feature_store.yaml (Redis database 1, so the API tests' store in database 0 is untouched)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _reuse import reuse

from serving.config import StoreSettings
from serving.stores.catalog import open_catalog_store
from serving.stores.events import open_event_store
from training.data.feast_ops import apply_repo, materialize_world
from training.data.history import build_from_store, read_history_meta
from training.simulate.onboard import onboard

globals().update(reuse("integration/test_feast_roundtrip.py", exclude=(
    # the request path's direct SQLite query; on Redis the reader calls Feast's own online_read
    "test_serving_reader_returns_what_feast_returns",
    # the CLI builds its settings from the environment (the local profile), not this fixture's
    "test_features_show_is_the_point_in_time_row",
)))
pytestmark = [pytest.mark.integration, pytest.mark.production]


@pytest.fixture(scope="module")
def store_settings(tiny_world_dir: Path, servers,  # noqa: ANN001
                   tmp_path_factory: pytest.TempPathFactory) -> StoreSettings:
    data = tmp_path_factory.mktemp("feast_redis")
    shutil.copytree(tiny_world_dir, data / "world")
    settings = StoreSettings(profile="production", data_dir=data,
                             redis_url=f"{servers.redis_url},db=1",
                             mlflow_tracking_uri=servers.mlflow_uri)
    url = f"sqlite:///{data / 'events.db'}"  # the events: here a file beside the features
    onboard(settings.world_dir, url, progress=False)
    events, catalog = open_event_store(url), open_catalog_store(url)
    try:
        build_from_store(events, catalog.frame("rewards", include_retired=True),
                         catalog.frame("challenges", include_retired=True), catalog.vocabulary(),
                         settings.features_dir, window_days=7, margin=0.3, chunk_size=150,
                         progress=False)
    finally:
        events.close()
        catalog.close()
    meta = read_history_meta(settings.features_dir)
    apply_repo(settings)
    materialize_world(settings, meta.start_ts.to_pydatetime(), meta.days)
    return settings


def test_online_store_is_redis(store_settings: StoreSettings, servers) -> None:  # noqa: ANN001
    import redis

    from serving.stores.features import open_store

    store = open_store(store_settings)
    assert store.config.online_store.type == "redis"
    host, port = servers.redis_url.split(":")
    assert redis.Redis(host=host, port=int(port), db=1).dbsize() > 400  # members + catalog keys
