"""The off-policy gate reads decisions made inside uplift experiments: each logged action's
probability over the arm draw (model, random, holdout arms) restores what an arm rules out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.decisioning.scoring import RewardScores
from training.evaluation.gate import (
    ArmShares,
    Exploration,
    arm_versions,
    PolicyModel,
    evaluate_gate,
    experiment_shares,
    logged_rows,
    mixture_propensity,
    served_versions,
)
from training.evaluation.logged_ope import estimate_policy

SHARES = {"model": 0.6, "random": 0.3, "holdout": 0.1}
COEF = np.array([-1.0, 0.2, 1.5])
BIAS = np.array([0.3, 0.0, -0.4])
NONE_RATE = 0.35  # the no-offer's reward rate, whatever the member
NONE = 3  # action index of the no-offer


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _means(x: np.ndarray) -> np.ndarray:
    """(n x 4) expected reward of each reward, then of the no-offer."""
    return np.column_stack([_sigmoid(COEF[None, :] * x[:, None] + BIAS[None, :]),
                            np.full(len(x), NONE_RATE)])


def _eps_greedy(pick: np.ndarray, eps: float, none: float = 0.0) -> np.ndarray:
    probs = np.zeros((len(pick), 4))
    probs[:, :3] = eps / 3
    probs[np.arange(len(pick)), pick] += 1 - eps
    probs[:, :3] *= 1 - none
    probs[:, NONE] = none
    return probs


def _champion(x: np.ndarray) -> np.ndarray:  # a slightly wrong model's pick
    return np.argmax(np.array([-1.0, 0.2, 0.8])[None, :] * x[:, None] + BIAS[None, :], axis=1)


def _target(x: np.ndarray) -> np.ndarray:  # what serving runs outside experiments
    return _eps_greedy(_best(x), 0.07, none=0.05)


def _best(x: np.ndarray) -> np.ndarray:  # the right model's pick
    return np.argmax(COEF[None, :] * x[:, None] + BIAS[None, :], axis=1)


def _experiment(n: int, seed: int, promoted_at: int | None = None) -> dict[str, np.ndarray]:
    """Decisions of an experiment: each member's arm drawn by share, then its action. The
    model arm is served by the champion, or from decision ``promoted_at`` on by the right
    model (promoted inside the experiment)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    arm = rng.choice(list(SHARES), size=n, p=list(SHARES.values()))
    pick = _champion(x)
    if promoted_at is not None:
        pick[promoted_at:] = _best(x)[promoted_at:]
    model = _eps_greedy(pick, 0.07)  # the model arm: no no-offer draw
    uniform = np.zeros((n, 4))
    uniform[:, :3] = 1 / 3
    holdout = np.zeros((n, 4))
    holdout[:, NONE] = 1.0
    given_arm = np.where((arm == "model")[:, None], model,
                         np.where((arm == "random")[:, None], uniform, holdout))
    action = (rng.random(n)[:, None] > given_arm.cumsum(axis=1)).sum(axis=1)
    r = np.arange(n)
    reward = rng.binomial(1, _means(x)[r, action]).astype(float)
    shares = np.tile(list(SHARES.values()), (n, 1))
    logged = given_arm[r, action]
    mixed = mixture_propensity(logged, arm.astype(object), shares, model[r, action],
                               uniform[r, action], action != NONE)
    return {"x": x, "arm": arm, "action": action, "reward": reward, "logged": logged,
            "mixed": mixed, "target": _target(x)[r, action]}


def test_mixture_propensity_by_hand() -> None:
    shares = np.array([[0.0, 0.0, 0.0]] + [[0.8, 0.1, 0.1]] * 3)
    out = mixture_propensity(
        logged=np.array([0.3, 0.9, 0.125, np.nan]),
        arm=np.array(["", "model", "random", "holdout"], dtype=object), shares=shares,
        model_arm=np.array([0.5, 0.5, 0.02, 0.0]), random_arm=np.array([0.5, 0.125, 0.5, 0.0]),
        offered=np.array([True, True, True, False]))
    # outside: as logged; model arm: 0.8 x its own 0.9 + 0.1 x 1/8; random arm: 0.8 x the model
    # arm's 0.02 + 0.1 x its own 1/8; holdout: only its own arm offers nothing (its 1 stands for
    # a probability logged before it existed)
    assert out == pytest.approx([0.3, 0.8 * 0.9 + 0.1 / 8, 0.8 * 0.02 + 0.1 / 8, 0.1])


def test_experiment_decisions_estimate_the_serving_policy_without_bias() -> None:
    """The policy serving runs outside experiments draws the no-offer and every reward; inside
    one, no arm alone does. Over the arm draw they all have a probability, and IPS with it
    finds the true value; the probability given the arm does not."""
    x = np.random.default_rng(1).normal(size=1_000_000)
    truth = float((_target(x) * _means(x)).sum(axis=1).mean())
    mixed, given, covered = [], [], 0
    for seed in range(20):
        d = _experiment(20_000, seed=50 + seed)
        est = estimate_policy(d["reward"], d["mixed"], d["target"], n_bootstrap=200, seed=seed)
        mixed.append(est.ips)
        covered += est.ips_ci_low <= truth <= est.ips_ci_high
        given.append(np.mean(d["target"] / d["logged"] * d["reward"]))
    assert abs(np.mean(mixed) - truth) < 0.004
    assert covered >= 17
    assert abs(np.mean(given) - truth) > 0.05  # the arm's own probability misleads


def test_only_decisions_of_known_experiments_are_read() -> None:
    t0 = pd.Timestamp("2026-03-01T00:00:00Z")
    rows = pd.DataFrame({
        "decision_id": ["a", "b", "c", "d"], "source": "service", "policy": "model",
        "arm": ["", "random", "holdout", "model"], "slot": 0,
        "treated": [True, True, False, True],
        "event_timestamp": [t0, t0 + pd.Timedelta(days=1), t0 + pd.Timedelta(days=2),
                            t0 + pd.Timedelta(days=9)]})
    assert list(logged_rows(rows)["decision_id"]) == ["a"]
    week = ArmShares(t0, t0 + pd.Timedelta(days=7), dict(SHARES))
    assert list(logged_rows(rows, [week])["decision_id"]) == ["a", "b", "c"]
    np.testing.assert_allclose(experiment_shares(rows, [week]),
                               [[0, 0, 0], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0, 0, 0]])


def test_experiment_decisions_of_another_model_are_not_read() -> None:
    """The model arm's probability is re-derived from the champion: a decision whose model arm
    another version served (the champion changed inside the evaluation period) has no known
    probability over the arms and is left out; one served by no model (cold start: its model
    arm was uniform) is read."""
    t0 = pd.Timestamp("2026-03-01T00:00:00Z")
    versions = ['{"reward":"2"}', '{"reward":"1"}', '{"reward":"2"}', '{}', '{"reward":"1"}', "",
                '{"reward":"1"}']
    rows = pd.DataFrame({
        "decision_id": list("abcdefg"), "source": "service",
        "policy": ["model", "model", "model", "cold_start", "model", "model", "model"],
        "arm": ["random", "holdout", "model", "random", "", "model", ""], "slot": 0,
        "treated": True, "event_timestamp": t0 + pd.Timedelta(days=1),
        "model_versions": versions})
    assert list(served_versions(rows, "reward")) == ["2", "1", "2", "", "1", "?", "1"]
    week = ArmShares(t0, t0 + pd.Timedelta(days=7), dict(SHARES))
    read = logged_rows(rows, [week], champion=("reward", "2"))
    # b: another version's holdout; e and g are outside the experiment (exact logged
    # probabilities, whoever served); f logged no versions (read, as before they were logged)
    assert list(read["decision_id"]) == ["a", "c", "d", "e", "f", "g"]
    assert list(read["served_version"]) == ["2", "2", "", "1", "?", "1"]
    assert list(logged_rows(rows, [week])["decision_id"]) == list("abcdefg")
    # the earlier version v1 served b inside the experiment: given v1, the gate reads it too
    assert arm_versions(rows, [week], ("reward", "2")) == {"1"}
    assert arm_versions(rows, [week], ("reward", "1")) == {"2"}
    assert list(logged_rows(rows, [week], ("reward", "2"), readable={"1"})["decision_id"]) == \
        list("abcdefg")



def _gate_rows(d: dict[str, np.ndarray], versions: object = '{"reward":"1"}'
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An experiment's decisions as a retrain's test-period rows (one slot each), and the
    catalog: three free rewards every member may get."""
    n = len(d["x"])
    t0 = pd.Timestamp("2026-03-01T00:00:00Z")
    rows = pd.DataFrame({
        "decision_id": [f"d{i}" for i in range(n)], "member_id": [f"m{i}" for i in range(n)],
        "source": "service", "policy": "model", "slot": 0, "arm": d["arm"],
        "event_timestamp": t0 + pd.to_timedelta(np.linspace(0, 6, n), unit="D"),
        "treated": d["action"] != NONE,
        "reward_id": np.array(["R0", "R1", "R2", None], dtype=object)[d["action"]],
        "propensity": np.where(d["arm"] == "holdout", 1.0, d["logged"]),
        "spend": d["reward"], "redeemed": 0.0, "tier_rank": 1.0, "avg_basket_90d": 1.0,
        "x": d["x"], "model_versions": versions})
    items = pd.DataFrame({"reward_id": ["R0", "R1", "R2"], "reward_cost": 0.0,
                          "reward_min_tier_rank": 0.0})
    return rows, items


def _policy(name: str, coef: np.ndarray) -> PolicyModel:
    """A reward model whose value ranks the rewards by sigmoid(coef x + bias) (free rewards,
    margin and basket 1: the value is the conversion uplift over the no-offer)."""
    def scorer(members: pd.DataFrame, items: pd.DataFrame) -> RewardScores:
        x = members["x"].to_numpy()
        convert = _sigmoid(coef[None, :] * x[:, None] + BIAS[None, :])
        return RewardScores(propensity=np.zeros_like(convert), p_convert=convert,
                            p_control=np.full((len(x), 1), NONE_RATE))
    return PolicyModel(name, scorer, {"margin": 1.0, "basket_multiplier": 1.0,
                                      "basket_fallback": 1.0})


def test_the_gate_reads_an_experiments_decisions_over_its_arms() -> None:
    """evaluate_gate on decisions made inside an experiment: the model arm's probabilities are
    re-derived from the champion (the model that served), the random arm's from the catalog,
    and the DR estimates find the true values of the policies serving would run."""
    rows, items = _gate_rows(_experiment(30_000, seed=7))
    candidate, champion = _policy("v2", COEF), _policy("v1", np.array([-1.0, 0.2, 0.8]))
    exploration = Exploration(no_offer_share=0.05, epsilon=0.07, floor=0.0)
    kept = evaluate_gate(rows, items, candidate, champion, exploration, min_decisions=100)
    assert kept.decisions == 0 and not kept.promote  # no arm shares: nothing can be read
    week = ArmShares(pd.Timestamp("2026-03-01T00:00:00Z"), pd.Timestamp("2026-03-08T00:00:00Z"),
                     dict(SHARES))
    other = evaluate_gate(rows, items, candidate, champion, exploration, min_decisions=100,
                          experiments=[week], served=("reward", "2"))
    assert other.decisions == 0  # all served by v1: v2's ranking cannot stand for their arm
    gate = evaluate_gate(rows, items, candidate, champion, exploration, min_decisions=100,
                         n_bootstrap=300, experiments=[week], served=("reward", "1"))
    assert gate.decisions == 30_000 and gate.metrics["gate.experiment_decisions"] == 30_000
    assert "30000 in uplift experiments" in gate.reason
    x = np.random.default_rng(1).normal(size=1_000_000)
    truth = {"cand": float((_target(x) * _means(x)).sum(axis=1).mean()),
             "champ": float((_eps_greedy(_champion(x), 0.07, none=0.05)
                             * _means(x)).sum(axis=1).mean())}
    assert gate.candidate is not None and gate.champion is not None
    for est, true in ((gate.candidate, truth["cand"]), (gate.champion, truth["champ"])):
        # IPS rests on the probabilities alone (the DR here also has the true reward model)
        assert est.ips_ci_low <= true <= est.ips_ci_high
        assert est.dr_ci_low <= true <= est.dr_ci_high
    assert gate.difference is not None
    assert gate.difference.ci_low <= truth["cand"] - truth["champ"] <= gate.difference.ci_high


def test_experiment_decisions_of_an_earlier_champion_are_rescored_with_it() -> None:
    """A promotion inside the experiment: the model arm of the first half of its decisions was
    served by v1, of the second by v2, the champion now. Given v1 (from the registry), the gate
    re-derives each half's model arm from the version that served it: it reads every decision,
    with exactly the probabilities they were drawn with over the arms, and its intervals cover
    the truth; without v1 it reads only the second half."""
    n = 30_000
    d = _experiment(n, seed=11, promoted_at=n // 2)
    versions = np.where(np.arange(n) < n // 2, '{"reward":"1"}', '{"reward":"2"}')
    rows, items = _gate_rows(d, versions)
    v1, v2 = _policy("v1", np.array([-1.0, 0.2, 0.8])), _policy("v2", COEF)
    candidate = _policy("v3", np.array([-1.0, 0.2, 1.2]))
    exploration = Exploration(no_offer_share=0.05, epsilon=0.07, floor=0.0)
    week = ArmShares(pd.Timestamp("2026-03-01T00:00:00Z"), pd.Timestamp("2026-03-08T00:00:00Z"),
                     dict(SHARES))
    half = evaluate_gate(rows, items, candidate, v2, exploration, min_decisions=100,
                         n_bootstrap=50, experiments=[week], served=("reward", "2"))
    assert half.decisions == n // 2
    gate = evaluate_gate(rows, items, candidate, v2, exploration, min_decisions=100,
                         n_bootstrap=300, experiments=[week], served=("reward", "2"),
                         arm_models={"1": v1})
    assert gate.decisions == n
    assert gate.metrics["gate.experiment_decisions_earlier_versions"] == n // 2
    assert f"{n // 2} of them served by an earlier version (v1)" in gate.reason
    assert gate.policies is not None
    read = gate.policies.drop_duplicates("decision_id").set_index("decision_id")["p_logging"]
    np.testing.assert_allclose(read.loc[rows["decision_id"]].to_numpy(), d["mixed"], rtol=1e-12)
    # what v2's ranking would have made of v1's decisions: not the probabilities they had
    wrong = evaluate_gate(rows, items, candidate, v2, exploration, min_decisions=100,
                          n_bootstrap=50, experiments=[week], served=("reward", "2"),
                          arm_models={"1": v2})
    assert wrong.policies is not None
    misread = wrong.policies.drop_duplicates("decision_id")["p_logging"].to_numpy()
    assert np.abs(misread[: n // 2] - d["mixed"][: n // 2]).max() > 0.3
    x = np.random.default_rng(1).normal(size=1_000_000)
    pick = np.argmax(np.array([-1.0, 0.2, 1.2])[None, :] * x[:, None] + BIAS[None, :], axis=1)
    truth = {"cand": float((_eps_greedy(pick, 0.07, none=0.05) * _means(x)).sum(axis=1).mean()),
             "champ": float((_target(x) * _means(x)).sum(axis=1).mean())}
    assert gate.candidate is not None and gate.champion is not None
    for est, true in ((gate.candidate, truth["cand"]), (gate.champion, truth["champ"])):
        assert est.ips_ci_low <= true <= est.ips_ci_high
        assert est.dr_ci_low <= true <= est.dr_ci_high


def _logged_with_trial(n: int, seed: int, share: float) -> dict[str, np.ndarray]:
    """Decisions outside experiments: the champion's policy (epsilon 0.07, no-offer 0.05) or,
    on ``share`` of them, the trial's (the right model), each logged with its probability over
    that draw: (1 - share) x the champion's + share x the trial's."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    champ = _eps_greedy(_champion(x), 0.07, none=0.05)
    trial = _target(x)
    on_trial = rng.random(n) < share
    drawn = np.where(on_trial[:, None], trial, champ)
    action = (rng.random(n)[:, None] > drawn.cumsum(axis=1)).sum(axis=1)
    r = np.arange(n)
    mixed = (1 - share) * champ + share * trial
    return {"x": x, "arm": np.full(n, None, dtype=object), "action": action,
            "reward": rng.binomial(1, _means(x)[r, action]).astype(float),
            "logged": mixed[r, action], "on_trial": on_trial}


def test_a_trial_is_evaluated_on_its_own_traffic_and_the_interval_narrows() -> None:
    """The gate on the decisions a version on trial was in play for: its window is found by
    time from the tagged decisions (untagged ones before and after are left out), the paired
    interval covers the true gain, and it is several times narrower than the same number of
    decisions logged by the champion alone give."""
    from training.evaluation.gate import trial_rows

    n, share = 12_000, 0.3
    d = _logged_with_trial(n, seed=5, share=share)
    tagged = np.where(d["on_trial"], '{"reward":"2","reward@trial":"2"}',
                      '{"reward":"1","reward@trial":"2"}')
    rows, items = _gate_rows(d, tagged)
    before, _ = _gate_rows(_logged_with_trial(2_000, seed=6, share=0.0))
    before["event_timestamp"] -= pd.Timedelta(days=7)
    before["decision_id"] = "b" + before["decision_id"]
    window = trial_rows(pd.concat([before, rows], ignore_index=True), "reward", "2")
    assert list(window["decision_id"]) == list(rows["decision_id"])
    assert trial_rows(rows, "reward", "3").empty and trial_rows(before, "reward", "2").empty
    champion, trial = _policy("v1", np.array([-1.0, 0.2, 0.8])), _policy("v2", COEF)
    exploration = Exploration(no_offer_share=0.05, epsilon=0.07, floor=0.0)
    gate = evaluate_gate(window, items, trial, champion, exploration, min_decisions=100,
                         n_bootstrap=300)
    x = np.random.default_rng(1).normal(size=1_000_000)
    gain = float(((_target(x) - _eps_greedy(_champion(x), 0.07, none=0.05))
                  * _means(x)).sum(axis=1).mean())
    assert gate.difference is not None and gate.decisions == n
    assert gate.difference.ci_low <= gain <= gate.difference.ci_high
    alone_rows, _ = _gate_rows(_logged_with_trial(n, seed=5, share=0.0))
    alone = evaluate_gate(alone_rows, items, trial, champion, exploration, min_decisions=100,
                          n_bootstrap=300)
    assert alone.difference is not None
    ratio = gate.difference.half_width / alone.difference.half_width
    assert ratio < 0.6, (gate.difference.half_width, alone.difference.half_width, gain)


def test_the_minimum_counts_the_decisions_the_gate_can_re_score() -> None:
    """Decisions that logged a reward retired since cannot be re-scored and are left out; the
    minimum applies to what is left, and the reason says how many went."""
    d = _logged_with_trial(4_000, seed=5, share=0.0)
    rows, items = _gate_rows(d)
    retired = int((rows["reward_id"] == "R2").sum())
    assert retired > 500
    catalog = items[items["reward_id"] != "R2"].reset_index(drop=True)

    def two(p: PolicyModel) -> PolicyModel:  # the same model, scoring the catalog it is given
        def scorer(members: pd.DataFrame, items: pd.DataFrame) -> RewardScores:
            s = p.scorer(members, items)
            j = [int(r[1:]) for r in items["reward_id"]]
            return RewardScores(propensity=s.propensity[:, j], p_convert=s.p_convert[:, j],
                                p_control=s.p_control)
        return PolicyModel(p.name, scorer, p.value_params)

    ex = Exploration(no_offer_share=0.05, epsilon=0.07, floor=0.0)
    champion, candidate = two(_policy("v1", np.array([1.0, -0.2, -1.5]))), two(_policy("v2", COEF))
    short = evaluate_gate(rows, catalog, candidate, champion, ex, min_decisions=len(rows) - 10,
                          n_bootstrap=50)
    assert not short.promote and short.decisions == len(rows) - retired
    assert f"{retired} more logged a reward retired since" in short.reason
    enough = evaluate_gate(rows, catalog, candidate, champion, ex,
                           min_decisions=len(rows) - retired, n_bootstrap=50)
    assert enough.difference is not None and enough.decisions == len(rows) - retired
