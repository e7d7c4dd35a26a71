"""The event and decision store on SQLite: idempotency, concurrency, durability, member
profiles, bulk imports, training frames, upgrades of older stores and known-answer queries. Each
test gets its own database file under tmp_path. tests/production/test_events_production.py runs
the engine-independent ones again on PostgreSQL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from serving.contract.events import DecisionRecord, parse_event
from serving.stores.events import EventStore, open_event_store
from serving.stores.sql import dialect_for

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TS = "datetime64[us, UTC]"


def event(event_id: str, event_type: str = "purchase", member_id: str = "m1",
          timestamp: datetime = T0, **fields: Any) -> Any:
    if event_type == "purchase":
        fields.setdefault("amount", 10.0)
    if event_type in ("impression", "redemption", "click") and "challenge_id" not in fields:
        fields.setdefault("reward_id", "R01")
    return parse_event({"event_id": event_id, "event_type": event_type,
                        "member_id": member_id, "timestamp": timestamp, **fields})


def decision(decision_id: str, member_id: str = "m1", created_at: datetime = T0,
             items: list[dict[str, Any]] | None = None, **fields: Any) -> DecisionRecord:
    return DecisionRecord.model_validate({
        "decision_id": decision_id, "member_id": member_id, "created_at": created_at,
        "channel": "app", "model_versions": {"propensity": "3"}, "flags": {"fallback": False},
        "items": [{"item_type": "reward", "item_id": "R01", "rank": 0, "score": 0.4,
                   "shown_probability": 0.9, "cost": 8.0}] if items is None else items,
        **fields})


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def store(url: str) -> Iterator[EventStore]:
    s = open_event_store(url)
    yield s
    s.close()


def raw_execute(url: str, *statements: str) -> None:
    """Run SQL on the database behind a store URL with the engine's own driver (no store)."""
    conn = dialect_for(url, "test").connect()
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def index_names(store: EventStore, url: str) -> set[str]:
    sql = ("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
           if url.startswith("sqlite") else
           "SELECT indexname FROM pg_indexes WHERE tablename = 'events'")
    return {row[0] for row in store._query(sql)}  # type: ignore[attr-defined]


# --- contract records the store takes --------------------------------------------------------


def test_decision_record_rejects_an_item_offered_twice() -> None:
    item = {"item_type": "reward", "item_id": "R01", "rank": 0, "score": 0.1,
            "shown_probability": 0.5}
    with pytest.raises(ValidationError) as info:
        decision("d1", items=[item, {**item, "rank": 1}])
    assert info.value.errors()[0]["loc"] == ()
    with pytest.raises(ValidationError) as info:
        decision("d1", items=[{**item, "shown_probability": 1.5}])
    assert info.value.errors()[0]["loc"] == ("items", 0, "shown_probability")


def test_open_rejects_relative_or_unknown_urls() -> None:
    with pytest.raises(ValueError, match="absolute"):
        open_event_store("sqlite:///relative/events.db")
    with pytest.raises(ValueError, match="unsupported"):
        open_event_store("mysql://localhost/events")


# --- idempotency -----------------------------------------------------------------------------


def test_replay_is_inserted_once_and_never_overwrites(store: EventStore) -> None:
    assert store.add_events([event("e1", amount=10.0)]) == [("e1", True)]
    assert store.add_events([event("e1", amount=10.0)]) == [("e1", False)]
    assert store.add_events([event("e1", amount=99.0)]) == [("e1", False)]  # same id, new payload
    assert store.count_events() == 1
    assert store.member_events("m1")[0]["amount"] == 10.0
    assert store.replay_counts() == {"replayed": 2, "conflicting": 1}


def test_replay_batch_mixed_with_new_events(store: EventStore) -> None:
    store.add_events([event("a"), event("b")])
    batch = [event("a"), event("c"), event("b"), event("c"), event("d"), event("c", amount=1.0)]
    assert store.add_events(batch) == [
        ("a", False), ("c", True), ("b", False), ("c", False), ("d", True), ("c", False)]
    assert store.count_events() == 4
    assert store.replay_counts() == {"replayed": 4, "conflicting": 1}
    assert store.add_events([]) == []


def test_concurrent_writers_store_each_id_exactly_once(url: str) -> None:
    """8 threads on two store objects (as two server processes would be) with overlapping ids."""
    stores = [open_event_store(url), open_event_store(url)]
    threads, per_thread, batch = 8, 500, 10
    inserted: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            ids = [f"e{t * 250 + i}" for i in range(per_thread)]  # half shared with the next
            for start in range(0, per_thread, batch):
                results = stores[t % 2].add_events([event(i) for i in ids[start:start + batch]])
                inserted[t] += [event_id for event_id, new in results if new]
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    expected = {f"e{i}" for i in range((threads - 1) * 250 + per_thread)}
    counts = Counter(event_id for ids in inserted for event_id in ids)
    assert set(counts) == expected and set(counts.values()) == {1}
    assert stores[0].count_events() == len(expected)
    stored = stores[1].events_between(T0, T0 + timedelta(seconds=1))["event_id"]
    assert set(stored) == expected and stored.is_unique
    for s in stores:
        s.close()


# --- durability ------------------------------------------------------------------------------


def test_store_runs_wal_with_full_sync(url: str, store: EventStore) -> None:
    conn = store._connection()  # type: ignore[attr-defined]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


CHILD = """
import sys
from datetime import UTC, datetime
from serving.contract.events import PurchaseEvent
from serving.stores.events import open_event_store

store = open_event_store(sys.argv[1])
now = datetime.now(UTC)
for i in range(1_000_000):
    store.add_events([PurchaseEvent(event_id=f"k{i}", event_type="purchase",
                                    member_id=f"M-{i % 50}", timestamp=now, amount=1.0)])
    print(f"k{i}", flush=True)  # acknowledge only after add_events returned
"""


def kill_writer_and_check(url: str, stall_seconds: float) -> None:
    """SIGKILL a process that acknowledges each event after add_events returned, mid-way
    through its write loop; every acknowledged event must be in the store after reopening.
    Shared with tests/production/test_events_production.py (PostgreSQL)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    watchdog = threading.Timer(stall_seconds, proc.kill)  # bounds the test if the child stalls
    watchdog.start()
    acked: list[str] = []
    try:
        while len(acked) < 50 and (line := proc.stdout.readline()):
            acked.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)  # mid-way: the child is inside its write loop
        rest = proc.stdout.read()
    finally:
        watchdog.cancel()
        proc.wait()
    acked += [line.strip() for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    assert len(acked) >= 50, "the child acknowledged too few events before the deadline"
    assert proc.returncode == -signal.SIGKILL

    reopened = open_event_store(url)
    stored = set(reopened.events_between(T0 - timedelta(days=3650),
                                         datetime.now(UTC) + timedelta(days=1))["event_id"])
    reopened.close()
    assert set(acked) <= stored


def test_acknowledged_events_survive_sigkill(url: str) -> None:
    kill_writer_and_check(url, stall_seconds=5.0)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- decisions -------------------------------------------------------------------------------


def test_decisions_are_logged_once_and_flattened(store: EventStore) -> None:
    store.log_decision(decision("d1", items=[
        {"item_type": "reward", "item_id": "R01", "rank": 0, "score": 0.4,
         "shown_probability": 0.9, "cost": 8.0},
        {"item_type": "challenge", "item_id": "C02", "rank": 1, "score": 0.2,
         "shown_probability": 0.6, "target": 5.0},
    ], arm="model", experiment_id="exp-1"))
    store.log_decisions([decision("d2", member_id="m2", created_at=T0 + timedelta(minutes=1),
                                  items=[], arm="holdout"),
                         decision("d1", items=[])])  # a retry of d1 keeps the first copy
    assert store.count_decisions() == 2

    frame = store.decisions_between(T0, T0 + timedelta(hours=1))
    assert list(frame["decision_id"]) == ["d1", "d1", "d2"]
    assert list(frame["item_id"].fillna("-")) == ["R01", "C02", "-"]  # holdout keeps its row
    assert frame["event_timestamp"].iloc[0] == T0
    assert str(frame["event_timestamp"].dtype) == "datetime64[us, UTC]"
    first = frame.iloc[0]
    assert (first["arm"], first["experiment_id"], first["rank"], first["cost"]) == (
        "model", "exp-1", 0, 8.0)
    assert first["model_versions"] == {"propensity": "3"} and first["flags"] == {"fallback": False}
    assert frame.iloc[1]["target"] == 5.0
    assert store.decisions_between(T0 + timedelta(seconds=1), T0 + timedelta(minutes=1)).empty


def test_decision_log_of_some_members_is_the_whole_log_filtered(store: EventStore) -> None:
    """A feature refresh reads only its members' decisions: the same rows, in the same order
    (time, then decision id), as the whole log filtered; items follow their decisions."""
    rng = np.random.default_rng(5)
    records = []
    for i in range(60):  # members interleaved in time, ids out of time order
        items = [{"item_type": "reward", "item_id": f"R0{k}", "rank": k, "score": 0.1,
                  "shown_probability": 0.5, "cost": 1.0} for k in range(i % 3)]
        if i % 2:
            items.append({"item_type": "challenge", "item_id": "C01", "rank": 0,
                          "score": 0.2, "shown_probability": 0.4, "target": 5.0,
                          "target_probability": 0.8})
        records.append(decision(f"d{59 - i:02d}", member_id=f"m{i % 7}",
                                created_at=T0 + timedelta(seconds=int(rng.integers(0, 20))),
                                items=items))
    store.log_decisions(records)
    until = T0 + timedelta(seconds=15)
    all_decisions, all_items = store.decision_log(until=until)
    some = ["m5", "m1", "m3"]
    decisions, items = store.decision_log(until=until, member_ids=some)
    expected = all_decisions[all_decisions["member_id"].isin(some)].reset_index(drop=True)
    pd.testing.assert_frame_equal(decisions, expected)
    pd.testing.assert_frame_equal(
        items, all_items[all_items["member_id"].isin(some)].reset_index(drop=True))
    assert 0 < len(decisions) < len(all_decisions) and len(items) > 0
    assert decisions["event_timestamp"].is_monotonic_increasing
    none, no_items = store.decision_log(member_ids=[])
    assert none.empty and no_items.empty and list(none.columns) == list(all_decisions.columns)


# --- queries for the business rules (hand-made data, known answers) --------------------------


@pytest.fixture
def world(store: EventStore) -> EventStore:
    """Member 1 saw R01 and C01 in decision d1 at T0, then impressions of R02 (+1 h) and R01
    (+2 h). Redemptions after T0: R01 via d1 (cost from the decision: 8), R02 with its own
    cost (5), R03 with no cost anywhere (0). One R01 redemption a day earlier costs 100."""
    h = timedelta(hours=1)
    store.log_decision(decision("d1", items=[
        {"item_type": "reward", "item_id": "R01", "rank": 0, "score": 0.4,
         "shown_probability": 0.9, "cost": 8.0},
        {"item_type": "challenge", "item_id": "C01", "rank": 1, "score": 0.3,
         "shown_probability": 0.5, "target": 3.0},
    ]))
    store.add_events([
        event("i1", "impression", timestamp=T0 + h, reward_id="R02"),
        event("i2", "impression", timestamp=T0 + 2 * h, reward_id="R01"),
        event("i3", "impression", member_id="m2", timestamp=T0, reward_id="R09"),
        event("r1", "redemption", timestamp=T0 + 3 * h, reward_id="R01", decision_id="d1"),
        event("r2", "redemption", member_id="m2", timestamp=T0 + 3 * h, reward_id="R02", cost=5.0),
        event("r3", "redemption", member_id="m3", timestamp=T0 + 4 * h, reward_id="R03"),
        event("r0", "redemption", member_id="m3", timestamp=T0 - 24 * h, reward_id="R01",
              cost=100.0),
        event("p1", "purchase", timestamp=T0 + 3 * h, amount=50.0),
    ])
    return store


def test_recent_offers(world: EventStore) -> None:
    h = timedelta(hours=1)
    assert world.recent_offers("m1", T0 - h) == {"R01": T0 + 2 * h, "R02": T0 + h, "C01": T0}
    assert world.recent_offers("m1", T0 + 90 * timedelta(minutes=1)) == {"R01": T0 + 2 * h}
    assert world.recent_offers("m4", T0 - h) == {}


def test_member_context_is_recent_offers_and_consent_in_one_query(world: EventStore) -> None:
    h = timedelta(hours=1)
    world.add_events([
        event("c1", "consent_granted", member_id="m1", timestamp=T0),
        event("c2", "consent_withdrawn", member_id="m1", timestamp=T0 + h),
        event("c3", "consent_granted", member_id="m2", timestamp=T0 - h),
    ])
    for member in ("m1", "m2", "m3", "m4"):
        for since in (T0 - h, T0 + 90 * timedelta(minutes=1), T0 + 10 * h):
            assert world.member_context(member, since) == (
                world.recent_offers(member, since), world.consent(member))
    assert world.member_context("m1", T0 - h) == (
        {"R01": T0 + 2 * h, "R02": T0 + h, "C01": T0}, False)
    assert world.member_context("m2", T0 - h) == ({"R09": T0}, True)
    assert world.member_context("m4", T0 - h) == ({}, None)


def test_redemptions_and_spend(world: EventStore) -> None:
    assert world.reward_redemptions_since(T0) == {"R01": 1, "R02": 1, "R03": 1}
    assert world.reward_redemptions_since(T0 - timedelta(days=2)) == {"R01": 2, "R02": 1, "R03": 1}
    assert world.spend_since(T0) == pytest.approx(13.0)
    assert world.spend_since(T0 - timedelta(days=2)) == pytest.approx(113.0)
    assert world.spend_since(T0 + timedelta(days=1)) == 0.0


def test_consent_follows_the_latest_event_time_not_arrival(store: EventStore) -> None:
    h = timedelta(hours=1)
    store.add_events([
        event("c1", "consent_withdrawn", member_id="m1", timestamp=T0 + h),
        event("c2", "consent_granted", member_id="m1", timestamp=T0),  # arrives later, older
        event("c3", "consent_granted", member_id="m2", timestamp=T0),
        event("c4", "consent_granted", member_id="m4", timestamp=T0),
        event("c5", "consent_withdrawn", member_id="m4", timestamp=T0),  # a tie: withdrawn wins
    ])
    assert store.consent("m1") is False
    assert store.consent("m2") is True
    assert store.consent("m3") is None
    assert store.consent("m4") is False
    with pytest.raises(ValueError, match="naive"):
        store.recent_offers("m1", datetime(2026, 1, 1))


def test_events_between_is_half_open_and_filters_types(world: EventStore) -> None:
    h = timedelta(hours=1)
    frame = world.events_between(T0, T0 + 3 * h)
    assert list(frame["event_id"]) == ["i3", "i1", "i2"]
    assert str(frame["event_timestamp"].dtype) == "datetime64[us, UTC]"
    redemptions = world.events_between(T0, T0 + 5 * h, event_types=["redemption"])
    assert list(redemptions["event_id"]) == ["r1", "r2", "r3"]
    assert world.events_between(T0, T0 + 5 * h, event_types=[]).empty
    record = world.member_events("m1")[-1]
    assert record["event_id"] == "r1" and record["timestamp"] == T0 + 3 * h
    assert record["received_at"].tzinfo == UTC


def test_erase_member_removes_exactly_that_member(world: EventStore) -> None:
    world.upsert_member("m1", T0, "Gold", None, True, None)
    world.upsert_member("m2", T0, "Gold", None, True, None)
    before_other = world.member_events("m2")
    assert world.erase_member("m1") == {"events": 4, "decisions": 1, "decision_items": 2,
                                        "experiment_exposures": 0, "members": 1}
    assert world.member_events("m1") == []
    assert world.recent_offers("m1", T0 - timedelta(days=1)) == {}
    assert world.member_events("m2") == before_other
    assert list(world.members_frame()["member_id"]) == ["m2"]
    assert world.count_events() == 4 and world.count_decisions() == 0
    assert world.erase_member("m1") == {"events": 0, "decisions": 0, "decision_items": 0,
                                        "experiment_exposures": 0, "members": 0}
    assert world.ping()


# --- every event type's columns ----------------------------------------------------------------


def test_each_type_stores_its_columns_and_a_replay_compares_them(store: EventStore) -> None:
    events = [
        event("p", "purchase", amount=12.5, category="home", quantity=2, points=25,
              reward_id="R07", properties={"store": "north"}),
        event("t", "tier_change", tier="Gold"),
        event("i", "impression", challenge_id="C03", target=150.0, propensity=0.25),
        event("g", "challenge_progress", challenge_id="C03", value=75.5),
        event("s", "points_spent", points=-40),
        event("v", "visit"),
    ]
    assert all(new for _, new in store.add_events(events))
    records = {r["event_id"]: r for r in store.member_events("m1")}
    assert {k: records["p"][k] for k in ("amount", "category", "quantity", "points",
                                         "reward_id", "properties", "tier")} == {
        "amount": 12.5, "category": "home", "quantity": 2, "points": 25, "reward_id": "R07",
        "properties": {"store": "north"}, "tier": None}
    assert records["t"]["tier"] == "Gold" and records["s"]["points"] == -40
    assert (records["i"]["challenge_id"], records["i"]["target"], records["i"]["propensity"]) == (
        "C03", 150.0, 0.25)
    assert records["g"]["value"] == 75.5 and records["v"]["amount"] is None
    # a replay with the same content is honest, one with other content conflicts
    assert store.add_events([event("p", "purchase", amount=12.5, category="home", quantity=2,
                                   points=25, reward_id="R07", properties={"store": "north"}),
                             event("t", "tier_change", tier="Silver")]) == [
        ("p", False), ("t", False)]
    assert store.replay_counts() == {"replayed": 2, "conflicting": 1}


# --- member profiles ----------------------------------------------------------------------------


def members(**changes: list[Any]) -> pd.DataFrame:
    frame = pd.DataFrame({
        "member_id": ["M-000172", "6f1c2b9e-8a2d-4a47-9d4e-1b2c3d4e5f60", "42"],
        "joined_at": pd.to_datetime(["1997-03-14", "2001-12-31T23:00:00Z", "2026-01-01"], format="ISO8601",
                                    utc=True).astype(TS),
        "tier": ["Gold", "Bronze", "Silver"],
        "region": ["north", None, "south"],
        "consent": pd.array([True, None, False], dtype="boolean"),
        "attributes": [{"store": "A12", "vip": True}, None, '{"age_band": "30-39"}'],
    })
    for name, values in changes.items():
        frame[name] = values
    return frame


def test_members_upsert_counts_only_what_changed(store: EventStore) -> None:
    assert store.upsert_members(members()) == 3
    assert store.upsert_members(members()) == 0  # re-importing the same file changes nothing
    assert store.upsert_members(members(tier=["Gold", "Silver", "Silver"])) == 1
    frame = store.members_frame()
    assert list(frame["member_id"]) == ["42", "6f1c2b9e-8a2d-4a47-9d4e-1b2c3d4e5f60",
                                        "M-000172"]  # sorted
    assert str(frame["joined_at"].dtype) == TS and str(frame["consent"].dtype) == "boolean"
    row = frame.set_index("member_id").loc["M-000172"]
    assert row["joined_at"] == pd.Timestamp("1997-03-14", tz="UTC")
    assert (row["tier"], row["region"], bool(row["consent"])) == ("Gold", "north", True)
    assert row["attributes"] == {"store": "A12", "vip": True}
    other = frame.set_index("member_id").loc["6f1c2b9e-8a2d-4a47-9d4e-1b2c3d4e5f60"]
    assert other["tier"] == "Silver" and other["region"] is None
    assert pd.isna(other["consent"]) and other["attributes"] is None
    assert frame.set_index("member_id").loc["42", "attributes"] == {"age_band": "30-39"}
    assert list(store.members_frame(["42", "nobody", "42"])["member_id"]) == ["42"]
    assert store.members_frame([]).empty


def test_upsert_member_says_whether_it_created(store: EventStore) -> None:
    assert store.upsert_member("M-1", T0, "Gold", "north", None, {"vip": True}) is True
    assert store.upsert_member("M-1", T0, "Gold", "north", None, {"vip": True}) is False
    assert store.upsert_member("M-1", T0, "Silver", None, False, None) is False
    row = store.members_frame(["M-1"]).iloc[0]
    assert (row["tier"], row["region"], bool(row["consent"]), row["attributes"]) == (
        "Silver", None, False, None)  # the whole profile is replaced


def test_profile_consent_combines_with_consent_events(store: EventStore) -> None:
    h = timedelta(hours=1)
    store.upsert_member("yes", T0, "Gold", None, True, None)
    store.upsert_member("no", T0, "Gold", None, False, None)
    store.upsert_member("unknown", T0, "Gold", None, None, None)
    store.add_events([event("w", "consent_withdrawn", member_id="yes", timestamp=T0 + h),
                      event("g", "consent_granted", member_id="no", timestamp=T0 + h),
                      event("u", "consent_granted", member_id="unknown", timestamp=T0)])
    assert store.consent("yes") is False  # withdrawn by an event
    assert store.consent("no") is False  # a "no" in the profile stands until the CRM changes it
    assert store.consent("unknown") is True
    store.upsert_member("no", T0, "Gold", None, True, None)
    assert store.consent("no") is True
    store.upsert_member("profile-only", T0, "Gold", None, False, None)
    assert store.member_context("profile-only", T0) == ({}, False)
    for member in ("yes", "no", "unknown", "profile-only", "nobody"):
        assert store.member_context(member, T0)[1] == store.consent(member)


def test_members_changed_since_sees_events_and_profile_changes(store: EventStore) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    store.upsert_members(members())
    store.add_events([event("e1", member_id="M-9")])
    assert store.members_changed_since(start) == sorted(
        ["M-000172", "6f1c2b9e-8a2d-4a47-9d4e-1b2c3d4e5f60", "42", "M-9"])
    later = datetime.now(UTC)
    assert store.members_changed_since(later) == []
    store.upsert_members(members())  # unchanged: nobody moves
    store.add_events([event("e1", member_id="M-9")])  # a replay adds nothing
    assert store.members_changed_since(later) == []
    store.upsert_member("42", T0, "Platinum", None, None, None)
    store.import_events(frame_of([("x1", "visit", "M-7", T0)]))
    assert store.members_changed_since(later) == ["42", "M-7"]
    again = datetime.now(UTC)
    store.import_events(frame_of([("x1", "visit", "M-7", T0)]))  # importing again: nobody
    assert store.members_changed_since(again) == []
    # a decision counts among the member's offers: its member changed when it was made
    store.log_decision(decision("d-now", member_id="M-11", created_at=datetime.now(UTC)))
    store.log_decision(decision("d-old", member_id="M-12", created_at=T0))
    assert store.members_changed_since(again) == ["M-11"]


# --- bulk imports -----------------------------------------------------------------------------


def frame_of(rows: list[tuple[Any, ...]], **columns: list[Any]) -> pd.DataFrame:
    """An import frame: (event_id, event_type, member_id, timestamp) rows plus columns."""
    frame = pd.DataFrame(rows, columns=["event_id", "event_type", "member_id",
                                        "event_timestamp"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype(TS)
    for name, values in columns.items():
        frame[name] = values
    return frame


OLD = datetime(1997, 6, 30, 23, 59, 59, tzinfo=UTC)


def test_import_events_skips_stored_and_repeated_ids_and_never_overwrites(
        store: EventStore) -> None:
    store.add_events([event("a", "purchase", member_id="M-1", amount=5.0)])
    chunk = frame_of([("a", "purchase", "M-1", T0), ("b", "purchase", "M-2", OLD),
                      ("b", "purchase", "M-2", T0), ("c", "visit", "M-1", T0),
                      ("d", "redemption", "M-1", T0)],
                     amount=[99.0, 20.5, 1.0, np.nan, np.nan],
                     category=["x", "home", None, None, None],
                     points=pd.array([None, 7, None, None, -50], dtype="Int64"),
                     reward_id=[None, None, None, None, "R03"],
                     properties=[None, '{"b": 1, "a": "z"}', None, None, {"k": True}])
    assert store.import_events(chunk) == 3
    assert store.import_events(chunk) == 0  # idempotent
    frame = store.events_frame()
    assert list(frame["event_id"]) == ["a", "c", "d", "b"]  # member, then time
    by_id = frame.set_index("event_id")
    assert by_id.loc["a", "amount"] == 5.0  # the first copy wins
    assert (by_id.loc["b", "amount"], by_id.loc["b", "category"], by_id.loc["b", "points"],
            by_id.loc["b", "event_timestamp"]) == (20.5, "home", 7, pd.Timestamp(OLD))
    assert by_id.loc["b", "properties"] == {"a": "z", "b": 1}
    assert (by_id.loc["d", "reward_id"], by_id.loc["d", "points"], by_id.loc["d", "properties"]
            ) == ("R03", -50, {"k": True})
    assert np.isnan(by_id.loc["c", "amount"]) and by_id.loc["c", "category"] is None
    # an imported event replayed through the API with the same content is an honest replay
    assert store.add_events([event("b", "purchase", member_id="M-2", timestamp=OLD,
                                   amount=20.5, category="home", points=7,
                                   properties={"a": "z", "b": 1})]) == [("b", False)]
    assert store.replay_counts() == {"replayed": 1, "conflicting": 0}


def test_import_events_is_one_transaction(store: EventStore) -> None:
    """A failure inside a chunk (here the database refusing a missing member id) leaves
    nothing of that chunk, however many statements it took."""
    rows = [(f"e{i}", "visit" if i % 3 else "purchase", f"M-{i}", T0) for i in range(3000)]
    chunk = frame_of(rows, amount=[1.0 if i % 3 == 0 else np.nan for i in range(3000)])
    chunk.loc[2999, "member_id"] = None
    with pytest.raises(Exception, match="(?i)null"):
        store.import_events(chunk)
    assert store.count_events() == 0
    chunk.loc[2999, "member_id"] = "M-2999"
    chunk.loc[1500, "event_id"] = None  # a key the database refuses too, on either engine
    with pytest.raises(Exception, match="(?i)null"):
        store.import_events(chunk)
    assert store.count_events() == 0
    chunk.loc[1500, "event_id"] = "e1500"
    assert store.import_events(chunk) == 3000


def test_import_events_refuses_frames_it_cannot_store_exactly(store: EventStore) -> None:
    with pytest.raises(ValueError, match="missing column"):
        store.import_events(pd.DataFrame({"event_id": ["a"]}))
    naive = frame_of([("a", "visit", "M-1", T0)])
    naive["event_timestamp"] = naive["event_timestamp"].dt.tz_localize(None)
    with pytest.raises(ValueError, match="tz-aware"):
        store.import_events(naive)
    assert store.import_events(frame_of([])) == 0


def test_bulk_load_defers_indexes_only_on_an_empty_store(store: EventStore, url: str) -> None:
    indexes = {"events_member_type_ts", "events_type_ts"}
    assert indexes <= index_names(store, url)
    with store.bulk_load() as deferred:
        assert deferred and not indexes & index_names(store, url)
        assert "events_received" in index_names(store, url)
        store.import_events(frame_of([("a", "visit", "M-1", T0)]))
        assert store.events_frame(member_ids=["M-1"])["event_id"].tolist() == ["a"]
    assert indexes <= index_names(store, url)
    with store.bulk_load() as deferred:
        assert not deferred and indexes <= index_names(store, url)
    with pytest.raises(RuntimeError), store.bulk_load():
        raise RuntimeError("the import failed")
    assert indexes <= index_names(store, url)  # rebuilt whatever happened


# --- frames for features and training -------------------------------------------------------


def test_events_frame_filters_orders_and_types(store: EventStore) -> None:
    h = timedelta(hours=1)
    store.import_events(frame_of(
        [("e3", "purchase", "M-2", T0), ("e1", "visit", "M-10", T0 + h),
         ("e2", "purchase", "M-10", T0), ("e0", "purchase", "M-10", T0),
         ("e4", "challenge_completed", "M-2", OLD)],
        amount=[1.0, np.nan, 2.0, 3.0, np.nan], challenge_id=[None] * 4 + ["C01"],
        points=pd.array([None, None, None, None, 300], dtype="Int64")))
    frame = store.events_frame()
    assert list(frame["event_id"]) == ["e0", "e2", "e1", "e4", "e3"]  # "M-10" < "M-2"
    assert list(frame.columns) == [
        "event_id", "event_type", "member_id", "event_timestamp", "decision_id", "reward_id",
        "challenge_id", "amount", "cost", "category", "quantity", "points", "tier", "target",
        "value", "propensity", "properties", "received_at"]
    dtypes = frame.dtypes.astype(str).to_dict()
    assert (dtypes["event_timestamp"], dtypes["received_at"]) == (TS, TS)
    assert (dtypes["amount"], dtypes["propensity"], dtypes["points"], dtypes["quantity"]) == (
        "float64", "float64", "Int64", "Int64")
    assert frame["points"].tolist()[3] == 300 and frame["points"].isna().sum() == 4
    assert frame["received_at"].min() > pd.Timestamp(T0)
    picked = store.events_frame(member_ids=["M-2", "M-404"], until=T0,
                                columns=["member_id", "challenge_id", "event_timestamp"])
    assert list(picked.columns) == ["member_id", "challenge_id", "event_timestamp"]
    assert picked.to_dict("records") == [
        {"member_id": "M-2", "challenge_id": "C01", "event_timestamp": pd.Timestamp(OLD)}]
    purchases = store.events_frame(event_types=["purchase"], columns=["event_id"])
    assert list(purchases["event_id"]) == ["e0", "e2", "e3"]
    empty = store.events_frame(event_types=[])
    assert empty.empty and empty.dtypes.astype(str).to_dict() == dtypes
    assert store.events_frame(member_ids=[]).empty
    with pytest.raises(ValueError, match="unknown column"):
        store.events_frame(columns=["ts_us"])


def test_events_between_has_every_column(store: EventStore) -> None:
    store.add_events([event("i", "impression", member_id="M-1", reward_id="R01",
                            propensity=0.5, decision_id="d9")])
    frame = store.events_between(T0, T0 + timedelta(seconds=1))
    row = frame.iloc[0]
    assert (row["member_id"], row["propensity"], row["decision_id"]) == ("M-1", 0.5, "d9")
    assert np.isnan(row["amount"]) and str(frame["event_timestamp"].dtype) == TS


# --- upgrade of a store written before string member ids -------------------------------------


OLD_SCHEMA = (
    """CREATE TABLE events (event_id VARCHAR(64) PRIMARY KEY, event_type VARCHAR(32) NOT NULL,
        member_id BIGINT NOT NULL, ts_us BIGINT NOT NULL, decision_id VARCHAR(64),
        challenge_id VARCHAR(16), reward_id VARCHAR(16), amount DOUBLE PRECISION,
        cost DOUBLE PRECISION, properties TEXT, received_us BIGINT NOT NULL,
        payload_sha256 CHAR(64) NOT NULL)""",
    "CREATE INDEX events_member_type_ts ON events (member_id, event_type, ts_us)",
    """CREATE TABLE decisions (decision_id VARCHAR(64) PRIMARY KEY, member_id BIGINT NOT NULL,
        created_us BIGINT NOT NULL, channel VARCHAR(32) NOT NULL, arm VARCHAR(32),
        experiment_id VARCHAR(64), model_versions TEXT NOT NULL, flags TEXT NOT NULL)""",
    """CREATE TABLE decision_items (decision_id VARCHAR(64) NOT NULL,
        item_type VARCHAR(16) NOT NULL, item_id VARCHAR(16) NOT NULL, member_id BIGINT NOT NULL,
        created_us BIGINT NOT NULL, item_rank INTEGER NOT NULL, score DOUBLE PRECISION NOT NULL,
        shown_probability DOUBLE PRECISION NOT NULL, target DOUBLE PRECISION,
        cost DOUBLE PRECISION, PRIMARY KEY (decision_id, item_type, item_id))""",
    ("INSERT INTO events VALUES ('e1', 'purchase', 42, 1772442000000000, NULL, NULL, NULL, "
     "12.5, NULL, NULL, 1772442000000001, 'digest-of-the-old-request-body')"),
    "INSERT INTO decisions VALUES ('d1', 42, 1772442000000000, 'app', NULL, NULL, '{}', '{}')",
    ("INSERT INTO decision_items VALUES ('d1', 'reward', 'R01', 42, 1772442000000000, 0, 0.5, "
     "0.9, NULL, 8.0)"),
)


def test_a_store_with_integer_member_ids_is_upgraded_in_place(url: str) -> None:
    raw_execute(url, "BEGIN", *OLD_SCHEMA, "COMMIT")
    store = open_event_store(url)
    try:
        assert store.member_events("42")[0] | {"received_at": None} == {
            "event_id": "e1", "event_type": "purchase", "member_id": "42", "timestamp": T0,
            "decision_id": None, "reward_id": None, "challenge_id": None, "amount": 12.5,
            "cost": None, "category": None, "quantity": None, "points": None, "tier": None,
            "target": None, "value": None, "propensity": None, "properties": None,
            "received_at": None}
        assert store.recent_offers("42", T0) == {"R01": T0}
        # the old digest is gone: a replay compares the stored columns
        assert store.add_events([event("e1", member_id="42", amount=12.5)]) == [("e1", False)]
        assert store.replay_counts()["conflicting"] == 0
        store.add_events([event("e2", member_id="M-000172", reward_id="R" + "1" * 40)])
        assert store.events_frame()["member_id"].tolist() == ["42", "M-000172"]
    finally:
        store.close()
    open_event_store(url).close()  # upgrading is done once; reopening changes nothing
