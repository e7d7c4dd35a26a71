"""The event and decision store on SQLite: validation, idempotency, concurrency, durability and
known-answer queries. Each test gets its own database file under tmp_path."""

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

import pytest
from pydantic import ValidationError

from serving.contract.events import DecisionRecord, EventIn
from serving.stores.events import EventStore, open_event_store

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def event(event_id: str, event_type: str = "purchase", member_id: int = 1,
          timestamp: datetime = T0, **fields: Any) -> EventIn:
    if event_type == "purchase":
        fields.setdefault("amount", 10.0)
    if event_type in ("impression", "redemption"):
        fields.setdefault("reward_id", "R01")
    return EventIn.model_validate({"event_id": event_id, "event_type": event_type,
                                   "member_id": member_id, "timestamp": timestamp, **fields})


def decision(decision_id: str, member_id: int = 1, created_at: datetime = T0,
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


# --- validation ------------------------------------------------------------------------------


VALID = {"event_id": "e-1", "event_type": "purchase", "member_id": 7,
         "timestamp": "2026-03-02T09:00:00Z", "amount": 12.5}


@pytest.mark.parametrize(("change", "loc"), [
    ({"event_id": ""}, ("event_id",)),
    ({"event_id": "has space"}, ("event_id",)),
    ({"event_id": "x" * 65}, ("event_id",)),
    ({"event_type": "visit"}, ("event_type",)),
    ({"member_id": 0}, ("member_id",)),
    ({"timestamp": "2026-03-02T09:00:00"}, ("timestamp",)),  # naive
    ({"amount": None}, ("amount",)),  # required for a purchase
    ({"amount": -1.0}, ("amount",)),
    ({"amount": 2e7}, ("amount",)),
    ({"amount": float("nan")}, ("amount",)),
    ({"cost": -0.5}, ("cost",)),
    ({"decision_id": "d" * 65}, ("decision_id",)),
    ({"event_type": "redemption"}, ("reward_id",)),
    ({"event_type": "impression"}, ("reward_id",)),
    ({"event_type": "challenge_completed"}, ("challenge_id",)),
    ({"reward_id": "R" * 17}, ("reward_id",)),
    ({"properties": {f"k{i}": i for i in range(21)}}, ("properties",)),
    ({"properties": {"note": "x" * 257}}, ("properties", "note")),
    ({"properties": {"nested": {"a": 1}}}, ("properties", "nested")),
    ({"surprise": 1}, ("surprise",)),
])
def test_validation_errors_name_the_field(change: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        EventIn.model_validate({**VALID, **change})
    # Union members add their own tag after the field (e.g. "int"): compare the prefix.
    assert loc in [error["loc"][:len(loc)] for error in info.value.errors()]


def test_naive_timestamp_error_says_why() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        EventIn.model_validate({**VALID, "timestamp": "2026-03-02T09:00:00"})


def test_valid_events_are_normalised_to_utc() -> None:
    e = EventIn.model_validate({**VALID, "timestamp": "2026-03-02T10:00:00+01:00",
                                "properties": {"store": "north", "items": 3, "vip": True}})
    assert e.timestamp == T0 and e.timestamp.tzinfo == UTC
    assert e.properties == {"store": "north", "items": 3, "vip": True}
    # A challenge impression needs no reward_id.
    EventIn.model_validate({**VALID, "event_type": "impression", "challenge_id": "C01"})


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
    assert store.member_events(1)[0]["amount"] == 10.0
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
        except BaseException as exc:  # surfaced in the main thread below
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
from serving.contract.events import EventIn
from serving.stores.events import open_event_store

store = open_event_store(sys.argv[1])
now = datetime.now(UTC)
for i in range(1_000_000):
    store.add_events([EventIn(event_id=f"k{i}", event_type="purchase", member_id=1 + i % 50,
                              timestamp=now, amount=1.0)])
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
    store.log_decisions([decision("d2", member_id=2, created_at=T0 + timedelta(minutes=1),
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
        event("i3", "impression", member_id=2, timestamp=T0, reward_id="R09"),
        event("r1", "redemption", timestamp=T0 + 3 * h, reward_id="R01", decision_id="d1"),
        event("r2", "redemption", member_id=2, timestamp=T0 + 3 * h, reward_id="R02", cost=5.0),
        event("r3", "redemption", member_id=3, timestamp=T0 + 4 * h, reward_id="R03"),
        event("r0", "redemption", member_id=3, timestamp=T0 - 24 * h, reward_id="R01",
              cost=100.0),
        event("p1", "purchase", timestamp=T0 + 3 * h, amount=50.0),
    ])
    return store


def test_recent_offers(world: EventStore) -> None:
    h = timedelta(hours=1)
    assert world.recent_offers(1, T0 - h) == {"R01": T0 + 2 * h, "R02": T0 + h, "C01": T0}
    assert world.recent_offers(1, T0 + 90 * timedelta(minutes=1)) == {"R01": T0 + 2 * h}
    assert world.recent_offers(4, T0 - h) == {}


def test_member_context_is_recent_offers_and_consent_in_one_query(world: EventStore) -> None:
    h = timedelta(hours=1)
    world.add_events([
        event("c1", "consent_granted", member_id=1, timestamp=T0),
        event("c2", "consent_withdrawn", member_id=1, timestamp=T0 + h),
        event("c3", "consent_granted", member_id=2, timestamp=T0 - h),
    ])
    for member in (1, 2, 3, 4):
        for since in (T0 - h, T0 + 90 * timedelta(minutes=1), T0 + 10 * h):
            assert world.member_context(member, since) == (
                world.recent_offers(member, since), world.consent(member))
    assert world.member_context(1, T0 - h) == (
        {"R01": T0 + 2 * h, "R02": T0 + h, "C01": T0}, False)
    assert world.member_context(2, T0 - h) == ({"R09": T0}, True)
    assert world.member_context(4, T0 - h) == ({}, None)


def test_redemptions_and_spend(world: EventStore) -> None:
    assert world.reward_redemptions_since(T0) == {"R01": 1, "R02": 1, "R03": 1}
    assert world.reward_redemptions_since(T0 - timedelta(days=2)) == {"R01": 2, "R02": 1, "R03": 1}
    assert world.spend_since(T0) == pytest.approx(13.0)
    assert world.spend_since(T0 - timedelta(days=2)) == pytest.approx(113.0)
    assert world.spend_since(T0 + timedelta(days=1)) == 0.0


def test_consent_follows_the_latest_event_time_not_arrival(store: EventStore) -> None:
    h = timedelta(hours=1)
    store.add_events([
        event("c1", "consent_withdrawn", member_id=1, timestamp=T0 + h),
        event("c2", "consent_granted", member_id=1, timestamp=T0),  # arrives later, older
        event("c3", "consent_granted", member_id=2, timestamp=T0),
        event("c4", "consent_granted", member_id=4, timestamp=T0),
        event("c5", "consent_withdrawn", member_id=4, timestamp=T0),  # a tie: withdrawn wins
    ])
    assert store.consent(1) is False
    assert store.consent(2) is True
    assert store.consent(3) is None
    assert store.consent(4) is False
    with pytest.raises(ValueError, match="naive"):
        store.recent_offers(1, datetime(2026, 1, 1))


def test_events_between_is_half_open_and_filters_types(world: EventStore) -> None:
    h = timedelta(hours=1)
    frame = world.events_between(T0, T0 + 3 * h)
    assert list(frame["event_id"]) == ["i3", "i1", "i2"]
    assert str(frame["event_timestamp"].dtype) == "datetime64[us, UTC]"
    redemptions = world.events_between(T0, T0 + 5 * h, event_types=["redemption"])
    assert list(redemptions["event_id"]) == ["r1", "r2", "r3"]
    assert world.events_between(T0, T0 + 5 * h, event_types=[]).empty
    record = world.member_events(1)[-1]
    assert record["event_id"] == "r1" and record["timestamp"] == T0 + 3 * h
    assert record["received_at"].tzinfo == UTC


def test_erase_member_removes_exactly_that_member(world: EventStore) -> None:
    before_other = world.member_events(2)
    assert world.erase_member(1) == {"events": 4, "decisions": 1, "decision_items": 2,
                                     "experiment_exposures": 0}
    assert world.member_events(1) == [] and world.recent_offers(1, T0 - timedelta(days=1)) == {}
    assert world.member_events(2) == before_other
    assert world.count_events() == 4 and world.count_decisions() == 0
    assert world.erase_member(1) == {"events": 0, "decisions": 0, "decision_items": 0,
                                     "experiment_exposures": 0}
    assert world.ping()
