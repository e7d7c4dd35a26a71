"""Evaluation statistics: ranking, calibration, uplift, treatment effects and off-policy value.

Pure numpy/scipy functions with no I/O, so training, notebooks and benchmarks report the same
numbers. Inputs are 1-D array-likes aligned row by row; invalid inputs raise ``ValueError`` naming
the offending argument, because a silently misaligned metric is worse than a crash.

The uplift metrics reproduce scikit-uplift (``sklift.metrics``) so results are comparable with the
literature and with tooling built on it; the differences are listed in each docstring.
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


# --- ranking and calibration -----------------------------------------------------------------


def auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve, via the Mann-Whitney rank statistic.

    Equals ``sklearn.metrics.roc_auc_score``: the probability that a random positive outscores a
    random negative, ties counting one half (average ranks). Rank form is O(n log n) and needs no
    curve, which keeps it cheap inside bootstrap loops.
    """
    y, s = _vectors(y_true=y_true, score=score)
    _check_binary("y_true", y, both_classes=True)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    ranks = stats.rankdata(s)  # ties get their average rank
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration_curve(
    y_true: ArrayLike,
    prob: ArrayLike,
    n_bins: int = 10,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
    """Reliability diagram points: ``(mean_pred, frac_pos, counts)`` per non-empty bin.

    Bins match ``sklearn.calibration.calibration_curve`` (right-closed inner edges, empty bins
    dropped) so both agree. ``"quantile"`` bins hold equal counts, which suits the skewed
    probabilities of rare conversions; ``"uniform"`` bins split [0, 1] evenly.
    """
    y, p = _vectors(y_true=y_true, prob=prob)
    _check_binary("y_true", y)
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("prob: expected probabilities in [0, 1]")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive integer, got {n_bins!r}")
    if strategy == "quantile":
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
    elif strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        raise ValueError(f"strategy: expected 'quantile' or 'uniform', got {strategy!r}")
    bin_ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(bin_ids, minlength=n_bins)
    sum_pred = np.bincount(bin_ids, weights=p, minlength=n_bins)
    sum_pos = np.bincount(bin_ids, weights=y, minlength=n_bins)
    kept = counts > 0
    return sum_pred[kept] / counts[kept], sum_pos[kept] / counts[kept], counts[kept]


def expected_calibration_error(
    y_true: ArrayLike,
    prob: ArrayLike,
    n_bins: int = 10,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> float:
    """Count-weighted mean of ``|frac_pos - mean_pred|`` over the bins of :func:`calibration_curve`.

    Reported next to AUC because ranking quality says nothing about whether probabilities can be
    multiplied by reward values to get expected value.
    """
    mean_pred, frac_pos, counts = calibration_curve(y_true, prob, n_bins, strategy)
    return float(np.sum(counts * np.abs(frac_pos - mean_pred)) / counts.sum())


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
    return Estimate(float(rate), float(center - half_width), float(center + half_width))


def mean_ci(values: ArrayLike, alpha: float = 0.05) -> Estimate:
    """Sample mean with a Student-t interval (exact for normal data, robust for small samples)."""
    (x,) = _vectors(values=values)
    if x.size < 2:
        raise ValueError("values: need at least 2 values for a confidence interval")
    half_width = _critical_value(alpha, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return Estimate(float(x.mean()), float(x.mean() - half_width), float(x.mean() + half_width))


# --- off-policy evaluation -------------------------------------------------------------------


def _importance_weights(
    rewards: ArrayLike, logged_propensity: ArrayLike, target_prob: ArrayLike, **models: ArrayLike
) -> list[FloatArray]:
    """Validated ``[rewards, weights, *models]``, ``weights = target_prob / logged_propensity``."""
    r, mu, pi, *rest = _vectors(
        rewards=rewards, logged_propensity=logged_propensity, target_prob=target_prob, **models
    )
    if r.size < 2:
        raise ValueError("rewards: need at least 2 rows for a confidence interval")
    if mu.min() <= 0.0 or mu.max() > 1.0:
        raise ValueError("logged_propensity: expected probabilities in (0, 1]")
    if pi.min() < 0.0 or pi.max() > 1.0:
        raise ValueError("target_prob: expected probabilities in [0, 1]")
    return [r, pi / mu, *rest]


def ips(
    rewards: ArrayLike, logged_propensity: ArrayLike, target_prob: ArrayLike, alpha: float = 0.05
) -> Estimate:
    """Inverse propensity scoring estimate of the target policy's mean reward.

    ``mean(w * r)`` with ``w = target_prob / logged_propensity``, where ``target_prob`` is the
    probability that the target policy takes the logged action (0/1 for a deterministic policy).
    Unbiased when the logged propensities are right and cover the target policy; high variance
    when weights are large. CI from the standard error of the per-row terms.
    """
    r, w = _importance_weights(rewards, logged_propensity, target_prob)
    terms = w * r
    return _normal_estimate(terms.mean(), terms, alpha)


def snips(
    rewards: ArrayLike, logged_propensity: ArrayLike, target_prob: ArrayLike, alpha: float = 0.05
) -> Estimate:
    """Self-normalized IPS: ``sum(w * r) / sum(w)``.

    Trades a small bias (consistent, not unbiased) for much lower variance than :func:`ips`, and
    stays within the reward range. CI by the delta method: the standard error of the linearized
    terms ``w * (r - estimate) / mean(w)``.
    """
    r, w = _importance_weights(rewards, logged_propensity, target_prob)
    if w.sum() == 0:
        raise ValueError("target_prob: zero for every logged action; SNIPS is undefined")
    value = np.sum(w * r) / w.sum()
    return _normal_estimate(value, w * (r - value) / w.mean(), alpha)


def doubly_robust(
    rewards: ArrayLike,
    logged_propensity: ArrayLike,
    target_prob: ArrayLike,
    q_logged: ArrayLike,
    q_target: ArrayLike,
    alpha: float = 0.05,
) -> Estimate:
    """Doubly robust estimate: ``mean(q_target + w * (r - q_logged))``.

    ``q_logged`` is the reward model's prediction for the logged action, ``q_target`` its expected
    reward under the target policy in that context. Unbiased if either the propensities or the
    reward model are right, and the better the model the smaller the variance (a perfect model
    leaves only the spread of ``q_target`` across contexts). CI from the per-row terms.
    """
    r, w, q_log, q_tgt = _importance_weights(
        rewards, logged_propensity, target_prob, q_logged=q_logged, q_target=q_target
    )
    terms = q_tgt + w * (r - q_log)
    return _normal_estimate(terms.mean(), terms, alpha)
