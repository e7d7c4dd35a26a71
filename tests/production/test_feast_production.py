"""The Feast round trip with the Redis online store: the tests of
tests/integration/test_feast_roundtrip.py run here unchanged on the production
feature_store.yaml (Redis database 1, so the API tests' store in database 0 is untouched)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from _reuse import reuse

from serving.config import StoreSettings
from training.data.feast_ops import apply_repo, materialize_world
from training.data.features import build_features

globals().update(reuse("integration/test_feast_roundtrip.py", exclude=(
    # the request path's direct SQLite query; on Redis the reader calls Feast's own online_read
    "test_serving_reader_returns_what_feast_returns",
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
    build_features(settings.world_dir, settings.features_dir, chunk_size=150, progress=False)
    meta = json.loads((settings.world_dir / "world.json").read_text())
    apply_repo(settings)
    materialize_world(settings, pd.Timestamp(meta["start"], tz="UTC").to_pydatetime(),
                      meta["days"])
    return settings


def test_online_store_is_redis(store_settings: StoreSettings, servers) -> None:  # noqa: ANN001
    import redis

    from serving.stores.features import open_store

    store = open_store(store_settings)
    assert store.config.online_store.type == "redis"
    host, port = servers.redis_url.split(":")
    assert redis.Redis(host=host, port=int(port), db=1).dbsize() > 400  # members + catalog keys
