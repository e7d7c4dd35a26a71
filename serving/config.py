"""Serving settings: one pydantic-settings class, env prefix ``REWARDS_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """The project root when running from a checkout, else a per-user folder.

    Resolving from the package location (never the working directory) means every command finds
    the same data whatever folder it is started from.
    """
    repo_root = Path(__file__).resolve().parent.parent
    if (repo_root / "feature_repo" / "feature_store.yaml").is_file():
        return repo_root
    return Path.home() / ".rewards-reco"


class StoreSettings(BaseSettings):
    """Where data and the Feast repo live; shared by training and serving."""

    model_config = SettingsConfigDict(env_prefix="REWARDS_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    data_dir: Path | None = None
    feature_repo: Path | None = None
    models_dir: Path | None = None
    mlflow_tracking_uri: str | None = Field(
        None, description="default: sqlite:///<data>/mlflow.db (artifacts in <data>/mlartifacts)")
    feast_env: str = Field("local", description="feature_store.<env>.yaml to use; 'local' = feature_store.yaml")

    @property
    def data(self) -> Path:
        return (self.data_dir or self.home / "data").resolve()

    @property
    def repo(self) -> Path:
        return (self.feature_repo or self.home / "feature_repo").resolve()

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking + registry URI shared by training (writes) and serving (reads)."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.data / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.data / "mlartifacts"

    @property
    def models(self) -> Path:
        """Local cache of exported ONNX models: <models>/<name>/<version>/model.onnx."""
        return (self.models_dir or self.home / "models").resolve()

    @property
    def world_dir(self) -> Path:
        return self.data / "world"

    @property
    def features_dir(self) -> Path:
        return self.data / "features"


@lru_cache
def get_store_settings() -> StoreSettings:
    return StoreSettings()


class ServeSettings(BaseSettings):
    """The HTTP service. Same env prefix as the rest: one place to look."""

    model_config = SettingsConfigDict(env_prefix="REWARDS_", extra="ignore")

    events_url: str | None = Field(None, description="default: sqlite:///<data>/events.db")
    rules_file: Path | None = Field(None, description="default: <home>/config/rules.toml")
    catalog_dir: Path | None = Field(None, description="default: <data>/world")
    reward_model_name: str = "reward"
    difficulty_model_name: str = "difficulty"
    model_poll_seconds: float = Field(30.0, ge=0, description="0 disables polling")
    budget_refresh_seconds: float = Field(5.0, gt=0)
    online_timeout_ms: float = Field(200.0, gt=0)
    seed: int | None = None

    def events(self, store: StoreSettings) -> str:
        return self.events_url or f"sqlite:///{store.data / 'events.db'}"

    def rules(self, store: StoreSettings) -> Path:
        return self.rules_file or store.home / "config" / "rules.toml"

    def catalog(self, store: StoreSettings) -> Path:
        return self.catalog_dir or store.world_dir


@lru_cache
def get_serve_settings() -> ServeSettings:
    return ServeSettings()
