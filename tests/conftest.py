"""Shared fixtures: small simulated worlds, built once per session."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def no_offer_share_zero() -> Iterator[None]:
    """Outside experiments a decision withholds every reward with REWARDS_NO_OFFER_SHARE
    (default 5 %): tests about anything else expect rewards in every answer, so the session
    pins the share to 0 (subprocesses inherit it). The tests of the share set it themselves
    (tests/unit/test_exploration.py, tests/integration/test_decision_log.py)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REWARDS_NO_OFFER_SHARE", "0")
        yield


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400-member, 28-day world: big enough for every table to be non-trivial, fast to make."""
    from training.simulate import WorldConfig, simulate_world

    out = tmp_path_factory.mktemp("tiny_world") / "world"
    simulate_world(WorldConfig(members=400, days=28, seed=11), out, progress=False)
    return out


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A 2,000-member, 42-day world imported into the event store (as `rewards simulate`
    does), with features built from the store and loaded into Feast (SQLite)."""
    from serving.config import ServeSettings, StoreSettings
    from training.cli.data import build_store_features
    from training.data.feast_ops import apply_repo, materialize_world
    from training.data.history import read_history_meta
    from training.simulate import WorldConfig, simulate_world
    from training.simulate.onboard import onboard

    root = tmp_path_factory.mktemp("small_store")
    settings = StoreSettings(data_dir=root / "data", models_dir=root / "models")
    simulate_world(WorldConfig(members=2_000, days=42, seed=5), settings.world_dir, progress=False)
    onboard(settings.world_dir, ServeSettings().events(settings), progress=False)
    build_store_features(settings, progress=False)
    meta = read_history_meta(settings.features_dir)
    apply_repo(settings)
    materialize_world(settings, meta.start_ts.to_pydatetime(), meta.days)
    return settings


@pytest.fixture(scope="session")
def trained_store(small_store):  # noqa: ANN001, ANN201
    """small_store with both models trained, registered and champion (v1)."""
    from training.config import TrainSettings
    from training.pipeline import train_difficulty, train_reward

    settings = TrainSettings(policy_eval_members=1_000, min_child_samples=40, num_leaves=15)
    reward = train_reward(small_store, settings)
    difficulty = train_difficulty(small_store, settings)
    return small_store, settings, reward, difficulty


@pytest.fixture(scope="session")
def with_catalog(small_store):  # noqa: ANN001, ANN201
    """Import the small world's catalog (vocabulary, rewards, challenges) into the database at a
    URL, through `rewards catalog import`'s path, as `rewards simulate` does for its own store:
    for apps given a fresh event store; with ``members``, the member profiles too. Returns the
    URL."""
    from serving.stores.catalog import import_file, open_catalog_store

    def load(url: str, members: bool = False) -> str:
        program = small_store.world_dir / "program"
        store = open_catalog_store(url)
        try:
            for name in ("vocabulary.json", "rewards.parquet", "challenges.parquet"):
                assert not import_file(store, program / name).errors
        finally:
            store.close()
        if members:
            from serving.stores.events import open_event_store
            from training.data.imports import import_members_file

            events = open_event_store(url)
            try:
                assert import_members_file(program / "members.parquet", events).rejected == 0
            finally:
                events.close()
        return url

    return load


@pytest.fixture(scope="session")
def make_api_key():  # noqa: ANN201
    """Create an API key in the key table of ``url`` (the event store's database); returns the
    plaintext key. Tests authenticate like clients do instead of turning auth off."""
    from serving.stores.keys import SCOPES, open_key_store

    def make(url: str, *scopes: str, rate_limit: float | None = 1e6, name: str = "test") -> str:
        store = open_key_store(url)
        try:
            return store.create(name, scopes or SCOPES, rate_limit)[1]
        finally:
            store.close()

    return make


@pytest.fixture(scope="session")
def copy_store(trained_store):  # noqa: ANN001, ANN201
    """A private copy of the trained small world (Feast stores, MLflow registry, model cache):
    for tests that break, erase or re-point things the rest of the session relies on."""
    import shutil

    original = trained_store[0]

    def copy(dest: Path):  # noqa: ANN202
        shutil.copytree(original.data, dest / "data")
        shutil.copytree(original.models, dest / "models")
        return original.model_copy(update={"data_dir": dest / "data",
                                           "models_dir": dest / "models"})

    return copy


@contextmanager
def _loop_in_threads(step: Callable[[int], None], threads: int = 3) -> Iterator[None]:
    """Call ``step(0)``, ``step(1)``, ... in each of ``threads`` threads until the block exits;
    the threads are joined before the block's exit completes."""
    stop = threading.Event()

    def loop() -> None:
        i = 0
        while not stop.is_set():
            step(i)
            i += 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        yield
    finally:
        stop.set()
        for w in workers:
            w.join()


@pytest.fixture(scope="session")
def request_traffic():  # noqa: ANN201
    """Background request traffic for the under-traffic tests (reload, outage): a context
    manager running a test's one-request function in a loop on 3 threads."""
    return _loop_in_threads
