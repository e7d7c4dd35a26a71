"""The production profile against real servers: Redis (Feast online store), PostgreSQL (events,
decisions, MLflow's backend store) and an MLflow tracking server.

The servers come from the same scripts developers use (scripts/redis.sh, scripts/postgres.sh,
scripts/mlflow_server.sh), which install the Debian packages when missing. A server already
running in the test services folder (``REWARDS_TEST_SERVICES_DIR``, default
``.services/pytest``) is reused; otherwise it is started on a free loopback port and stopped
(its data folder removed) at the end of the session. Isolation does not depend on who started
what: every session gets fresh PostgreSQL databases, an empty Redis database and an MLflow
server of its own over its own backend database.

The overrides below (``small_store``, ``trained_store``) make the local tests' fixtures build the
same world on the production profile, so the reused tests assert exactly what they assert
locally.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
START_TIMEOUT_S = 300  # first start may apt-install packages and migrate MLflow's schema


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(name: str, action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPTS / name), action], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False)


def _env_lines(output: str) -> dict[str, str]:
    """Parse the scripts' ``env`` output (``export NAME=value`` lines)."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in output.splitlines()
             if line.startswith("export "))
    return dict(pairs)


@dataclass
class Servers:
    """Where the session's servers listen, and what this session started (and must stop)."""

    redis_url: str
    postgres_url: str  # postgresql://user:password@host:port (no database)
    mlflow_uri: str
    started: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    def database(self, prefix: str) -> str:
        """A fresh, empty database for one test module; dropped at the end of the session."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"{self.postgres_url}/rewards", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return f"{self.postgres_url}/{name}"


def _ensure(script: str, port_var: str, env: dict[str, str], started: list[str],
            fresh: bool = False) -> dict[str, str]:
    """Reuse the server if it runs (unless ``fresh``), else start it on a free port."""
    if fresh or _script(script, "status", env).returncode != 0:
        run = _script(script, "start", {**env, port_var: str(_free_port())})
        if run.returncode != 0:
            pytest.fail(f"{script} start failed:\n{run.stdout}\n{run.stderr}")
        started.append(script)
    return _env_lines(_script(script, "env", env).stdout)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    import mlflow
    import psycopg
    import redis

    base = Path(os.environ.get("REWARDS_TEST_SERVICES_DIR", REPO / ".services" / "pytest"))
    env = {"REWARDS_SERVICES_DIR": str(base)}
    started: list[str] = []
    dirs: dict[str, Path] = {}
    try:
        redis_env = _ensure("redis.sh", "REWARDS_REDIS_PORT", env, started)
        pg_env = _ensure("postgres.sh", "REWARDS_PG_PORT", env, started)
        postgres_url = pg_env["REWARDS_EVENTS_URL"].rsplit("/", 1)[0]
        servers = Servers(redis_url=redis_env["REWARDS_REDIS_URL"], postgres_url=postgres_url,
                          mlflow_uri="", started=started)
        # MLflow: always a server of our own, over a new backend database, so the registry
        # starts empty (the local tests expect the first trained models to be version 1).
        backend = servers.database("mlflow").replace("postgresql://", "postgresql+psycopg://")
        mlflow_dir = tmp_path_factory.mktemp("mlflow_server")
        dirs["mlflow_server.sh"] = mlflow_dir
        mlflow_env = _ensure("mlflow_server.sh", "REWARDS_MLFLOW_PORT",
                             {"REWARDS_SERVICES_DIR": str(mlflow_dir),
                              "REWARDS_MLFLOW_BACKEND_URI": backend}, [], fresh=True)
        started.append("mlflow_server.sh")
        servers.mlflow_uri = mlflow_env["REWARDS_MLFLOW_TRACKING_URI"]
        host, port = servers.redis_url.split(":")
        redis.Redis(host=host, port=int(port)).flushall()  # online stores start empty
    except BaseException:
        for script in reversed(started):
            _script(script, "stop", {"REWARDS_SERVICES_DIR": str(dirs.get(script, base))})
        raise
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield servers
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])
    for script in reversed(started):
        if script == "postgres.sh":
            continue  # stopped last, after its databases are dropped
        _script(script, "stop", {"REWARDS_SERVICES_DIR": str(dirs.get(script, base))})
    if "postgres.sh" in started:
        _script("postgres.sh", "purge", env)  # stop, then delete the cluster
    else:  # a server we reused: leave it as we found it
        with psycopg.connect(f"{servers.postgres_url}/rewards", autocommit=True) as conn:
            for name in servers.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if "redis.sh" in started:
        shutil.rmtree(base / "redis", ignore_errors=True)


@pytest.fixture(scope="module")
def own_mlflow(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tracking server of the module's own, over a new backend database: its registry
    starts empty whatever the session registered before (a module that counts versions from
    1). The process-wide MLflow URIs are put back afterwards."""
    import mlflow

    backend = servers.database("mlflow_module").replace("postgresql://",
                                                        "postgresql+psycopg://")
    folder = tmp_path_factory.mktemp("mlflow_module")
    env = {"REWARDS_SERVICES_DIR": str(folder), "REWARDS_MLFLOW_BACKEND_URI": backend}
    uri = _ensure("mlflow_server.sh", "REWARDS_MLFLOW_PORT", env, [], fresh=True)[
        "REWARDS_MLFLOW_TRACKING_URI"]
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        _script("mlflow_server.sh", "stop", {"REWARDS_SERVICES_DIR": str(folder)})


def production_settings(servers: Servers, root: Path):  # noqa: ANN201
    """StoreSettings for the production profile, data and model cache under ``root``."""
    from serving.config import StoreSettings

    return StoreSettings(profile="production", data_dir=root / "data",
                         models_dir=root / "models", redis_url=servers.redis_url,
                         mlflow_tracking_uri=servers.mlflow_uri)


@pytest.fixture(scope="session")
def small_store(small_store, servers: Servers,  # noqa: ANN001, ANN201
                tmp_path_factory: pytest.TempPathFactory):
    """The local tests' 2,000-member world, materialized into Redis (same world and features:
    they are copied, not simulated again)."""
    import pandas as pd

    from training.data.feast_ops import apply_repo, materialize_world

    settings = production_settings(servers, tmp_path_factory.mktemp("production_store"))
    shutil.copytree(small_store.world_dir, settings.world_dir)
    shutil.copytree(small_store.features_dir, settings.features_dir)
    meta = json.loads((settings.world_dir / "world.json").read_text())
    apply_repo(settings)
    materialize_world(settings, pd.Timestamp(meta["start"], tz="UTC").to_pydatetime(),
                      meta["days"])
    return settings


@pytest.fixture(scope="session")
def trained_store(small_store):  # noqa: ANN001, ANN201
    """As the local fixture, through the MLflow server: both models trained, registered and
    champion (v1). Redefined here (not inherited) so that pytest caches it apart from the
    local one."""
    from training.config import TrainSettings
    from training.pipeline import train_difficulty, train_reward

    settings = TrainSettings(policy_eval_members=1_000, min_child_samples=40, num_leaves=15)
    reward = train_reward(small_store, settings)
    difficulty = train_difficulty(small_store, settings)
    return small_store, settings, reward, difficulty
