"""Feast round trip on a tiny world: apply, materialize, read back online and offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.config import ServeSettings, StoreSettings
from serving.stores.features import open_store, service_feature_names, service_feature_refs
from training.cli.data import build_store_features
from training.data.feast_ops import apply_repo, historical_features, materialize_world
from training.data.features import built_vocabulary, member_feature_names
from training.data.history import read_history_meta
from training.simulate.onboard import onboard

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store_settings(tiny_world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StoreSettings:
    data = tmp_path_factory.mktemp("feast_data")
    shutil.copytree(tiny_world_dir, data / "world")
    settings = StoreSettings(data_dir=data)
    onboard(settings.world_dir, ServeSettings().events(settings), progress=False)
    build_store_features(settings, chunk_size=150, progress=False)
    meta = read_history_meta(settings.features_dir)
    apply_repo(settings)
    materialize_world(settings, meta.start_ts.to_pydatetime(), meta.days)
    return settings


def test_services_are_the_model_contracts(store_settings: StoreSettings) -> None:
    store = open_store(store_settings)
    names = service_feature_names(store, "propensity_v1")
    member_part, reward_part = names[:-4], names[-4:]
    assert reward_part == ["reward_type_code", "reward_category_code", "reward_cost",
                           "reward_min_tier_rank"]
    # the service projects the view: a subset, in the view's order, without consent
    vocabulary = built_vocabulary(store_settings.features_dir)
    assert member_part == [n for n in member_feature_names(vocabulary) if n in set(member_part)]
    assert "consent" not in member_part and "visits_per_day_90d" in member_part
    assert "challenge_min_target" in service_feature_names(store, "difficulty_v1")


def test_online_values_are_the_latest_offline_rows(store_settings: StoreSettings) -> None:
    store = open_store(store_settings)
    refs = [r for r in service_feature_refs(store, "propensity_v1") if r.startswith("member_daily:")]
    offline = pd.read_parquet(store_settings.features_dir / "member_features.parquet")
    latest = offline.sort_values("event_timestamp").groupby("member_id").tail(1).set_index("member_id")
    ids = latest.index.to_numpy()[:120]
    online = store.get_online_features(
        features=refs, entity_rows=[{"member_id": str(m)} for m in ids]).to_df().set_index("member_id")
    names = [r.split(":")[1] for r in refs]
    np.testing.assert_array_equal(online.loc[ids, names].to_numpy(np.float32),
                                  latest.loc[ids, names].to_numpy(np.float32))


def test_item_features_online(store_settings: StoreSettings) -> None:
    store = open_store(store_settings)
    rewards = pd.read_parquet(store_settings.world_dir / "rewards.parquet")
    online = store.get_online_features(
        features=["reward_attributes:reward_cost"],
        entity_rows=[{"reward_id": r} for r in rewards["reward_id"]]).to_df()
    np.testing.assert_allclose(online["reward_cost"], rewards["cost"], rtol=1e-6)


def test_historical_join_is_point_in_time(store_settings: StoreSettings) -> None:
    offers = pd.read_parquet(store_settings.features_dir / "offers.parquet").head(200)
    entity_df = offers[["member_id", "reward_id", "event_timestamp"]]
    joined = historical_features(store_settings, entity_df, "propensity_v1")
    offline = pd.read_parquet(store_settings.features_dir / "member_features.parquet")
    # expected: the row stamped at 00:00 of the decision's day
    day = joined["event_timestamp"].dt.floor("D")
    expected = joined[["member_id"]].assign(event_timestamp=day).merge(
        offline, on=["member_id", "event_timestamp"], how="left")
    np.testing.assert_allclose(joined["visits_30d"].to_numpy(np.float32),
                               expected["visits_30d"].to_numpy(np.float32))
    np.testing.assert_allclose(joined["visits_per_day_90d"].to_numpy(np.float32),
                               expected["visits_per_day_90d"].to_numpy(np.float32))


def test_serving_reader_returns_what_feast_returns(store_settings: StoreSettings) -> None:
    """The request path reads the SQLite online store with one plain query and decodes Float32
    values from their bytes (serving/stores/features.py); for every member (and an unknown one) it must
    give exactly Feast's online_read answer: the same values for the same features, the same
    timestamp."""
    from serving.stores.features import OnlineFeatureReader, _as_float
    from serving.services import MEMBER_VIEW

    store = open_store(store_settings)
    reader = OnlineFeatureReader(store, MEMBER_VIEW)
    assert reader._sqlite_sql is not None  # the direct path is the one under test
    members = pd.read_parquet(store_settings.world_dir / "members.parquet")["member_id"]
    for member_id in [*members.astype(str), "no-such-member"]:
        key = reader._entity_key(join_keys=["member_id"],
                                 entity_values=[reader._value(string_val=member_id)])
        [(feast_ts, feast_values)] = reader._online.online_read(store.config, reader._view, [key])
        row = reader._read_sqlite(key)
        assert (row is None) == (feast_values is None)
        if row is not None:
            assert row.event_timestamp == feast_ts
            expected = {n: _as_float(feast_values[n]) for n in reader.feature_names}
            assert list(row.values) == list(expected)  # the same features, in view order
            # bit for bit (NaN included): the bytes decoder against protobuf's parser
            assert (np.array(list(row.values.values()), np.float64).tobytes()
                    == np.array(list(expected.values()), np.float64).tobytes())
            assert reader.read(member_id) == row
    assert reader.read("no-such-member") is None


def test_features_show_is_the_point_in_time_row(store_settings: StoreSettings) -> None:
    """`rewards features show MEMBER --as-of T --json` prints what a training set built at T
    holds for the member: the offline row stamped at T's midnight, named as in the service."""
    import json as jsonlib

    from typer.testing import CliRunner

    from training.cli.app import app

    offline = pd.read_parquet(store_settings.features_dir / "member_features.parquet")
    member = str(offline["member_id"].iloc[0])
    day = offline["event_timestamp"].sort_values().unique()[10]
    as_of = (pd.Timestamp(day) + pd.Timedelta(hours=15)).isoformat()
    result = CliRunner().invoke(app, ["features", "show", member, "--as-of", as_of, "--json",
                                      "--data-dir", str(store_settings.data)])
    assert result.exit_code == 0, result.output
    shown = jsonlib.loads(result.stdout)
    expected = offline[(offline["member_id"] == member) & (offline["event_timestamp"] == day)]
    store = open_store(store_settings)
    names = [r.split(":")[1] for r in service_feature_refs(store, "propensity_v1")
             if r.startswith("member_daily:")]
    assert list(shown["features"]) == names and shown["member_id"] == member
    np.testing.assert_allclose([shown["features"][n] for n in names],
                               expected[names].to_numpy(np.float64)[0], rtol=1e-6)
    unknown = CliRunner().invoke(app, ["features", "show", "nobody", "--as-of", as_of,
                                       "--data-dir", str(store_settings.data)])
    assert unknown.exit_code == 2 and "no features for member 'nobody'" in unknown.output
