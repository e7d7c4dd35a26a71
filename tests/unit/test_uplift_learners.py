"""Uplift learners, cross-fitting and the best-arm policy on data with a known effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.experiments import stats
from training.uplift import crossfit
from training.uplift.crossfit import fit_uplift
from training.uplift.data import prepare
from training.uplift.learners import LEARNERS, make_learner
from training.uplift.policy import best_arm, policy_value


def _rct(n: int, seed: int, arms: tuple[str, ...] = ("a",)) -> tuple[pd.DataFrame, np.ndarray]:
    """Arm a helps members with x2 > 0.5 (+15 points); arm b helps x1 > 0 (+12); c is inert."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    arm = rng.choice(["ctl", *arms], n)
    effects = {"a": 0.15 * (x2 > 0.5), "b": 0.12 * (x1 > 0), "c": np.zeros(n)}
    tau = np.column_stack([effects[a] for a in arms])
    base = 1 / (1 + np.exp(-(-1.4 + 0.5 * x1)))
    idx = np.array([(["ctl", *arms]).index(a) for a in arm])
    p = base + np.where(idx > 0, tau[np.arange(n), np.maximum(idx - 1, 0)], 0.0)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "city": rng.choice(["n", "s", "e"], n),
                          "noise": rng.normal(size=n), "grp": arm,
                          "y": (rng.random(n) < p).astype(int)})
    return frame, tau


@pytest.mark.parametrize("name", LEARNERS)
def test_every_learner_finds_a_strong_effect(name: str) -> None:
    frame, tau = _rct(6000, 0)
    data = prepare(frame, "grp", ["a"], "ctl", "y")
    test, test_tau = _rct(4000, 1)
    model = make_learner(name).fit(data.X, (data.arm == 1).astype(float), data.outcome, seed=0)
    score = model.predict(prepare(test, "grp", ["a"], "ctl", "y").X)
    helped = test_tau[:, 0] > 0
    # ranks the helped half above the rest, and the scale is an uplift (points), not a rate
    assert score[helped].mean() - score[~helped].mean() > 0.05, name
    assert -0.5 < score.mean() < 0.5


def test_learners_follow_scikit_learn_conventions() -> None:
    frame, _ = _rct(500, 2)
    data = prepare(frame, "grp", ["a"], "ctl", "y")
    with pytest.raises(RuntimeError, match="fit"):
        make_learner("t").predict(data.X)
    with pytest.raises(ValueError, match="--learners"):
        make_learner("causal_forest")
    constant = np.zeros(len(data.outcome))  # nobody converted: every learner predicts 0 uplift
    for name in LEARNERS:
        score = make_learner(name).fit(data.X, (data.arm == 1).astype(float), constant).predict(
            data.X)
        assert np.allclose(score, 0.0, atol=1e-6), name


def test_unseen_levels_and_missing_values_score() -> None:
    frame, _ = _rct(3000, 3)
    data = prepare(frame, "grp", ["a"], "ctl", "y")
    fit = fit_uplift(data, learners=["linear", "t"], folds=2, inner_folds=2)
    new = frame.head(5).assign(city=["atlantis", None, "n", "s", "e"],
                               x1=[np.nan, 0.1, 0.2, 0.3, 0.4])
    assert np.isfinite(fit.predict(new)).all()
    with pytest.raises(ValueError, match="lack column"):
        fit.predict(new.drop(columns=["x2"]))


def test_cross_fitting_scores_every_row_out_of_fold_and_chooses_inside_folds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    frame, _ = _rct(3000, 4, ("a", "b"))
    data = prepare(frame, "grp", ["a", "b"], "ctl", "y")
    seen: list[np.ndarray] = []
    original = crossfit.inner_choice

    def spy(data_, rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(rows.copy())
        return original(data_, rows, *args, **kwargs)

    monkeypatch.setattr(crossfit, "inner_choice", spy)
    fit = fit_uplift(data, learners=["t", "linear"], folds=3, inner_folds=2, seed=1)
    assert len(fit.arms) == 2 and fit.nested.shape == (3000, 2)
    assert sorted(set(fit.fold)) == [0, 1, 2]
    assert len(seen) == 6  # one inner choice per arm and outer fold
    for j, rows in enumerate(seen):
        k, fold = 1 + j // 3, j % 3
        assert not np.isin(rows, np.flatnonzero(fit.fold == fold)).any()  # training rows only
        assert set(data.arm[rows]) == {0, k}  # arm k against control
    for arm in fit.arms:
        for fold, pick in enumerate(arm.chosen_per_fold):
            rows = fit.fold == fold
            np.testing.assert_array_equal(arm.nested[rows], arm.oof[pick][rows])
        assert arm.chosen in ("t", "linear", "ensemble") and set(arm.models) == {arm.chosen}
    # arm a's effect follows x2, arm b's x1: each arm's scores find its own driver
    corr = [np.corrcoef(fit.nested[:, j], data.X[c])[0, 1] for j, c in enumerate(("x2", "x1"))]
    assert min(corr) > 0.3, corr


def test_default_learners_cross_fit_the_baselines_beside_the_candidates() -> None:
    frame, _ = _rct(2000, 5)
    data = prepare(frame, "grp", ["a"], "ctl", "y")
    fit = fit_uplift(data, folds=2, inner_folds=2)
    arm = fit.arms[0]
    assert set(arm.oof) == set(LEARNERS)
    assert arm.chosen not in ("t_plain", "linear_plain")  # baselines are never chosen
    assert set(arm.chosen_per_fold) <= {"t", "s", "x", "dr", "linear", "ensemble"}
    assert {"t_plain", "linear_plain"} <= set(arm.models)  # refitted, for comparisons
    np.testing.assert_allclose(fit.predict(frame, learner="t_plain")[:, 0],
                               arm.models["t_plain"].predict(data.X))
    qini = arm.outer_qini(data, 1)
    candidates = ("t", "s", "x", "dr", "linear")
    np.testing.assert_allclose(arm.oof["ensemble"], np.mean([arm.oof[c] for c in candidates],
                                                             axis=0))
    assert arm.chosen == "ensemble" or qini[arm.chosen] > qini["ensemble"]


def test_the_default_learner_stays_unless_another_is_clearly_better() -> None:
    from training.uplift.crossfit import clear_winner

    rng = np.random.default_rng(0)
    pooled = {"ensemble": 0.010, "t": 0.012, "s": 0.005}
    shared = rng.normal(0.010, 0.004, 200)  # paired draws: the common noise cancels
    noisy = {"ensemble": shared, "t": shared + rng.normal(0.002, 0.003, 200)}
    assert clear_winner(pooled, noisy, "ensemble") == "ensemble"  # +0.002, SE 0.003
    steady = {"ensemble": shared, "t": shared + rng.normal(0.002, 0.0005, 200)}
    assert clear_winner(pooled, steady, "ensemble") == "t"  # +0.002, SE 0.0005
    assert clear_winner({"t": 0.01, "s": 0.02}, {}, "ensemble") == "s"  # no default scored
    assert clear_winner({"t": float("nan"), "s": -0.01}, {}, "s") == "s"


def test_best_arm_picks_the_largest_positive_uplift() -> None:
    uplift = np.array([[0.02, 0.05], [-0.01, -0.02], [0.03, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(best_arm(uplift), [2, 0, 1, 0])


def test_policy_value_recovers_the_true_value_of_targeting() -> None:
    frame, tau = _rct(30000, 6, ("a", "b", "c"))
    data = prepare(frame, "grp", ["a", "b", "c"], "ctl", "y")
    result = policy_value(data, tau, bootstrap=100, seed=0)  # the true uplift as scores
    base = 1 / (1 + np.exp(-(-1.4 + 0.5 * frame["x1"].to_numpy())))
    choice = best_arm(tau)
    truth = (base + np.where(choice > 0, tau[np.arange(len(tau)), np.maximum(choice - 1, 0)],
                             0)).mean()
    assert result.ci[0] < truth < result.ci[1]
    assert result.lift_vs_control_ci[0] > 0  # targeting beats sending nothing
    assert result.share_assigned["c"] == 0.0  # the inert arm is never anyone's best
    assert result.lift_vs_best_arm_ci[0] > 0  # and beats the best single arm for everyone
    assert sum(result.share_assigned.values()) == pytest.approx(1.0)


def test_metrics_use_the_scikit_uplift_definitions_on_the_nested_scores() -> None:
    frame, _ = _rct(2000, 7)
    data = prepare(frame, "grp", ["a"], "ctl", "y")
    fit = fit_uplift(data, learners=["t"], folds=2)
    arm = fit.arms[0]
    assert arm.chosen_per_fold == ["t", "t"] and arm.inner_qini == [{}, {}]
    y, t = data.outcome[arm.rows], (data.arm[arm.rows] == 1).astype(float)
    assert arm.outer_qini(data, 1)["t"] == stats.qini_auc_score(y, t, arm.nested[arm.rows])
