"""The history read from the event store equals what the simulator logged, and features built
from it equal the features computed on the simulator's own tables (parity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data.features import World, compute_member_features
from training.data.history import calendar, derive_assignments, derive_offers, load_history
from training.simulate.generate.catalog import VOCABULARY


def _program_events(world_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(world_dir / "program" / "events.parquet").rename(
        columns={"timestamp": "event_timestamp"})


def _world_tables(world_dir: Path) -> dict[str, pd.DataFrame]:
    """The simulator's own tables, with the product's string member ids."""
    out = {name: pd.read_parquet(world_dir / f"{name}.parquet")
           for name in ("members", "events", "offers", "assignments", "rewards", "challenges")}
    for name in ("members", "events", "offers", "assignments"):
        out[name]["member_id"] = out[name]["member_id"].astype(str)
    out["members"] = out["members"].rename(columns={"signup_date": "joined_at"})
    out["events"]["category"] = out["events"]["category"].replace("", None)
    return out


def test_logged_decisions_derive_exactly_from_events(tiny_world_dir: Path) -> None:
    events = _program_events(tiny_world_dir)
    world = _world_tables(tiny_world_dir)
    offers = derive_offers(events, window_days=7)
    logged = world["offers"].assign(decision_id="o" + world["offers"]["offer_id"].astype(str))
    both = logged.merge(offers, on="decision_id", suffixes=("_logged", ""))
    assert len(both) == len(logged) == len(offers)
    for column in ("member_id", "event_timestamp", "reward_id", "treated", "propensity",
                   "redeemed", "converted", "outcome_timestamp"):
        assert (both[f"{column}_logged"].to_numpy() == both[column].to_numpy()).all(), column
    np.testing.assert_allclose(both["spend"], both["spend_logged"])
    assert offers["redeemed"].sum() > 0 and (~offers["treated"]).sum() > 0

    assignments = derive_assignments(events, world["challenges"])
    logged = world["assignments"].assign(
        decision_id="a" + world["assignments"]["assignment_id"].astype(str))
    both = logged.merge(assignments, on="decision_id", suffixes=("_logged", ""))
    assert len(both) == len(logged) == len(assignments)
    for column in ("member_id", "event_timestamp", "challenge_id", "target", "propensity",
                   "completed", "outcome_timestamp"):
        assert (both[f"{column}_logged"].to_numpy() == both[column].to_numpy()).all(), column


def test_an_outcome_outside_the_window_or_of_another_reward_does_not_count() -> None:
    t0 = pd.Timestamp("1997-03-04 10:00", tz="UTC")
    rows = [
        ("impression", "d1", "R1", t0, None),
        ("redemption", "d1", "R2", t0 + pd.Timedelta(hours=1), None),  # another reward
        ("purchase", "d1", None, t0 + pd.Timedelta(days=8), 20.0),  # after the 7-day window
        ("impression", "d2", "R1", t0, None),
        ("redemption", "d2", "R1", t0 + pd.Timedelta(days=1), None),
        ("purchase", "d2", None, t0 + pd.Timedelta(days=1), 12.5),
        ("purchase", "d2", None, t0 + pd.Timedelta(days=2), 7.5),
        ("holdout", "d3", None, t0, None),
        ("purchase", "d3", None, t0 + pd.Timedelta(days=3), 5.0),
    ]
    events = pd.DataFrame([{"event_type": k, "decision_id": d, "reward_id": r,
                            "event_timestamp": t, "amount": a, "member_id": "M-1",
                            "propensity": 0.5} for k, d, r, t, a in rows])
    offers = derive_offers(events, window_days=7).set_index("decision_id")
    assert offers.loc["d1", ["redeemed", "converted", "spend"]].tolist() == [0, 0, 0.0]
    assert offers.loc["d2", ["redeemed", "converted", "spend"]].tolist() == [1, 1, 20.0]
    assert offers.loc["d3", ["treated", "redeemed", "converted", "spend"]].tolist() == [
        False, 0, 1, 5.0]
    assert offers.loc["d3", "reward_id"] == ""
    start, days = calendar(events["event_timestamp"])
    assert (start, days) == (pd.Timestamp("1997-03-04", tz="UTC"), 9)  # through 03-12


def test_features_from_the_event_store_equal_the_simulator_tables(
        tiny_world_dir: Path, tmp_path: Path) -> None:
    """The parity test: import the world's files, read the history back from the store, and
    compute features; they equal the features of the simulator's own tables."""
    from serving.stores.events import open_event_store
    from training.simulate.onboard import onboard

    url = f"sqlite:///{tmp_path / 'events.db'}"
    summary = onboard(tiny_world_dir, url, progress=False)
    assert summary["events"].imported == len(_program_events(tiny_world_dir))
    world = _world_tables(tiny_world_dir)
    store = open_event_store(url)
    try:
        history = load_history(store, world["rewards"], world["challenges"], VOCABULARY,
                               window_days=7)
    finally:
        store.close()
    assert history.start == pd.Timestamp("2026-01-01", tz="UTC") and history.days == 28
    reference = World(history.start, history.days, world["members"], world["rewards"],
                      world["challenges"], world["events"], world["offers"],
                      world["assignments"], VOCABULARY)
    expected = compute_member_features(reference).reset_index(drop=True)
    actual = compute_member_features(history).reset_index(drop=True)
    pd.testing.assert_frame_equal(actual, expected)
    assert actual["purchases_30d"].sum() > 0 and actual["redemption_rate"].max() > 0


@pytest.mark.parametrize("window", [3, 7])
def test_window_sets_when_an_offer_outcome_is_known(window: int) -> None:
    t0 = pd.Timestamp("2026-02-01", tz="UTC")
    events = pd.DataFrame([{"event_type": "impression", "decision_id": "d", "reward_id": "R",
                            "event_timestamp": t0, "amount": None, "member_id": "x",
                            "propensity": None}])
    offers = derive_offers(events, window_days=window)
    assert offers["outcome_timestamp"].iloc[0] == t0 + pd.Timedelta(days=window)
