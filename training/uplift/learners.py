"""Uplift learners for one treated arm against control, scikit-learn style.

Every learner answers the same question, ``P(y=1 | x, treated) - P(y=1 | x, control)``, from
rows of a randomized test (so the propensity is the treated share, known by design):

- ``t``: two outcome models, one per arm (T-learner);
- ``s``: one outcome model with the arm as a feature (S-learner); trees shrink small effects
  towards zero, which is the right bias when effects are small;
- ``x``: X-learner (Künzel et al. 2019): imputed effects regressed per arm, blended by the
  treated share;
- ``dr``: DR-learner (Kennedy 2020): doubly robust pseudo-outcomes from cross-fitted outcome
  models, regressed on the features;
- ``linear``: logistic regression with treatment interactions, L2-regularized (C=0.01 on
  standardized columns: on the synthetic RCTs of ``bench/uplift_rct.py`` at 15,000 rows it
  ranked better than C=0.05, 0.2 and 1 on all three generators, the linear one included);
- ``ensemble``: the mean uplift of the candidates above; with small effects each learner's
  errors are largely its own, so their average ranks better than a typical single learner and is
  the default pick unless one learner is clearly better (:func:`training.uplift.crossfit.clear_winner`);
- ``t_plain``, ``linear_plain``: the plain baselines people reach for first (LightGBM's stock
  parameters; logistic regression with C=1), kept to show the chosen learner is not worse.

Defaults are conservative on purpose: campaign effects are a few points on a 10-20 % base rate,
where an unregularized model ranks noise. Leaves must hold a share of the rows
(``min_child_samples`` grows with n) and trees stay shallow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

CANDIDATES: tuple[str, ...] = ("t", "s", "x", "dr", "linear")
ENSEMBLE = "ensemble"
BASELINES: tuple[str, ...] = ("t_plain", "linear_plain")

PLAIN_PARAMS: dict[str, Any] = {"verbose": -1, "num_threads": 1}


def conservative_params(n: int) -> dict[str, Any]:
    """LightGBM parameters for outcome models on n rows with small effects."""
    return {
        "n_estimators": 150, "learning_rate": 0.03, "num_leaves": 7,
        "min_child_samples": max(50, n // 200), "subsample": 0.8, "subsample_freq": 1,
        "colsample_bytree": 0.8, "reg_lambda": 10.0, "cat_smooth": 50.0,
        "min_data_per_group": 100, "max_cat_threshold": 16, "max_bin": 63,
        "verbose": -1, "num_threads": 1,  # two cores shared: no oversubscription
    }


def _classifier(params: dict[str, Any], seed: int, X: pd.DataFrame, y: np.ndarray) -> Any:
    """A fitted LightGBM classifier, or the constant rate when y has one class only."""
    from lightgbm import LGBMClassifier

    if y.min() == y.max():
        return _Constant(float(y[0]))
    return LGBMClassifier(**{**params, "random_state": seed}).fit(X, y)


def _regressor(params: dict[str, Any], seed: int, X: pd.DataFrame, y: np.ndarray) -> Any:
    from lightgbm import LGBMRegressor

    return LGBMRegressor(**{**params, "random_state": seed}).fit(X, y)


class _Constant:
    """Stands in for a classifier trained on one class."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.column_stack([np.full(len(X), 1 - self.p), np.full(len(X), self.p)])


def _p(model: Any, X: pd.DataFrame) -> np.ndarray:
    return np.asarray(model.predict_proba(X))[:, 1]


class UpliftLearner:
    """Base class: ``fit(X, treated, y, seed)`` returns self; ``predict(X)`` the uplift."""

    name = "base"

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray,
            seed: int = 0) -> UpliftLearner:
        raise NotImplementedError

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def _check(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"{self.name} learner: call fit() first")


class TLearner(UpliftLearner):
    name = "t"

    def __init__(self, plain: bool = False) -> None:
        self.plain = plain
        self.name = "t_plain" if plain else "t"

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray,
            seed: int = 0) -> TLearner:
        t = treated.astype(bool)
        params = PLAIN_PARAMS if self.plain else conservative_params(len(y))
        self.m1_ = _classifier(params, seed, X[t], y[t])
        self.m0_ = _classifier(params, seed + 1, X[~t], y[~t])
        self.fitted_ = True
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._check()
        return _p(self.m1_, X) - _p(self.m0_, X)


class SLearner(UpliftLearner):
    name = "s"
    ARM = "__treated__"

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray,
            seed: int = 0) -> SLearner:
        params = {**conservative_params(len(y)), "n_estimators": 250, "num_leaves": 15,
                  "colsample_bytree": 1.0}  # the arm column must be available to every tree
        self.m_ = _classifier(params, seed, X.assign(**{self.ARM: treated.astype(float)}), y)
        self.fitted_ = True
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._check()
        return (_p(self.m_, X.assign(**{self.ARM: 1.0}))
                - _p(self.m_, X.assign(**{self.ARM: 0.0})))


class XLearner(UpliftLearner):
    name = "x"

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray,
            seed: int = 0) -> XLearner:
        t = treated.astype(bool)
        params = conservative_params(len(y))
        m1 = _classifier(params, seed, X[t], y[t])
        m0 = _classifier(params, seed + 1, X[~t], y[~t])
        d1 = y[t] - _p(m0, X[t])  # treated: observed minus what control would have done
        d0 = _p(m1, X[~t]) - y[~t]
        reg = {**params, "objective": "regression"}
        self.tau1_ = _regressor(reg, seed + 2, X[t], d1)
        self.tau0_ = _regressor(reg, seed + 3, X[~t], d0)
        self.share_ = float(t.mean())
        self.fitted_ = True
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._check()
        # weight each arm's effect model by the *other* arm's share (constant propensity)
        return (self.share_ * self.tau0_.predict(X)
                + (1 - self.share_) * self.tau1_.predict(X))


class DRLearner(UpliftLearner):
    name = "dr"

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray,
            seed: int = 0) -> DRLearner:
        from sklearn.model_selection import StratifiedKFold

        t = treated.astype(bool)
        e = float(t.mean())
        params = conservative_params(len(y) // 2)
        mu1, mu0 = np.empty(len(y)), np.empty(len(y))
        strata = 2 * t + y.astype(int)
        halves = StratifiedKFold(2, shuffle=True, random_state=seed).split(X, strata)
        for j, (a, b) in enumerate(halves):  # nuisances cross-fitted inside the training rows
            ta = t[a]
            mu1[b] = _p(_classifier(params, seed + j, X.iloc[a][ta], y[a][ta]), X.iloc[b])
            mu0[b] = _p(_classifier(params, seed + 7 + j, X.iloc[a][~ta], y[a][~ta]), X.iloc[b])
        pseudo = mu1 - mu0 + t * (y - mu1) / e - (~t) * (y - mu0) / (1 - e)
        final = {**conservative_params(len(y)), "objective": "regression", "num_leaves": 5,
                 "min_child_samples": max(200, len(y) // 50), "n_estimators": 100}
        self.tau_ = _regressor(final, seed + 3, X, pseudo)
        self.fitted_ = True
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._check()
        return np.asarray(self.tau_.predict(X))


class _Design:
    """Numeric columns imputed (median) with a missing flag and standardized; categoricals
    one-hot over their frequent levels (rare and unseen levels share the all-zero row)."""

    def fit(self, X: pd.DataFrame, min_count: int = 20, max_levels: int = 30) -> _Design:
        self.numeric_ = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
        self.center_, self.scale_, self.has_nan_ = {}, {}, {}
        for c in self.numeric_:
            v = X[c].astype(float)
            self.center_[c] = float(v.median()) if v.notna().any() else 0.0
            filled = v.fillna(self.center_[c])
            self.scale_[c] = float(filled.std()) or 1.0
            self.has_nan_[c] = bool(v.isna().any())
        self.levels_ = {}
        for c in X.columns:
            if c in self.numeric_:
                continue
            counts = X[c].astype(object).where(X[c].notna(), "<NA>").value_counts()
            self.levels_[c] = list(counts[counts >= min_count].index[:max_levels])
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        blocks = []
        for c in self.numeric_:
            v = X[c].astype(float)
            blocks.append(((v.fillna(self.center_[c]) - self.center_[c])
                           / self.scale_[c]).to_numpy())
            if self.has_nan_[c]:
                blocks.append(v.isna().to_numpy(dtype=float))
        for c, levels in self.levels_.items():
            v = X[c].astype(object).where(X[c].notna(), "<NA>").to_numpy()
            blocks.extend((v == level).astype(float) for level in levels)
        return np.column_stack(blocks) if blocks else np.zeros((len(X), 0))


class LinearInteraction(UpliftLearner):
    """``logit P(y) = a + b·x + t·(c + d·x)``; uplift is the difference of the two predictions."""

    def __init__(self, C: float = 0.01, plain: bool = False) -> None:
        self.C = 1.0 if plain else C
        self.name = "linear_plain" if plain else "linear"

    def _z(self, Z: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.column_stack([Z, t[:, None] * Z, t])

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray,
            seed: int = 0) -> LinearInteraction:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        self.design_ = _Design().fit(X)
        t = treated.astype(float)
        Z = self.design_.transform(X)
        if y.min() == y.max():
            self.model_: Any = _Constant(float(y[0]))
        else:  # one BLAS thread: measured twice as fast as two on a busy 2-core machine
            with threadpool_limits(1):
                self.model_ = LogisticRegression(C=self.C, max_iter=2000).fit(self._z(Z, t), y)
        self.fitted_ = True
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._check()
        Z = self.design_.transform(X)
        ones, zeros = np.ones(len(X)), np.zeros(len(X))
        return _p(self.model_, self._z(Z, ones)) - _p(self.model_, self._z(Z, zeros))


class Ensemble(UpliftLearner):
    """The mean predicted uplift of several learners (same units, so the sign still means
    "helps" and the policy can use it)."""

    name = ENSEMBLE

    def __init__(self, members: tuple[str, ...] = CANDIDATES) -> None:
        self.members = members

    def fit(self, X: pd.DataFrame, treated: np.ndarray, y: np.ndarray,
            seed: int = 0) -> Ensemble:
        self.models_ = [make_learner(m).fit(X, treated, y, seed) for m in self.members]
        self.fitted_ = True
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._check()
        return np.mean([m.predict(X) for m in self.models_], axis=0)


def make_learner(name: str) -> UpliftLearner:
    """A fresh, unfitted learner by name (``ensemble``: of all the candidates)."""
    factories = {
        "t": lambda: TLearner(), "s": lambda: SLearner(), "x": lambda: XLearner(),
        "dr": lambda: DRLearner(), "linear": lambda: LinearInteraction(),
        ENSEMBLE: lambda: Ensemble(),
        "t_plain": lambda: TLearner(plain=True),
        "linear_plain": lambda: LinearInteraction(plain=True),
    }
    if name not in factories:
        raise ValueError(f"--learners: unknown learner {name!r}; choose from "
                         f"{', '.join(factories)}")
    return factories[name]()


LEARNERS: tuple[str, ...] = CANDIDATES + (ENSEMBLE,) + BASELINES
