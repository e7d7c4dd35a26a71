"""The simulated members' life around the learning loop: a history with no logged decision,
then their own activity imported round by round (never the world's offers or their outcomes)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration


def test_history_without_decisions_then_own_activity(tmp_path) -> None:  # noqa: ANN001
    from serving.config import ServeSettings, StoreSettings
    from serving.stores.events import open_event_store
    from training.simulate import WorldConfig, simulate_world
    from training.simulate.loop import import_behaviour, onboard_without_offers
    from training.simulate.onboard import program_files

    store = StoreSettings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    simulate_world(WorldConfig(members=300, days=28, seed=5), store.world_dir, progress=False)
    world = pd.read_parquet(program_files(store.world_dir)["events"])
    start = world["timestamp"].min().floor("D")
    cut, later = start + timedelta(days=14), start + timedelta(days=21)
    url = ServeSettings().events(store)

    counts = onboard_without_offers(store.world_dir, url, until=cut.to_pydatetime())
    before = world[world["timestamp"] < cut]
    kept = before[~before["event_type"].isin(("impression", "holdout"))]
    assert counts["imported"] == len(kept) > 0
    # the history keeps the purchases that fell in the world's offer windows
    assert (kept["decision_id"].notna() & (kept["event_type"] == "purchase")).sum() > 0
    events = open_event_store(url)
    try:
        history = events.events_frame()
        assert len(history) == len(kept)
        assert history["decision_id"].isna().all()
        assert not history["event_type"].isin(("impression", "holdout")).any()
        assert history["event_timestamp"].max() < cut
        decisions, _ = events.decision_log()
        assert decisions.empty
    finally:
        events.close()

    added = import_behaviour(store.world_dir, url, cut.to_pydatetime(), later.to_pydatetime())
    window = world[(world["timestamp"] >= cut) & (world["timestamp"] < later)]
    own = window[window["decision_id"].isna()
                 & ~window["event_type"].isin(("impression", "holdout"))]
    assert added == len(own) > 0
    assert len(own) < len(window)  # the world's own offers and their outcomes stay out
    events = open_event_store(url)
    try:
        after = events.events_frame()
        assert len(after) == len(kept) + len(own)
        new = after[after["event_timestamp"] >= cut]
        assert new["event_timestamp"].max() < later
        assert new["decision_id"].isna().all()
    finally:
        events.close()
    # idempotent, like every import: the same period again adds nothing
    import_behaviour(store.world_dir, url, cut.to_pydatetime(), later.to_pydatetime())
    events = open_event_store(url)
    try:
        assert len(events.events_frame()) == len(kept) + len(own)
    finally:
        events.close()


def test_simulated_life_refreshes_the_changed_members_as_of_each_midnight(tmp_path) -> None:  # noqa: ANN001
    """The bench's feature refresher on simulated time: every simulated midnight the members
    who changed get the row a build as of that midnight would give them (their own activity
    imported as time passes; an outcome posted ahead of its time does not count before it);
    the others keep the row they had."""
    from serving.config import ServeSettings, StoreSettings
    from serving.contract.events import parse_event
    from serving.stores.events import open_event_store
    from serving.stores.features import open_store
    from training.cli.data import build_store_features, materialize
    from training.simulate import WorldConfig, simulate_world
    from training.simulate.loop import SimulatedLife, onboard_without_offers
    from training.simulate.onboard import program_files

    store = StoreSettings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    simulate_world(WorldConfig(members=300, days=28, seed=5), store.world_dir, progress=False)
    world = pd.read_parquet(program_files(store.world_dir)["events"])
    cut = world["timestamp"].min().floor("D") + timedelta(days=14)
    url = ServeSettings().events(store)
    onboard_without_offers(store.world_dir, url, until=cut.to_pydatetime())
    build_store_features(store, progress=False)
    materialize(store, apply=True, echo=False)

    members = sorted(world["member_id"].astype(str).unique())
    early, late = members[0], members[1]
    ahead = [  # outcomes posted ahead of their simulated time, as the bench's members do
        {"event_id": "o1", "event_type": "purchase", "member_id": early, "amount": 10.0,
         "timestamp": (cut + timedelta(days=1, hours=5, microseconds=250)).isoformat()},
        {"event_id": "o2", "event_type": "purchase", "member_id": late, "amount": 10.0,
         "timestamp": (cut + timedelta(days=3, hours=2)).isoformat()}]
    events = open_event_store(url)
    try:
        events.add_events([parse_event(e) for e in ahead])
    finally:
        events.close()
    life = SimulatedLife(store.world_dir, store, url, cut.to_pydatetime(), refresh_days=1)
    life.note([early, late], [e["timestamp"] for e in ahead])  # as posted: ISO text
    life.advance((cut + timedelta(days=3, hours=12)).to_pydatetime())
    assert life.stats["refreshes"] == 3

    # by hand: purchases in the 7 days before a midnight, from what the store holds
    history = world[~world["event_type"].isin(("impression", "holdout"))]
    own = history["decision_id"].isna()
    held = history[(history["timestamp"] < cut) | own][["member_id", "event_type", "timestamp"]]
    added = pd.DataFrame({"member_id": [early, late], "event_type": "purchase",
                          "timestamp": [pd.Timestamp(e["timestamp"]) for e in ahead]})
    held = pd.concat([held.astype({"member_id": str}), added], ignore_index=True)
    purchases = held[held["event_type"] == "purchase"]
    last = cut + timedelta(days=3)
    moved = held[(held["timestamp"] >= cut) & (held["timestamp"] < last)]
    changed = set(moved["member_id"])
    assert early in changed
    assert life.stats["members_refreshed"] >= len(changed)

    def purchases_7d(member: str, day: pd.Timestamp) -> float:
        mine = purchases[purchases["member_id"] == member]["timestamp"]
        return float(((mine >= day - timedelta(days=7)) & (mine < day)).sum())

    online = open_store(store).get_online_features(
        features=["member_daily:purchases_7d"],
        entity_rows=[{"member_id": m} for m in members]).to_df().set_index("member_id")
    # a member's row is that of the midnight after its last change (or the build's, at cut)
    as_of = {m: t.floor("D") + timedelta(days=1) for m, t in moved.groupby("member_id")[
        "timestamp"].max().items()}
    expected = [purchases_7d(m, as_of.get(m, cut)) for m in members]
    np.testing.assert_allclose(online.loc[members, "purchases_7d"].to_numpy(dtype=float),
                               expected)
    # the purchase two hours after the last refresh is in the store, not in the row yet
    assert purchases_7d(late, last + timedelta(days=1)) > purchases_7d(late, last)
    assert len(changed) > 50
