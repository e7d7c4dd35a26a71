"""Exploration and the decision log's probabilities (issue 21, points 1 and 4).

Every probability the service logs must be the true probability of what it served: off-policy
evaluation and the retrained models weight by them. Each test draws many decisions from a
seeded generator and checks that the empirical frequencies match the logged probabilities
(chi-square), that the probabilities of a slot's possible actions sum to 1, and the rules
themselves: the no-offer share, uniform exploration in cold start, the floor once a model
exists, the neighbours of a flow-zone target.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare

from serving.contract.events import DecisionRecord
from serving.contract.model_meta import ModelMetadata
from serving.contract.vocabulary import MISSING_RATE, NEVER_DAYS, Vocabulary
from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
from serving.decisioning.catalog import Catalog
from serving.decisioning.ranking import (
    explore_targets, mixture_slot_probabilities, select_slate_exploring_new,
    slate_probabilities, target_layout,
    target_neighbours, uniform_slate,
    uniform_targets,
)
from serving.decisioning.recommend import (
    COLD_START_REASON, FAMILIES, NO_CHALLENGES_REASON, NO_REWARDS_REASON, TRIAL_SUFFIX,
    UNKNOWN_TIER_REASON,
    Decision, MemberFacts, Recommender,
)
from serving.decisioning.rules import Rules, select_slate
from serving.stores.events.schema import feature_json, loads

VOCAB = Vocabulary(tiers=("Bronze", "Silver", "Gold"), regions=("north",),
                   categories=("food", "travel", "home"), reward_types=("discount", "voucher"),
                   challenge_kinds=("streak", "spend"))
NOW = datetime(2026, 5, 1, tzinfo=UTC)
#: a frequency test fails when its p-value is below this: seeded draws make it deterministic,
#: and a wrong probability (off by a few percent over thousands of draws) falls far below it
P_MIN = 1e-3


def assert_frequencies_match(observed: Counter[Hashable], logged: Mapping[Hashable, float],
                             total: int | None = None) -> None:
    """Observed counts agree with ``logged`` probabilities (chi-square); the probabilities of
    every action the slot can take sum to 1."""
    assert sum(logged.values()) == pytest.approx(1.0, abs=1e-9)
    assert set(observed) <= set(logged)
    n = sum(observed.values()) if total is None else total
    keys = list(logged)
    counts = np.array([observed.get(k, 0) for k in keys], dtype=np.float64)
    expected = np.array([logged[k] * n for k in keys])
    if len(keys) == 1:  # a certain action: nothing to test but that it always happened
        assert counts[0] == n
        return
    assert chisquare(counts, expected).pvalue > P_MIN, (dict(zip(keys, counts)), logged)


def logged_once(pairs: list[tuple[Hashable, float]]) -> dict[Hashable, float]:
    """{action: its logged probability}; an action's probability is the same in every draw
    of the same state (a draw may not log another probability for the same choice)."""
    out: dict[Hashable, float] = {}
    for key, p in pairs:
        assert out.setdefault(key, p) == pytest.approx(p, abs=1e-12)
    return out


# -- pure functions ----------------------------------------------------------------------------

def test_the_floor_raises_each_slots_epsilon_and_the_logged_probabilities_stay_exact() -> None:
    value = np.arange(10, 0, -1, dtype=np.float64)  # item 0 is the best
    category = np.arange(10)
    floor = 0.02
    rng = np.random.default_rng(1)
    slot0: Counter[int] = Counter()
    pairs: list[tuple[Hashable, float]] = []
    slot1_after_best: Counter[int] = Counter()
    pairs1: list[tuple[Hashable, float]] = []
    draws = 20_000
    for _ in range(draws):
        s = select_slate(value, category, 3, 1, 0.0, rng, floor)
        first, second = int(s.index[0]), int(s.index[1])
        slot0[first] += 1
        pairs.append((first, float(s.probability[0])))
        if first == 0:
            slot1_after_best[second] += 1
            pairs1.append((second, float(s.probability[1])))
    logged = logged_once(pairs)
    # epsilon 0 raised to 10 x 0.02: the best keeps 0.8 + 0.02, every other item exactly 0.02
    assert logged[0] == pytest.approx(0.82) and min(logged.values()) == pytest.approx(floor)
    assert_frequencies_match(slot0, logged)
    # the next slot, given the first: 9 candidates, e = 0.18, each at least the floor
    logged1 = logged_once(pairs1)
    assert logged1[1] == pytest.approx(0.82 + 0.02)
    assert min(logged1.values()) == pytest.approx(floor)
    assert_frequencies_match(slot1_after_best, logged1)


def test_a_floor_below_epsilon_changes_nothing_draws_included() -> None:
    value = np.random.default_rng(0).normal(size=12)
    category = np.arange(12) % 4
    for seed in range(50):
        a = select_slate(value, category, 3, 1, 0.3, np.random.default_rng(seed))
        b = select_slate(value, category, 3, 1, 0.3, np.random.default_rng(seed), 0.001)
        assert a.index.tolist() == b.index.tolist()
        np.testing.assert_allclose(a.probability, b.probability, rtol=0, atol=0)


def test_the_new_item_slot_keeps_the_floor_for_items_that_are_not_new() -> None:
    value = np.arange(10, 0, -1, dtype=np.float64)
    new = np.zeros(10, dtype=bool)
    new[9] = True
    floor, new_epsilon = 0.02, 0.5
    rng = np.random.default_rng(2)
    counts: Counter[int] = Counter()
    pairs: list[tuple[Hashable, float]] = []
    for _ in range(20_000):
        s, _explored = select_slate_exploring_new(value, np.arange(10), 1, 1, 0.0, rng, new,
                                                  new_epsilon, floor)
        counts[int(s.index[0])] += 1
        pairs.append((int(s.index[0]), float(s.probability[0])))
    logged = logged_once(pairs)
    # half the slot is left to the epsilon-greedy choice: e = 10 x 0.02 / 0.5 = 0.4, so an
    # item that is neither new nor best gets 0.5 x 0.4 / 10 = the floor exactly
    assert logged[5] == pytest.approx(floor)
    assert logged[9] == pytest.approx(0.5 * 0.04 + 0.5)
    assert min(logged.values()) >= floor - 1e-12
    assert_frequencies_match(counts, logged)


def test_uniform_slates_are_uniform_without_replacement() -> None:
    rng = np.random.default_rng(3)
    slot0: Counter[int] = Counter()
    slot1: Counter[int] = Counter()
    for _ in range(14_000):
        s = uniform_slate(7, 3, rng)
        assert len(set(s.index.tolist())) == 3
        assert s.probability.tolist() == [1 / 7, 1 / 6, 1 / 5]
        slot0[int(s.index[0])] += 1
        slot1[int(s.index[1])] += 1
    uniform = dict.fromkeys(range(7), 1 / 7)
    assert_frequencies_match(slot0, uniform)
    assert_frequencies_match(slot1, uniform)  # marginally uniform too
    assert uniform_slate(2, 5, rng).index.size == 2  # never more than there are


def grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three templates: 0 with targets 2..5, 1 with 10..50 by 10 (listed out of order), 2 with
    a single target. Returns (template per row, target per row, layout)."""
    template = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
    target = np.array([2.0, 3.0, 4.0, 5.0, 30.0, 10.0, 50.0, 20.0, 40.0, 7.0])
    return template, target, target_layout(template, target)


def test_uniform_targets_are_uniform_within_each_template() -> None:
    template, target, layout = grid()
    rng = np.random.default_rng(4)
    seen: dict[int, Counter[float]] = {0: Counter(), 1: Counter(), 2: Counter()}
    for _ in range(6_000):
        rows, p = uniform_targets(np.array([0, 1, 2]), layout, len(target), rng)
        assert p.tolist() == [1 / 4, 1 / 5, 1.0]
        assert template[rows].tolist() == [0, 1, 2]
        for t, row in enumerate(rows.tolist()):
            seen[t][float(target[row])] += 1
    for t in range(3):
        targets = target[template == t].tolist()
        assert_frequencies_match(seen[t], dict.fromkeys(targets, 1 / len(targets)))


def test_targets_move_to_their_neighbours_with_the_logged_probability() -> None:
    template, target, layout = grid()
    lower, higher = target_neighbours(layout, len(target))
    g = len(target)
    # 30 lies between 20 (row 7) and 40 (row 8); 10 is the lowest, 50 the highest, 7 alone
    assert (lower[4], higher[4]) == (7, 8) and (lower[5], higher[5]) == (g, 7)
    assert (lower[6], higher[6]) == (8, g) and (lower[9], higher[9]) == (g, g)
    share = 0.1
    picks = [1, 0, 6, 7, 9]  # 3 (middle), 2 (lowest), 50 (highest), 20, the single 7
    rng = np.random.default_rng(5)
    counts = [Counter() for _ in picks]
    pairs: list[list[tuple[Hashable, float]]] = [[] for _ in picks]
    for _ in range(10_000):
        served, p = explore_targets(picks, lower, higher, g, share, rng)
        assert (template[served] == template[picks]).all()  # never another template
        for i, (row, q) in enumerate(zip(served, p, strict=True)):
            counts[i][float(target[row])] += 1
            pairs[i].append((float(target[row]), q))
    expected = [{2.0: 0.1, 3.0: 0.8, 4.0: 0.1}, {2.0: 0.9, 3.0: 0.1},
                {40.0: 0.1, 50.0: 0.9}, {10.0: 0.1, 20.0: 0.8, 30.0: 0.1}, {7.0: 1.0}]
    for i, want in enumerate(expected):
        logged = logged_once(pairs[i])
        assert logged == pytest.approx(want)
        assert_frequencies_match(counts[i], logged)
    # no share: the picks, with certainty, and no random draw
    state = rng.bit_generator.state
    served, p = explore_targets(picks, lower, higher, g, 0.0, rng)
    assert served == picks and p == [1.0] * len(picks)
    assert rng.bit_generator.state == state


def test_feature_values_are_stored_to_six_significant_digits() -> None:
    text = feature_json({"b": 1234.56789, "a": 0.000123456789, "c": float("nan"), "d": 3.0})
    assert text == '{"a":0.000123457,"b":1234.57,"c":null,"d":3.0}'
    assert feature_json(None) is None and loads(text)["b"] == 1234.57


# -- the recommender -----------------------------------------------------------------------------

def reward(reward_id: str, category: str, cost: float, min_tier: str = "Bronze"
           ) -> dict[str, object]:
    return {"reward_id": reward_id, "name": f"reward {reward_id}", "reward_type": "discount",
            "category": category, "cost": cost, "min_tier": min_tier}


def challenge(challenge_id: str, kind: str, lo: float, hi: float, step: float
              ) -> dict[str, object]:
    return {"challenge_id": challenge_id, "name": challenge_id, "kind": kind, "unit": "u",
            "duration_days": 7, "min_target": lo, "max_target": hi, "target_step": step,
            "points": 100}


def catalog() -> Catalog:
    """Six rewards for a Bronze member (one more for Gold only), two food rewards to show
    that cold start ignores the diversity cap; challenge C1 (targets 2..5) and C2 (10..50)."""
    rewards = pd.DataFrame([reward("R1", "food", 1.0), reward("R2", "food", 2.0),
                            reward("R3", "travel", 3.0), reward("R4", "travel", 4.0),
                            reward("R5", "home", 5.0), reward("R6", "home", 6.0),
                            reward("GOLD", "home", 0.5, min_tier="Gold")])
    challenges = pd.DataFrame([challenge("C1", "streak", 2, 5, 1),
                               challenge("C2", "spend", 10, 50, 10)])
    return Catalog.build(rewards, challenges, vocabulary=VOCAB, version=1)


def meta(name: str, features: list[str], derived: tuple[str, ...], classes: list[str]
         ) -> ModelMetadata:
    return ModelMetadata(name=name, version="7", feature_service=f"{name}_v1",
                         service_features=features, derived_features=list(derived),
                         classes=classes, data_window={"end": "2026-01-01"})


class RewardModel:
    """Conversion falls with cost: the cheapest eligible reward is the best."""

    features = ["tier_rank", "avg_basket_90d", "visits_30d", "reward_cost"]

    def __init__(self, broken: bool = False) -> None:
        self.meta = meta("reward", self.features, REWARD_DERIVED,
                         ["none", "converted", "redeemed"])
        self.broken = broken

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.broken:
            raise RuntimeError("corrupt session")
        cost = X[:, self.meta.service_features.index("reward_cost")]
        convert = np.where(cost < 0, 0.05, 0.6 - cost / 20).astype(np.float32)
        return np.stack([1 - convert, convert / 2, convert / 2], axis=1)


class DifficultyModel:
    """Completion falls with the target's place in its range: 0.95 at the lowest, 0.15 at the
    highest. Flow zone 0.7: C1's pick is 3 (0.683), C2's is 20 (0.75)."""

    features = ["tier_rank", "visits_30d", "challenge_min_target", "challenge_max_target"]

    def __init__(self) -> None:
        self.meta = meta("difficulty", self.features, DIFFICULTY_DERIVED, ["open", "completed"])

    def predict(self, X: np.ndarray) -> np.ndarray:
        ratio = X[:, len(self.meta.service_features) + DIFFICULTY_DERIVED.index("target_ratio")]
        p = (0.95 - 0.8 * ratio).astype(np.float32)
        return np.stack([1 - p, p], axis=1)


MEMBER = {"tier_rank": 0.0, "avg_basket_90d": 42.123456789, "visits_30d": 3.0,
          "not_a_model_input": 1.0}


def recommender(*, epsilon: float = 0.1, no_offer: float = 0.0, floor: float = 0.0,
                targets: float = 0.0, seed: int = 0) -> Recommender:
    rules = Rules.model_validate({"exploration": {"epsilon": epsilon}})
    return Recommender(catalog(), rules, seed=seed, new_reward_epsilon=0.0,
                       no_offer_share=no_offer, exploration_floor=floor,
                       target_exploration=targets)


def decide(rec: Recommender, reward_model: object = None, difficulty_model: object = None, *,
           k_rewards: int = 3, k_challenges: int = 2, member: str = "M-1",
           features: dict[str, float] | None = MEMBER, consent: bool = True,
           **kwargs: object) -> Decision:
    return rec.recommend(MemberFacts(member, features, consent), reward_model,  # type: ignore[arg-type]
                         difficulty_model, k_rewards=k_rewards,  # type: ignore[arg-type]
                         k_challenges=k_challenges, channel="app", exclude=set(), now=NOW,
                         cost_multiplier=1.0, **kwargs)  # type: ignore[arg-type]


def items_of(d: Decision, kind: str) -> list[dict[str, object]]:
    return [i.model_dump() for i in d.record.items if i.item_type == kind]


def test_a_share_of_decisions_offers_no_reward_and_every_one_logs_it() -> None:
    share, draws = 0.2, 4_000
    rec = recommender(no_offer=share, epsilon=0.3, seed=6)
    models = (RewardModel(), DifficultyModel())
    withheld = 0
    slot0: Counter[str] = Counter()
    pairs: list[tuple[Hashable, float]] = []
    slot1: Counter[str] = Counter()
    pairs1: list[tuple[Hashable, float]] = []
    for _ in range(draws):
        d = decide(rec, *models)
        record = d.record
        assert record.no_offer_probability == share and record.policy == "model"
        assert record.flags["no_offer"] == (not d.response.rewards)
        assert d.response.challenges  # challenges are served either way
        if record.flags["no_offer"]:
            withheld += 1
            assert items_of(d, "reward") == []
            slot0["no offer"] += 1
            pairs.append(("no offer", share))
        else:
            first, second = items_of(d, "reward")[:2]
            slot0[first["item_id"]] += 1
            pairs.append((first["item_id"], first["shown_probability"]))
            # the response shows the logged probability (rounded)
            assert d.response.rewards[0].shown_probability == round(
                first["shown_probability"], 6)
            if first["item_id"] == "R1":  # the next slot, given the first: no share in it
                slot1[second["item_id"]] += 1
                pairs1.append((second["item_id"], second["shown_probability"]))
    logged = logged_once(pairs)
    # slot 0 over every action it can take, the no-offer draw included: sums to 1
    assert logged["R1"] == pytest.approx((1 - share) * (0.7 + 0.3 / 6))
    assert_frequencies_match(slot0, logged)
    logged1 = logged_once(pairs1)  # given R1 (food), the cap leaves R3-R6: R3 is the best
    assert logged1["R3"] == pytest.approx(0.7 + 0.3 / 4)
    assert_frequencies_match(slot1, logged1)
    assert abs(withheld / draws - share) < 4 * np.sqrt(share * (1 - share) / draws)


def test_no_offer_is_not_drawn_inside_experiments_or_without_rewards_asked() -> None:
    rec = recommender(no_offer=0.5, seed=7)
    for _ in range(200):
        inside = decide(rec, RewardModel(), DifficultyModel(), arm="random", experiment_id="e1")
        assert inside.record.no_offer_probability is None
        assert not inside.record.flags["no_offer"] and inside.response.rewards
        # the random arm logs its uniform draw: 1 / eligible rewards left in each slot
        probs = [i["shown_probability"] for i in items_of(inside, "reward")]
        assert probs == pytest.approx([1 / 6, 1 / 5, 1 / 4])
        # a holdout withholds every reward with probability 1 given its arm: logged as such,
        # so training reads it as a control row
        held = decide(rec, RewardModel(), DifficultyModel(), arm="holdout", experiment_id="e1")
        assert held.record.no_offer_probability == 1.0 and held.record.flags["no_offer"]
        assert not held.response.rewards and not held.response.challenges
        assert held.record.items == []
        held_none_asked = decide(rec, RewardModel(), DifficultyModel(), k_rewards=0,
                                 arm="holdout", experiment_id="e1")
        assert held_none_asked.record.no_offer_probability is None
        assert not held_none_asked.record.flags["no_offer"]
        none_asked = decide(rec, RewardModel(), DifficultyModel(), k_rewards=0)
        assert none_asked.record.no_offer_probability is None
        assert not none_asked.record.flags["no_offer"]
    # a share of 0 logs 0 and draws nothing: the random stream is the one before the share
    a, b = recommender(seed=8), Recommender(catalog(), Rules.model_validate(
        {"exploration": {"epsilon": 0.1}}), seed=8, new_reward_epsilon=0.0, no_offer_share=0.0,
        exploration_floor=0.0, target_exploration=0.0)
    for _ in range(50):
        x, y = decide(a, RewardModel(), DifficultyModel()), decide(b, RewardModel(),
                                                                   DifficultyModel())
        assert x.record.no_offer_probability == 0.0
        assert [i.item_id for i in x.record.items] == [i.item_id for i in y.record.items]


def test_cold_start_explores_rewards_uniformly_over_the_eligible_ones() -> None:
    share = 0.1
    rec = recommender(no_offer=share, seed=9)
    eligible = ["R1", "R2", "R3", "R4", "R5", "R6"]  # GOLD is above a Bronze member's tier
    slot0: Counter[str] = Counter()
    pairs: list[tuple[Hashable, float]] = []
    after_r1: Counter[str] = Counter()  # the second slot, given R1 in the first
    pairs_after_r1: list[tuple[Hashable, float]] = []
    same_category = 0
    for _ in range(6_000):
        d = decide(rec, no_champion=FAMILIES)
        r = d.response
        assert r.policy == d.record.policy == "cold_start"
        assert not r.degraded and r.degraded_reasons == []
        # no model names its inputs: every value the service read is logged for the first one
        assert d.record.features and "tier_rank" in d.record.features
        rewards = items_of(d, "reward")
        if not rewards:
            assert d.record.flags["no_offer"]
            slot0["no offer"] += 1
            pairs.append(("no offer", share))
            continue
        assert all(o.reason == COLD_START_REASON for o in r.rewards)
        # the no-offer share is a factor of the first slot only: the later ones are given the
        # earlier ones, where an offer is certain
        assert [i["shown_probability"] for i in rewards] == pytest.approx(
            [(1 - share) / 6, 1 / 5, 1 / 4])
        if rewards[0]["item_id"] == "R1":
            after_r1[rewards[1]["item_id"]] += 1
            pairs_after_r1.append((rewards[1]["item_id"], rewards[1]["shown_probability"]))
        assert {i["item_id"] for i in rewards} <= set(eligible)
        categories = [o.category for o in r.rewards]
        same_category += len(set(categories)) < len(categories)
        slot0[rewards[0]["item_id"]] += 1
        pairs.append((rewards[0]["item_id"], rewards[0]["shown_probability"]))
    assert_frequencies_match(slot0, logged_once(pairs))
    assert_frequencies_match(after_r1, logged_once(pairs_after_r1))
    assert same_category > 0  # uniform over every eligible reward: no diversity cap


def test_cold_start_explores_templates_and_their_targets_uniformly() -> None:
    rec = recommender(seed=10)
    slot0: Counter[tuple[str, float]] = Counter()
    pairs: list[tuple[Hashable, float]] = []
    targets = {"C1": [2.0, 3.0, 4.0, 5.0], "C2": [10.0, 20.0, 30.0, 40.0, 50.0]}
    for _ in range(5_000):
        d = decide(rec, RewardModel(), None, no_champion=("difficulty",))
        assert d.record.policy == "cold_start" and not d.response.degraded
        challenges = items_of(d, "challenge")
        assert [c["item_id"] for c in challenges] in (["C1", "C2"], ["C2", "C1"])
        for rank, c in enumerate(challenges):
            n_targets = len(targets[c["item_id"]])
            assert c["target"] in targets[c["item_id"]]
            assert c["target_probability"] == pytest.approx(1 / n_targets)
            assert c["shown_probability"] == pytest.approx(1 / (2 - rank) / n_targets)
        assert all(o.reason == COLD_START_REASON for o in d.response.challenges)
        first = challenges[0]
        slot0[(first["item_id"], first["target"])] += 1
        pairs.append(((first["item_id"], first["target"]), first["shown_probability"]))
        # the reward family has a model: its items are the model's, its features are logged
        assert d.record.features == {n: MEMBER.get(n, 0.0) for n in ("tier_rank",
                                                                   "avg_basket_90d",
                                                                   "visits_30d")}
    assert_frequencies_match(slot0, logged_once(pairs))


def test_the_policy_tells_cold_start_from_a_broken_model() -> None:
    rec = recommender(seed=11)
    both = decide(rec, RewardModel(), DifficultyModel())
    assert both.record.policy == both.response.policy == "model" and not both.response.degraded
    # no model and none ever promoted: cold start, not degraded
    assert decide(rec, no_champion=FAMILIES).response.policy == "cold_start"
    # no model although one was promoted (it failed to load): the degraded fallback
    lost = decide(rec)
    assert lost.response.policy == "fallback" and lost.response.degraded
    assert all(o.reason != COLD_START_REASON for o in lost.response.rewards)
    # a model that fails to predict falls back too, whatever the registry said
    broken = decide(rec, RewardModel(broken=True), DifficultyModel(), no_champion=FAMILIES)
    assert broken.record.policy == "fallback" and broken.response.degraded
    # one family broken, the other in cold start: the breakage is what the log must say
    assert decide(rec, None, None, no_champion=("difficulty",)).record.policy == "fallback"


def test_an_empty_catalog_degrades_every_answer_that_asks_for_what_it_lacks() -> None:
    """No reward (or no template) to offer is the program's set-up, not a member's lot: the
    answer says so, for what it asked, whatever the models and the no-offer draw do."""
    rules = Rules.model_validate({"exploration": {"epsilon": 0.1}})
    none = pd.DataFrame([reward("R1", "food", 1.0)]).iloc[:0]
    templates = pd.DataFrame([challenge("C1", "streak", 2, 5, 1)])
    no_rewards = Catalog.build(none, templates, vocabulary=VOCAB, version=2)
    nothing = Catalog.build(none, templates.iloc[:0], vocabulary=VOCAB, version=3)
    for cat, lacks in ((no_rewards, [NO_REWARDS_REASON]),
                       (nothing, [NO_REWARDS_REASON, NO_CHALLENGES_REASON])):
        rec = Recommender(cat, rules, seed=1, new_reward_epsilon=0.0, no_offer_share=0.5)
        for models in ((RewardModel(), DifficultyModel()), (None, None)):
            for _ in range(20):  # no-offer draws included
                r = decide(rec, *models, no_champion=FAMILIES).response
                assert r.rewards == [] and r.degraded and r.degraded_reasons == lacks
        # asking for nothing it lacks: not degraded
        r = decide(rec, RewardModel(), DifficultyModel(), k_rewards=0,
                   k_challenges=0 if NO_CHALLENGES_REASON in lacks else 2).response
        assert not r.degraded and r.degraded_reasons == []
    # the full catalog: nothing said
    r = decide(recommender(), RewardModel(), DifficultyModel()).response
    assert r.rewards and not r.degraded


def test_a_catalog_emptied_of_one_family_swaps_in_and_serves_the_other() -> None:
    """Retiring every template (a rewards-only program) must not stop the catalog reload:
    the swap compiles the candidate matrices of the models served so far, one of which now
    has no candidate at all."""
    rec = recommender(seed=4)
    assert decide(rec, RewardModel(), DifficultyModel()).response.challenges  # compiled both
    rewards_only = Catalog.build(
        pd.DataFrame([reward("R1", "food", 1.0), reward("R3", "travel", 3.0)]),
        pd.DataFrame([challenge("C1", "streak", 2, 5, 1)]).iloc[:0], vocabulary=VOCAB,
        version=2)
    rec.set_catalog(rewards_only)
    assert rec.member_rows("difficulty", DifficultyModel.features).matrix(MEMBER).shape[0] == 0
    r = decide(rec, RewardModel(), DifficultyModel()).response
    assert [o.reward_id for o in r.rewards][:1] == ["R1"] and r.challenges == []
    assert r.degraded_reasons == [NO_CHALLENGES_REASON]


def test_each_familys_rows_are_weighted_when_its_own_model_chose_them(tmp_path: Path) -> None:
    """After a first retrain the difficulty model may be promoted while the reward model is
    not: the decision's policy is cold start, yet its targets were the model's choice and
    training must weight them (and the other way round). Through the store and back."""
    from serving.stores.events import open_event_store
    from training.data.datasets import WEIGHT_CAP, logging_weights
    from training.data.decision_log import assignments_from_log, offers_from_log

    rec = recommender(seed=1, targets=0.05)
    made = [decide(rec, None, DifficultyModel(), no_champion=("reward",), member="m-a"),
            decide(rec, RewardModel(), None, no_champion=("difficulty",), member="m-b"),
            decide(rec, RewardModel(), DifficultyModel(), member="m-c"),
            decide(rec, RewardModel(broken=True), DifficultyModel(), member="m-d")]
    assert [d.record.policy for d in made] == ["cold_start", "cold_start", "model", "fallback"]
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        for d in made:
            store.log_decision(DecisionRecord.model_validate(d.record))
        decisions, items = store.decision_log()
    finally:
        store.close()
    offers, assignments = offers_from_log(decisions, items), assignments_from_log(decisions,
                                                                                  items)
    by_member = lambda f: f.groupby("member_id")["policy"].agg(set).to_dict()  # noqa: E731
    assert by_member(offers) == {"m-a": {"cold_start"}, "m-b": {"model"}, "m-c": {"model"},
                                 "m-d": {"fallback"}}
    assert by_member(assignments) == {"m-a": {"model"}, "m-b": {"cold_start"},  # uniform
                                      "m-c": {"model"}, "m-d": {"model"}}
    for frame, chosen in ((offers, {"m-b", "m-c"}), (assignments, {"m-a", "m-c", "m-d"})):
        probability = "propensity" if frame is offers else "target_probability"
        weight = logging_weights(frame, probability)
        assert weight is not None
        model_rows = frame["member_id"].isin(chosen).to_numpy()
        assert (weight[~model_rows] == 1.0).all()
        inverse = 1.0 / frame[probability].to_numpy()[model_rows]
        inverse = np.minimum(inverse, WEIGHT_CAP * np.median(inverse))
        np.testing.assert_allclose(weight[model_rows], inverse / inverse.mean())
    assert np.ptp(logging_weights(offers)[offers["member_id"].isin({"m-b", "m-c"})]) > 1.0
    # a decision logged before the family flags keeps its policy for both families
    old = decisions.assign(reward_model=pd.NA, difficulty_model=pd.NA)
    assert set(offers_from_log(old, items)["policy"]) == {"cold_start", "model", "fallback"}
    assert by_member(offers_from_log(old, items))["m-b"] == {"cold_start"}


def test_challenge_targets_explore_the_neighbours_of_the_flow_zone_pick() -> None:
    share = 0.1
    rec = recommender(epsilon=0.0, targets=share, seed=12)
    counts = {"C1": Counter(), "C2": Counter()}
    pairs: dict[str, list[tuple[Hashable, float]]] = {"C1": [], "C2": []}
    model = DifficultyModel()
    for _ in range(4_000):
        d = decide(rec, RewardModel(), model, k_rewards=0)
        slots = {c["item_id"]: c for c in items_of(d, "challenge")}
        out = {c.challenge_id: c for c in d.response.challenges}
        for cid, c in slots.items():
            counts[cid][c["target"]] += 1
            pairs[cid].append((c["target"], c["target_probability"]))
            # one template per kind, epsilon 0: each template's slot is certain, so the item's
            # probability is its target's
            assert c["shown_probability"] == pytest.approx(c["target_probability"])
            ratio = {"C1": (c["target"] - 2) / 3, "C2": (c["target"] - 10) / 40}[cid]
            assert out[cid].completion_probability == pytest.approx(0.95 - 0.8 * ratio,
                                                                    abs=1e-6)
            picks = {"C1": 3.0, "C2": 20.0}
            assert ("next to the flow-zone pick" in out[cid].reason) == (c["target"] != picks[cid])
    want = {"C1": {2.0: share, 3.0: 1 - 2 * share, 4.0: share},
            "C2": {10.0: share, 20.0: 1 - 2 * share, 30.0: share}}
    for cid in ("C1", "C2"):
        logged = logged_once(pairs[cid])
        assert logged == pytest.approx(want[cid])
        assert_frequencies_match(counts[cid], logged)


def test_the_floor_reaches_the_recommenders_slots() -> None:
    floor = 0.05
    rec = recommender(epsilon=0.0, floor=floor, seed=13)
    probabilities: set[float] = set()
    for _ in range(2_000):
        d = decide(rec, RewardModel(), DifficultyModel(), k_challenges=0, k_rewards=1)
        probabilities.add(round(items_of(d, "reward")[0]["shown_probability"], 12))
    # six eligible rewards, epsilon 0 raised to 6 x 0.05: the best 0.75, the others 0.05
    assert probabilities == {0.75, 0.05}


def test_the_record_logs_the_features_the_models_were_given() -> None:
    rec = recommender(seed=14)
    d = decide(rec, RewardModel(), DifficultyModel())
    names = ["tier_rank", "avg_basket_90d", "visits_30d"]  # the models' member inputs, once
    assert d.record.features == {n: MEMBER[n] for n in names}
    assert d.record.flags == {"personalized": True, "cold_start": False, "degraded": False,
                              "no_offer": False, "reward_model": True, "difficulty_model": True}
    # without consent the models see a history-less member of the tier: that is what is logged
    anonymous = decide(rec, RewardModel(), DifficultyModel(), consent=False)
    assert anonymous.record.features == {"tier_rank": 0.0, "avg_basket_90d": 0.0,
                                         "visits_30d": 0.0}
    assert all(i.target_probability == 1.0 for i in d.record.items if i.item_type == "challenge")
    assert all(i.target_probability is None for i in d.record.items if i.item_type == "reward")


def test_never_promoted_is_what_the_registry_said_at_the_last_refresh(tmp_path: Path) -> None:
    from serving.stores.models import ModelManager

    class Source:
        answer: object = None

        def champion(self, name: str) -> tuple[str, Path] | None:
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer  # type: ignore[return-value]

    source = Source()
    manager = ModelManager(source, lambda service: [])  # type: ignore[arg-type]
    manager.add("reward", "propensity_v1", REWARD_DERIVED)
    assert not manager.never_promoted("reward")  # not asked yet: unknown is not cold
    source.answer = ConnectionError("registry down")
    manager.refresh()
    assert not manager.never_promoted("reward")
    source.answer = None
    assert manager.refresh() == {"reward": "no champion"}
    assert manager.never_promoted("reward")
    source.answer = ("1", tmp_path / "missing.onnx")  # promoted, but it cannot be loaded
    assert manager.refresh() == {"reward": "refused v1"}
    assert not manager.never_promoted("reward") and manager.get("reward") is None


# -- a reward model on trial beside the champion -------------------------------------------------

def test_slate_probabilities_are_what_the_slate_logs() -> None:
    """For any slate, the probability a policy would have shown each item in its slot, given
    the slots before, equals what select_slate_exploring_new logs when it is that policy:
    the same formulas, computed without drawing, in every slot."""
    rng = np.random.default_rng(3)
    checked = 0
    for case in range(600):
        n = int(rng.integers(1, 9))
        value = rng.normal(size=n).round(1)  # rounded: ties happen and go to the lower index
        if case % 7 == 0:
            value[rng.integers(n)] = np.nan
        category = rng.integers(0, 3, size=n)
        new = rng.random(n) < 0.3
        k, cap = int(rng.integers(1, 5)), int(rng.integers(1, 3))
        epsilon, floor = float(rng.choice([0.0, 0.1, 0.3])), float(rng.choice([0.0, 0.05]))
        new_epsilon = float(rng.choice([0.0, 0.1, 0.5]))
        slate, _ = select_slate_exploring_new(value, category, k, cap, epsilon, rng, new,
                                              new_epsilon, floor)
        got = slate_probabilities(value, category, slate.index.tolist(), k, cap, epsilon, new,
                                  new_epsilon, floor)
        np.testing.assert_allclose(got, slate.probability, rtol=0, atol=1e-12, err_msg=case)
        checked += len(slate.index) > 1
    assert checked > 300  # slates of several slots, not only first slots
    # and in each slot, over every item it could show there, the probabilities sum to 1
    value, new = np.array([3.0, 1.0, 2.0, 0.5, 0.7]), np.array([False, False, True, True, False])
    category = np.array([0, 0, 1, 1, 2])
    for k in (1, 2, 3):
        for prefix in ([], [0], [2], [0, 4]):
            if len(prefix) >= k:
                continue
            total = sum(slate_probabilities(value, category, [*prefix, i], k, 1, 0.2, new, 0.1,
                                            0.01)[len(prefix)] for i in range(5))
            assert total == pytest.approx(1.0), (k, prefix)


def test_a_slate_drawn_by_one_of_two_policies_logs_each_slot_over_the_draw() -> None:
    """A trial beside the champion: the slate comes from one of them, drawn with probability
    s. Every slot's logged probability, given the slots before, must be that of the mixture,
    which is what the draws show when counted."""
    rng = np.random.default_rng(5)
    champion, trial = np.array([3.0, 2.0, 1.0, 0.0]), np.array([0.0, 1.0, 2.0, 3.0])
    category, new = np.zeros(4, dtype=int), np.zeros(4, dtype=bool)
    s, k, eps = 0.3, 2, 0.2
    counts: dict[tuple[int, ...], int] = {}
    logged: dict[tuple[int, ...], np.ndarray] = {}
    for _ in range(40_000):
        mine, theirs = (trial, champion) if rng.random() < s else (champion, trial)
        slate, _ = select_slate_exploring_new(mine, category, k, 4, eps, rng, new, 0.0)
        other = slate_probabilities(theirs, category, slate.index.tolist(), k, 4, eps, new,
                                    0.0)
        key = tuple(slate.index.tolist())
        counts[key] = counts.get(key, 0) + 1
        logged[key] = mixture_slot_probabilities(
            slate.probability, other, s if mine is trial else 1 - s)
    total = sum(counts.values())
    for key, p in logged.items():
        first = sum(c for kk, c in counts.items() if kk[0] == key[0])
        # slot 0: how often this item came first; slot 1: how often, after it, this one
        assert p[0] == pytest.approx(first / total, abs=0.01), key
        if first > 2_000:
            assert p[1] == pytest.approx(counts[key] / first, abs=0.03), key
    # the served policy's own slot-1 probability would be off (the textbook error this avoids)
    served = slate_probabilities(champion, category, [0, 3], k, 4, eps, new, 0.0)
    assert abs(served[1] - counts[(0, 3)] / sum(c for kk, c in counts.items() if kk[0] == 0)) \
        > 0.02


class TrialRewardModel(RewardModel):
    """A rival version: conversion rises with cost, so the dearest eligible reward (R6)
    is its best, where the champion's is the cheapest (R1)."""

    def __init__(self, broken: bool = False) -> None:
        super().__init__(broken)
        self.meta = self.meta.model_copy(update={"version": "8"})

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.broken:
            raise RuntimeError("corrupt session")
        cost = X[:, self.meta.service_features.index("reward_cost")]
        convert = np.where(cost < 0, 0.05, 0.1 + cost / 20).astype(np.float32)
        return np.stack([1 - convert, convert / 2, convert / 2], axis=1)


def trial_recommender(share: float, seed: int) -> Recommender:
    rules = Rules.model_validate({"exploration": {"epsilon": 0.1}})
    return Recommender(catalog(), rules, seed=seed, new_reward_epsilon=0.0, no_offer_share=0.1,
                       exploration_floor=0.0, target_exploration=0.0, trial_share=share)


def test_a_trial_serves_its_share_and_each_slot_logs_the_probability_over_the_draw(
        ) -> None:
    share, draws = 0.3, 6_000
    rec = trial_recommender(share, seed=11)
    champion, trial = RewardModel(), TrialRewardModel()
    slot0: Counter[str] = Counter()
    pairs: list[tuple[Hashable, float]] = []
    served_by: Counter[str] = Counter()
    slot1: dict[Hashable, Counter[Hashable]] = {}  # the second item, by the first
    pairs1: dict[Hashable, list[tuple[Hashable, float]]] = {}
    for _ in range(draws):
        d = decide(rec, champion, DifficultyModel(), k_rewards=2, reward_trial=trial)
        versions = d.record.model_versions
        assert versions["reward" + TRIAL_SUFFIX] == "8"  # no-offer draws included
        assert d.record.policy == "model" and not d.response.degraded
        if d.record.flags["no_offer"]:
            slot0["no offer"] += 1
            pairs.append(("no offer", 0.1))
            continue
        served_by[versions["reward"]] += 1
        first, second = items_of(d, "reward")[:2]
        slot0[str(first["item_id"])] += 1
        pairs.append((first["item_id"], first["shown_probability"]))
        slot1.setdefault(first["item_id"], Counter())[second["item_id"]] += 1
        pairs1.setdefault(first["item_id"], []).append(
            (second["item_id"], second["shown_probability"]))
        # the trial's inputs are logged with the champion's
        assert set(d.record.features or {}) >= set(trial.meta.service_features) - {"reward_cost"}
    logged = logged_once(pairs)
    e = 0.1 / 6  # epsilon over the six rewards a Bronze member may get
    assert logged["R1"] == pytest.approx(0.9 * ((1 - share) * (0.9 + e) + share * e))
    assert logged["R6"] == pytest.approx(0.9 * ((1 - share) * e + share * (0.9 + e)))
    assert logged["R3"] == pytest.approx(0.9 * e)
    assert_frequencies_match(slot0, logged)
    # the second slot, given the first: over the draw too. A first R6 came from the trial
    # 96 % of the time; logging the champion's own probability for the second slot when the
    # champion served it would give the same slate two probabilities (logged_once fails)
    for head in ("R1", "R6"):
        given = logged_once(pairs1[head])
        observed = slot1[head]
        keys = [*given, "unseen"]
        expected = np.array([*given.values(), 1 - sum(given.values())]) * sum(observed.values())
        counts = np.array([observed.get(k, 0) for k in keys], dtype=np.float64)
        assert 0 <= expected[-1] < 0.02 * expected.sum()
        assert chisquare(counts[:-1], expected[:-1] * counts[:-1].sum()
                         / expected[:-1].sum()).pvalue > P_MIN, (head, observed, given)
    offered = sum(served_by.values())
    assert set(served_by) == {"7", "8"}
    assert abs(served_by["8"] / offered - share) < 4 * np.sqrt(share * (1 - share) / offered)


def test_a_trial_stays_out_of_experiments_and_a_broken_one_leaves_the_champion_alone(
        ) -> None:
    champion = RewardModel()
    for arm in ("model", "random", "holdout"):
        rec = trial_recommender(0.5, seed=2)
        for _ in range(50):
            d = decide(rec, champion, DifficultyModel(), reward_trial=TrialRewardModel(),
                       arm=arm, experiment_id="E1")
            assert d.record.model_versions["reward"] == "7"
            assert "reward" + TRIAL_SUFFIX not in d.record.model_versions
    # a trial that fails to score: the champion serves alone, logged as alone, not degraded
    # (a no-offer draw names the trial in play: it was drawn before any scoring)
    with_broken, alone = trial_recommender(0.5, seed=4), trial_recommender(0.0, seed=4)
    offered = 0
    for _ in range(200):
        a = decide(with_broken, champion, DifficultyModel(),
                   reward_trial=TrialRewardModel(broken=True))
        b = decide(alone, champion, DifficultyModel(), reward_trial=TrialRewardModel())
        assert b.record.model_versions == {"reward": "7", "difficulty": "7"}
        if a.response.rewards:
            offered += 1
            assert a.record.model_versions == b.record.model_versions
        assert not a.response.degraded and a.record.policy == "model"
        assert [(i["item_id"], i["shown_probability"]) for i in items_of(a, "reward")] == [
            (i["item_id"], i["shown_probability"]) for i in items_of(b, "reward")]
    assert offered > 150


# -- the gate re-runs the policy that served ------------------------------------------------------

def test_decisions_log_their_ranking_context() -> None:
    """Cost multiplier, the rewards kept out (exclusion, cooldown) and the novelty factors:
    what the ranking applied besides the scores, in the decision log."""
    rec = recommender(epsilon=0.0)
    recent = {"R1": datetime(2026, 4, 28, tzinfo=UTC),   # 3 days ago: in its cooldown
              "R3": datetime(2026, 4, 11, tzinfo=UTC)}   # 20 days ago: decayed by novelty
    models: tuple[Any, Any] = (RewardModel(), DifficultyModel())
    d = rec.recommend(MemberFacts("M-1", MEMBER, True, recent), *models, k_rewards=2,
                      k_challenges=1, channel="app", exclude={"R2", "GOLD"}, now=NOW,
                      cost_multiplier=2.5)
    ranking = d.record.ranking
    assert ranking is not None and ranking.cost_multiplier == 2.5
    assert sorted(ranking.blocked) == ["R1", "R2"]  # GOLD: the tier keeps it out anyway
    assert ranking.novelty == {"R3": pytest.approx(0.7)}
    plain = rec.recommend(MemberFacts("M-1", MEMBER, True), *models, k_rewards=1,
                          k_challenges=1, channel="app", exclude=set(), now=NOW,
                          cost_multiplier=1.0)
    assert plain.record.ranking is not None
    assert plain.record.ranking.model_dump() == {"cost_multiplier": 1.0, "blocked": [],
                                                 "novelty": {}}


def _served_log(seed: int, n: int, trial_share: float = 0.0
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n decisions of the real Recommender (champion RewardModel, two slots) for members
    with varied baskets and tiers, recent offers (cooldowns, novelty), exclusions and cost
    multipliers; as a retrain's gate rows (first slot or the no-offer draw, the member
    columns zeroed: the point-in-time values differ from those served) and as the decision
    log's frame."""
    import json

    rng = np.random.default_rng(seed)
    rec = Recommender(catalog(), Rules.model_validate({"exploration": {"epsilon": 0.1}}),
                      seed=seed, new_reward_epsilon=0.0, no_offer_share=0.05,
                      exploration_floor=0.002, target_exploration=0.0,
                      trial_share=trial_share)
    ids = ["R1", "R2", "R3", "R4", "R5", "R6"]
    trial = TrialRewardModel() if trial_share else None
    rows, log = [], []
    for i in range(n):
        features = {"tier_rank": float(rng.integers(0, 3)),
                    "avg_basket_90d": float(rng.choice([0.0, rng.uniform(5, 120)])),
                    "visits_30d": float(rng.integers(0, 9))}
        recent = {r: NOW - pd.Timedelta(days=float(rng.uniform(1, 40))).to_pytimedelta()
                  for r in rng.choice(ids, size=int(rng.integers(0, 4)), replace=False)}
        exclude = set(rng.choice(ids, size=int(rng.integers(0, 2)), replace=False))
        models: tuple[Any, Any] = (RewardModel(), DifficultyModel())
        d = rec.recommend(MemberFacts(f"M{i}", features, True, recent), *models, k_rewards=2,
                          k_challenges=0, channel="app", exclude=exclude, reward_trial=trial,
                          now=NOW, cost_multiplier=float(rng.choice([1.0, rng.uniform(1, 8)])))
        r = d.record
        first = next((it for it in r.items if it.item_type == "reward" and it.rank == 0), None)
        if first is None and not r.flags["no_offer"]:
            continue  # nothing eligible: no first slot to evaluate
        rows.append({"decision_id": r.decision_id, "member_id": r.member_id,
                     "event_timestamp": pd.Timestamp(NOW), "source": "service",
                     "policy": r.policy, "slot": 0, "arm": None, "treated": first is not None,
                     "reward_id": first.item_id if first else None,
                     "propensity": first.shown_probability if first else r.no_offer_probability,
                     "spend": float(rng.uniform(0, 50)), "redeemed": 0.0,
                     "tier_rank": 0.0, "avg_basket_90d": 0.0, "visits_30d": 0.0,
                     "model_versions": json.dumps(r.model_versions)})
        log.append({"decision_id": r.decision_id, "features": json.dumps(r.features),
                    "ranking": None if r.ranking is None else json.dumps(r.ranking.model_dump())})
    return pd.DataFrame(rows), pd.DataFrame(log)


def _gate_policy(name: str, rising: bool) -> object:
    """The fake reward models as the gate's policies: conversion 0.6 - cost / 20 (the
    champion, RewardModel) or 0.1 + cost / 20 (TrialRewardModel), no-offer 0.05."""
    from serving.decisioning.scoring import RewardScores
    from training.evaluation.gate import PolicyModel

    def scorer(members: pd.DataFrame, items: pd.DataFrame) -> RewardScores:
        c = items["reward_cost"].to_numpy()
        convert = np.tile(0.1 + c / 20 if rising else 0.6 - c / 20, (len(members), 1))
        return RewardScores(propensity=convert / 2, p_convert=convert,
                            p_control=np.full((len(members), 1), 0.05))

    return PolicyModel(name, scorer, {"margin": 0.3, "basket_multiplier": 1.0,
                                      "basket_fallback": 50.0})


def _gate_items() -> pd.DataFrame:
    cols = catalog().reward_cols
    return pd.DataFrame({"reward_id": cols["reward_id"],
                         "reward_cost": cols["cost"].astype(np.float64),
                         "reward_min_tier_rank": cols["min_tier_rank"]})


def test_the_gate_re_runs_exactly_the_policy_that_served() -> None:
    """Decisions of the real Recommender, given to the off-policy gate with the decision
    log's served features and ranking context: the gate's champion gives every logged first
    slot exactly the probability serving logged. Without the context (the point-in-time
    features, no cost multiplier, cooldown or novelty) it does not."""
    from training.evaluation.gate import Exploration, evaluate_gate, with_served_context

    rows, log = _served_log(seed=3, n=1_500)
    items = _gate_items()
    champion = _gate_policy("v7", rising=False)
    exploration = Exploration(no_offer_share=0.05, epsilon=0.1, floor=0.002)

    def p_champion_vs_logged(gate_rows: pd.DataFrame) -> np.ndarray:
        gate = evaluate_gate(gate_rows, items, champion, champion,  # type: ignore[arg-type]
                             exploration, min_decisions=10, n_bootstrap=50)
        assert gate.policies is not None and gate.decisions == len(rows)
        read = gate.policies[gate.policies["logged"]]
        return np.abs(read["p_champion"].to_numpy() - read["p_logging"].to_numpy())

    served = with_served_context(rows, log)
    assert served["avg_basket_90d"].gt(0).any() and rows["avg_basket_90d"].eq(0).all()
    assert p_champion_vs_logged(served).max() < 1e-9
    off = p_champion_vs_logged(rows)
    assert (off > 0.1).mean() > 0.1  # without the context, a policy that did not serve


def test_the_gate_re_runs_a_trial_and_the_champion_as_they_served_together() -> None:
    """Decisions served with a version on trial: the probability each first slot logged is
    (1 - share) x the gate's champion + share x the gate's trial, exactly."""
    from training.evaluation.gate import Exploration, evaluate_gate, with_served_context

    share = 0.3
    rows, log = _served_log(seed=4, n=1_500, trial_share=share)
    assert rows["model_versions"].str.contains('"reward@trial": "8"').all()
    gate = evaluate_gate(with_served_context(rows, log), _gate_items(),
                         _gate_policy("v8", rising=True),  # type: ignore[arg-type]
                         _gate_policy("v7", rising=False),  # type: ignore[arg-type]
                         Exploration(no_offer_share=0.05, epsilon=0.1, floor=0.002),
                         min_decisions=10, n_bootstrap=50)
    assert gate.policies is not None
    read = gate.policies[gate.policies["logged"]]
    mixed = (1 - share) * read["p_champion"] + share * read["p_candidate"]
    np.testing.assert_allclose(mixed.to_numpy(), read["p_logging"].to_numpy(), atol=1e-9)
    weights = read["p_candidate"] / read["p_logging"]
    assert weights.max() <= 1 / share + 1e-9  # the trial's own traffic bounds its weights


def test_a_tier_unknown_or_unread_serves_the_lowest_tier_and_says_so() -> None:
    """tier_rank -1 (a tier the vocabulary lacks) or NaN (not read) would refuse every reward
    by eligibility, or crash the tier lookup: the member is served as the lowest tier, the
    answer flagged, with consent or without, inside an experiment or not."""
    rec = recommender(seed=21)
    lowest = decide(rec, RewardModel(), DifficultyModel()).response
    for rank in (-1.0, float("nan"), float("inf")):
        features = {**MEMBER, "tier_rank": rank}
        for consent in (True, False):
            for arm in (None, "model", "holdout"):
                r = decide(rec, RewardModel(), DifficultyModel(), features=features,
                           consent=consent, arm=arm, experiment_id="e1" if arm else None)
                if arm != "holdout":
                    assert r.response.rewards, (rank, consent, arm)
                    assert {o.reward_id for o in r.response.rewards} <= {
                        "R1", "R2", "R3", "R4", "R5", "R6"}  # GOLD is above the lowest tier
                if consent:  # without consent the service scores the lowest tier anyway
                    assert UNKNOWN_TIER_REASON in r.response.degraded_reasons
    assert not lowest.degraded and lowest.rewards


def test_a_trial_reads_history_less_values_for_a_member_without_history() -> None:
    """A new member (or one without consent) is scored as a history-less member of the tier:
    a version on trial that reads inputs the champion does not must get those values too,
    not zeros (what it is given is what the decision logs)."""
    class WiderTrial(TrialRewardModel):
        features = [*RewardModel.features, "days_since_last_visit", "redemption_rate"]

        def __init__(self) -> None:
            super().__init__()
            self.meta = self.meta.model_copy(update={"service_features": self.features})

    rec = trial_recommender(0.5, seed=3)
    trial = WiderTrial()
    for features, consent in ((None, True), (MEMBER, False)):
        d = decide(rec, RewardModel(), DifficultyModel(), features=features, consent=consent,
                   reward_trial=trial)
        logged = d.record.features
        assert logged["days_since_last_visit"] == NEVER_DAYS
        assert logged["redemption_rate"] == MISSING_RATE
