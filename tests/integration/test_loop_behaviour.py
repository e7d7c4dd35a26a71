"""The simulated members' life around the learning loop: a history with no logged decision,
then their own activity imported round by round (never the world's offers or their outcomes)."""

from __future__ import annotations

from datetime import timedelta

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
