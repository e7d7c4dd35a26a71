"""Leakage and balance check: which feature columns differ between the arms of a randomized test.

Why: pointed at a campaign file, default options take every column as a feature, including
columns that are themselves outcomes (spend or conversion when the outcome is visits). Such a
post-treatment column differs between arms because the treatment caused part of it; a broken
randomization makes pre-treatment columns differ too. Both show up the same way here (the data
cannot tell them apart): a column whose distribution depends on the arm. Flagged columns should
be dropped from the features, or the randomization questioned.

Per column and per treated arm k (arm k's rows against the control rows):
- SMD, treated minus control over the pooled standard deviation sqrt((var_t + var_c) / 2).
  Numeric: of the finite values, and of the missing share (NaN or infinite); categorical: of every
  level indicator, NaN counting as a level. The column keeps the signed SMD of largest |SMD|.
- p: a test of equal distribution. Numeric: Welch t on the means and Mann-Whitney on the ranks of
  the finite values, plus a chi-square on the missing share when there are missing values; the
  smallest of these p-values, times their number (Bonferroni, so the combination stays a p-value).
  Categorical: chi-square on the arm x level table, levels expected fewer than 5 times in the
  smaller arm pooled into one. Holm-adjusted over all (column, arm) tests.
- AUC: how well the column alone predicts the arm, out of fold: numeric values are cut into up to
  10 quantile bins (+ one bin for missing), each bin or level is encoded by its smoothed treated
  rate in the training folds, and the AUC of these scores is taken on the held-out rows. The
  encoding is direction-free (a bin with more treated rows scores higher), so no max(auc, 1 - auc).
  The AUC is the mean over the held-out folds; its significance (AUC > 0.5) the mean of the
  folds' one-sided rank-test z-scores read as N(0, 1), conservative because folds are correlated
  (see ``_cv_auc``), Holm-adjusted over all (column, arm) tests.

Flag rule: a column is flagged when, for some treated arm, its Holm-adjusted p < ``alpha``, or
|SMD| >= ``smd_threshold`` with a Holm-adjusted p < 0.05 (without that condition, half the
pre-treatment columns of a 1,000-row test would be flagged by chance), or its AUC >= ``auc_threshold`` with a Holm-adjusted AUC p < ``alpha``.
Constant columns (one value over all rows, NaN included) are never flagged. A column missing
only for treated rows has a missing-share SMD of +inf: flagged.

Randomization: a shallow LightGBM (num_threads=1) predicts the arm from all unflagged columns
together, out of fold, pairwise per treated arm; ``overall_auc`` is the best arm's, with a 95 %
interval (mean AUC +- 1.96 x the mean per-fold DeLong error, conservative as above).
``randomization_ok`` is False when, for some arm, that AUC is significantly above 0.5: the same
fold-wise rank test, p times the number of treated arms < ``alpha``. Under a true randomization
this happens with probability at most ``alpha``; it catches assignment that depends on a
combination of columns none of which differs alone (flagged columns are left out: they are
already reported, and would make it fail for a reason already known).

Limits: the SMD's standard error is about sqrt(1 / n_t + 1 / n_c), 0.045 at 1,000 rows per
arm, where 20 pre-treatment columns of a true randomization got at least one |SMD| >= 0.1 in 17 of
20 draws; hence the SMD rule needs a Holm-adjusted p < 0.05 too. In a small test a real leak with
a small SMD can go unflagged: name pre-treatment columns with ``--features`` there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from pandas.api import types as ptypes
from scipy import stats
from sklearn.model_selection import StratifiedKFold

NUMERIC_BINS = 10  # quantile bins of a numeric column for its one-column AUC
ENCODING_SMOOTHING = 20.0  # pseudo-rows at the training prior in a bin's treated rate
MIN_EXPECTED = 5.0
SMD_ALPHA = 0.05  # Holm-adjusted p below which a large SMD flags a column  # chi-square: levels expected fewer times in the smaller arm are pooled
LGBM_PARAMS: dict[str, Any] = {  # shallow: the question is "is there any signal", not the best fit
    "objective": "binary",
    "learning_rate": 0.1,
    "n_estimators": 60,  # boosting rounds
    "num_leaves": 8,
    "max_depth": 3,
    "min_child_samples": 50,
    "num_threads": 1,
    "verbose": -1,
}


@dataclass(frozen=True)
class ColumnBalance:
    """One column's balance between arms (worst treated arm for each figure)."""

    column: str
    kind: str  # "numeric" | "categorical"
    smd: float  # signed, treated - control, of the arm and indicator with the largest |SMD|
    p_value: float  # smallest over arms, unadjusted
    p_adjusted: float  # Holm-adjusted across all (column, arm) tests, smallest over arms
    auc: float  # out-of-fold AUC of predicting the arm from this column alone, max over arms
    flagged: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column, "kind": self.kind, "smd": _json_float(self.smd),
            "p_value": _json_float(self.p_value), "p_adjusted": _json_float(self.p_adjusted),
            "auc": _json_float(self.auc), "flagged": self.flagged, "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class BalanceReport:
    """Per-column balance, and whether the unflagged columns together still predict the arm."""

    columns: list[ColumnBalance]  # flagged first, then by p_value
    overall_auc: float  # out-of-fold AUC of the arm from all unflagged columns, max over arms
    overall_auc_ci: tuple[float, float]  # 95 % DeLong interval of that arm's AUC
    randomization_ok: bool
    thresholds: dict[str, float]  # smd, alpha, auc
    overall_p_value: float = 1.0  # one-sided rank test of overall_auc > 0.5, times the arm count
    overall_arm: str = ""  # the treated arm of overall_auc

    @property
    def flagged(self) -> list[str]:
        return [c.column for c in self.columns if c.flagged]

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [c.to_dict() for c in self.columns],
            "flagged": self.flagged,
            "overall_auc": _json_float(self.overall_auc),
            "overall_auc_ci": [_json_float(v) for v in self.overall_auc_ci],
            "overall_p_value": _json_float(self.overall_p_value),
            "overall_arm": self.overall_arm,
            "randomization_ok": self.randomization_ok,
            "thresholds": dict(self.thresholds),
        }


def holm_adjust(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control, any dependence)."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


@dataclass
class _Column:
    name: str
    kind: str
    codes: np.ndarray  # int: level or quantile bin, missing = its own last code
    n_codes: int
    values: np.ndarray | None  # numeric: float values, NaN where missing
    missing: np.ndarray  # bool
    levels: list[str]  # categorical: level labels by code (last = missing)
    constant: bool


@dataclass
class _ArmStat:
    arm: int
    smd: float
    smd_what: str
    p: float
    auc: float
    p_auc: float
    p_adj: float = 1.0
    p_auc_adj: float = 1.0


def balance_report(X: pd.DataFrame, arm: np.ndarray, arm_names: list[str], *, folds: int = 3,
                   seed: int = 0, alpha: float = 0.001, smd_threshold: float = 0.1,
                   auc_threshold: float = 0.55) -> BalanceReport:
    """Check every column of ``X`` for differences between arms (see the module docstring).

    ``arm``: 0 = control, k = k-th treated arm; ``arm_names[k]`` names arm k.
    """
    arm = np.asarray(arm)
    if len(arm) != len(X):
        raise ValueError(f"arm has {len(arm)} rows, X has {len(X)}")
    if len(arm_names) < 2:
        raise ValueError("arm_names needs the control and at least one treated arm")
    if len(arm) and (arm.min() < 0 or arm.max() >= len(arm_names)):
        raise ValueError(f"arm values must be in 0..{len(arm_names) - 1}")
    if not (arm == 0).any():
        raise ValueError("no control rows (arm == 0)")
    if X.columns.duplicated().any():
        raise ValueError(f"duplicate column names: {list(X.columns[X.columns.duplicated()])}")
    if folds < 2:
        raise ValueError("folds must be at least 2")
    arm = arm.astype(int)
    arms = [k for k in range(1, len(arm_names)) if (arm == k).any()]
    pairs = {k: _pair(arm, k, folds, seed) for k in arms}

    columns = [_prepare(X.iloc[:, i], str(name)) for i, name in enumerate(X.columns)]
    col_stats = [[] if col.constant else [_arm_stat(col, k, *pairs[k]) for k in arms]
                 for col in columns]
    all_stats = [s for ss in col_stats for s in ss]
    for s, pa, pb in zip(all_stats, holm_adjust(np.array([s.p for s in all_stats])),
                         holm_adjust(np.array([s.p_auc for s in all_stats])), strict=True):
        s.p_adj, s.p_auc_adj = float(pa), float(pb)

    thresholds = {"smd": smd_threshold, "alpha": alpha, "auc": auc_threshold}
    results = [_summarise(col, ss, arm_names, thresholds)
               for col, ss in zip(columns, col_stats, strict=True)]
    unflagged = [col for col, res in zip(columns, results, strict=True)
                 if not col.constant and not res.flagged]
    results.sort(key=lambda c: (not c.flagged, c.p_value, -abs(c.smd)))
    auc, ci, p, arm_name = _overall(unflagged, arms, pairs, arm_names, seed)
    p_arms = min(1.0, p * len(arms))  # Bonferroni over the treated arms
    return BalanceReport(columns=results, overall_auc=auc, overall_auc_ci=ci,
                         randomization_ok=p_arms >= alpha, thresholds=thresholds,
                         overall_p_value=p_arms, overall_arm=arm_name)


def _pair(arm: np.ndarray, k: int, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray | None]:
    """Rows of arm k and control, label (treated), and a stratified fold id per row."""
    rows = np.flatnonzero((arm == 0) | (arm == k))
    y = arm[rows] == k
    if min(y.sum(), (~y).sum()) < folds:
        return rows, y, None  # too few rows for an out-of-fold AUC
    fold = np.empty(len(rows), dtype=int)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + k)
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(rows)), y)):
        fold[test] = f
    return rows, y, fold


def _prepare(series: pd.Series, name: str) -> _Column:
    """Codes for the one-column AUC and values for the tests; NaN is its own code."""
    constant = series.nunique(dropna=False) <= 1
    if ptypes.is_bool_dtype(series) or (ptypes.is_numeric_dtype(series)
                                        and not isinstance(series.dtype, pd.CategoricalDtype)):
        values = series.to_numpy(dtype=float, na_value=np.nan)
    elif ptypes.is_datetime64_any_dtype(series):  # seconds since the first date
        values = ((series - series.min()) / pd.Timedelta(seconds=1)).to_numpy(
            dtype=float, na_value=np.nan)
    elif ptypes.is_timedelta64_dtype(series):
        values = (series / pd.Timedelta(seconds=1)).to_numpy(dtype=float, na_value=np.nan)
    else:
        cat = pd.Categorical(series)
        codes = cat.codes.astype(int)
        missing = codes < 0
        n_levels = len(cat.categories)
        codes = np.where(missing, n_levels, codes)
        return _Column(name, "categorical", codes, n_levels + 1, None, missing,
                       [str(v) for v in cat.categories] + ["<missing>"], constant)
    missing = ~np.isfinite(values)
    values = np.where(missing, np.nan, values)
    finite = values[~missing]
    edges = (np.unique(np.quantile(finite, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
             if len(finite) else np.array([]))
    codes = np.searchsorted(edges, np.where(missing, 0.0, values), side="right")
    codes = np.where(missing, len(edges) + 1, codes)
    return _Column(name, "numeric", codes, len(edges) + 2, values, missing, [], constant)


def _arm_stat(col: _Column, k: int, rows: np.ndarray, y: np.ndarray,
              fold: np.ndarray | None) -> _ArmStat:
    codes = col.codes[rows]
    if col.values is not None:
        smd, what, p = _numeric_tests(col.values[rows], col.missing[rows], y)
    else:
        smd, what, p = _categorical_tests(codes, col.n_codes, col.levels, y)
    auc, p_auc = 0.5, 1.0
    if fold is not None:
        auc, p_auc, _ = _cv_auc(_oof_encoding(codes, col.n_codes, y, fold), y, fold)
    return _ArmStat(k, smd, what, p, auc, p_auc)


def _numeric_tests(v: np.ndarray, missing: np.ndarray, y: np.ndarray) -> tuple[float, str, float]:
    vt, vc = v[y & ~missing], v[~y & ~missing]
    smd, what, ps = 0.0, "", []
    if len(vt) >= 2 and len(vc) >= 2:
        smd = _smd(vt.mean() - vc.mean(), vt.var(ddof=1), vc.var(ddof=1))
        if vt.var() == 0 and vc.var() == 0:  # constant within each arm: t is undefined
            ps.append(1.0 if vt[0] == vc[0] else 0.0)
        else:
            ps.append(stats.ttest_ind(vt, vc, equal_var=False).pvalue)
            ps.append(stats.mannwhitneyu(vt, vc, method="asymptotic").pvalue)
    if missing.any():
        mt, mc = missing[y].mean(), missing[~y].mean()
        smd_missing = _share_smd(mt, mc)
        if abs(smd_missing) > abs(smd) or not math.isfinite(smd_missing):
            smd, what = smd_missing, "missing share"
        ps.append(_chi2(np.array([[missing[y].sum(), (~missing[y]).sum()],
                                  [missing[~y].sum(), (~missing[~y]).sum()]])))
    ps = [1.0 if not np.isfinite(p) else float(p) for p in ps]
    return smd, what, min(1.0, len(ps) * min(ps)) if ps else 1.0


def _categorical_tests(codes: np.ndarray, n_codes: int, levels: list[str],
                       y: np.ndarray) -> tuple[float, str, float]:
    """SMD and chi-square over the levels, those expected < MIN_EXPECTED times pooled.

    Pooling matters for the SMD too: a level seen a handful of times has an SMD that is mostly
    noise (8 rows vs 0 of 500 per arm is SMD 0.18), and a high-cardinality column has many.
    """
    ct = np.bincount(codes[y], minlength=n_codes).astype(float)
    cc = np.bincount(codes[~y], minlength=n_codes).astype(float)
    nt, nc = ct.sum(), cc.sum()
    total = ct + cc
    rare = total * min(nt, nc) / (nt + nc) < MIN_EXPECTED
    keep = ~rare & (total > 0)
    names = [levels[i] for i in np.flatnonzero(keep)]
    table = np.column_stack([ct[keep], cc[keep]])
    if total[rare].sum() > 0:
        names.append("rare levels")
        table = np.vstack([table, [ct[rare].sum(), cc[rare].sum()]])
    if len(table) == 0:
        return 0.0, "", 1.0
    smds = [_share_smd(a / nt, b / nc) for a, b in table]
    i = int(np.argmax(np.abs(smds)))
    return float(smds[i]), f"level {names[i]}", _chi2(table.T)


def _chi2(table: np.ndarray) -> float:
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _smd(diff: float, var_t: float, var_c: float) -> float:
    sd = math.sqrt((var_t + var_c) / 2)
    if sd > 0:
        return float(diff / sd)
    return 0.0 if diff == 0 else math.copysign(math.inf, diff)


def _share_smd(pt: float, pc: float) -> float:
    return _smd(pt - pc, pt * (1 - pt), pc * (1 - pc))


def _oof_encoding(codes: np.ndarray, n_codes: int, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each held-out row scored by its code's smoothed treated rate in the other folds."""
    score = np.empty(len(codes))
    yf = y.astype(float)
    for f in range(fold.max() + 1):
        test = fold == f
        train = ~test
        prior = yf[train].mean()
        n = np.bincount(codes[train], minlength=n_codes)
        pos = np.bincount(codes[train], weights=yf[train], minlength=n_codes)
        rate = (pos + ENCODING_SMOOTHING * prior) / (n + ENCODING_SMOOTHING)
        score[test] = rate[codes[test]]
    return score


def _rank_auc(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """AUC and the one-sided Mann-Whitney p-value (normal, tie-corrected) of AUC > 0.5."""
    ranks = stats.rankdata(score)
    n1 = float(y.sum())
    n0 = float(len(y) - n1)
    if n1 == 0 or n0 == 0:
        return 0.5, 1.0
    u = ranks[y].sum() - n1 * (n1 + 1) / 2
    n = n1 + n0
    _, ties = np.unique(score, return_counts=True)
    var = n1 * n0 / 12 * ((n + 1) - (ties.astype(float) ** 3 - ties).sum() / (n * (n - 1)))
    if var <= 0:
        return 0.5, 1.0
    return float(u / (n1 * n0)), float(stats.norm.sf((u - n1 * n0 / 2) / math.sqrt(var)))


def _cv_auc(score: np.ndarray, y: np.ndarray, fold: np.ndarray,
            with_se: bool = False) -> tuple[float, float, float]:
    """Mean held-out AUC over folds, its one-sided p-value (AUC > 0.5) and a standard error.

    Each fold's rank test is exact under the null (its labels were not used for its scores), but
    the folds are positively correlated (each fold's scores come from the others' labels), so
    pooling them or adding their z-scores overstates significance (measured: 1.3x the null spread
    of the AUC). The mean of the per-fold z-scores has variance at most 1 whatever that
    correlation: compared with N(0, 1) it is a valid, conservative test. Likewise the standard
    error is the mean of the per-fold DeLong errors, not that mean over sqrt(folds).
    """
    aucs, zs, ses = [], [], []
    for f in range(fold.max() + 1):
        test = fold == f
        auc, p = _rank_auc(score[test], y[test])
        aucs.append(auc)
        zs.append(stats.norm.isf(p))
        ses.append(_delong_se(score[test], y[test]) if with_se else math.nan)
    return float(np.mean(aucs)), float(stats.norm.sf(np.mean(zs))), float(np.mean(ses))


def _delong_se(score: np.ndarray, y: np.ndarray) -> float:
    """DeLong's standard error of the AUC (placement values, O(n log n))."""
    pos, neg = score[y], score[~y]
    m, n = len(pos), len(neg)
    if min(m, n) < 2:
        return 0.0
    tz = stats.rankdata(np.concatenate([pos, neg]))
    v01 = (tz[:m] - stats.rankdata(pos)) / n
    v10 = 1 - (tz[m:] - stats.rankdata(neg)) / m
    return math.sqrt(v01.var(ddof=1) / m + v10.var(ddof=1) / n)


def _overall(columns: list[_Column], arms: list[int],
             pairs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
             arm_names: list[str], seed: int) -> tuple[float, tuple[float, float], float, str]:
    """(AUC, CI, one-sided p, arm name) of the arm best predicted by the columns together."""
    best: tuple[float, tuple[float, float], float, str] = (0.5, (0.5, 0.5), 1.0, "")
    if not columns:
        return best
    # one float matrix: numeric values, categorical codes (NaN = missing) declared categorical
    matrix = np.column_stack([
        col.values if col.values is not None else np.where(col.missing, np.nan, col.codes)
        for col in columns]).astype(float)
    categorical = [i for i, col in enumerate(columns) if col.values is None]
    params = {**LGBM_PARAMS, "seed": seed}
    rounds = params.pop("n_estimators")
    best_p = 1.0
    for k in arms:
        rows, y, fold = pairs[k]
        if fold is None:
            continue
        score = np.empty(len(rows))
        sub = matrix[rows]
        for f in range(fold.max() + 1):
            test = fold == f
            train = lgb.Dataset(sub[~test], label=y[~test].astype(float),
                                categorical_feature=categorical, free_raw_data=True,
                                params={"verbose": -1})
            score[test] = lgb.train(params, train, num_boost_round=rounds).predict(sub[test])
        auc, p, se = _cv_auc(score, y, fold, with_se=True)
        best_p = min(best_p, p)
        if not best[3] or auc > best[0]:
            z = stats.norm.isf(0.025)
            best = (auc, (float(max(0.0, auc - z * se)), float(min(1.0, auc + z * se))), p,
                    arm_names[k])
    return best[0], best[1], best_p, best[3]


def _summarise(col: _Column, arm_stats: list[_ArmStat], arm_names: list[str],
               thresholds: dict[str, float]) -> ColumnBalance:
    if col.constant or not arm_stats:
        return ColumnBalance(col.name, col.kind, 0.0, 1.0, 1.0, 0.5, False,
                             ["constant: nothing to compare"] if col.constant else [])
    alpha, smd_thr, auc_thr = thresholds["alpha"], thresholds["smd"], thresholds["auc"]

    def vs(s: _ArmStat) -> str:
        return f"treated {arm_names[s.arm]} vs control {arm_names[0]}"

    # a large SMD counts only when it is not chance: in small tests (a few hundred rows per
    # arm) |SMD| >= 0.1 happens by chance to some pre-treatment column almost every time
    by_smd = sorted((s for s in arm_stats if abs(s.smd) >= smd_thr and s.p_adj < SMD_ALPHA),
                    key=lambda s: -abs(s.smd))
    by_p = sorted((s for s in arm_stats if s.p_adj < alpha), key=lambda s: s.p_adj)
    by_auc = sorted((s for s in arm_stats if s.auc >= auc_thr and s.p_auc_adj < alpha),
                    key=lambda s: -s.auc)
    reasons = []
    if by_smd:
        reasons.append("differs between arms: " + ", ".join(
            f"SMD {s.smd:+.2f}" + (f" on {s.smd_what}" if s.smd_what else "") + f" ({vs(s)})"
            for s in by_smd))
    if by_p:
        reasons.append("distribution differs: " + ", ".join(
            f"p {_fmt_p(s.p_adj)} after Holm ({vs(s)})" for s in by_p))
    if by_auc:
        reasons.append("arm predicted from it: " + ", ".join(
            f"AUC {s.auc:.2f} ({vs(s)})" for s in by_auc))
    worst = max(arm_stats, key=lambda s: abs(s.smd))
    return ColumnBalance(
        column=col.name, kind=col.kind, smd=float(worst.smd),
        p_value=float(min(s.p for s in arm_stats)),
        p_adjusted=float(min(s.p_adj for s in arm_stats)),
        auc=float(max(s.auc for s in arm_stats)), flagged=bool(reasons), reasons=reasons)


def _fmt_p(p: float) -> str:
    return "< 1e-300" if p < 1e-300 else f"= {p:.0e}"


def _json_float(v: float) -> float | str | None:
    """JSON has no inf or NaN: inf becomes "inf"/"-inf", NaN becomes null."""
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)
