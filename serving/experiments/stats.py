"""Statistics the service reports: uplift curves and scores, treatment effects, intervals.

Moved here from ``training.evaluation.metrics`` (which re-exports every name) because the experiment
report is computed by the service, and ``serving`` never imports ``training``. Pure numpy/scipy,
no I/O. Inputs are 1-D array-likes aligned row by row; invalid inputs raise ``ValueError`` naming
the offending argument, because a silently misaligned metric is worse than a crash.

The uplift metrics reproduce scikit-uplift (``sklift.metrics``) so results are comparable with the
literature and with tooling built on it; the differences are listed in each docstring (and
``tests/unit/test_uplift_reference.py`` checks them against scikit-uplift itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats


FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with a two-sided confidence interval."""

    value: float
    ci_low: float
    ci_high: float


# --- validation ------------------------------------------------------------------------------


def _vectors(**named: ArrayLike) -> list[FloatArray]:
    """Convert each argument to a finite, non-empty 1-D float array of a common length."""
    arrays = {}
    for name, values in named.items():
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
        arrays[name] = array
    lengths = {name: array.size for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arguments must have equal lengths, got {lengths}")
    return list(arrays.values())


def _check_binary(name: str, values: FloatArray, *, both_classes: bool = False) -> None:
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{name}: expected binary 0/1 values")
    if both_classes and values.min() == values.max():
        raise ValueError(f"{name}: needs both 0 and 1 values")


def _critical_value(alpha: float, df: int | None = None) -> float:
    """Two-sided critical value: standard normal, or Student t with ``df`` degrees of freedom."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a value in (0, 1), got {alpha}")
    distribution = stats.norm if df is None else stats.t(df)
    return float(distribution.ppf(1.0 - alpha / 2.0))


def _normal_estimate(value: float, terms: FloatArray, alpha: float) -> Estimate:
    """CI from the standard error of per-row (influence) terms, by the central limit theorem."""
    half_width = _critical_value(alpha) * terms.std(ddof=1) / np.sqrt(terms.size)
    return Estimate(float(value), float(value - half_width), float(value + half_width))


# --- uplift ----------------------------------------------------------------------------------


def _uplift_inputs(
    y: ArrayLike, treatment: ArrayLike, uplift_score: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    y_, t, s = _vectors(y=y, treatment=treatment, uplift_score=uplift_score)
    _check_binary("y", y_)
    _check_binary("treatment", t, both_classes=True)
    return y_, t, s


def _cumulative_at_thresholds(
    y: FloatArray, treatment: FloatArray, uplift_score: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Cumulative ``N, N_T, Y_T, N_C, Y_C`` over rows sorted by descending score.

    Like ``sklearn.metrics.roc_curve`` there is one point per distinct score (the last row of each
    tie block), so the order of rows within ties cannot change the curve.
    """
    order = np.argsort(uplift_score, kind="mergesort")[::-1]
    y, treatment, score = y[order], treatment[order], uplift_score[order]
    last_of_block = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    n_all = last_of_block + 1.0
    n_trt = np.cumsum(treatment)[last_of_block]
    y_trt = np.cumsum(y * treatment)[last_of_block]
    y_ctl = np.cumsum(y * (1.0 - treatment))[last_of_block]
    return n_all, n_trt, y_trt, n_all - n_trt, y_ctl


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    """``num / den``, 0 where ``den`` is 0 (as scikit-uplift does for an empty group)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def qini_curve(
    y: ArrayLike, treatment: ArrayLike, uplift_score: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Qini curve: incremental responders when targeting the top-scored fraction.

    At each distinct-score cutoff ``Q = Y_T - Y_C * N_T / N_C`` (0 term when ``N_C = 0``): treated
    responders minus control responders rescaled to the treated group's size. Returns
    ``(x_fraction, qini_values)`` starting at ``(0, 0)``. Tied scores form a single cutoff, as in
    ``sklearn.metrics.roc_curve``, so row order within ties cannot matter. Same points as
    scikit-uplift's ``qini_curve`` except x is the fraction of rows instead of a row count, so
    plots of different test sets share an axis.
    """
    y_, t, s = _uplift_inputs(y, treatment, uplift_score)
    n_all, n_trt, y_trt, n_ctl, y_ctl = _cumulative_at_thresholds(y_, t, s)
    values = y_trt - y_ctl * _ratio(n_trt, n_ctl)
    return np.r_[0.0, n_all / y_.size], np.r_[0.0, values]


def uplift_curve(
    y: ArrayLike, treatment: ArrayLike, uplift_score: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Uplift curve: ``(Y_T / N_T - Y_C / N_C) * N`` at each distinct-score cutoff.

    The response-rate difference in the targeted set, scaled to its size (a group with no rows
    contributes rate 0). Returns ``(x_fraction, uplift_values)`` starting at ``(0, 0)``, one point
    per distinct score; as scikit-uplift's ``uplift_curve`` but with x as a fraction of rows.
    """
    y_, t, s = _uplift_inputs(y, treatment, uplift_score)
    n_all, n_trt, y_trt, n_ctl, y_ctl = _cumulative_at_thresholds(y_, t, s)
    values = (_ratio(y_trt, n_trt) - _ratio(y_ctl, n_ctl)) * n_all
    return np.r_[0.0, n_all / y_.size], np.r_[0.0, values]


def _normalized_area(
    model: tuple[FloatArray, FloatArray], perfect: tuple[FloatArray, FloatArray]
) -> float:
    """Area between a curve and the random-targeting line, as a share of the perfect curve's.

    Random targeting is the straight line from ``(0, 0)`` to the perfect curve's end point.
    """
    x_perfect, v_perfect = perfect
    baseline = np.trapezoid([0.0, v_perfect[-1]], [0.0, x_perfect[-1]])
    perfect_gain = np.trapezoid(v_perfect, x_perfect) - baseline
    if perfect_gain == 0:
        raise ValueError("y: the perfect curve equals the random line; the score is undefined")
    return float((np.trapezoid(model[1], model[0]) - baseline) / perfect_gain)


def qini_auc_score(
    y: ArrayLike, treatment: ArrayLike, uplift_score: ArrayLike, negative_effect: bool = True
) -> float:
    """Normalized area under the Qini curve (Qini coefficient), as sklift's ``qini_auc_score``.

    ``(area(model) - area(random)) / (area(perfect) - area(random))``: 1 for the best possible
    ranking of this test set, about 0 for a random one. The perfect ranking scores treated
    responders 1, control responders -1 and the rest 0. With ``negative_effect=False`` the perfect
    curve ignores harm: it reaches the total incremental responders after targeting that many rows
    and stays flat, so a model that avoids harmed users can score above 1.
    """
    y_, t, s = _uplift_inputs(y, treatment, uplift_score)
    if negative_effect:
        perfect = qini_curve(y_, t, y_ * t - y_ * (1.0 - t))
    else:
        total = y_[t == 1].sum() - (t == 1).sum() * y_[t == 0].sum() / (t == 0).sum()
        perfect = np.array([0.0, total / y_.size, 1.0]), np.array([0.0, total, total])
    return _normalized_area(qini_curve(y_, t, s), perfect)


def uplift_auc_score(y: ArrayLike, treatment: ArrayLike, uplift_score: ArrayLike) -> float:
    """Normalized area under the uplift curve, as scikit-uplift's ``uplift_auc_score``.

    Normalized like :func:`qini_auc_score`. The perfect ranking puts treated responders and
    control non-responders first, then treated non-responders before control responders when the
    latter are rarer (scikit-uplift's ``perfect_uplift_curve``).
    """
    y_, t, s = _uplift_inputs(y, treatment, uplift_score)
    control_responders = np.sum((y_ == 1) & (t == 0))
    treated_non_responders = np.sum((y_ == 0) & (t == 1))
    tie_break = y_ if control_responders > treated_non_responders else t
    perfect = uplift_curve(y_, t, 2.0 * (y_ == t) + tie_break)
    return _normalized_area(uplift_curve(y_, t, s), perfect)


def uplift_at_k(
    y: ArrayLike,
    treatment: ArrayLike,
    uplift_score: ArrayLike,
    k: float | int = 0.3,
    strategy: Literal["overall", "by_group"] = "overall",
) -> float:
    """Treated minus control response rate among the top-k rows by score.

    As scikit-uplift's ``uplift_at_k``: ``k`` is a fraction in (0, 1) (size ``int(n * k)``, rounded
    down) or a row count in (0, n). ``"overall"`` takes the top k of all rows; ``"by_group"`` the
    top k of each group separately (a fraction applies to each group's size). Rows with tied scores
    are ordered as scikit-uplift does (stable sort, reversed). Unlike scikit-uplift, a top-k set
    without treated or without control rows raises instead of returning NaN.
    """
    y_, t, s = _uplift_inputs(y, treatment, uplift_score)
    n = y_.size
    is_count = isinstance(k, int | np.integer) and not isinstance(k, bool)
    if not (is_count and 0 < k < n or isinstance(k, float | np.floating) and 0.0 < k < 1.0):
        raise ValueError(f"k: expected a fraction in (0, 1) or a count in (0, {n}), got {k!r}")
    order = np.argsort(s, kind="mergesort")[::-1]
    y_, t = y_[order], t[order]
    if strategy == "overall":
        size = int(k) if is_count else int(n * k)
        top_y, top_t = y_[:size], t[:size]
        treated, control = top_y[top_t == 1], top_y[top_t == 0]
    elif strategy == "by_group":
        treated, control = y_[t == 1], y_[t == 0]
        if is_count:
            if k > treated.size or k > control.size:
                raise ValueError(f"k: {k} exceeds the size of the treated or control group")
            treated, control = treated[: int(k)], control[: int(k)]
        else:
            treated, control = treated[: int(treated.size * k)], control[: int(control.size * k)]
    else:
        raise ValueError(f"strategy: expected 'overall' or 'by_group', got {strategy!r}")
    if treated.size == 0 or control.size == 0:
        raise ValueError(f"k: the top {k!r} rows must include both treated and control rows")
    return float(treated.mean() - control.mean())


# --- treatment effects and intervals ---------------------------------------------------------


def ate_difference_in_means(
    y: ArrayLike, treatment: ArrayLike, alpha: float = 0.05
) -> tuple[float, float, float, float]:
    """Average treatment effect of a randomized test: ``(ate, ci_low, ci_high, p_value)``.

    Difference in group means with the Neyman (Welch) variance ``s1^2/n1 + s0^2/n0``, which is
    conservative under randomization and does not assume equal variances. Normal CI and two-sided
    p-value: A/B groups here are large enough that the t correction is negligible.
    """
    y_, t = _vectors(y=y, treatment=treatment)
    _check_binary("treatment", t)
    treated, control = y_[t == 1], y_[t == 0]
    if treated.size < 2 or control.size < 2:
        raise ValueError("treatment: each group needs at least 2 rows")
    ate = treated.mean() - control.mean()
    se = np.sqrt(treated.var(ddof=1) / treated.size + control.var(ddof=1) / control.size)
    half_width = _critical_value(alpha) * se
    if se > 0:
        p_value = 2.0 * stats.norm.sf(abs(ate) / se)
    else:  # both groups constant: the difference is exact
        p_value = 1.0 if ate == 0 else 0.0
    return float(ate), float(ate - half_width), float(ate + half_width), float(p_value)


def proportion_ci(successes: int, n: int, alpha: float = 0.05) -> Estimate:
    """Observed rate ``successes / n`` with a Wilson score interval.

    Wilson rather than Wald because it stays inside [0, 1] and keeps near-nominal coverage for the
    small counts and rare events typical of reward redemptions.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    if isinstance(successes, bool) or not isinstance(successes, int | np.integer):
        raise ValueError(f"successes: expected an integer, got {successes!r}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes: expected a count in [0, {n}], got {successes}")
    z2 = _critical_value(alpha) ** 2
    rate = successes / n
    center = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half_width = np.sqrt(z2 * (rate * (1 - rate) / n + z2 / (4 * n**2))) / (1 + z2 / n)
    # In exact arithmetic the interval contains the rate and stays in [0, 1]; in floating point
    # a zero rate can give a lower bound of +1e-18, which plots as a negative error bar.
    low = min(rate, max(0.0, float(center - half_width)))
    high = max(rate, min(1.0, float(center + half_width)))
    return Estimate(float(rate), low, high)


def mean_ci(values: ArrayLike, alpha: float = 0.05) -> Estimate:
    """Sample mean with a Student-t interval (exact for normal data, robust for small samples)."""
    (x,) = _vectors(values=values)
    if x.size < 2:
        raise ValueError("values: need at least 2 values for a confidence interval")
    half_width = _critical_value(alpha, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return Estimate(float(x.mean()), float(x.mean() - half_width), float(x.mean() + half_width))


# --- experiment comparisons --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """Treatment arm minus control arm on one per-member outcome.

    ``relative`` is ``treated_mean / control_mean - 1`` (None when the control mean is 0, where a
    relative change means nothing). ``mde`` is the smallest absolute difference this sample would
    detect with 80% power at the same alpha: below it, "no significant difference" is not
    evidence of "no difference".
    """

    treated_mean: float
    control_mean: float
    absolute: Estimate
    p_value: float
    relative: Estimate | None
    mde: float
    n_treated: int
    n_control: int


def relative_change(treated: ArrayLike, control: ArrayLike, alpha: float = 0.05
                    ) -> Estimate | None:
    """``mean(treated) / mean(control) - 1`` with a delta-method CI on the log of the ratio.

    The log scale keeps the interval's lower end above -100% and matches how ratios of means are
    distributed in moderate samples. None when either mean is 0 (the ratio or its log is
    undefined) or a group has fewer than 2 rows.
    """
    (t,) = _vectors(treated=treated)
    (c,) = _vectors(control=control)
    if t.size < 2 or c.size < 2 or t.mean() <= 0 or c.mean() <= 0:
        return None
    ratio = t.mean() / c.mean()
    se = np.sqrt(t.var(ddof=1) / (t.size * t.mean() ** 2)
                 + c.var(ddof=1) / (c.size * c.mean() ** 2))
    z = _critical_value(alpha)
    return Estimate(float(ratio - 1), float(ratio * np.exp(-z * se) - 1),
                    float(ratio * np.exp(z * se) - 1))


def minimum_detectable_effect(sd: float, n_treated: int, n_control: int, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """Smallest absolute difference a two-sample test detects with ``power`` (normal approx.).

    ``(z_{1-alpha/2} + z_{power}) * sd * sqrt(1/n_t + 1/n_c)``, with ``sd`` the outcome's standard
    deviation (the control group's, or pooled). Infinite for an empty group.
    """
    if n_treated < 1 or n_control < 1:
        return float("inf")
    z = _critical_value(alpha) + float(stats.norm.ppf(power))
    return float(z * sd * np.sqrt(1.0 / n_treated + 1.0 / n_control))


def compare_groups(treated: ArrayLike, control: ArrayLike, alpha: float = 0.05) -> Comparison:
    """Difference in means (Welch/Neyman CI and p-value), relative change and the MDE.

    Works for binary outcomes (rates) and continuous ones (spend per member) alike: with the
    sample sizes of experiments the normal approximation of the difference is accurate, which
    ``tests/unit/test_experiment_stats.py`` checks by coverage over repeated simulated A/B tests.
    """
    (t,) = _vectors(treated=treated)
    (c,) = _vectors(control=control)
    y = np.r_[t, c]
    flag = np.r_[np.ones(t.size), np.zeros(c.size)]
    ate, low, high, p_value = ate_difference_in_means(y, flag, alpha)
    pooled_sd = float(np.sqrt((t.var(ddof=1) * (t.size - 1) + c.var(ddof=1) * (c.size - 1))
                              / (t.size + c.size - 2)))
    return Comparison(
        treated_mean=float(t.mean()), control_mean=float(c.mean()),
        absolute=Estimate(ate, low, high), p_value=p_value,
        relative=relative_change(t, c, alpha),
        mde=minimum_detectable_effect(pooled_sd, t.size, c.size, alpha),
        n_treated=int(t.size), n_control=int(c.size))
