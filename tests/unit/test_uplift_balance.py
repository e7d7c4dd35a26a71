"""The leakage and balance check (training/uplift/balance.py) on synthetic randomized tests:
silent on true randomizations, loud on post-treatment columns and broken randomizations."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from training.uplift.balance import BalanceReport, balance_report, holm_adjust


def _pre_treatment(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """20 pre-treatment columns of the kinds real campaign files have: skewed, discrete, binary,
    missing values, categoricals from 3 to 2,000 levels (with NaN), a rare level, a constant."""
    cols: dict[str, object] = {f"num{i}": rng.normal(size=n) * (i + 1) for i in range(5)}
    cols["spend_before"] = rng.lognormal(3, 1.5, n)
    cols["visits_before"] = rng.poisson(2, n).astype(float)
    cols["is_member"] = (rng.random(n) < 0.1).astype(int)
    cols["opted_in"] = rng.random(n) < 0.5
    tenure = rng.exponential(300, n)
    tenure[rng.random(n) < 0.2] = np.nan
    cols["tenure"] = tenure
    cols["age"] = pd.array(np.where(rng.random(n) < 0.05, None, rng.integers(18, 80, n)),
                           dtype="Int64")
    for i, levels in enumerate([3, 5, 8, 30]):
        names = np.array([f"l{j}" for j in range(levels)], dtype=object)
        v = names[rng.choice(levels, n, p=rng.dirichlet(np.ones(levels)))]
        v[rng.random(n) < 0.07 * i] = None
        cols[f"cat{i}"] = pd.Categorical(v)
    cols["zip"] = pd.Categorical(rng.integers(0, 2000, n).astype(str))
    cols["segment"] = pd.Categorical(np.where(rng.random(n) < 0.002, "rare", "common"))
    cols["plan"] = np.array(["free", "basic", "pro"], dtype=object)[rng.integers(0, 3, n)]
    cols["country"] = pd.Categorical(["FR"] * n)
    cols["all_missing"] = np.full(n, np.nan)
    frame = pd.DataFrame(cols)
    assert frame.shape[1] == 20
    return frame


def _rct(seed: int, n: int = 20_000, treated: int = 1) -> tuple[pd.DataFrame, np.ndarray,
                                                                 list[str]]:
    rng = np.random.default_rng(seed)
    arm = rng.integers(0, treated + 1, n)
    return _pre_treatment(rng, n), arm, ["A"] + [chr(ord("B") + k) for k in range(treated)]


def _outcome(rng: np.random.Generator, arm: np.ndarray, effect: float) -> np.ndarray:
    return (rng.random(len(arm)) < 0.15 + effect * (arm > 0)).astype(float)


@pytest.mark.parametrize(("seeds", "treated"), [(range(3), 1), (range(100, 102), 4)])
def test_true_randomization_flags_nothing(seeds: range, treated: int) -> None:
    """A few seeds here; 40 seeds each (1 and 4 treated arms) measured 0 false flags, see the
    module's report. A flag by chance here would mean a far higher rate than alpha."""
    for seed in seeds:
        X, arm, names = _rct(seed, treated=treated)
        report = balance_report(X, arm, names, seed=seed)
        assert report.flagged == [], (seed, [c for c in report.columns if c.flagged])
        assert report.randomization_ok, (seed, report.overall_auc, report.overall_p_value)
        assert abs(report.overall_auc - 0.5) < 0.04
        lo, hi = report.overall_auc_ci
        assert lo <= report.overall_auc <= hi
        assert {c.column for c in report.columns} == set(X.columns)


def test_constant_columns_are_never_flagged() -> None:
    X, arm, names = _rct(7, n=5_000)
    report = balance_report(X, arm, names)
    by_name = {c.column: c for c in report.columns}
    for name in ("country", "all_missing"):
        assert not by_name[name].flagged
        assert by_name[name].p_value == 1.0 and by_name[name].smd == 0.0


def test_post_treatment_columns_are_flagged() -> None:
    rng = np.random.default_rng(1)
    X, arm, names = _rct(1)
    n = len(arm)
    y_visits = _outcome(rng, arm, 0.03)
    X["visits_after"] = rng.poisson(1 + 0.3 * arm) + 2 * y_visits
    y_buy = _outcome(rng, arm, 0.05)
    X["spend"] = y_buy * rng.lognormal(0, 1, n)  # spend is a consequence of buying
    shares = np.where(arm[:, None] > 0, [0.46, 0.32, 0.22], [0.5, 0.3, 0.2])
    X["last_channel"] = pd.Categorical(
        np.array(["email", "app", "web"])[(rng.random(n)[:, None] > shares.cumsum(1)).sum(1)])
    unsubscribed = rng.normal(size=n)
    unsubscribed[(arm > 0) & (rng.random(n) < 0.3)] = np.nan  # only treated rows can be missing
    X["unsubscribe_score"] = unsubscribed

    report = balance_report(X, arm, names)
    assert set(report.flagged) == {"visits_after", "spend", "last_channel", "unsubscribe_score"}
    assert report.columns[0].flagged and not report.columns[-1].flagged  # flagged first
    by_name = {c.column: c for c in report.columns}
    assert by_name["visits_after"].smd > 0.1
    assert by_name["spend"].p_adjusted < 0.001  # SMD alone (~0.07) would miss it
    nan_col = by_name["unsubscribe_score"]
    assert nan_col.smd > 0.9 and any("SMD +0.92 on missing share" in r for r in nan_col.reasons)
    assert nan_col.auc > 0.55
    assert "treated B vs control A" in " ".join(by_name["visits_after"].reasons)
    assert report.randomization_ok  # the leaks are flagged; the rest is balanced
    json.dumps(report.to_dict(), allow_nan=False)  # JSON-ready, inf included


def test_the_spend_leak_is_caught_by_the_test_not_the_smd() -> None:
    """A 5-point effect on conversion at 15 %: spend's SMD stays under 0.1, its rank test does
    not; with the p-value rule switched off (alpha tiny) it would pass unseen."""
    rng = np.random.default_rng(2)
    arm = rng.integers(0, 2, 20_000)
    X = pd.DataFrame({"spend": _outcome(rng, arm, 0.05) * rng.lognormal(0, 1, len(arm))})
    assert balance_report(X, arm, ["A", "B"]).flagged == ["spend"]
    assert balance_report(X, arm, ["A", "B"], alpha=1e-300).flagged == []


def test_broken_randomization_is_caught() -> None:
    """Assignment depends on a pre-treatment column: that column is flagged."""
    rng = np.random.default_rng(3)
    X, _, names = _rct(3)
    arm = (rng.random(len(X)) < 0.4 + 0.2 * (X["num0"] > 0)).astype(int)
    report = balance_report(X, arm, names)
    assert "num0" in report.flagged
    assert any("AUC" in r for r in report.columns[0].reasons)


def test_assignment_on_a_combination_breaks_randomization_ok() -> None:
    """Assignment depends on the sign of num0 * num1: neither column differs alone (each is
    balanced), only the columns together predict the arm."""
    rng = np.random.default_rng(4)
    X, _, names = _rct(4)
    arm = (rng.random(len(X)) < 0.35 + 0.3 * (X["num0"] * X["num1"] > 0)).astype(int)
    report = balance_report(X, arm, names)
    assert "num0" not in report.flagged and "num1" not in report.flagged
    assert not report.randomization_ok
    assert report.overall_auc > 0.53 and report.overall_auc_ci[0] > 0.5
    assert report.overall_arm == "B" and report.overall_p_value < 0.001


def test_multi_arm_reason_names_the_arm_that_differs() -> None:
    rng = np.random.default_rng(5)
    X, arm, names = _rct(5, treated=3)
    X["coupon_used"] = rng.random(len(arm)) < np.where(arm == 2, 0.3, 0.2)  # only arm C
    report = balance_report(X, arm, names)
    assert report.flagged == ["coupon_used"]
    reasons = " ".join(report.columns[0].reasons)
    assert "treated C vs control A" in reasons
    assert "treated B" not in reasons and "treated D" not in reasons
    assert report.columns[0].smd > 0.1


def test_runtime_64k_rows_12_columns() -> None:
    X, arm, names = _rct(6, n=64_000)
    X = X.iloc[:, :12]
    start = time.perf_counter()
    balance_report(X, arm, names)
    assert time.perf_counter() - start < 10.0


def test_report_to_dict_and_flagged() -> None:
    rng = np.random.default_rng(8)
    arm = rng.integers(0, 2, 4_000)
    X = pd.DataFrame({"leak": arm.astype(float), "x": rng.normal(size=4_000)})
    report = balance_report(X, arm, ["ctl", "trt"], smd_threshold=0.2)
    assert isinstance(report, BalanceReport)
    assert report.flagged == ["leak"]
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["thresholds"] == {"smd": 0.2, "alpha": 0.001, "auc": 0.55}
    assert d["columns"][0]["smd"] == "inf" and d["columns"][0]["auc"] > 0.99
    assert d["flagged"] == ["leak"] and d["randomization_ok"] is True


def test_holm_adjust_matches_hand_computation() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert np.allclose(holm_adjust(p), [0.03, 0.06, 0.06, 0.02])
    assert holm_adjust(np.array([])).size == 0


def test_invalid_inputs_are_refused() -> None:
    X = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="rows"):
        balance_report(X, np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="control"):
        balance_report(X, np.array([1, 1, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="0..1"):
        balance_report(X, np.array([0, 1, 2]), ["a", "b"])
