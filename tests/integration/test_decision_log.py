"""The decision log fit for learning, through the real app (issue 21, points 1 and 4).

A service whose registry never promoted a model answers from rules with uniform exploration
(cold start) and logs it; a service with champions logs the feature values its models were
given; both are read back by ``EventStore.decision_log`` as the training side reads them, at
the times the service's clock gave. A store written before these columns existed is upgraded
in place when opened, its old rows still readable.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.config import ServeSettings, StoreSettings
from serving.contract.events import DecisionItem, DecisionRecord
from serving.decisioning.recommend import COLD_START_REASON
from serving.stores.events import open_event_store
from serving.stores.events.schema import ADDED_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def client_for(store: StoreSettings, events_url: str, key: str, **settings: Any
               ) -> Iterator[TestClient]:
    from serving.main import create_app

    serve = ServeSettings(events_url=events_url, model_poll_seconds=0, **settings)
    with TestClient(create_app(store, serve), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


@pytest.fixture(scope="module")
def cold_client(small_store: StoreSettings, tmp_path_factory: pytest.TempPathFactory,  # noqa: ANN001
                make_api_key, with_catalog) -> Iterator[TestClient]:  # noqa: ANN001
    """The small world's features and catalog, and a registry where nothing was ever
    registered: a program starting without a model trained elsewhere."""
    root = tmp_path_factory.mktemp("cold_start")
    store = small_store.model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "models_dir": root / "models"})
    url = with_catalog(f"sqlite:///{root / 'events.db'}")
    yield from client_for(store, url, make_api_key(url, "recommend", "admin"), seed=21,
                          no_offer_share=0.2)


@pytest.fixture(scope="module")
def model_client(trained_store, tmp_path_factory: pytest.TempPathFactory,  # noqa: ANN001
                 make_api_key, with_catalog) -> Iterator[TestClient]:  # noqa: ANN001
    """Champions of both families; target exploration high enough to see neighbours."""
    url = with_catalog(f"sqlite:///{tmp_path_factory.mktemp('logged') / 'events.db'}")
    yield from client_for(trained_store[0], url, make_api_key(url, "recommend", "admin"),
                          seed=22, no_offer_share=0.25, target_exploration=0.3)


@pytest.fixture(scope="module")
def member_ids(small_store: StoreSettings) -> list[str]:
    members = pd.read_parquet(small_store.world_dir / "members.parquet")
    return [str(m) for m in members.loc[members["consent"], "member_id"].iloc[:40]]


def ask(client: TestClient, member_id: str, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/recommendations", json={"member_id": member_id, **body})
    assert r.status_code == 200, r.text
    return r.json()


def logged(client: TestClient, since: datetime | None = None, until: datetime | None = None
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The decision log once every decision served so far is committed (an empty write
    queued behind them resolves after their commit)."""
    services = client.app.state.services  # type: ignore[attr-defined]
    services.decision_writer.submit([]).result(timeout=10)
    return services.events.decision_log(since=since, until=until)


def assert_items_match(answer: dict[str, Any], items: pd.DataFrame) -> None:
    """The log holds exactly the answer's items, slot by slot, with its probabilities."""
    mine = items[items["decision_id"] == answer["decision_id"]]
    served = [("reward", r["reward_id"], rank, r["shown_probability"], None)
              for rank, r in enumerate(answer["rewards"])]
    served += [("challenge", c["challenge_id"], rank, c["shown_probability"], c["target"])
               for rank, c in enumerate(answer["challenges"])]
    assert len(mine) == len(served)
    for (kind, item_id, rank, p, target), row in zip(served, mine.itertuples(), strict=True):
        assert (row.item_type, row.item_id, row.item_rank) == (kind, item_id, rank)
        assert round(row.shown_probability, 6) == p
        assert row.member_id == answer["member_id"]
        if kind == "challenge":
            assert row.target == target and 0 < row.target_probability <= 1
        else:
            assert np.isnan(row.target_probability) and row.cost >= 0


def test_cold_start_answers_from_uniform_exploration_and_logs_it(
        cold_client: TestClient, member_ids: list[str]) -> None:
    services = cold_client.app.state.services  # type: ignore[attr-defined]
    assert services.models.versions() == {}
    assert set(services.no_champion()) == {"reward", "difficulty"}
    start = services.clock()
    answers = [ask(cold_client, m) for m in member_ids]
    for a in answers:
        assert a["policy"] == "cold_start" and not a["degraded"] and a["model_versions"] == {}
        assert a["challenges"]  # the no-offer draw withholds rewards only
        assert all(o["reason"] == COLD_START_REASON for o in a["rewards"] + a["challenges"])
    withheld = [a for a in answers if not a["rewards"]]
    assert 0 < len(withheld) < len(answers)  # a 0.2 share of 40: some, not all

    decisions, items = logged(cold_client, since=start)
    decisions = decisions.set_index("decision_id").loc[[a["decision_id"] for a in answers]]
    assert (decisions["policy"] == "cold_start").all()
    assert (decisions["no_offer_probability"] == 0.2).all()
    # no model names its inputs: every member value the service read is logged
    logged_features = decisions["features"].map(json.loads)
    assert logged_features.map(lambda f: "tier_rank" in f and len(f) > 10).all()
    assert not decisions["degraded"].any() and decisions["personalized"].all()
    no_offer = decisions["no_offer"].to_numpy()
    assert no_offer.tolist() == [not a["rewards"] for a in answers]
    assert decisions["event_timestamp"].dtype == "datetime64[us, UTC]"
    assert (decisions["member_id"] == member_ids).all()

    targets = services.recommender.catalog.targets.groupby("challenge_id")["target"].size()
    for a in answers:
        assert_items_match(a, items)
        mine = items[items["decision_id"] == a["decision_id"]]
        challenges = mine[mine["item_type"] == "challenge"]
        # a target drawn uniformly among the template's; the template uniformly among the rest
        want = 1.0 / targets[challenges["item_id"]].to_numpy()
        np.testing.assert_allclose(challenges["target_probability"], want)
        rewards = mine[mine["item_type"] == "reward"]
        if len(rewards):  # (1 - share) / eligible, then 1 / (eligible - rank) given the
            n = 0.8 / rewards["shown_probability"].iloc[0]  # earlier slots (an offer is made)
            np.testing.assert_allclose(rewards["shown_probability"],
                                       [0.8 / n, *(1.0 / (n - np.arange(1, len(rewards))))])


def test_model_decisions_log_the_features_the_models_were_given(
        model_client: TestClient, member_ids: list[str]) -> None:
    services = model_client.app.state.services  # type: ignore[attr-defined]
    start = services.clock()
    answers = [ask(model_client, m) for m in member_ids]
    assert {a["policy"] for a in answers} == {"model"}
    decisions, items = logged(model_client, since=start)
    decisions = decisions.set_index("decision_id").loc[[a["decision_id"] for a in answers]]
    assert (decisions["policy"] == "model").all()
    assert (decisions["no_offer_probability"] == 0.25).all()
    assert decisions["no_offer"].any() and not decisions["no_offer"].all()
    names = {n for slot in services.models.slots.values()
             for n in slot.current.meta.service_features}
    for a, row in zip(answers, decisions.itertuples(), strict=True):
        assert json.loads(row.model_versions) == a["model_versions"] == {"reward": "1",
                                                                          "difficulty": "1"}
        features = json.loads(row.features)
        assert set(features) <= names and "tier_rank" in features
        online = services.reader.read(a["member_id"]).values
        for name, value in features.items():  # rounded to 6 significant digits
            assert value == float(f"{online.get(name, 0.0):.6g}"), name
        assert_items_match(a, items)
        rewards = [r["shown_probability"] for r in a["rewards"]]
        if rewards:  # the first slot times (1 - the no-offer share); the later ones are given
            assert rewards[0] <= 0.75 + 1e-6  # the earlier slots, where an offer is certain
            assert all(0 < p <= 1 for p in rewards[1:])
    challenges = items[items["item_type"] == "challenge"]
    # with a 0.3 share per neighbour: picks (0.4 or 0.7 at an end) and neighbours (0.3)
    assert set(challenges["target_probability"].round(9)) <= {0.3, 0.4, 0.7, 1.0}
    assert (challenges["target_probability"].round(9) == 0.3).any()


def test_the_services_clock_sets_the_decision_time(model_client: TestClient,
                                                   member_ids: list[str]) -> None:
    """A simulation running the app in-process sets ``app.state.services.clock``."""
    services = model_client.app.state.services  # type: ignore[attr-defined]
    simulated = datetime(2031, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    wall = services.clock
    services.clock = lambda: simulated
    try:
        answer = ask(model_client, member_ids[0], k_challenges=0)
    finally:
        services.clock = wall
    decisions, items = logged(model_client, since=simulated)  # since: inclusive
    assert decisions["decision_id"].tolist() == [answer["decision_id"]]
    assert decisions["event_timestamp"].tolist() == [pd.Timestamp(simulated)]
    assert set(items["event_timestamp"]) <= {pd.Timestamp(simulated)}
    assert logged(model_client, since=simulated, until=simulated)[0].empty  # until: exclusive
    before, _ = logged(model_client, until=simulated + timedelta(microseconds=1))
    assert answer["decision_id"] in set(before["decision_id"])


# -- the upgrade of an older store ------------------------------------------------------------

#: The decision tables as the release before the decision log fit for learning created them.
OLD_DECISIONS = """CREATE TABLE decisions (
    decision_id VARCHAR(64) PRIMARY KEY, member_id VARCHAR(64) NOT NULL,
    created_us BIGINT NOT NULL, channel VARCHAR(32) NOT NULL, arm VARCHAR(32),
    experiment_id VARCHAR(64), model_versions TEXT NOT NULL, flags TEXT NOT NULL)"""
OLD_ITEMS = """CREATE TABLE decision_items (
    decision_id VARCHAR(64) NOT NULL, item_type VARCHAR(16) NOT NULL,
    item_id VARCHAR(64) NOT NULL, member_id VARCHAR(64) NOT NULL, created_us BIGINT NOT NULL,
    item_rank INTEGER NOT NULL, score DOUBLE PRECISION NOT NULL,
    shown_probability DOUBLE PRECISION NOT NULL, target DOUBLE PRECISION,
    cost DOUBLE PRECISION, PRIMARY KEY (decision_id, item_type, item_id))"""
T_OLD = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)


def write_old_store(execute: Callable[[str, tuple[Any, ...]], None]) -> None:
    """An older store's decision tables with one decision of two items, written with raw SQL
    (``execute(sql, params)``, ``?`` placeholders)."""
    created = int(T_OLD.timestamp() * 1_000_000)
    execute(OLD_DECISIONS, ())
    execute(OLD_ITEMS, ())
    execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("old-1", "M-7", created, "app", None, None, '{"reward":"3"}',
             '{"cold_start":false,"degraded":true,"personalized":true}'))
    execute("INSERT INTO decision_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("old-1", "challenge", "C01", "M-7", created, 0, 40.0, 0.95, 3.0, None))
    execute("INSERT INTO decision_items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("old-1", "reward", "R01", "M-7", created, 0, 1.5, 0.9, None, 2.0))


def check_upgraded_store(url: str, columns: Callable[[str], list[str]]) -> None:
    """Open the older store at ``url``: the added columns are there (``columns(table)``), the
    old decision reads back with empty new fields, a new one logs every field, and opening
    again changes nothing."""
    store = open_event_store(url)
    try:
        for table, added in ADDED_COLUMNS.items():
            assert {c for c, _ in added} <= set(columns(table)), table
        decisions, items = store.decision_log()
        old = decisions.iloc[0]
        assert old["decision_id"] == "old-1" and old["member_id"] == "M-7"
        assert old["policy"] is None and np.isnan(old["no_offer_probability"])
        assert old["features"] is None and not old["no_offer"] and old["degraded"]
        assert old["event_timestamp"] == pd.Timestamp(T_OLD)
        assert items["item_type"].tolist() == ["reward", "challenge"]  # rewards first
        assert items["target_probability"].isna().all()
        assert items["shown_probability"].tolist() == [0.9, 0.95]
        store.log_decision(DecisionRecord(
            decision_id="new-1", member_id="M-8", created_at=T_OLD + timedelta(hours=1),
            channel="web", model_versions={"reward": "4"}, policy="cold_start",
            no_offer_probability=0.05, features={"tier_rank": 2.0, "visits_30d": 1 / 3},
            flags={"no_offer": True, "personalized": True},
            items=[DecisionItem(item_type="challenge", item_id="C02", rank=0, score=0.0,
                                shown_probability=0.125, target=5.0,
                                target_probability=0.25)]))
    finally:
        store.close()
    store = open_event_store(url)  # a second open: nothing left to add
    try:
        decisions, items = store.decision_log(since=T_OLD + timedelta(minutes=1))
        new = decisions.iloc[0]
        assert (new["decision_id"], new["policy"], new["no_offer"]) == ("new-1", "cold_start",
                                                                         True)
        assert new["no_offer_probability"] == 0.05 and not new["cold_start"]
        assert json.loads(new["features"]) == {"tier_rank": 2.0, "visits_30d": 0.333333}
        assert items[["item_id", "target_probability"]].values.tolist() == [["C02", 0.25]]
        assert len(store.decision_log()[0]) == 2
    finally:
        store.close()


def test_an_older_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as conn:
        write_old_store(lambda sql, params: conn.execute(sql, params))

    def columns(table: str) -> list[str]:
        with sqlite3.connect(path) as conn:
            return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]

    check_upgraded_store(f"sqlite:///{path}", columns)
