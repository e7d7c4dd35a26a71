"""The catalog as data: vocabularies, item validation, item features, the Catalog the request
path reads, the SQLite catalog store, imports and the `rewards catalog` command, and the
exploration of rewards new to the model (its logged probabilities)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.contract.model_meta import ModelMetadata
from serving.contract.vocabulary import Vocabulary, value_error
from serving.decisioning.candidates import REWARD_DERIVED, reward_matrix
from serving.decisioning.catalog import (
    Catalog, ChallengeIn, RewardIn, challenge_item_features, model_cutoff_us, reward_item_features,
    validate_items, validate_vocabulary_rows,
)
from serving.decisioning.ranking import select_slate_exploring_new
from serving.decisioning.recommend import MemberFacts, Recommender
from serving.decisioning.rules import Rules, select_slate
from serving.stores.catalog import (
    CatalogRejected, CatalogStore, import_file, import_rows, open_catalog_store,
)

VOCAB = Vocabulary(tiers=("Bronze", "Silver", "Gold"), regions=("north",),
                   categories=("food", "travel"), reward_types=("discount", "voucher"),
                   challenge_kinds=("streak", "spend"))


def reward(reward_id: str = "R1", **fields: object) -> dict[str, object]:
    return {"reward_id": reward_id, "name": f"reward {reward_id}", "reward_type": "discount",
            "category": "food", "cost": 5.0, "min_tier": "Bronze", **fields}


def challenge(challenge_id: str = "C1", **fields: object) -> dict[str, object]:
    return {"challenge_id": challenge_id, "name": "streak", "kind": "streak", "unit": "days",
            "duration_days": 7, "min_target": 2.0, "max_target": 5.0, "target_step": 1.0,
            "points": 100, **fields}


@pytest.fixture
def store(tmp_path: Path) -> CatalogStore:
    s = open_catalog_store(f"sqlite:///{tmp_path / 'events.db'}")
    s.append_vocabulary([(k, v) for k, values in VOCAB.as_dict().items() for v in values])
    yield s
    s.close()


# -- vocabularies ------------------------------------------------------------------------------

def test_vocabulary_codes_are_positions_and_unknowns_are_minus_one() -> None:
    assert VOCAB.code("category", "travel") == 1 and VOCAB.code("tier", "Gold") == 2
    assert VOCAB.codes("category", ["food", "any", None, "shoes"]) == [0, -1, -1, -1]
    grown = VOCAB.appended("category", ["shoes", "food", "books"])
    assert grown.categories == ("food", "travel", "shoes", "books")  # append only, no repeats
    assert [grown.code("category", c) for c in VOCAB.categories] == [0, 1]  # codes kept
    assert VOCAB.code("category", "shoes") == -1  # the original is untouched (immutable)


@pytest.mark.parametrize(("kind", "value", "why"), [
    ("category", "any", "reserved"), ("category", "home garden", "1-32 characters"),
    ("tier", "A" * 17, "at most 16"), ("color", "red", "unknown vocabulary kind"),
    ("reward_type", "", "1-32 characters")])
def test_vocabulary_values_that_cannot_be_feature_names_are_refused(kind: str, value: str,
                                                                     why: str) -> None:
    assert why in value_error(kind, value)
    with pytest.raises(ValueError, match=why):
        Vocabulary.from_dict({kind: [value]})
    with pytest.raises(ValueError, match="repeated"):
        Vocabulary.from_dict({"tier": ["Gold", "Gold"]})


def test_tiers_and_regions_are_printable_text_as_members_carry_them() -> None:
    """Only categories, reward types and challenge kinds name features: tiers and regions may
    be any printable text (a tier at most 16 characters, like a tier_change event's)."""
    assert value_error("tier", "Gold Plus") is None
    assert value_error("region", "Île-de-France") is None
    assert "feature names" in value_error("reward_type", "Gold Plus")
    assert "printable" in value_error("region", "north\n")
    rows = [reward("R1", min_tier="Gold Plus")]
    _, errors = validate_items("rewards", rows, VOCAB.appended("tier", ["Gold Plus"]))
    assert errors == []


# -- item validation ---------------------------------------------------------------------------

def test_unknown_vocabulary_values_are_refused_naming_the_field() -> None:
    rows = [reward("R1"), reward("R2", category="shoes"), reward("R3", reward_type="cash"),
            reward("R4", min_tier="Diamond"), reward("R5", category="any")]
    items, errors = validate_items("rewards", rows, VOCAB)
    assert [i.reward_id for i in items] == ["R1", "R5"]  # 'any': every category
    assert [(e.row, e.field) for e in errors] == [(2, "category"), (3, "reward_type"),
                                                 (4, "min_tier")]
    assert "not in the catalog's category vocabulary [food, travel]" in errors[0].reason
    _, errors = validate_items("challenges", [challenge(kind="quiz")], VOCAB)
    assert [(e.row, e.field) for e in errors] == [(1, "kind")]


def test_item_shapes_are_checked_and_file_text_is_converted() -> None:
    rows = [reward("R1", cost="7.5"), reward("R2", cost=-1), reward("R3", cost=True),
            {**reward("R4"), "colour": "red"}, reward("bad id"), reward("R1")]
    items, errors = validate_items("rewards", rows, VOCAB)
    assert items[0].cost == 7.5  # a CSV cell
    assert [(e.row, e.field) for e in errors] == [
        (2, "cost"), (3, "cost"), (4, "colour"), (5, "reward_id"), (6, "reward_id")]
    assert "repeats row 1" in errors[-1].reason
    rows = [challenge("C1", duration_days="14"), challenge("C2", duration_days="7.5"),
            challenge("C3", min_target=5.0, max_target=2.0),
            challenge("C4", min_target=0.0, max_target=1e6, target_step=1.0),
            challenge("C5", created_at="20240131")]
    items, errors = validate_items("challenges", rows, VOCAB)
    assert items[0].duration_days == 14
    assert items[-1].created_at == datetime(2024, 1, 31, tzinfo=UTC)  # a date: UTC midnight
    assert [(e.row, e.field) for e in errors] == [(2, "duration_days"), (3, "max_target"),
                                                 (4, "target_step")]


def test_vocabulary_rows() -> None:
    pairs, errors = validate_vocabulary_rows([
        {"kind": "category", "value": "shoes"}, {"kind": "colour", "value": "red"},
        {"kind": "tier", "value": "x\ty"}, {"kind": "tier", "value": "Gold", "code": 3}])
    assert pairs == [("category", "shoes")]
    assert [(e.row, e.field) for e in errors] == [(2, "kind"), (3, "value"), (4, "code")]


# -- item features and the Catalog -------------------------------------------------------------

def test_item_features_are_vocabulary_codes_as_float32() -> None:
    rewards = pd.DataFrame([reward("R1"), reward("R2", reward_type="voucher",
                                                  category="any", min_tier="Gold", cost=2)])
    f = reward_item_features(rewards, VOCAB)
    assert list(f.columns) == ["reward_id", "reward_type_code", "reward_category_code",
                               "reward_cost", "reward_min_tier_rank"]
    assert f.drop(columns="reward_id").dtypes.eq(np.float32).all()
    assert f["reward_type_code"].tolist() == [0.0, 1.0]
    assert f["reward_category_code"].tolist() == [0.0, -1.0]  # 'any'
    assert f["reward_min_tier_rank"].tolist() == [0.0, 2.0]
    stamped = rewards.assign(event_timestamp=pd.Timestamp("2026-01-01", tz="UTC"))
    assert "event_timestamp" in reward_item_features(stamped, VOCAB)  # training's tables
    c = challenge_item_features(pd.DataFrame([challenge(kind="spend")]), VOCAB)
    assert c["challenge_kind_code"].tolist() == [1.0] and c["challenge_points"].tolist() == [100]


def test_catalog_build_leaves_retired_items_out_and_lays_out_targets() -> None:
    rewards = pd.DataFrame([reward("R1"), reward("R2", status="retired"),
                            reward("R3", min_tier="Gold")])
    challenges = pd.DataFrame([challenge("C1"), challenge("C2", status="retired")])
    cat = Catalog.build(rewards, challenges, vocabulary=VOCAB, version=7)
    assert cat.rewards["reward_id"].tolist() == ["R1", "R3"] and cat.version == 7
    assert cat.rewards["min_tier_rank"].tolist() == [0, 2]
    assert cat.targets["target"].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert cat.reward_cols["reward_cost"].dtype == np.float32
    empty = Catalog.build(rewards.iloc[:0], challenges.iloc[:0], vocabulary=VOCAB)
    assert len(empty.rewards) == 0 and empty.target_layout.shape == (0, 0)  # type: ignore[attr-defined]


def test_new_rewards_are_those_created_after_the_models_data() -> None:
    assert model_cutoff_us({"end": "2026-04-01"}, "2026-12-04T13:43:42+00:00") == \
        int(pd.Timestamp("2026-04-01", tz="UTC").value // 1000)
    assert model_cutoff_us({}, "2026-12-04T13:43:42+00:00") == \
        int(pd.Timestamp("2026-12-04T13:43:42Z").value // 1000)
    assert model_cutoff_us({}, "") is None
    april = int(pd.Timestamp("2026-04-01", tz="UTC").value // 1000)
    rewards = pd.DataFrame([reward("OLD", created_us=april - 1), reward("NEW", created_us=april)])
    cat = Catalog.build(rewards, pd.DataFrame([challenge()]), vocabulary=VOCAB)
    assert cat.new_rewards(april).tolist() == [False, True]
    assert cat.new_rewards(None).tolist() == [False, False]


def test_vocabulary_values_without_member_features_read_as_no_history() -> None:
    """A reward type appended after the features were defined has no redeem_rate_<type>
    member feature yet: its pick is the missing value, not an error."""
    grown = VOCAB.appended("reward_type", ["cashback"])
    cols = {"redeem_rate_discount": np.float32(0.4), "redeem_rate_voucher": np.float32(0.2),
            "offers_discount": np.float32(3.0), "offers_voucher": np.float32(1.0),
            "share_food_90d": np.float32(0.5), "share_travel_90d": np.float32(0.1),
            "tier_rank": np.float32(1.0),
            "reward_type_code": np.array([0.0, 2.0], np.float32),
            "reward_category_code": np.array([0.0, 1.0], np.float32),
            "reward_cost": np.array([5.0, 2.0], np.float32),
            "reward_min_tier_rank": np.array([0.0, 0.0], np.float32)}
    X = reward_matrix(cols, np.ones(2), [], grown)
    derived = dict(zip(REWARD_DERIVED, X.T, strict=True))
    assert derived["type_redeem_rate"].tolist() == pytest.approx([0.4, -1.0])
    assert derived["type_offers"].tolist() == [3.0, 0.0]


# -- the store ---------------------------------------------------------------------------------

def test_store_round_trip_versions_and_retire(store: CatalogStore) -> None:
    v0 = store.version()
    assert store.vocabulary() == VOCAB
    assert store.append_vocabulary([("category", "food")]) == [] and store.version() == v0
    result = store.upsert("rewards", [RewardIn(**reward("R1")), RewardIn(**reward("R2"))])
    assert (result.created, result.updated, result.unchanged) == (2, 0, 0)
    v1 = store.version()
    assert v1 > v0
    first = store.get("rewards", "R1")
    again = store.upsert("rewards", [RewardIn(**reward("R1"))])  # identical: nothing to do
    assert again.unchanged == 1 and store.version() == v1
    changed = store.upsert("rewards", [RewardIn(**reward("R1", cost=9.0))])
    assert changed.updated == 1 and store.version() > v1
    after = store.get("rewards", "R1")
    assert after.cost == 9.0 and after.created_at == first.created_at  # created kept
    assert after.updated_at > first.updated_at
    assert store.retire("rewards", "R2").status == "retired"
    v2 = store.version()
    assert store.retire("rewards", "R2").status == "retired" and store.version() == v2
    assert store.retire("rewards", "nope") is None
    assert [r.reward_id for r in store.records("rewards")] == ["R1"]
    assert [r.reward_id for r in store.records("rewards", include_retired=True)] == ["R1", "R2"]
    store.upsert("challenges", [ChallengeIn(**challenge())])
    cat = store.catalog()
    assert cat.version == store.version() and cat.vocabulary == VOCAB
    assert cat.rewards["reward_id"].tolist() == ["R1"] and len(cat.targets) == 4


def test_store_refuses_unknown_values_and_writes_nothing(store: CatalogStore) -> None:
    v = store.version()
    with pytest.raises(CatalogRejected) as caught:
        store.upsert("rewards", [RewardIn(**reward("R1")), RewardIn(**reward("R2",
                                                                             category="shoes"))])
    assert [(e.row, e.field) for e in caught.value.errors] == [(2, "category")]
    assert store.records("rewards") == [] and store.version() == v
    store.append_vocabulary([("category", "shoes")])
    assert store.vocabulary().code("category", "shoes") == 2  # the next position
    assert store.upsert("rewards", [RewardIn(**reward("R2", category="shoes"))]).created == 1


def test_file_imports_are_all_or_nothing(store: CatalogStore, tmp_path: Path) -> None:
    good = tmp_path / "rewards.csv"
    pd.DataFrame([reward("R1"), reward("R2", cost=3)]).to_csv(good, index=False)
    result = import_file(store, good)
    assert result.kind == "rewards" and result.created == 2 and not result.errors
    bad = tmp_path / "more.csv"
    pd.DataFrame([reward("R3"), reward("R4", category="shoes", cost="x")]).to_csv(bad,
                                                                                  index=False)
    result = import_file(store, bad)
    assert {(e.row, e.field) for e in result.errors} == {(2, "category"), (2, "cost")}
    assert [r.reward_id for r in store.records("rewards")] == ["R1", "R2"]  # R3 not applied
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"category": ["shoes", "food"], "tier": ["Platinum"]}))
    assert import_file(store, vocab).created == 2
    assert store.vocabulary().tiers == ("Bronze", "Silver", "Gold", "Platinum")
    parquet = tmp_path / "challenges.parquet"
    pd.DataFrame([challenge("C1")]).to_parquet(parquet)
    assert import_file(store, parquet).created == 1
    with pytest.raises(ValueError, match="unknown column"):
        (tmp_path / "typo.csv").write_text("reward_id,name,reward_typ\nR9,x,discount\n")
        import_file(store, tmp_path / "typo.csv")


def test_the_simulator_imports_its_catalog_like_a_program(tiny_world_dir: Path,
                                                          tmp_path: Path) -> None:
    """A simulated world's program/ files go through `rewards catalog import`: vocabulary,
    then rewards and challenges; importing them twice changes nothing."""
    from training.simulate.generate.catalog import VOCABULARY

    s = open_catalog_store(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        for _ in range(2):
            for name in ("vocabulary.json", "rewards.parquet", "challenges.parquet"):
                assert not import_file(s, tiny_world_dir / "program" / name).errors
        version = s.version()
        cat = s.catalog()
        assert cat.vocabulary == VOCABULARY and len(cat.rewards) == 35
        assert import_file(s, tiny_world_dir / "program" / "rewards.parquet").created == 0
        assert s.version() == version  # an identical import is no write
        # created the day before the history: old news to any model trained since
        assert cat.new_rewards(int(pd.Timestamp("2026-01-01", tz="UTC").value // 1000)).sum() == 0
        assert import_rows(s, "rewards", [reward("X1", category="food")]).errors  # not a category
    finally:
        s.close()


def test_the_catalog_command(tmp_path: Path) -> None:
    import typer

    from training.cli.program import catalog_app

    app = typer.Typer()  # as training/cli/app.py registers it
    app.add_typer(catalog_app, name="catalog")
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path / "data")]
    listed = runner.invoke(app, ["catalog", "list", *args])
    assert listed.exit_code == 2 and "rewards catalog import" in listed.output
    vocab = tmp_path / "vocab.csv"
    vocab.write_text("kind,value\n" + "".join(f"{k},{v}\n" for k, values in VOCAB.as_dict().items()
                                              for v in values))
    assert runner.invoke(app, ["catalog", "import", str(vocab), *args]).exit_code == 0
    bad = tmp_path / "rewards.csv"
    pd.DataFrame([reward("R1"), reward("R2", category="shoes"), reward("R3", cost=-2)]
                 ).to_csv(bad, index=False)
    rejects = tmp_path / "rejects.csv"
    out = runner.invoke(app, ["catalog", "import", str(bad), "--rejects", str(rejects), *args])
    assert out.exit_code == 2
    lines = out.output.strip().splitlines()
    assert lines[0].startswith("row 2: category: unknown category 'shoes'")
    assert lines[1].startswith("row 3: cost:") and "nothing imported" in lines[-1]
    assert pd.read_csv(rejects)["row"].tolist() == [2, 3]
    good = tmp_path / "good.csv"
    pd.DataFrame([reward("R1"), reward("R2")]).to_csv(good, index=False)
    done = runner.invoke(app, ["catalog", "import", str(good), "--kind", "rewards", *args])
    assert done.exit_code == 0 and json.loads(done.stdout)["created"] == 2
    assert runner.invoke(app, ["catalog", "retire", "R2", *args]).exit_code == 0
    missing = runner.invoke(app, ["catalog", "retire", "R9", *args])
    assert missing.exit_code == 2 and "no reward or challenge 'R9'" in missing.output
    shown = json.loads(runner.invoke(app, ["catalog", "list", "--json", "--all", *args]).stdout)
    assert [(r["reward_id"], r["status"]) for r in shown["rewards"]] == [
        ("R1", "active"), ("R2", "retired")]
    assert shown["vocabularies"]["category"] == ["food", "travel"]
    only = json.loads(runner.invoke(app, ["catalog", "list", "--kind", "rewards", "--json",
                                          *args]).stdout)
    assert [r["reward_id"] for r in only["rewards"]] == ["R1"] and "challenges" not in only


# -- exploring new rewards ---------------------------------------------------------------------

def test_without_new_rewards_the_slate_is_select_slates_draws_included() -> None:
    value, category = np.array([3.0, 2.0, 1.0, 0.5]), np.array([0, 1, 2, 3])
    for new, eps_new in ((np.zeros(4, bool), 0.5), (np.array([0, 0, 1, 0], bool), 0.0)):
        a, b = np.random.default_rng(3), np.random.default_rng(3)
        got, explored = select_slate_exploring_new(value, category, 3, 1, 0.2, a, new, eps_new)
        want = select_slate(value, category, 3, 1, 0.2, b)
        assert not explored and got.index.tolist() == want.index.tolist()
        assert got.probability.tolist() == want.probability.tolist()
        assert a.random() == b.random()  # the same draws were consumed


def test_new_reward_exploration_logs_the_true_probabilities() -> None:
    """Over many draws, the last slot shows each item as often as its logged probability
    says, given the slots before it; those probabilities sum to 1 over the slot's candidates;
    and the explored pick is always a new item."""
    value = np.array([4.0, 3.0, 2.0, 1.0, 0.5])
    category = np.array([0, 1, 1, 2, 3])  # cap 1: items 1 and 2 exclude each other
    new = np.array([False, False, True, False, True])
    eps, eps_new, n = 0.2, 0.3, 30_000
    rng = np.random.default_rng(7)
    counts: dict[tuple[int, ...], dict[int, int]] = {}
    logged: dict[tuple[int, ...], dict[int, float]] = {}
    for _ in range(n):
        slate, explored = select_slate_exploring_new(value, category, 2, 1, eps, rng, new,
                                                     eps_new)
        head, last = tuple(slate.index[:-1].tolist()), int(slate.index[-1])
        assert not explored or new[last]
        counts.setdefault(head, {}).setdefault(last, 0)
        counts[head][last] += 1
        logged.setdefault(head, {})[last] = float(slate.probability[-1])
    for head, seen in counts.items():
        total = sum(seen.values())
        if total < 2_000:
            continue
        assert sum(logged[head].values()) == pytest.approx(1.0)  # every candidate seen
        for item, c in seen.items():
            assert c / total == pytest.approx(logged[head][item], abs=0.02)
    # the greedy head (item 0) leaves 1, 2, 3, 4 for the last slot; 1 is the best, 2 and 4 new
    p = logged[(0,)]
    assert p[1] == pytest.approx((1 - eps_new) * ((1 - eps) + eps / 4))
    assert p[2] == pytest.approx((1 - eps_new) * eps / 4 + eps_new / 2)
    assert p[3] == pytest.approx((1 - eps_new) * eps / 4)


class _CostModel:
    """A stand-in reward model: offers convert more the cheaper they are, the no-offer row
    least; its metadata says its data ended on 2026-04-01."""

    def __init__(self, names: list[str]) -> None:
        self.meta = ModelMetadata(
            name="reward", version="1", feature_service="propensity_v1", service_features=names,
            derived_features=list(REWARD_DERIVED), classes=["none", "converted", "redeemed"],
            data_window={"end": "2026-04-01"})

    def predict(self, X: np.ndarray) -> np.ndarray:
        cost = X[:, self.meta.service_features.index("reward_cost")]
        convert = np.where(cost < 0, 0.05, 0.5 - cost / 100).astype(np.float32)
        return np.stack([1 - convert, convert / 2, convert / 2], axis=1)


def test_the_recommender_explores_new_rewards_and_swaps_catalogs() -> None:
    april = int(pd.Timestamp("2026-04-01", tz="UTC").value // 1000)
    rows = [reward(f"R{i}", category=c, cost=float(i), created_us=april - 1)
            for i, c in enumerate(["food", "travel"], start=1)]
    challenges = pd.DataFrame([challenge()])
    old = Catalog.build(pd.DataFrame(rows), challenges, vocabulary=VOCAB, version=1)
    rules = Rules.model_validate({"exploration": {"epsilon": 0.0}})
    # no no-offer draws nor exploration floor: this test is about new rewards alone
    rec = Recommender(old, rules, seed=1, new_reward_epsilon=1.0, no_offer_share=0.0,
                      exploration_floor=0.0)
    model = _CostModel(["tier_rank", "reward_type_code", "reward_category_code", "reward_cost",
                        "reward_min_tier_rank"])
    facts = MemberFacts("M-1", {"tier_rank": 0.0}, True)
    now = datetime(2026, 5, 1, tzinfo=UTC)

    def ask() -> list[tuple[str, float, str]]:
        d = rec.recommend(facts, model, None, k_rewards=2, k_challenges=0, channel="app",
                          exclude=set(), now=now, cost_multiplier=1.0)
        return [(r.reward_id, r.shown_probability, r.reason) for r in d.response.rewards]

    assert [r[:2] for r in ask()] == [("R1", 1.0), ("R2", 1.0)]  # nothing new: greedy
    rows.append(reward("NEW", category="travel", cost=50.0, created_us=april + 1))
    rec.set_catalog(Catalog.build(pd.DataFrame(rows), challenges, vocabulary=VOCAB, version=2))
    assert rec.catalog.version == 2
    first, last = ask()
    # the expensive new reward would never win; epsilon 1 puts it in the last slot
    assert first[:2] == ("R1", 1.0) and last[0] == "NEW"
    assert last[1] == pytest.approx(1.0) and "new to the model" in last[2]
    assert rec.new_rewards(rec.catalog, model).tolist() == [False, False, True]
    assert not rec.new_rewards(rec.catalog, None).any()  # no model: nothing is "new"
    d = rec.recommend(facts, None, None, k_rewards=2, k_challenges=0, channel="app",
                      exclude=set(), now=now, cost_multiplier=1.0)
    assert all("new to the model" not in r.reason for r in d.response.rewards)
    empty = Catalog.build(pd.DataFrame(rows).iloc[:0], challenges.iloc[:0], vocabulary=VOCAB)
    rec.set_catalog(empty)
    d = rec.recommend(facts, model, None, k_rewards=2, k_challenges=2, channel="app",
                      exclude=set(), now=now, cost_multiplier=1.0)
    assert d.response.rewards == [] and d.response.challenges == []
