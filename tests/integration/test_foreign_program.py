"""A hand-made foreign program (tests/data/foreign: string ids, UUIDs, missing optional columns,
dates from the 1990s, bad rows) through the product: import, features from the event store equal
a plain pandas computation, its decisions labelled, and a recommendation for an imported member.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.stores.events import open_event_store
from training.data.history import build_from_store, read_history_meta
from training.data.imports import import_events_file, import_members_file

pytestmark = pytest.mark.integration

FOREIGN = Path(__file__).resolve().parent.parent / "data" / "foreign"
NEVER = 365.0


@pytest.fixture(scope="module")
def catalog(tiny_world_dir: Path) -> tuple:
    from training.simulate.generate.catalog import VOCABULARY

    return (pd.read_parquet(tiny_world_dir / "rewards.parquet"),
            pd.read_parquet(tiny_world_dir / "challenges.parquet"), VOCABULARY)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, catalog) -> Path:  # noqa: ANN001
    """The foreign program imported into a fresh store and its features built."""
    root = tmp_path_factory.mktemp("foreign")
    for name in ("members.csv", "events.csv"):
        shutil.copy(FOREIGN / name, root / name)
    store = open_event_store(f"sqlite:///{root / 'events.db'}")
    try:
        members = import_members_file(root / "members.csv", store)
        events = import_events_file(root / "events.csv", store)
        assert members.rejected > 0 and events.rejected > 0  # the bad rows are in the file
        again = import_events_file(root / "events.csv", store)
        assert again.imported == 0  # idempotent: nothing added the second time
        assert again.duplicates == events.imported + events.duplicates
        build_from_store(store, *catalog, root / "features", window_days=7, margin=0.3,
                         progress=False)
    finally:
        store.close()
    return root


def _plain_pandas(events: pd.DataFrame, member: str, day: pd.Timestamp) -> dict[str, float]:
    """The three features by hand: purchases in the 30 days before ``day``, spend in the 90
    days before it, days since the day of the last purchase before it."""
    mine = events[(events["member_id"] == member) & (events["event_type"] == "purchase")
                  & (events["ts"] < day)]
    last = mine["ts"].max()
    return {
        "purchases_30d": float((mine["ts"] >= day - pd.Timedelta(days=30)).sum()),
        "spend_90d": float(mine.loc[mine["ts"] >= day - pd.Timedelta(days=90), "amount"].sum()),
        "days_since_last_purchase": (NEVER if pd.isna(last)
                                     else float((day - last.floor("D")).days)),
    }


def test_features_equal_a_plain_pandas_computation(built: Path) -> None:
    meta = read_history_meta(built / "features")
    assert meta.start == "1997-02-10"  # the earliest valid event, whatever the decade
    features = pd.read_parquet(built / "features" / "member_features.parquet")
    # The valid rows of the file, read with pandas alone (the rejects file lists the others).
    raw = pd.read_csv(built / "events.csv", dtype=str)
    rejected = pd.read_csv(built / "events.rejects.csv")["row"].to_numpy()
    raw = raw.drop(index=rejected - 1)
    # a repeated id is one event; rows without an id get one generated (each is an event)
    raw = raw[~(raw["event_id"].notna() & raw.duplicated("event_id"))].copy()
    raw["ts"] = [pd.Timestamp(v if not v.isdigit() else f"{v[:4]}-{v[4:6]}-{v[6:]}")
                 for v in raw["timestamp"]]
    raw["ts"] = [t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
                 for t in raw["ts"]]
    raw["amount"] = raw["amount"].astype(float)
    checked = 0
    for member in ("M-000172", "M-000173", "6f1c2b9e-8a2d-4a47-9d4e-1b2c3d4e5f60", "42"):
        rows = features[features["member_id"] == member].set_index("event_timestamp")
        assert len(rows) == meta.days + 1
        for day in rows.index[::7]:
            expected = _plain_pandas(raw, member, day)
            got = rows.loc[day, list(expected)].astype(float).to_dict()
            assert got == pytest.approx(expected, abs=1e-3), (member, day)
            checked += 1
    assert checked > 50
    assert features.loc[features["member_id"] == "M-000172", "purchases_30d"].max() >= 2


def test_the_foreign_decision_is_labelled_from_its_outcome(built: Path) -> None:
    offers = pd.read_parquet(built / "features" / "offers.parquet")
    row = offers.set_index("decision_id").loc["d-0001"]
    assert row["member_id"] == "6f1c2b9e-8a2d-4a47-9d4e-1b2c3d4e5f60"
    assert (row["treated"], row["reward_id"], row["redeemed"], row["converted"]) == (
        True, "R07", 1, 1)


def test_a_recommendation_for_an_imported_member(copy_store, make_api_key,  # noqa: ANN001
                                                 tmp_path: Path) -> None:
    """A member the models never saw, imported with its history into a running program's
    store, gets personalized answers once `features refresh` has pushed its row online."""
    from fastapi.testclient import TestClient

    from serving.config import ServeSettings
    from serving.main import create_app
    from serving.stores.features import open_store
    from training.cli.data import catalog_frames
    from training.data.refresh import refresh

    settings = copy_store(tmp_path)
    url = f"sqlite:///{settings.data / 'events.db'}"
    member = "M-000172"
    when = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(days=2)
    (tmp_path / "m.csv").write_text("member_id,joined_at,tier,region,consent\n"
                                    f"{member},1996-04-02,Gold,north,true\n")
    (tmp_path / "e.csv").write_text(
        "event_id,event_type,member_id,timestamp,amount,category\n"
        f"x1,purchase,{member},{when.isoformat()},40.5,grocery\n"
        f"x2,visit,{member},{(when + pd.Timedelta(hours=1)).isoformat()},,\n")
    store = open_event_store(url)
    try:
        assert import_members_file(tmp_path / "m.csv", store).imported == 1
        assert import_events_file(tmp_path / "e.csv", store).imported == 2
        result = refresh(store, open_store(settings), *catalog_frames(settings),
                         read_history_meta(settings.features_dir), settings.features_dir)
    finally:
        store.close()
    # the new member, and any member whose import landed within the watermark's safety margin
    assert result.members >= 1 and result.rows_written == result.members
    key = make_api_key(url, "recommend")
    serve = ServeSettings(events_url=url, model_poll_seconds=0, seed=5)
    with TestClient(create_app(settings, serve)) as client:
        answer = client.post("/v1/recommendations", json={"member_id": member},
                             headers={"Authorization": f"Bearer {key}"}).json()
    assert answer["member_id"] == member
    assert answer["personalized"] and not answer["cold_start"] and not answer["degraded"], {
        k: answer[k] for k in ("personalized", "cold_start", "degraded", "degraded_reasons")}
    assert answer["rewards"] and answer["challenges"]
    online = open_store(settings).get_online_features(
        features=["member_daily:purchases_7d", "member_daily:spend_7d"],
        entity_rows=[{"member_id": member}]).to_df()
    np.testing.assert_allclose(online[["purchases_7d", "spend_7d"]].to_numpy()[0], [1, 40.5],
                               rtol=1e-6)


def test_the_refresher_follows_catalog_changes(copy_store, tmp_path: Path) -> None:  # noqa: ANN001
    """A server's feature refresher runs for weeks while rewards are added through the catalog:
    a member redeeming a reward added after the refresher started has that offer counted under
    its reward type at the next round, as a full build would count it."""
    import threading

    from serving.stores.catalog import import_rows, open_catalog_store
    from serving.stores.features import open_store
    from training.cli.data import refresh_loop

    settings = copy_store(tmp_path)
    url = f"sqlite:///{settings.data / 'events.db'}"
    catalog = open_catalog_store(url)
    try:
        known = catalog.frame("rewards").iloc[0].to_dict()
        rtype = str(known["reward_type"])
        store = open_event_store(url)
        member = str(store.members_frame(None)["member_id"].iloc[0])
        store.close()
        stop = threading.Event()
        rounds = refresh_loop(settings, every=0.01, stop=stop)
        feature = f"member_daily:offers_{rtype}"

        def offers_of_type() -> float:
            online = open_store(settings).get_online_features(
                features=[feature], entity_rows=[{"member_id": member}]).to_dict()
            return float(online[feature.split(":")[1]][0] or 0.0)

        next(rounds)
        before = offers_of_type()
        added = {k: v for k, v in known.items() if k not in ("created_us", "updated_us")}
        added.update(reward_id="R-NEW", name="A reward added while serving")
        assert not import_rows(catalog, "rewards", [added]).errors
        shown = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(days=10)  # window closed
        (tmp_path / "e.csv").write_text(
            "event_id,event_type,member_id,timestamp,reward_id,decision_id\n"
            f"n1,impression,{member},{shown.isoformat()},R-NEW,d-new\n"
            f"n2,redemption,{member},{(shown + pd.Timedelta(hours=2)).isoformat()},R-NEW,d-new\n")
        store = open_event_store(url)
        try:
            assert import_events_file(tmp_path / "e.csv", store).imported == 2
        finally:
            store.close()
        second = next(rounds)
        stop.set()
        rounds.close()
    finally:
        catalog.close()
    assert second["members"] >= 1
    assert offers_of_type() == before + 1
