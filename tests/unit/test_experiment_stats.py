"""Experiment statistics on simulated A/B tests with known answers: interval coverage, power."""

from __future__ import annotations

import numpy as np
import pytest

from serving.experiments import stats

DRAWS = 400


def _coverage(hits: list[bool]) -> float:
    return float(np.mean(hits))


def test_difference_ci_covers_the_true_effect_about_95_percent_binary() -> None:
    rng = np.random.default_rng(2026)
    p_control, p_treated = 0.20, 0.25
    hits = []
    for _ in range(DRAWS):
        t = rng.random(800) < p_treated
        c = rng.random(600) < p_control
        a = stats.compare_groups(t.astype(float), c.astype(float)).absolute
        hits.append(a.ci_low <= p_treated - p_control <= a.ci_high)
    assert 0.92 <= _coverage(hits) <= 0.98


def test_difference_ci_covers_the_true_effect_about_95_percent_spend() -> None:
    """Spend is zero-inflated and skewed (most members buy nothing): still near-nominal."""
    rng = np.random.default_rng(7)

    def spend(n: int, p_buy: float, mean_basket: float) -> np.ndarray:
        buys = rng.random(n) < p_buy
        return np.where(buys, rng.lognormal(np.log(mean_basket) - 0.5**2 / 2, 0.5, n), 0.0)

    true = 0.3 * 60.0 - 0.25 * 55.0
    hits = []
    for _ in range(DRAWS):
        a = stats.compare_groups(spend(1500, 0.3, 60.0), spend(1500, 0.25, 55.0)).absolute
        hits.append(a.ci_low <= true <= a.ci_high)
    assert 0.92 <= _coverage(hits) <= 0.98


def test_wilson_and_relative_intervals_cover() -> None:
    rng = np.random.default_rng(11)
    wilson, relative = [], []
    for _ in range(DRAWS):
        t = (rng.random(1000) < 0.12).astype(float)
        c = (rng.random(1000) < 0.08).astype(float)
        w = stats.proportion_ci(int(t.sum()), t.size)
        wilson.append(w.ci_low <= 0.12 <= w.ci_high)
        r = stats.relative_change(t, c)
        assert r is not None
        relative.append(r.ci_low <= 0.12 / 0.08 - 1 <= r.ci_high)
    assert 0.92 <= _coverage(wilson) <= 0.98
    assert 0.92 <= _coverage(relative) <= 0.98


def test_false_positive_rate_is_alpha_under_no_effect() -> None:
    rng = np.random.default_rng(5)
    p = [stats.compare_groups((rng.random(700) < 0.3).astype(float),
                              (rng.random(700) < 0.3).astype(float)).p_value
         for _ in range(DRAWS)]
    assert 0.02 <= np.mean(np.array(p) < 0.05) <= 0.08


def test_minimum_detectable_effect_has_the_stated_power() -> None:
    """An effect equal to the reported MDE is detected about 80% of the time."""
    rng = np.random.default_rng(3)
    n, p0 = 1000, 0.3
    mde = stats.minimum_detectable_effect(np.sqrt(p0 * (1 - p0)), n, n)
    detected = [stats.compare_groups((rng.random(n) < p0 + mde).astype(float),
                                     (rng.random(n) < p0).astype(float)).p_value < 0.05
                for _ in range(DRAWS)]
    assert 0.72 <= np.mean(detected) <= 0.88


def test_comparison_fields_are_consistent() -> None:
    t = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    c = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    cmp = stats.compare_groups(t, c)
    assert cmp.absolute.value == pytest.approx(t.mean() - c.mean())
    assert cmp.relative is not None and cmp.relative.value == pytest.approx(t.mean() / c.mean() - 1)
    assert (cmp.n_treated, cmp.n_control) == (6, 6)
    assert stats.relative_change(t, np.zeros(6)) is None  # ratio to 0 is meaningless
    assert stats.minimum_detectable_effect(0.5, 0, 10) == float("inf")


@pytest.mark.parametrize("n", [1, 7, 90, 1234, 10**6])
def test_wilson_interval_holds_the_rate_and_stays_in_the_unit_interval(n: int) -> None:
    """All-or-nothing counts: the bounds must be exactly 0 and 1, never 1e-18 past them (a
    report's error bar is rate - low, which matplotlib refuses when negative)."""
    none, every = stats.proportion_ci(0, n), stats.proportion_ci(n, n)
    assert none.value == none.ci_low == 0.0 and 0.0 < none.ci_high < 1.0
    assert every.value == every.ci_high == 1.0 and 0.0 < every.ci_low < 1.0
    mid = stats.proportion_ci(n // 2, n)
    assert 0.0 <= mid.ci_low <= mid.value <= mid.ci_high <= 1.0
