"""training.evaluation.logged_ope: estimators against their textbook formulas, intervals against
a synthetic bandit whose true policy value is known, and the LOG/TARGET frame checks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from training.evaluation import metrics
from training.evaluation.gate import gate_power
from training.evaluation.logged_ope import (
    OPEInputError,
    PairedDifference,
    estimate_policy,
    evaluate_logged,
    paired_dr_difference,
)

Mutation = Callable[[pd.DataFrame, pd.DataFrame], object]

# --- a logged bandit with a known answer --------------------------------------------------------
# Three actions, context x ~ N(0, 1), reward ~ Bernoulli(sigmoid(COEF[a] * x + BIAS[a])), uniform
# logging; the target policy deterministically takes the truly best action.
COEF = np.array([-1.0, 0.2, 1.5])
BIAS = np.array([0.3, 0.0, -0.4])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _best(x: np.ndarray) -> np.ndarray:
    return np.argmax(COEF[None, :] * x[:, None] + BIAS[None, :], axis=1)


def _true_value() -> float:
    """E_x[sigmoid(max_a COEF[a] x + BIAS[a])], by a fine trapezoid over the normal density."""
    x = np.linspace(-9.0, 9.0, 400_001)
    pdf = np.exp(-x ** 2 / 2) / np.sqrt(2 * np.pi)
    value = _sigmoid(np.max(COEF[None, :] * x[:, None] + BIAS[None, :], axis=1))
    return float(np.trapezoid(pdf * value, x))


TRUE_VALUE = _true_value()


def _bandit_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    action = rng.integers(0, 3, size=n)
    reward = rng.binomial(1, _sigmoid(COEF[action] * x + BIAS[action])).astype(float)
    return {"x": x, "action": action, "reward": reward, "propensity": np.full(n, 1 / 3),
            "target_prob": (action == _best(x)).astype(float)}


def _bandit_frames(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    d = _bandit_arrays(n, seed)
    log = pd.DataFrame({"decision_id": [f"d{i}" for i in range(n)], "action": d["action"],
                        "propensity": d["propensity"], "reward": d["reward"], "x": d["x"]})
    actions = np.tile(np.arange(3), n)
    target = pd.DataFrame({"decision_id": np.repeat(log["decision_id"].to_numpy(), 3),
                           "action": actions,
                           "probability": (actions == np.repeat(_best(d["x"]), 3)).astype(float)})
    return log, target


def _random_log(n: int, seed: int) -> dict[str, np.ndarray]:
    """Arbitrary positive propensities, target probabilities, rewards and reward models."""
    rng = np.random.default_rng(seed)
    return {"reward": rng.normal(1.0, 2.0, n), "propensity": rng.uniform(0.02, 1.0, n),
            "target_prob": rng.uniform(0.0, 1.0, n) * (rng.random(n) < 0.7),
            "q_logged": rng.normal(1.0, 1.0, n), "q_target": rng.normal(1.0, 1.0, n)}


# --- estimators equal their textbook formulas --------------------------------------------------


@pytest.mark.parametrize("clip", [None, 5.0, 1.5])
def test_ips_snips_ess_equal_textbook(clip: float | None) -> None:
    d = _random_log(3_000, seed=7)
    r, mu, pi = d["reward"], d["propensity"], d["target_prob"]
    raw = pi / mu
    w = raw if clip is None else np.minimum(raw, clip)

    est = estimate_policy(r, mu, pi, clip=clip, n_bootstrap=50)

    assert est.ips == pytest.approx(np.mean(w * r), abs=1e-9)
    assert est.snips == pytest.approx(np.sum(w * r) / np.sum(w), abs=1e-9)
    assert est.ess == pytest.approx(np.sum(w) ** 2 / np.sum(w ** 2), abs=1e-9)
    assert est.max_weight == pytest.approx(w.max(), abs=1e-12)
    assert est.clipped == (0 if clip is None else int(np.sum(raw > clip)))
    assert est.n == r.size and est.dr is None and est.dr_ci_low is None
    if clip is not None:
        assert est.clipped > 0  # the caps above actually bite on this data
    else:  # and agree with the normal-interval estimators the training reports use
        assert est.ips == pytest.approx(metrics.ips(r, mu, pi).value, abs=1e-9)
        assert est.snips == pytest.approx(metrics.snips(r, mu, pi).value, abs=1e-9)


@pytest.mark.parametrize("clip", [None, 3.0])
def test_dr_equals_textbook(clip: float | None) -> None:
    d = _random_log(3_000, seed=8)
    w = d["target_prob"] / d["propensity"]
    w = w if clip is None else np.minimum(w, clip)
    expected = np.mean(d["q_target"] + w * (d["reward"] - d["q_logged"]))

    est = estimate_policy(d["reward"], d["propensity"], d["target_prob"], d["q_logged"],
                          d["q_target"], clip=clip, n_bootstrap=50)

    assert est.dr == pytest.approx(expected, abs=1e-9)
    assert est.dr_ci_low is not None and est.dr_ci_high is not None
    assert est.dr_ci_low < est.dr < est.dr_ci_high


def test_intervals_are_reproducible_and_bracket_the_estimate() -> None:
    d = _random_log(2_000, seed=9)
    args = (d["reward"], d["propensity"], d["target_prob"], d["q_logged"], d["q_target"])
    first = estimate_policy(*args, seed=3)
    assert estimate_policy(*args, seed=3) == first
    assert estimate_policy(*args, seed=4).ips_ci_low != first.ips_ci_low
    for name in ("ips", "snips", "dr"):
        d_ = first.as_dict()
        assert d_[f"{name}_ci_low"] < d_[name] < d_[f"{name}_ci_high"]


def test_group_bootstrap_resamples_whole_decisions() -> None:
    """Rows of one decision move together: one row per group is the row bootstrap, and a log
    whose every decision is duplicated keeps its interval width only when grouped."""
    d = _random_log(2_000, seed=10)
    args = (d["reward"], d["propensity"], d["target_prob"])
    single = estimate_policy(*args, seed=1)
    assert estimate_policy(*args, seed=1, groups=np.arange(2_000)) == single

    twice = [np.concatenate([a, a]) for a in args]
    decisions = np.concatenate([np.arange(2_000), np.arange(2_000)])
    grouped = estimate_policy(*twice, seed=1, groups=decisions)
    naive = estimate_policy(*twice, seed=1)
    width = single.ips_ci_high - single.ips_ci_low
    assert grouped.ips_ci_high - grouped.ips_ci_low == pytest.approx(width, rel=0.15)
    assert naive.ips_ci_high - naive.ips_ci_low < 0.8 * width  # falsely precise


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"q_logged": np.zeros(4)}, "q_logged, q_target"),
    ({"clip": 0.0}, "clip"),
    ({"n_bootstrap": 1}, "n_bootstrap"),
    ({"alpha": 1.5}, "alpha"),
    ({"propensity": np.array([0.5, 0.0, 0.5, 0.5])}, "logged_propensity"),
    ({"target_prob": np.zeros(4)}, "target_prob"),
])
def test_estimate_policy_rejects_bad_arguments(kwargs: dict, needle: str) -> None:
    base = {"reward": np.ones(4), "propensity": np.full(4, 0.5),
            "target_prob": np.array([1.0, 0.0, 1.0, 0.0])}
    arrays = {k: kwargs.pop(k) for k in list(kwargs) if k in base}
    with pytest.raises(ValueError, match=needle):
        estimate_policy(**{**base, **arrays}, **kwargs)


# --- intervals cover the truth -----------------------------------------------------------------


def test_dr_and_snips_cover_the_true_value_and_dr_is_narrower() -> None:
    log, target = _bandit_frames(6_000, seed=21)
    out = evaluate_logged(log, target, seed=0)

    assert out["context_columns"] == ["x"] and out["actions"] == 3 and out["n"] == 6_000
    assert out["dr_ci_low"] <= TRUE_VALUE <= out["dr_ci_high"]
    assert out["snips_ci_low"] <= TRUE_VALUE <= out["snips_ci_high"]
    dr_width = out["dr_ci_high"] - out["dr_ci_low"]
    assert dr_width < out["ips_ci_high"] - out["ips_ci_low"]
    assert evaluate_logged(log, target, seed=0) == out  # cross-fit and bootstrap are seeded


def test_interval_coverage_across_seeds() -> None:
    """Over 40 independent logs the 95 % intervals cover the truth most of the time: IPS, and
    DR with a useless reward model (a constant 0.9), which the right propensities must rescue
    (doubly robust: unbiased if either the propensities or the model are right)."""
    covered = {"ips": 0, "dr": 0}
    dr_values = []
    for seed in range(40):
        d = _bandit_arrays(2_000, seed=100 + seed)
        q = np.full(2_000, 0.9)
        est = estimate_policy(d["reward"], d["propensity"], d["target_prob"], q, q, seed=seed)
        covered["ips"] += est.ips_ci_low <= TRUE_VALUE <= est.ips_ci_high
        covered["dr"] += est.dr_ci_low <= TRUE_VALUE <= est.dr_ci_high
        dr_values.append(est.dr)
    assert covered["ips"] / 40 >= 0.85
    assert covered["dr"] / 40 >= 0.85
    assert abs(np.mean(dr_values) - TRUE_VALUE) < 3 * np.std(dr_values) / np.sqrt(40)


# --- paired difference: candidate minus champion on the same decisions --------------------------
# The champion logs near-greedily (0.9 on its pick) with a slightly wrong model; the candidate is
# epsilon-greedy on the true best action.
LOG_COEF = np.array([-1.0, 0.2, 0.8])


def _eps_greedy(pick: np.ndarray, eps: float = 0.1) -> np.ndarray:
    probs = np.full((len(pick), 3), eps / 3)
    probs[np.arange(len(pick)), pick] += 1 - eps
    return probs


def _champion_pick(x: np.ndarray) -> np.ndarray:
    return np.argmax(LOG_COEF[None, :] * x[:, None] + BIAS[None, :], axis=1)


def _expected(x: np.ndarray, probs: np.ndarray) -> float:
    return float((probs * _sigmoid(COEF[None, :] * x[:, None] + BIAS[None, :])).sum(1).mean())


def _near_greedy(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    logging = _eps_greedy(_champion_pick(x))
    action = (rng.random(n)[:, None] > logging.cumsum(axis=1)).sum(axis=1)
    reward = rng.binomial(1, _sigmoid(COEF[action] * x + BIAS[action])).astype(float)
    cand = _eps_greedy(_best(x))
    q = np.full((n, 3), 0.5)  # a useless reward model: the propensities carry the estimate
    r = np.arange(n)
    return {"reward": reward, "propensity": logging[r, action], "q_logged": q[r, action],
            "a_prob": cand[r, action], "a_q": (cand * q).sum(1),
            "b_prob": logging[r, action], "b_q": (logging * q).sum(1)}


def test_paired_difference_is_the_difference_of_the_two_dr_estimates() -> None:
    d = _near_greedy(3_000, seed=5)
    diff = paired_dr_difference(d["reward"], d["propensity"], d["q_logged"], d["a_prob"],
                                d["a_q"], d["b_prob"], d["b_q"], seed=1)
    a = estimate_policy(d["reward"], d["propensity"], d["a_prob"], d["q_logged"], d["a_q"])
    b = estimate_policy(d["reward"], d["propensity"], d["b_prob"], d["q_logged"], d["b_q"])
    assert diff.dr == pytest.approx(a.dr - b.dr, abs=1e-12)
    assert diff.ci_low < diff.dr < diff.ci_high
    # the noise both share cancels: narrower than the candidate's own interval (here only a
    # little: the rows where the two differ carry weights up to 28 and most of the variance)
    assert diff.ci_high - diff.ci_low < a.dr_ci_high - a.dr_ci_low
    assert 0 < diff.differing < diff.n
    same = paired_dr_difference(d["reward"], d["propensity"], d["q_logged"], d["b_prob"],
                                d["b_q"], d["b_prob"], d["b_q"])
    assert same.dr == same.ci_low == same.ci_high == 0.0 and same.differing == 0


def test_paired_interval_covers_the_true_difference() -> None:
    x = np.random.default_rng(0).normal(size=1_000_000)
    truth = (_expected(x, _eps_greedy(_best(x)))
             - _expected(x, _eps_greedy(_champion_pick(x))))
    assert truth > 0.005  # the candidate is truly better, by a little
    covered, positive = 0, 0
    for seed in range(30):
        d = _near_greedy(4_000, seed=200 + seed)
        diff = paired_dr_difference(d["reward"], d["propensity"], d["q_logged"], d["a_prob"],
                                    d["a_q"], d["b_prob"], d["b_q"], seed=seed)
        covered += diff.ci_low <= truth <= diff.ci_high
        positive += diff.ci_low > 0
    assert covered / 30 >= 0.85
    assert positive < 30  # not a rubber stamp: small gains are not always shown


def _paired(n: int, seed: int) -> PairedDifference:
    d = _near_greedy(n, seed=seed)
    return paired_dr_difference(d["reward"], d["propensity"], d["q_logged"], d["a_prob"],
                                d["a_q"], d["b_prob"], d["b_q"], seed=seed)


def test_paired_half_width_shrinks_as_one_over_root_n() -> None:
    """The premise of the gate's "decisions to show" figure: 4 times the rows, half the width,
    so what 4,000 rows say about 16,000 is what 16,000 rows show."""
    small = [_paired(4_000, seed=300 + s) for s in range(5)]
    large = [_paired(16_000, seed=400 + s) for s in range(5)]
    ratio = np.mean([d.half_width for d in small]) / np.mean([d.half_width for d in large])
    assert 1.7 < ratio < 2.3
    predicted = np.mean([d.decisions_to_show(np.mean([e.half_width for e in large]))
                         for d in small])
    assert 16_000 * 0.7 < predicted < 16_000 * 1.4


def test_decisions_to_show_a_gain() -> None:
    diff = PairedDifference(n=10_000, dr=0.5, ci_low=-1.5, ci_high=2.5, differing=4_000)
    assert diff.half_width == 2.0
    assert diff.decisions_to_show(0.5) == pytest.approx(160_000)  # 10,000 x (2 / 0.5)^2
    assert diff.decisions_to_show(4.0) == pytest.approx(2_500)
    assert diff.decisions_to_show(0.0) is None and diff.decisions_to_show(-1.0) is None
    assert diff.as_dict()["half_width"] == 2.0


def test_a_kept_champion_says_what_the_decisions_could_show() -> None:
    diff = PairedDifference(n=10_000, dr=0.5, ci_low=-1.5, ci_high=2.5, differing=4_000)
    text, figures = gate_power(diff, bar=40.0)
    assert "gains below about 2.00 per decision (5.0% of the champion's value)" in text
    assert "these 10,000 decisions" in text
    assert "the estimated gain +0.50 would take about 160,000 decisions" in text
    assert figures == {"gate.detectable_gain": 2.0,
                       "gate.decisions_to_show_estimate": pytest.approx(160_000)}
    worse = PairedDifference(n=10_000, dr=-0.5, ci_low=-2.5, ci_high=1.5, differing=4_000)
    text, figures = gate_power(worse, bar=40.0)
    assert "estimated gain" not in text and "gate.decisions_to_show_estimate" not in figures


# --- frames: joins and checks ------------------------------------------------------------------


def _small_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    log = pd.DataFrame({"decision_id": ["a", "b", "c", "d"], "action": ["x", "y", "x", "z"],
                        "propensity": [0.5, 0.5, 0.25, 0.5], "reward": [1.0, 0.0, 2.0, 1.0]})
    target = pd.DataFrame({"decision_id": ["a", "a", "b", "c", "c", "d"],
                           "action": ["x", "y", "y", "x", "y", "x"],
                           "probability": [0.3, 0.7, 1.0, 0.5, 0.5, 1.0]})
    return log, target


def test_frame_join_and_missing_actions_have_probability_zero() -> None:
    log, target = _small_frames()
    out = evaluate_logged(log, target, n_bootstrap=20)
    # pi of the logged action: a:x 0.3, b:y 1.0, c:x 0.5, d:z absent from d's distribution -> 0.
    w = np.array([0.3, 1.0, 0.5, 0.0]) / log["propensity"].to_numpy()
    r = log["reward"].to_numpy()
    assert out["ips"] == pytest.approx(np.mean(w * r), abs=1e-12)
    assert out["snips"] == pytest.approx(np.sum(w * r) / np.sum(w), abs=1e-12)
    assert out["dr"] is None and out["context_columns"] == [] and out["actions"] == 3


def test_keys_match_across_types_and_slots() -> None:
    """Integer ids in one file and text in the other, float-typed actions, several slots."""
    log = pd.DataFrame({"decision_id": [1, 1, 2, 2], "slot": [0, 1, 0, 1],
                        "action": [1.0, 2.0, 2.0, 1.0], "propensity": 0.5,
                        "reward": [1.0, 0.0, 1.0, 1.0]})
    target = pd.DataFrame({"decision_id": ["1", "1", "2", "2"], "slot": ["0", "1", "0", "1"],
                           "action": ["1", "2", "1", "1"], "probability": 1.0})
    out = evaluate_logged(log, target, n_bootstrap=20)
    assert out["ips"] == pytest.approx(np.mean(np.array([1, 1, 0, 1]) * 2 * log["reward"]))


def test_categorical_and_time_context_feed_the_reward_model() -> None:
    log, target = _bandit_frames(3_000, seed=2)
    rng = np.random.default_rng(0)
    log["segment"] = rng.choice(["gold", "silver"], len(log))
    log["time"] = pd.date_range("2026-01-01", periods=len(log), freq="min").strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    out = evaluate_logged(log, target, folds=3)
    assert out["context_columns"] == ["x", "segment", "time"]
    assert out["dr_ci_low"] <= out["dr"] <= out["dr_ci_high"]


def _mutate(fn: Mutation) -> tuple[pd.DataFrame, pd.DataFrame]:
    log, target = _small_frames()
    fn(log, target)
    return log, target


BAD_FRAMES = [
    (lambda lg, t: lg.drop(columns="propensity", inplace=True),
     "LOG: missing column(s) 'propensity'"),
    (lambda lg, t: lg.loc.__setitem__(([1, 3], "propensity"), [1.5, 0.0]),
     "LOG: column 'propensity' has 2 values outside (0, 1] (first at row 2)"),
    (lambda lg, t: lg.__setitem__("reward", ["1", "0", "abc", "1"]),
     "LOG: column 'reward' has 1 non-numeric or missing values (first at row 3)"),
    (lambda lg, t: lg.loc.__setitem__((2, "decision_id"), "a"),
     "LOG: 1 duplicate (decision_id, slot) rows"),
    (lambda lg, t: lg.loc.__setitem__((0, "action"), None),
     "LOG: column 'action' has 1 missing values (first at row 1)"),
    (lambda lg, t: t.drop(columns="probability", inplace=True),
     "TARGET: missing column(s) 'probability'"),
    (lambda lg, t: t.loc.__setitem__((1, "probability"), 0.6),
     "TARGET: column 'probability' does not sum to 1"),
    (lambda lg, t: t.loc.__setitem__(([3, 4], "probability"), [1.5, -0.5]),
     "TARGET: column 'probability' has 1 negative values (first at row 5)"),
    (lambda lg, t: t.drop(index=2, inplace=True),
     "TARGET: no distribution for 1 LOG decisions, e.g. decision_id 'b'"),
    (lambda lg, t: t.__setitem__("action", "other-" + t["action"]),
     "TARGET: probability 0 for every logged action"),
    (lambda lg, t: lg.drop(index=[1, 2, 3], inplace=True), "LOG: need at least 2 rows"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_FRAMES,
                         ids=[m.split(" (")[0] for _, m in BAD_FRAMES])
def test_bad_frames_name_the_frame_and_column(mutate: Mutation, message: str) -> None:
    log, target = _mutate(mutate)
    with pytest.raises(OPEInputError) as info:
        evaluate_logged(log, target, n_bootstrap=20)
    assert isinstance(info.value, ValueError)
    assert message in str(info.value)
