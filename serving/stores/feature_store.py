"""Opening the Feast store from settings, and reading a FeatureService's contract.

Feast is imported lazily: it costs seconds, and short CLI commands that never touch it
should not pay that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from serving.config import StoreSettings

if TYPE_CHECKING:
    from feast import FeatureStore


def feature_store_yaml(settings: StoreSettings) -> Path:
    """The per-environment config: feature_store.yaml (local) or feature_store.<env>.yaml."""
    name = "feature_store.yaml" if settings.feast_env == "local" else (
        f"feature_store.{settings.feast_env}.yaml")
    path = settings.repo / name
    if not path.is_file():
        raise FileNotFoundError(f"Feast config not found: {path} (REWARDS_FEAST_ENV={settings.feast_env})")
    return path


def open_store(settings: StoreSettings) -> FeatureStore:
    """A FeatureStore whose paths resolve under the settings' data folder."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    os.environ["REWARDS_DATA_DIR"] = str(settings.data)
    if settings.redis_url is not None:  # read by feature_store.production.yaml
        os.environ["REWARDS_REDIS_URL"] = settings.redis_url
    (settings.data / "feast").mkdir(parents=True, exist_ok=True)
    config = load_repo_config(settings.repo, feature_store_yaml(settings))
    return FeatureStore(config=config)


def service_feature_refs(store: FeatureStore, service_name: str) -> list[str]:
    """Ordered ``view:feature`` refs of a FeatureService, read from the registry."""
    service = store.get_feature_service(service_name)
    return [
        f"{projection.name_to_use()}:{feature.name}"
        for projection in service.feature_view_projections
        for feature in projection.features
    ]


def service_feature_names(store: FeatureStore, service_name: str) -> list[str]:
    """Ordered feature names (no view prefix) of a FeatureService."""
    return [ref.split(":", 1)[1] for ref in service_feature_refs(store, service_name)]
