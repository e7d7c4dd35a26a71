"""Cross-fitting, learner choice inside the training folds, and the fitted uplift model.

Every row gets an out-of-fold score from every learner: the models that score a row never saw
it, so Qini figures are honest. The learner is chosen by Qini, but a choice made on the same
rows the Qini is then quoted on would flatter it (five noisy Qinis, the best one picked). So the
*nested* score is what the report leads with: inside each outer training fold, an inner
cross-validation picks the learner, and that learner's outer out-of-fold score is used for the
fold's rows. The deployed model is the learner with the best outer Qini, refitted on all rows.

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
from training.uplift.learners import BASELINES, CANDIDATES, UpliftLearner, make_learner

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
    chosen: str  # the learner with the best outer out-of-fold Qini, refitted on all rows
    models: dict[str, UpliftLearner] = field(default_factory=dict)  # chosen + baselines

    def outer_qini(self, data: RctData, k: int) -> dict[str, float]:
        y, t = data.outcome[self.rows], (data.arm[self.rows] == k).astype(float)
        return {name: stats.qini_auc_score(y, t, s[self.rows]) for name, s in self.oof.items()}


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
    return stats.qini_auc_score(data.outcome[rows], (data.arm[rows] == k).astype(float), score)


def _fit(name: str, data: RctData, rows: np.ndarray, k: int, seed: int) -> UpliftLearner:
    return make_learner(name).fit(data.X.iloc[rows], (data.arm[rows] == k).astype(float),
                                  data.outcome[rows], seed)


def inner_choice(data: RctData, rows: np.ndarray, k: int, learners: list[str], folds: int,
                 seed: int) -> tuple[str, dict[str, float]]:
    """The learner with the best cross-validated Qini on ``rows`` only (a training fold)."""
    from sklearn.model_selection import StratifiedKFold

    scores = {name: np.empty(len(rows)) for name in learners}
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for j, (a, b) in enumerate(splitter.split(rows, _strata(data, rows))):
        for name in learners:
            scores[name][b] = _fit(name, data, rows[a], k, seed + j).predict(
                data.X.iloc[rows[b]])
    qini = {name: _qini(data, rows, k, s) for name, s in scores.items()}
    return max(learners, key=lambda name: qini[name]), qini


def fit_uplift(data: RctData, learners: list[str] | None = None, folds: int = 5,
               inner_folds: int = 3, seed: int = 0, progress: Progress | None = None
               ) -> UpliftFit:
    """Cross-fit every learner for every arm, choose inside the folds, refit the winner.

    ``learners`` defaults to the candidates (t, s, x, dr, linear), with the plain baselines
    cross-fitted beside them for comparison (never chosen). One name: no selection.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 2 or inner_folds < 2:
        raise ValueError("--folds: at least 2 (outer and inner)")
    candidates = list(dict.fromkeys(learners or CANDIDATES))
    for name in candidates:
        make_learner(name)  # unknown names fail before any work
    scored = candidates + [b for b in BASELINES if learners is None and b not in candidates]
    n = len(data.outcome)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    fold = np.empty(n, dtype=int)
    splits = list(splitter.split(np.zeros(n), _strata(data, np.arange(n))))
    arms = []
    for k in range(1, data.n_arms + 1):
        rows = data.treated_vs_control(k)
        oof = {name: np.empty(n) for name in scored}
        nested = np.empty(n)
        chosen_per_fold, inner = [], []
        for j, (train, test) in enumerate(splits):
            fold[test] = j
            train_k = train[np.isin(data.arm[train], (0, k))]
            for name in scored:
                oof[name][test] = _fit(name, data, train_k, k, seed + 10 * j).predict(
                    data.X.iloc[test])
            if len(candidates) > 1:
                pick, qini = inner_choice(data, train_k, k, candidates, inner_folds,
                                          seed + 100 + j)
            else:
                pick, qini = candidates[0], {}
            chosen_per_fold.append(pick)
            inner.append(qini)
            nested[test] = oof[pick][test]
            if progress:
                progress(f"arm {data.arm_names[k]}: fold {j + 1}/{folds} done, chosen inside "
                         f"the fold: {pick}")
        outer = {name: _qini(data, rows, k, oof[name][rows]) for name in candidates}
        chosen = max(candidates, key=lambda name: outer[name])
        models = {name: _fit(name, data, rows, k, seed + 999)
                  for name in dict.fromkeys([chosen, *scored[len(candidates):]])}
        arms.append(ArmFit(data.arm_names[k], rows, oof, nested, chosen_per_fold, inner,
                           chosen, models))
    return UpliftFit(arms, fold, data.X.iloc[:0])
