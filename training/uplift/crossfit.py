"""Cross-fitting, learner choice inside the training folds, and the fitted uplift model.

Every row gets an out-of-fold score from every learner: the models that score a row never saw
it, so Qini figures are honest. The learner is chosen by Qini, but a choice made on the same
rows the Qini is then quoted on would flatter it (five noisy Qinis, the best one picked). So the
*nested* score is what the report leads with: inside each outer training fold, an inner
cross-validation picks the learner, and that learner's outer out-of-fold score is used for the
fold's rows. The deployed model is picked the same way on the outer folds, then refitted on all
rows. Both picks keep the candidates' mean (``ensemble``) unless another learner is clearly
better (:func:`clear_winner`): measured on the synthetic RCTs of ``bench/uplift_rct.py``, picking
the raw best Qini at 15,000 rows was close to picking at random.

Arms are handled pairwise: arm k's models learn from arm k's rows and control's rows, and score
every row of the held-out fold, so each row has an uplift for every arm (the best-arm policy
needs that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from serving.experiments import stats
from training.uplift.data import RctData, align_categories
from training.uplift.learners import (
    BASELINES, CANDIDATES, ENSEMBLE, Ensemble, UpliftLearner, make_learner,
)

Progress = Callable[[str], None]


@dataclass
class ArmFit:
    """One treated arm against control."""

    name: str
    rows: np.ndarray  # positions of this arm's and control's rows
    oof: dict[str, np.ndarray]  # learner -> out-of-fold uplift on *every* row
    nested: np.ndarray  # out-of-fold uplift of the learner chosen inside each training fold
    chosen_per_fold: list[str]
    inner_qini: list[dict[str, float]]  # per outer fold: learner -> inner cross-validated Qini
    chosen: str  # chosen on the outer out-of-fold Qini (clear_winner), refitted on all rows
    models: dict[str, UpliftLearner] = field(default_factory=dict)  # chosen + baselines

    def outer_qini(self, data: RctData, k: int) -> dict[str, float]:
        return {name: _qini(data, self.rows, k, s[self.rows]) for name, s in self.oof.items()}


@dataclass
class UpliftFit:
    """Per-arm fits, their folds and the feature columns they expect."""

    arms: list[ArmFit]
    fold: np.ndarray
    columns: pd.DataFrame  # zero rows: the feature columns and their dtypes

    def predict(self, X: pd.DataFrame, learner: str | None = None) -> np.ndarray:
        """(n, K) uplift of each treated arm against control, by the chosen learner (or by a
        refitted baseline when ``learner`` names one)."""
        X = align_categories(X, self.columns)
        out = np.empty((len(X), len(self.arms)))
        for j, arm in enumerate(self.arms):
            name = learner or arm.chosen
            if name not in arm.models:
                raise ValueError(f"learner {name!r} was not refitted; have {sorted(arm.models)}")
            out[:, j] = arm.models[name].predict(X)
        return out

    @property
    def nested(self) -> np.ndarray:
        """(n, K) nested out-of-fold uplift of every row for every arm."""
        return np.column_stack([a.nested for a in self.arms])


def _strata(data: RctData, rows: np.ndarray) -> np.ndarray:
    return (2 * data.arm[rows] + data.outcome[rows]).astype(int)


def _qini(data: RctData, rows: np.ndarray, k: int, score: np.ndarray) -> float:
    try:
        return stats.qini_auc_score(data.outcome[rows], (data.arm[rows] == k).astype(float),
                                    score)
    except ValueError:  # a fold without responders or without one of the arms
        return float("nan")


def _learner(name: str, candidates: list[str]) -> UpliftLearner:
    return Ensemble(tuple(candidates)) if name == ENSEMBLE else make_learner(name)


def _fit(name: str, data: RctData, rows: np.ndarray, k: int, seed: int,
         candidates: list[str]) -> UpliftLearner:
    return _learner(name, candidates).fit(data.X.iloc[rows], (data.arm[rows] == k).astype(float),
                                          data.outcome[rows], seed)


MARGIN_SE = 2.0  # a learner must beat the default by this many standard errors


def bootstrap_qini(y: np.ndarray, t: np.ndarray, scores: dict[str, np.ndarray],
                   bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """Qini of every score on the same resampled rows (stratified by arm), for paired CIs."""
    rng = np.random.default_rng(seed)
    treated, control = np.flatnonzero(t == 1), np.flatnonzero(t == 0)
    draws = {name: np.empty(bootstrap) for name in scores}
    for b in range(bootstrap):
        i = np.concatenate([rng.choice(treated, treated.size), rng.choice(control, control.size)])
        for name, s in scores.items():
            try:
                draws[name][b] = stats.qini_auc_score(y[i], t[i], s[i])
            except ValueError:  # a resample without responders
                draws[name][b] = np.nan
    return draws


def _best(pooled: dict[str, float]) -> str:
    """The name of the largest Qini (NaN counts as lowest)."""
    return max(pooled, key=lambda name: (np.nan_to_num(pooled[name], nan=-np.inf), name))


def clear_winner(pooled: dict[str, float], draws: dict[str, np.ndarray], default: str,
                 margin: float = MARGIN_SE) -> str:
    """The learner with the best Qini if it beats ``default`` by more than ``margin`` bootstrap
    standard errors of their paired difference; else ``default``.

    With effects of a few points, Qinis of different learners differ by less than their noise,
    and picking the raw maximum of six picks noise (measured: a DR-learner picked this way
    ranked at a tenth of the baselines on one synthetic file). Two standard errors keep the
    robust default unless the data say otherwise.
    """
    best = _best(pooled)
    if best == default or default not in pooled:
        return best
    diff = draws[best] - draws[default]
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2:
        return default
    return best if pooled[best] - pooled[default] > margin * diff.std(ddof=1) else default


def _choose(data: RctData, rows: np.ndarray, k: int, scores: dict[str, np.ndarray],
            default: str, seed: int, bootstrap: int = 100) -> tuple[str, dict[str, float]]:
    """Qini of every score on ``rows`` and the choice of :func:`clear_winner`."""
    pooled = {name: _qini(data, rows, k, s) for name, s in scores.items()}
    best = _best(pooled)
    draws = {}
    if best != default and default in scores:
        y, t = data.outcome[rows], (data.arm[rows] == k).astype(float)
        draws = bootstrap_qini(y, t, {n: scores[n] for n in (best, default)}, bootstrap, seed)
    return clear_winner(pooled, draws, default), pooled


def _with_ensemble(scores: dict[str, np.ndarray], candidates: list[str]) -> dict[str, np.ndarray]:
    if len(candidates) < 2:
        return scores
    return {**scores, ENSEMBLE: np.mean([scores[name] for name in candidates], axis=0)}


def inner_choice(data: RctData, rows: np.ndarray, k: int, learners: list[str], folds: int,
                 seed: int) -> tuple[str, dict[str, float]]:
    """The learner chosen by cross-validated Qini on ``rows`` only (a training fold)."""
    from sklearn.model_selection import StratifiedKFold

    scores = {name: np.empty(len(rows)) for name in learners}
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for j, (a, b) in enumerate(splitter.split(rows, _strata(data, rows))):
        for name in learners:
            scores[name][b] = _fit(name, data, rows[a], k, seed + j, learners).predict(
                data.X.iloc[rows[b]])
    default = ENSEMBLE if len(learners) > 1 else learners[0]
    return _choose(data, rows, k, _with_ensemble(scores, learners), default, seed)


def fit_uplift(data: RctData, learners: list[str] | None = None, folds: int = 5,
               inner_folds: int = 3, seed: int = 0, progress: Progress | None = None
               ) -> UpliftFit:
    """Cross-fit every learner for every arm, choose inside the folds, refit the winner.

    ``learners`` defaults to the candidates (t, s, x, dr, linear); with two or more, their mean
    (``ensemble``) competes too and is the default of :func:`clear_winner`. The plain baselines are
    cross-fitted beside them for comparison (never chosen). One name: no selection.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 2 or inner_folds < 2:
        raise ValueError("--folds: at least 2 (outer and inner)")
    candidates = [c for c in dict.fromkeys(learners or CANDIDATES) if c != ENSEMBLE]
    if not candidates:
        raise ValueError("--learners: name at least one learner besides ensemble")
    for name in candidates:
        make_learner(name)  # unknown names fail before any work
    baselines = [b for b in BASELINES if learners is None and b not in candidates]
    default = ENSEMBLE if len(candidates) > 1 else candidates[0]
    n = len(data.outcome)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    fold = np.empty(n, dtype=int)
    splits = list(splitter.split(np.zeros(n), _strata(data, np.arange(n))))
    for j, (_, test) in enumerate(splits):
        fold[test] = j
    arms = []
    for k in range(1, data.n_arms + 1):
        rows = data.treated_vs_control(k)
        oof = {name: np.empty(n) for name in candidates + baselines}
        nested = np.empty(n)
        chosen_per_fold, inner = [], []
        for j, (train, test) in enumerate(splits):
            train_k = train[np.isin(data.arm[train], (0, k))]
            for name in candidates + baselines:
                oof[name][test] = _fit(name, data, train_k, k, seed + 10 * j,
                                       candidates).predict(data.X.iloc[test])
            if len(candidates) > 1:
                pick, qini = inner_choice(data, train_k, k, candidates, inner_folds,
                                          seed + 100 + j)
            else:
                pick, qini = candidates[0], {}
            chosen_per_fold.append(pick)
            inner.append(qini)
            nested[test] = _with_ensemble({c: oof[c][test] for c in candidates},
                                          candidates)[pick]
            if progress:
                progress(f"arm {data.arm_names[k]}: fold {j + 1}/{folds} done, chosen inside "
                         f"the fold: {pick}")
        oof = _with_ensemble(oof, candidates)
        scored = {name: oof[name][rows] for name in oof if name not in baselines}
        chosen, _ = _choose(data, rows, k, scored, default, seed + 7)
        models = {name: _fit(name, data, rows, k, seed + 999, candidates)
                  for name in dict.fromkeys([chosen, *baselines])}
        arms.append(ArmFit(data.arm_names[k], rows, oof, nested, chosen_per_fold, inner,
                           chosen, models))
    return UpliftFit(arms, fold, data.X.iloc[:0])
