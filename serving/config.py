"""Serving settings: one pydantic-settings class, env prefix ``REWARDS_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: ``local``: embedded stores on one machine (SQLite online store, SQLite MLflow and events).
#: ``production``: Redis online store, MLflow tracking server, PostgreSQL events; the URLs are
#: required, so a misconfigured replica fails at start instead of writing to local files.
Profile = Literal["local", "production"]


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
    feature_root: Path | None = Field(
        None, description="where the feature folder and Feast's registry and local online "
        "store live (default: the data folder); a backfill retrain points it at a folder of its "
        "own so that serving's features stay as they are")
    feature_repo: Path | None = None
    models_dir: Path | None = None
    mlflow_tracking_uri: str | None = Field(
        None, description="default: sqlite:///<data>/mlflow.db (artifacts in <data>/mlartifacts)")
    feast_env: str = Field("local", description="feature_store.<env>.yaml to use; 'local' = feature_store.yaml")
    profile: Profile = Field("local", description="local or production (see Profile)")
    redis_url: str | None = Field(
        None, description="Feast Redis connection string, e.g. 127.0.0.1:6379 (production)")
    dask_scheduler: str | None = Field(
        None, description="Dask scheduler address for --engine dask; default: a LocalCluster")
    duckdb_memory_limit: str | None = Field(
        None, pattern=r"^[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="cap on the DuckDB offline store's memory for training-set retrieval, "
        "e.g. '6GB' (spills to <data>/duckdb_tmp beyond it); default: DuckDB's own, 80% of RAM")
    # -- the program's business constants (read when features and labels are built) --
    attribution_window_days: int = Field(
        7, gt=0, le=365, description="a purchase or redemption counts for an offer when it "
                                     "happens within this many days of the impression")
    margin: float = Field(0.3, gt=0, le=1, description="profit margin on incremental spend")

    @model_validator(mode="after")
    def _profile_defaults(self) -> Self:
        """The production profile switches Feast to its Redis config and requires the server
        URLs: switching environments is configuration only, and never silently half-done."""
        if self.profile == "production":
            if "feast_env" not in self.model_fields_set:
                self.feast_env = "production"
            missing = [f"REWARDS_{name.upper()}" for name in ("mlflow_tracking_uri", "redis_url")
                       if getattr(self, name) is None]
            if missing:
                raise ValueError(f"the production profile needs {', '.join(missing)}")
        if self.feast_env == "production" and self.redis_url is None:
            raise ValueError("REWARDS_FEAST_ENV=production needs REWARDS_REDIS_URL")
        return self

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
    def artifact_root(self) -> Path | None:
        """Where new experiments keep artifacts; None for a tracking server, which stores them
        itself (``--artifacts-destination``) and proxies uploads and downloads."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return self.data / "mlartifacts"

    @property
    def models(self) -> Path:
        """Local cache of exported ONNX models: <models>/<name>/<version>/model.onnx."""
        return (self.models_dir or self.home / "models").resolve()

    @property
    def world_dir(self) -> Path:
        return self.data / "world"

    @property
    def feast_root(self) -> Path:
        """REWARDS_FEAST_ROOT, as Feast's config and the repo's sources read it: feast/ and
        features/ live there."""
        return (self.feature_root or self.data).resolve()

    @property
    def features_dir(self) -> Path:
        return self.feast_root / "features"


@lru_cache
def get_store_settings() -> StoreSettings:
    return StoreSettings()


class ModelSettings(BaseSettings):
    """The two model families: their registered names and the Feast FeatureService each reads.

    A FeatureService is a model's input contract, so its name is one fact shared by training
    (what it retrieves, trains and registers), serving (what it loads and checks) and batch
    scoring. Read here and nowhere else.
    """

    model_config = SettingsConfigDict(env_prefix="REWARDS_", extra="ignore")

    reward_model_name: str = "reward"
    difficulty_model_name: str = "difficulty"
    reward_service: str = Field("propensity_v1", description="FeatureService of the reward model")
    difficulty_service: str = Field("difficulty_v1",
                                    description="FeatureService of the difficulty model")

    def families(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """((reward model name, its service), (difficulty model name, its service))."""
        return ((self.reward_model_name, self.reward_service),
                (self.difficulty_model_name, self.difficulty_service))


@lru_cache
def get_model_settings() -> ModelSettings:
    return ModelSettings()


class ServeSettings(ModelSettings):
    """The HTTP service. Same env prefix as the rest: one place to look."""

    model_config = SettingsConfigDict(env_prefix="REWARDS_", extra="ignore")

    events_url: str | None = Field(None, description="default: sqlite:///<data>/events.db")
    rules_file: Path | None = Field(None, description="default: <home>/config/rules.toml")
    model_poll_seconds: float = Field(30.0, ge=0, description="0 disables polling")
    budget_refresh_seconds: float = Field(5.0, gt=0)
    online_timeout_ms: float = Field(200.0, gt=0)
    decision_log_linger_ms: float = Field(
        10.0, ge=0, le=1000, description="decision and exposure logs (not awaited by requests) "
                                         "are committed in batches gathered over this window")
    opentelemetry: bool = Field(
        False, description="FastAPI's native OpenTelemetry spans, metrics and logs (providers "
                            "configured by the deployment, e.g. opentelemetry-instrument)")
    fast_recommend_path: bool = Field(
        True, description="answer well-formed POST /v1/recommendations without FastAPI's "
                          "per-request machinery (serving/api/fast_path.py)")
    seed: int | None = None
    # -- exploration and the decision log (README "Exploration and the decision log") --
    no_offer_share: float = Field(
        0.05, ge=0, le=0.5, description="outside experiments, the probability that a decision "
                                        "asking for rewards offers none (the control group "
                                        "uplift is learnt from); logged with every decision")
    exploration_floor: float = Field(
        0.002, ge=0, le=0.5, description="once a family has a model, the least probability of "
                                         "every eligible item in each slot")
    target_exploration: float = Field(
        0.05, ge=0, le=1 / 3, description="with a difficulty model, the probability that each "
                                          "neighbouring allowed target (one step lower, one "
                                          "higher) is served instead of the flow-zone pick")
    trial_share: float = Field(
        0.3, ge=0, le=0.5, description="outside experiments, the share of decisions served by "
                                       "the reward model on trial (the registry's `trial` "
                                       "alias, set by `rewards retrain` or `rewards models "
                                       "trial`) instead of the champion, so the next gate can "
                                       "measure it; 0 never serves a trial")
    # -- security (serving/api/auth.py, docs/security.md) --
    auth_disabled: bool = Field(
        False, description="local development only: every route open, no key needed; logged as "
                           "a WARNING at startup and reported by /readyz")
    auth_cache_ttl_seconds: float = Field(
        5.0, ge=0, description="key lookups are cached this long: a revoked key stops working "
                               "within it")
    default_rate_limit: float = Field(100.0, gt=0,
                                      description="requests/s per key for keys that set none")
    keys_url: str | None = Field(None, description="API key table; default: the event store's "
                                                   "database")
    session_secret: SecretStr | None = Field(
        None, description="HMAC key of login cookies; default: a random secret created once in "
                          "the key database and shared by every process using it")
    session_ttl_seconds: int = Field(8 * 3600, gt=0, description="login cookie lifetime")
    session_cookie_secure: bool = Field(
        True, description="Secure flag of the login cookie (browsers accept it on localhost)")
    metrics_require_key: bool = Field(
        False, description="/metrics needs an `admin` key (default: open, like /healthz)")
    max_body_bytes: int = Field(2 * 1024 * 1024, gt=0,
                                description="largest request body, with or without "
                                            "Content-Length")

    def events(self, store: StoreSettings) -> str:
        if self.events_url is None and store.profile == "production":
            raise ValueError("the production profile needs REWARDS_EVENTS_URL (postgresql://...)")
        return self.events_url or f"sqlite:///{store.data / 'events.db'}"

    def keys(self, store: StoreSettings) -> str:
        return self.keys_url or self.events(store)

    def rules(self, store: StoreSettings) -> Path:
        return self.rules_file or store.home / "config" / "rules.toml"


@lru_cache
def get_serve_settings() -> ServeSettings:
    return ServeSettings()
