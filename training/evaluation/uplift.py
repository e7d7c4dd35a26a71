"""Uplift modelling on any randomized dataset: a cross-fitted T-learner and its evaluation.

``rewards uplift evaluate`` answers "would an uplift model help on this A/B test's data?" for
data that has nothing to do with this project's simulator: a CSV or parquet file with a
treatment column, a binary outcome and some features. Every row's score is *out-of-fold*
(cross-fitting): the models that score a row never saw it, so the Qini and uplift-at-k below
are honest estimates of how the model would rank new members.

Model: T-learner, one LightGBM classifier on treated rows and one on control rows; the uplift
score is ``P(y=1 | x, treated) - P(y=1 | x, control)``. Metrics come from
``serving.experiments.stats`` and follow scikit-uplift's definitions (checked against
``sklift.metrics`` in the tests); the ATE is the difference in means with a Welch/Neyman CI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.experiments import stats

DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 20,
    "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "verbose": -1,
    "num_threads": 1,  # two cores shared with onnxruntime and other jobs: no oversubscription
}


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or parquet file, by extension."""
    if not path.is_file():
        raise ValueError(f"--data: file {path} does not exist")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".txt"):
        return pd.read_csv(path)
    raise ValueError(f"--data: expected a .csv or .parquet file, got {path.name!r}")


def write_table(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        raise ValueError(f"--predictions-out: expected a .csv or .parquet file, got {path.name!r}")


@dataclass(frozen=True)
class UpliftData:
    """Rows kept for analysis: features, treatment flag (1 treated / 0 control), outcome."""

    X: pd.DataFrame
    treatment: np.ndarray
    outcome: np.ndarray
    row: np.ndarray  # position of each kept row in the input file
    dropped: int  # rows whose treatment was neither the treated nor the control value


def prepare(frame: pd.DataFrame, treatment_col: str, treated: str, control: str, outcome: str,
            features: list[str] | None = None) -> UpliftData:
    """Select and validate the columns; errors name the command-line option to fix."""
    for option, col in (("--treatment-col", treatment_col), ("--outcome", outcome)):
        if col not in frame.columns:
            raise ValueError(f"{option}: no column {col!r} (columns: {list(frame.columns)[:20]})")
    if treated == control:
        raise ValueError("--treated and --control must differ")
    values = frame[treatment_col].astype(str)
    keep = (values == str(treated)) | (values == str(control))
    for option, value in (("--treated", treated), ("--control", control)):
        if not (values == str(value)).any():
            raise ValueError(f"{option}: no row has {treatment_col} == {value!r}; values seen: "
                             f"{sorted(values.unique())[:10]}")
    kept = frame[keep]
    y_raw = kept[outcome]
    if y_raw.isna().any():
        raise ValueError(f"--outcome: column {outcome!r} has missing values")
    y = y_raw.astype(float).to_numpy()
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"--outcome: column {outcome!r} must be binary 0/1 (or true/false)")
    if features:
        missing = [f for f in features if f not in frame.columns]
        if missing:
            raise ValueError(f"--features: no column(s) {missing}")
        if treatment_col in features or outcome in features:
            raise ValueError("--features: must not include the treatment or outcome column")
        names = list(features)
    else:
        names = [c for c in frame.columns if c not in (treatment_col, outcome)]
    if not names:
        raise ValueError("--features: no feature columns left")
    X = kept[names].copy()
    for c in X.columns:  # LightGBM takes pandas categoricals natively
        if not pd.api.types.is_numeric_dtype(X[c]) and not pd.api.types.is_bool_dtype(X[c]):
            X[c] = X[c].astype("category")
    t = (values[keep] == str(treated)).to_numpy(dtype=float)
    if min(t.sum(), (1 - t).sum()) < 10:
        raise ValueError("--treated/--control: each group needs at least 10 rows")
    return UpliftData(X.reset_index(drop=True), t, y, np.flatnonzero(keep.to_numpy()),
                      int((~keep).sum()))


def _fit_predict(X_train: pd.DataFrame, y_train: np.ndarray, X_test: pd.DataFrame,
                 params: dict[str, Any], seed: int) -> np.ndarray:
    """P(y=1) on the test rows; a constant when the training rows have one class only."""
    from lightgbm import LGBMClassifier

    if y_train.min() == y_train.max():
        return np.full(len(X_test), float(y_train[0]))
    model = LGBMClassifier(**{**params, "random_state": seed})
    model.fit(X_train, y_train)
    return model.predict_proba(X_test)[:, 1]


def cross_fitted_uplift(data: UpliftData, folds: int = 5, seed: int = 0,
                        params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold T-learner uplift for every row, and each row's fold.

    Folds are stratified on (treatment, outcome) so every fold sees both groups and classes.
    """
    from sklearn.model_selection import StratifiedKFold

    params = {**DEFAULT_PARAMS, **(params or {})}
    strata = (2 * data.treatment + data.outcome).astype(int)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    score = np.empty(len(strata))
    fold_of = np.empty(len(strata), dtype=int)
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(strata)), strata)):
        t_train = data.treatment[train] == 1
        X_train, y_train = data.X.iloc[train], data.outcome[train]
        X_test = data.X.iloc[test]
        p1 = _fit_predict(X_train[t_train], y_train[t_train], X_test, params, seed + k)
        p0 = _fit_predict(X_train[~t_train], y_train[~t_train], X_test, params, seed + k)
        score[test] = p1 - p0
        fold_of[test] = k
    return score, fold_of


def uplift_metrics(y: np.ndarray, treatment: np.ndarray, score: np.ndarray,
                   alpha: float = 0.05) -> dict[str, float | int | None]:
    """The figures ``rewards uplift evaluate`` prints (scikit-uplift definitions)."""
    ate, low, high, p_value = stats.ate_difference_in_means(y, treatment, alpha)

    def at(k: float) -> float | None:
        try:
            return stats.uplift_at_k(y, treatment, score, k=k, strategy="overall")
        except ValueError:  # the top k% holds no treated or no control row
            return None

    return {
        "qini_auc": stats.qini_auc_score(y, treatment, score),
        "uplift_auc": stats.uplift_auc_score(y, treatment, score),
        "uplift_at_10": at(0.1),
        "uplift_at_30": at(0.3),
        "ate": ate, "ate_ci_low": low, "ate_ci_high": high, "ate_p_value": p_value,
        "n_treated": int(treatment.sum()), "n_control": int((1 - treatment).sum()),
    }


def evaluate_file(data_path: Path, treatment_col: str, treated: str, control: str, outcome: str,
                  features: list[str] | None = None, predictions_out: Path | None = None,
                  folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Read, cross-fit, measure, and optionally write the per-row out-of-fold scores."""
    if folds < 2:
        raise ValueError("--folds: at least 2")
    if predictions_out is not None:
        if predictions_out.suffix not in (".csv", ".parquet"):
            raise ValueError("--predictions-out: expected a .csv or .parquet file, got "
                             f"{predictions_out.name!r}")
        if not predictions_out.parent.is_dir():
            raise ValueError(f"--predictions-out: folder {predictions_out.parent} does not exist")
    data = prepare(read_table(data_path), treatment_col, treated, control, outcome, features)
    score, fold = cross_fitted_uplift(data, folds, seed)
    result: dict[str, Any] = uplift_metrics(data.outcome, data.treatment, score)
    result.update({"rows_used": int(len(score)), "rows_dropped": data.dropped, "folds": folds,
                   "features": list(data.X.columns), "model": "T-learner (LightGBM), cross-fitted",
                   "metric_definitions": "scikit-uplift (sklift.metrics)"})
    if predictions_out is not None:
        write_table(pd.DataFrame({"row": data.row, "treatment": data.treatment.astype(int),
                                  "outcome": data.outcome, "uplift_score": score,
                                  "fold": fold}), predictions_out)
        result["predictions_out"] = str(predictions_out)
    return result
