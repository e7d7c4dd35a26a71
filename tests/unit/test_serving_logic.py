"""Pure serving logic: candidate rows, ranking rules, business rules, group commit."""

from __future__ import annotations

import threading
import os
import time
from pathlib import Path

import numpy as np
import pytest

from serving.decisioning.candidates import (
    DIFFICULTY_DERIVED, NO_OFFER, REWARD_DERIVED, cross, difficulty_matrix, no_offer_items,
    reward_matrix,
)
from serving.contract.vocabulary import MISSING_RATE
from training.simulate.generate.catalog import CATEGORIES, CHALLENGE_KINDS, REWARD_TYPES
from training.simulate.generate.catalog import VOCABULARY as VOCAB  # the simulated program's
from serving.decisioning.ranking import basket_estimate, expected_value, flow_zone_choice
from serving.decisioning.scoring import scores_from_proba
from serving.decisioning.rules import Rules, cost_multiplier, load_rules, novelty_factor, select_slate
from serving.stores.writer import GroupCommitter

ROOT = Path(__file__).resolve().parents[2]


def member_cols(n: int = 1) -> dict[str, np.ndarray]:
    cols = {f"redeem_rate_{t}": np.full(n, 0.1 * i, np.float32) for i, t in enumerate(REWARD_TYPES)}
    cols |= {f"offers_{t}": np.full(n, float(i), np.float32) for i, t in enumerate(REWARD_TYPES)}
    cols |= {f"share_{c}_90d": np.full(n, 0.01 * i, np.float32) for i, c in enumerate(CATEGORIES)}
    cols |= {f"completion_rate_{k}": np.full(n, 0.05 * i, np.float32)
             for i, k in enumerate(CHALLENGE_KINDS)}
    cols["tier_rank"] = np.full(n, 2.0, np.float32)
    return cols


def test_reward_rows_pick_the_members_history_for_the_rewards_type_and_category() -> None:
    items = {"reward_type_code": np.array([2.0, 0.0], np.float32),
             "reward_category_code": np.array([3.0, -1.0], np.float32),
             "reward_cost": np.array([5.0, 2.0], np.float32),
             "reward_min_tier_rank": np.array([1.0, 3.0], np.float32)}
    names = ["tier_rank", "reward_cost"]
    X = reward_matrix(cross(member_cols(), items), np.ones(2), names, VOCAB)
    assert X.shape == (2, len(names) + len(REWARD_DERIVED))
    derived = dict(zip(REWARD_DERIVED, X[:, len(names):].T, strict=True))
    np.testing.assert_allclose(derived["type_redeem_rate"], [0.2, 0.0])
    np.testing.assert_allclose(derived["type_offers"], [2.0, 0.0])
    np.testing.assert_allclose(derived["category_share"], [0.03, 0.0])  # 'any' -> 0
    np.testing.assert_allclose(derived["tier_gap"], [1.0, -1.0])


def test_control_row_carries_the_no_offer_sentinel() -> None:
    X = reward_matrix({**member_cols(), **no_offer_items(1)}, np.zeros(1), ["reward_cost"],
                      VOCAB)
    assert X[0, 0] == NO_OFFER
    assert list(X[0, 1:]) == [0.0, NO_OFFER, NO_OFFER, NO_OFFER, NO_OFFER]


def test_difficulty_rows() -> None:
    items = {"challenge_min_target": np.array([2.0, 2.0], np.float32),
             "challenge_max_target": np.array([6.0, 6.0], np.float32),
             "challenge_kind_code": np.array([1.0, 1.0], np.float32)}
    X = difficulty_matrix(cross(member_cols(), items), np.array([2.0, 5.0]), [], VOCAB)
    np.testing.assert_allclose(X, [[2.0, 0.0, 0.05], [5.0, 0.75, 0.05]])
    assert X.shape[1] == len(DIFFICULTY_DERIVED)


def test_missing_kind_rate_is_the_sentinel() -> None:
    items = {"challenge_min_target": np.array([1.0], np.float32),
             "challenge_max_target": np.array([1.0], np.float32),  # zero span: no division
             "challenge_kind_code": np.array([-1.0], np.float32)}
    X = difficulty_matrix(cross(member_cols(), items), np.array([1.0]), [], VOCAB)
    np.testing.assert_allclose(X, [[1.0, 0.0, MISSING_RATE]])


def test_request_path_rows_equal_the_crossed_rows_bit_for_bit() -> None:
    """reward_inputs/difficulty_inputs pass the member as scalars broadcast over the candidates;
    the matrices must equal crossing member columns with the items (the training path)."""
    from serving.decisioning.candidates import CHALLENGE_ITEM_COLUMNS, REWARD_ITEM_COLUMNS
    from serving.decisioning.candidates import difficulty_inputs, reward_inputs

    rng = np.random.default_rng(5)
    features = {k: float(v[0]) + float(rng.normal()) for k, v in member_cols().items()}
    features["tier_rank"] = 2.0
    rewards = {"reward_type_code": rng.integers(-1, len(REWARD_TYPES), 30).astype(np.float32),
               "reward_category_code": rng.integers(-1, len(CATEGORIES), 30).astype(np.float32),
               "reward_cost": rng.uniform(1, 20, 30).astype(np.float32),
               "reward_min_tier_rank": rng.integers(0, 4, 30).astype(np.float32)}
    names = [*features, "reward_cost", "reward_type_code"]
    one = {k: np.array([v], np.float32) for k, v in features.items()}
    expected = np.vstack([reward_matrix(cross(one, rewards), np.ones(30), names, VOCAB),
                          reward_matrix({**one, **no_offer_items(1)}, np.zeros(1), names, VOCAB)])
    got = reward_inputs(features, rewards, names, VOCAB)
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()

    lo = rng.integers(1, 4, 40).astype(np.float32)
    grid = {"challenge_kind_code": rng.integers(-1, len(CHALLENGE_KINDS), 40).astype(np.float32),
            "challenge_duration_days": np.full(40, 7, np.float32),
            "challenge_min_target": lo, "challenge_max_target": lo + rng.integers(0, 5, 40),
            "challenge_target_step": np.ones(40, np.float32),
            "challenge_points": np.full(40, 50, np.float32)}
    grid["target"] = grid["challenge_min_target"] + 1
    names = [*features, *CHALLENGE_ITEM_COLUMNS[:3]]
    items = {c: grid[c] for c in CHALLENGE_ITEM_COLUMNS}
    expected = difficulty_matrix(cross(one, items), grid["target"], names, VOCAB)
    got = difficulty_inputs(features, grid, names, VOCAB)
    assert got.tobytes() == expected.tobytes()
    assert not set(REWARD_ITEM_COLUMNS) & set(features)


def test_compiled_member_rows_equal_the_builders_rows() -> None:
    """MemberRows (the request path) gives the reference builders' matrices for any member,
    whole or for a subset of candidate rows, NaN included; a builder that is not a member
    shift of its items is refused at construction, never compiled into different rows."""
    from serving.decisioning.candidates import CHALLENGE_ITEM_COLUMNS, MemberRows
    from serving.decisioning.candidates import difficulty_inputs, reward_inputs

    rng = np.random.default_rng(11)
    member_names = [*member_cols(), "visits_30d"]
    rewards = {"reward_type_code": rng.integers(-1, len(REWARD_TYPES), 30).astype(np.float32),
               "reward_category_code": rng.integers(-1, len(CATEGORIES), 30).astype(np.float32),
               "reward_cost": rng.uniform(1, 20, 30).astype(np.float32),
               "reward_min_tier_rank": rng.integers(0, 4, 30).astype(np.float32)}
    r_names = [*member_names, "reward_cost", "reward_type_code", "reward_min_tier_rank"]
    lo = rng.integers(1, 4, 40).astype(np.float32)
    grid = {"challenge_kind_code": rng.integers(-1, len(CHALLENGE_KINDS), 40).astype(np.float32),
            "challenge_duration_days": np.full(40, 7, np.float32),
            "challenge_min_target": lo, "challenge_max_target": lo + rng.integers(0, 5, 40),
            "challenge_target_step": np.ones(40, np.float32),
            "challenge_points": np.full(40, 50, np.float32), "target": lo + 1}
    d_names = [*member_names, *CHALLENGE_ITEM_COLUMNS]
    compiled = [(MemberRows(lambda m: reward_inputs(m, rewards, r_names, VOCAB), member_names),
                 lambda m: reward_inputs(m, rewards, r_names, VOCAB), 31),
                (MemberRows(lambda m: difficulty_inputs(m, grid, d_names, VOCAB), member_names),
                 lambda m: difficulty_inputs(m, grid, d_names, VOCAB), 40)]
    for rows, build, n in compiled:
        for _ in range(50):
            member = {k: float(v) for k, v in zip(
                member_names, rng.normal(0, 5, len(member_names)).astype(np.float32),
                strict=True)}
            member["tier_rank"] = float(rng.integers(0, 4))
            member[member_names[int(rng.integers(len(member_names)))]] = float("nan")
            expected = build(member)
            assert np.array_equal(rows.matrix(member), expected, equal_nan=True)
            subset = np.sort(rng.choice(n, size=int(rng.integers(1, n)), replace=False))
            assert np.array_equal(rows.matrix(member, subset), expected[subset], equal_nan=True)
        # a member without some features: the builders' 0.0 default
        assert np.array_equal(rows.matrix({}), build({}), equal_nan=True)

    def product(m: dict[str, float]) -> np.ndarray:  # depends on two member features at once
        return np.array([[m["a"] * m["b"], m["a"]]], dtype=np.float32)

    with pytest.raises(ValueError, match="not a member shift"):
        MemberRows(product, ["a", "b"])

    def doubled(m: dict[str, float]) -> np.ndarray:  # a scale, not a shift
        return np.array([[2.0 * m["a"]]], dtype=np.float32)

    with pytest.raises(ValueError, match="not a member shift"):
        MemberRows(doubled, ["a"])


def test_reward_scores_and_value() -> None:
    offer = np.array([[0.5, 0.2, 0.3], [0.7, 0.2, 0.1]])
    control = np.array([[0.8, 0.2, 0.0]] * 2)
    # one member: both rewards, then its no-offer row (the candidate-row layout)
    s = scores_from_proba(np.vstack([offer, control[:1]]), 1)
    np.testing.assert_allclose(s.uplift, [[0.3, 0.1]])
    np.testing.assert_allclose(s.propensity, [[0.3, 0.1]])
    np.testing.assert_allclose(s.p_control, [[0.2]])
    v = s.values(np.array([100.0]), np.array([10.0, 1.0]), 0.3)
    np.testing.assert_allclose(v, [[0.3 * 100 * 0.3 - 0.3 * 10, 0.3 * 100 * 0.1 - 0.1 * 1]])
    np.testing.assert_array_equal(v, expected_value(s.uplift, s.propensity, np.array([[100.0]]),
                                                    np.array([[10.0, 1.0]]), 0.3))
    lam = s.values(np.array([100.0]), np.array([10.0, 1.0]), 0.3, cost_multiplier=2.0)
    assert (lam < v).all()
    # two members at once: each member's rows are its own
    two = scores_from_proba(np.vstack([offer, control[:1], offer[::-1], control[:1]]), 2)
    np.testing.assert_allclose(two.uplift, [[0.3, 0.1], [0.1, 0.3]])
    np.testing.assert_allclose(basket_estimate(np.array([0.0, 10.0]), 1.5, 40.0), [40.0, 15.0])


def test_flow_zone_picks_nearest_and_prefers_the_easier_tie() -> None:
    group = np.array([1, 1, 1, 2, 2])
    target = np.array([1.0, 2.0, 3.0, 5.0, 10.0])
    p = np.array([0.9, 0.72, 0.5, 0.8, 0.6])  # group 2: 0.8 and 0.6 tie at 0.1 from 0.7
    assert list(flow_zone_choice(group, target, p, 0.7)) == [1, 3]
    with pytest.raises(ValueError, match="flow_zone"):
        flow_zone_choice(group, target, p, 1.5)


def test_cost_multiplier_tracks_the_budget_pace() -> None:
    assert cost_multiplier(500.0, 1000.0, 0.5, 4.0, 10.0) == 1.0  # on pace
    assert cost_multiplier(100.0, 1000.0, 0.5, 4.0, 10.0) == 1.0  # under pace: never below 1
    assert cost_multiplier(750.0, 1000.0, 0.5, 4.0, 10.0) == pytest.approx(3.0)  # 50 % ahead
    assert cost_multiplier(1e9, 1000.0, 0.5, 4.0, 10.0) == 10.0  # capped


def test_novelty_factor() -> None:
    f = novelty_factor(np.array([np.nan, 3.0, 45.0, np.inf]), 30.0, 0.25)
    np.testing.assert_allclose(f, [1.0, 0.75, 1.0, 1.0])


def test_slate_respects_category_cap_and_greedy_order() -> None:
    value = np.array([5.0, 4.0, 3.0, 2.0])
    category = np.array(["a", "a", "b", "c"])
    slate = select_slate(value, category, 3, 1, 0.0, np.random.default_rng(0))
    assert list(slate.index) == [0, 2, 3]
    np.testing.assert_allclose(slate.probability, [1.0, 1.0, 1.0])


def test_slate_ties_go_to_the_first_item_nan_ranks_last_and_codes_equal_labels() -> None:
    value = np.array([np.nan, 2.0, 3.0, 3.0, 1.0])
    labels = np.array(["x", "y", "z", "y", "w"])
    slate = select_slate(value, labels, 5, 1, 0.0, np.random.default_rng(0))
    assert list(slate.index) == [2, 3, 4, 0]  # 3.0 tie -> index 2 first; y capped; NaN last
    codes = np.unique(labels, return_inverse=True)[1]  # integer codes: the same slate
    same = select_slate(value, codes, 5, 1, 0.0, np.random.default_rng(0))
    assert list(same.index) == list(slate.index)


def test_slate_logged_probabilities_match_exploration_frequencies() -> None:
    """The logged probability of the first slot equals how often that item really shows."""
    value = np.array([3.0, 2.0, 1.0, 0.5])
    category = np.array(["a", "b", "c", "d"])
    rng = np.random.default_rng(1)
    eps, n = 0.2, 20_000
    counts, logged = np.zeros(4), {}
    for _ in range(n):
        s = select_slate(value, category, 1, 1, eps, rng)
        counts[s.index[0]] += 1
        logged[int(s.index[0])] = s.probability[0]
    expected = np.array([1 - eps + eps / 4, eps / 4, eps / 4, eps / 4])
    np.testing.assert_allclose(counts / n, expected, atol=0.01)
    np.testing.assert_allclose([logged[i] for i in range(4)], expected)


def test_slate_with_caps_above_one_and_exploration_draws_as_specified() -> None:
    """Against the rule written out slot by slot: same picks, same logged probabilities, same
    random draws, with categories repeated and caps of 1 and 2."""
    def spec(value, category, k, cap, eps, rng):  # noqa: ANN001, ANN202
        taken: list[int] = []
        probs: list[float] = []
        while len(taken) < k:
            cands = [i for i in range(len(value)) if i not in taken
                     and sum(category[j] == category[i] for j in taken) < cap]
            if not cands:
                break
            best = max(cands, key=lambda i: (value[i], -i))
            pick = best if rng.random() >= eps else int(rng.choice(np.array(cands)))
            probs.append((1 - eps) * (pick == best) + eps / len(cands))
            taken.append(pick)
        return taken, probs

    gen = np.random.default_rng(11)
    for trial in range(300):
        n = int(gen.integers(1, 12))
        value = gen.normal(size=n)
        category = gen.choice(np.array(["food", "beauty", "travel"]), n)
        k, cap, eps = int(gen.integers(0, 5)), int(gen.integers(0, 3)), [0.0, 0.3][trial % 2]
        got = select_slate(value, category, k, cap, eps, np.random.default_rng(trial))
        want, want_p = spec(value, category, k, cap, eps, np.random.default_rng(trial))
        assert list(got.index) == want
        np.testing.assert_allclose(got.probability, want_p)
        codes = np.unique(category, return_inverse=True)[1] - 5  # any integers, negative too
        coded = select_slate(value, codes, k, cap, eps, np.random.default_rng(trial))
        assert list(coded.index) == want


def test_rules_file_is_valid_and_strict(tmp_path: Path) -> None:
    rules = load_rules(ROOT / "config" / "rules.toml")
    assert rules.challenges.flow_zone == 0.7 and rules.diversity.max_per_category == 1
    bad = tmp_path / "rules.toml"
    bad.write_text("[diversity]\nmax_per_categroy = 2\n")
    with pytest.raises(ValueError, match="max_per_categroy"):
        load_rules(bad)
    assert Rules().exploration.epsilon == 0.05


def test_group_commit_resolves_each_writer_with_its_own_results() -> None:
    batches: list[int] = []

    def commit(items: list[int]) -> list[int]:
        batches.append(len(items))
        return [i * 10 for i in items]

    gc = GroupCommitter(commit, "test-writer")
    results: dict[int, list[int]] = {}

    def writer(k: int) -> None:
        results[k] = gc.submit([k, k + 1000]).result(timeout=5)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.close()
    assert all(results[k] == [k * 10, (k + 1000) * 10] for k in range(50))
    assert sum(batches) == 100


def test_group_commit_linger_gathers_a_window_into_one_commit_and_close_flushes() -> None:
    batches: list[list[int]] = []
    gc = GroupCommitter(lambda items: batches.append(list(items)) or list(items), "linger",
                        linger_seconds=0.3)
    futures = [gc.submit([k]) for k in range(5)]  # all well inside one 0.3 s window
    assert [f.result(timeout=5) for f in futures] == [[k] for k in range(5)]
    assert batches == [[0, 1, 2, 3, 4]]
    last = gc.submit([9])
    gc.close()  # stopping commits what is queued instead of dropping it
    assert last.result(timeout=1) == [9] and batches[-1] == [9]


def test_group_commit_linger_does_not_wait_with_a_full_batch_queued() -> None:
    """The window is slept through only while less than a batch is queued: 20 writes with
    batches of 5 and a 0.5 s window commit in about one window, not four."""
    batches: list[list[int]] = []
    gate = threading.Event()

    def commit(items: list[int]) -> list[int]:
        gate.wait(5)  # hold the first commit until everything is queued
        batches.append(list(items))
        return list(items)

    gc = GroupCommitter(commit, "backlog", max_batch=5, linger_seconds=0.5)
    start = time.monotonic()
    futures = [gc.submit([k]) for k in range(20)]
    gate.set()
    for f in futures:
        f.result(timeout=10)
    elapsed = time.monotonic() - start
    gc.close()
    assert sorted(k for b in batches for k in b) == list(range(20))
    assert all(len(b) <= 5 for b in batches) and elapsed < 1.4, (batches, elapsed)


def test_group_commit_failure_reaches_every_waiting_writer() -> None:
    def commit(items: list[int]) -> list[int]:
        raise OSError("disk full")

    gc = GroupCommitter(commit, "failing-writer")
    with pytest.raises(OSError, match="disk full"):
        gc.submit([1]).result(timeout=5)
    gc.close()


def test_batch_top_rewards_per_category_and_eligibility() -> None:
    from serving.batch.scoring import _top_rewards

    value = np.array([[5.0, 4.0, 3.0, 9.0], [1.0, 2.0, 3.0, 4.0]])
    eligible = np.array([[True, True, True, False], [True, True, False, False]])
    category = np.array(["a", "a", "b", "c"])
    top = _top_rewards(value, eligible, category, 3)
    assert top.tolist() == [[0, 2, -1], [1, -1, -1]]  # one per category, ineligible skipped


def test_decision_ids_are_uuid7_and_sort_by_time() -> None:
    import uuid

    from serving.decisioning.ids import new_decision_id

    first = new_decision_id()
    time.sleep(0.002)
    later = [new_decision_id() for _ in range(200)]
    assert len(set(later)) == 200 and all(len(i) == 32 for i in later)
    u = uuid.UUID(first)
    assert (u.version, u.variant) == (7, uuid.RFC_4122)
    assert abs((u.int >> 80) - time.time() * 1000) < 5_000  # its leading 48 bits: Unix ms now
    assert all(first < i for i in later)  # a later millisecond sorts after


def test_decision_ids_stay_unique_in_a_forked_worker() -> None:
    """The ids' random bits come from a per-process generator: a forked child must reseed it,
    or parent and child would draw the same bits (and, within one millisecond, the same ids)."""
    from serving.decisioning.ids import new_decision_id

    low = (1 << 74) - 1  # the random bits of a UUIDv7 (12 + 62), below version and variant
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then leave without running pytest's teardown
        os.close(read)
        os.write(write, ",".join(new_decision_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    ours = [new_decision_id() for _ in range(50)]
    with os.fdopen(read) as pipe:
        theirs = pipe.read().split(",")
    os.waitpid(pid, 0)
    assert len(theirs) == 50
    ours_bits = {int(i, 16) & low for i in ours}
    assert not ours_bits & {int(i, 16) & low for i in theirs}


def test_response_items_are_validated_and_never_fail_the_answer(
        caplog: pytest.LogCaptureFixture) -> None:
    from serving.decisioning.recommend import _item_out
    from serving.contract.schemas import RewardOut

    fields = dict(reward_id="R01", name="Free coffee", type="voucher", category="food",
                  propensity=0.4, uplift=0.1, expected_value=1.5, cost=2.0,
                  shown_probability=0.95, reason="because")
    assert _item_out(RewardOut, **fields) == RewardOut(**fields)
    with caplog.at_level("WARNING", logger="rewards.recommend"):
        odd = _item_out(RewardOut, **{**fields, "cost": "n/a"})  # breaks the schema
    assert odd.cost == "n/a" and odd.reward_id == "R01"  # answered as built, not a 500
    assert "outside its schema" in caplog.text


def test_decision_records_are_validated_by_the_log_writer(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The request path hands the writer a Decision; its record is built and validated there,
    and a record that breaks the schema is logged as an error without costing the batch."""
    from datetime import UTC, datetime

    from serving.stores.events import open_event_store
    from serving.decisioning.recommend import Decision
    from serving.services import _log_decisions

    def decision(decision_id: str, member_id: str) -> Decision:
        return Decision(response=None, record_fields=dict(  # type: ignore[arg-type]
            decision_id=decision_id, member_id=member_id, created_at=datetime.now(UTC),
            channel="web", model_versions={"reward": "1"}, flags={"degraded": False},
            items=[dict(item_type="reward", item_id="R01", rank=0, score=1.5,
                        shown_probability=0.9, cost=2.0)]))

    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    commit = _log_decisions(store)
    with caplog.at_level("ERROR", logger="rewards.services"):
        assert commit([decision("a1", "7"), decision("a2", "bad id!"),
                       decision("a3", "8")]) == [None] * 3
    assert store.count_decisions() == 2  # "bad id!" breaks the schema: only it is dropped
    assert "outside its schema" in caplog.text
    store.close()
