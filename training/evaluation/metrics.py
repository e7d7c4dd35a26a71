"""Evaluation statistics: ranking, calibration, uplift, treatment effects and off-policy value.

Pure numpy/scipy functions with no I/O, so training, notebooks and benchmarks report the same
numbers. Inputs are 1-D array-likes aligned row by row; invalid inputs raise ``ValueError`` naming
the offending argument, because a silently misaligned metric is worse than a crash.

Uplift curves and scores, treatment effects and intervals live in ``serving.experiments.stats``
(the service's experiment reports use them, and ``serving`` never imports ``training``); they are
re-exported here so training code keeps one import.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from serving.experiments.stats import (  # noqa: F401 - re-exported
    Estimate,
    FloatArray,
    _check_binary,
    _critical_value,
    _normal_estimate,
    _vectors,
    ate_difference_in_means,
    mean_ci,
    proportion_ci,
    qini_auc_score,
    qini_curve,
    uplift_at_k,
    uplift_auc_score,
    uplift_curve,
)

__all__ = [
    "Estimate", "ate_difference_in_means", "auc", "calibration_curve", "doubly_robust",
    "expected_calibration_error", "ips", "log_loss", "mean_ci", "proportion_ci",
    "qini_auc_score", "qini_curve", "snips", "uplift_at_k", "uplift_auc_score", "uplift_curve",
]


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


def log_loss(y_true: ArrayLike, prob: ArrayLike, weight: ArrayLike | None = None,
             eps: float = 1e-6) -> float:
    """Mean negative log-probability of the observed class, ``prob`` an (n, k) matrix of class
    probabilities and ``y_true`` class indices in [0, k) (weighted by ``weight`` if given).

    Probabilities are clipped at ``eps`` so one confident miss costs -log(eps), not infinity:
    the figure stays comparable between two models on the same rows."""
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"prob: expected an ({len(y)}, k) matrix, got shape {p.shape}")
    if len(y) == 0:
        raise ValueError("y_true: no rows")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true: expected class indices in [0, {p.shape[1]})")
    terms = -np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))
    if weight is None:
        return float(terms.mean())
    w = np.asarray(weight, dtype=np.float64)
    if w.shape != y.shape or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weight: expected non-negative weights, one per row, not all zero")
    return float(np.average(terms, weights=w))


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
