"""Reading a randomized dataset and choosing its analysis rows and feature columns.

Users point ``rewards uplift evaluate`` at any campaign file: one row per member, a column saying
which arm the member was randomized to, a binary outcome, and whatever else their warehouse
exported. Most such files hold more than pre-treatment facts (spend, conversions, visits *during*
the campaign). Those columns are caused by the treatment, so they must not be features. We cannot
tell them apart by name; the default excludes the treatment and outcome columns and any column
listed in ``--exclude``, and the balance check (:mod:`training.uplift.balance`) finds the rest
by how they differ between arms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

MIN_ROWS_PER_ARM = 10


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
class RctData:
    """Rows kept for analysis. ``arm`` is 0 for control and k for the k-th treated value."""

    X: pd.DataFrame
    arm: np.ndarray
    arm_names: list[str]
    outcome: np.ndarray
    row: np.ndarray  # position of each kept row in the input file
    dropped: int  # rows whose group is none of the arms

    @property
    def n_arms(self) -> int:
        """Treated arms (control not counted)."""
        return len(self.arm_names) - 1

    def treated_vs_control(self, k: int) -> np.ndarray:
        """Positions of the rows of arm k and of control."""
        return np.flatnonzero((self.arm == k) | (self.arm == 0))


def _as_categories(X: pd.DataFrame) -> pd.DataFrame:
    """Non-numeric columns become pandas categoricals (LightGBM reads them natively)."""
    X = X.copy()
    for c in X.columns:
        if pd.api.types.is_bool_dtype(X[c]):
            X[c] = X[c].astype(float)
        elif not pd.api.types.is_numeric_dtype(X[c]):
            X[c] = X[c].astype(str).where(X[c].notna()).astype("category")
    return X


def feature_columns(columns: list[str], treatment_col: str, outcome: str,
                    features: list[str] | None, exclude: list[str] | tuple[str, ...] = ()
                    ) -> list[str]:
    """The explicit ``--features``, or every column but treatment, outcome and ``--exclude``."""
    unknown = [c for c in exclude if c not in columns]
    if unknown:
        raise ValueError(f"--exclude: no column(s) {unknown}")
    if features:
        missing = [f for f in features if f not in columns]
        if missing:
            raise ValueError(f"--features: no column(s) {missing}")
        if treatment_col in features or outcome in features:
            raise ValueError("--features: must not include the treatment or outcome column")
        names = [f for f in dict.fromkeys(features) if f not in exclude]
    else:
        names = [c for c in columns if c not in (treatment_col, outcome, *exclude)]
    if not names:
        raise ValueError("--features: no feature columns left")
    return names


def prepare(frame: pd.DataFrame, treatment_col: str, treated: list[str] | str, control: str,
            outcome: str, features: list[str] | None = None,
            exclude: list[str] | tuple[str, ...] = ()) -> RctData:
    """Select and validate the rows and columns; errors name the command-line option to fix."""
    treated = [treated] if isinstance(treated, str) else list(treated)
    for option, col in (("--treatment-col", treatment_col), ("--outcome", outcome)):
        if col not in frame.columns:
            raise ValueError(f"{option}: no column {col!r} (columns: {list(frame.columns)[:20]})")
    if not treated:
        raise ValueError("--treated: give at least one treated value")
    names = [str(v) for v in treated]
    if len(set(names)) != len(names):
        raise ValueError("--treated: values repeat")
    if str(control) in names:
        raise ValueError("--treated and --control must differ")
    values = frame[treatment_col].astype(str)
    for option, value in [*(("--treated", v) for v in names), ("--control", str(control))]:
        if not (values == value).any():
            raise ValueError(f"{option}: no row has {treatment_col} == {value!r}; values seen: "
                             f"{sorted(values.unique())[:10]}")
    arm_names = [str(control), *names]
    code = {v: k for k, v in enumerate(arm_names)}
    arm_all = values.map(code)
    keep = arm_all.notna().to_numpy()
    kept = frame[keep]
    y_raw = kept[outcome]
    if y_raw.isna().any():
        raise ValueError(f"--outcome: column {outcome!r} has missing values")
    try:
        y = y_raw.astype(float).to_numpy()
    except (TypeError, ValueError):
        raise ValueError(f"--outcome: column {outcome!r} must be binary 0/1 (or true/false)")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"--outcome: column {outcome!r} must be binary 0/1 (or true/false)")
    columns = feature_columns(list(frame.columns), treatment_col, outcome, features, exclude)
    arm = arm_all[keep].to_numpy(dtype=int)
    counts = np.bincount(arm, minlength=len(arm_names))
    small = [arm_names[k] for k in range(len(arm_names)) if counts[k] < MIN_ROWS_PER_ARM]
    if small:
        raise ValueError(f"--treated/--control: each group needs at least {MIN_ROWS_PER_ARM} "
                         f"rows; too few in {small}")
    X = _as_categories(kept[columns]).reset_index(drop=True)
    return RctData(X, arm, arm_names, y, np.flatnonzero(keep), int((~keep).sum()))


def align_categories(X: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """New rows scored by a fitted model: the same columns, categoricals as strings (the models
    map levels themselves; unseen levels count as missing)."""
    missing = [c for c in like.columns if c not in X.columns]
    if missing:
        raise ValueError(f"--data: the rows to score lack column(s) {missing}")
    return _as_categories(X[list(like.columns)]).reset_index(drop=True)
