"""``rewards uplift evaluate`` end to end: read, check balance, cross-fit, choose, value, report.

Order matters. The balance check runs on every candidate column *before* any model sees them;
columns it flags (they differ between arms: caused by the treatment, or a broken randomization)
are left out of the default features and reported, so a file that carries spend or conversions
next to the pre-treatment facts does not leak outcomes into the model silently. Columns given
explicitly with ``--features`` are kept even when flagged, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.uplift.balance import balance_report
from training.uplift.crossfit import fit_uplift
from training.uplift.data import RctData, prepare, read_table, write_table
from training.uplift.learners import make_learner
from training.uplift.policy import best_arm, policy_value
from training.uplift.report import fit_report, warnings_for


@dataclass(frozen=True)
class EvaluateOptions:
    treatment_col: str
    treated: list[str]
    control: str
    outcome: str
    features: list[str] | None = None
    exclude: tuple[str, ...] = ()
    learners: list[str] | None = None
    folds: int = 5
    inner_folds: int = 3
    bootstrap: int = 200
    seed: int = 0


def _check_outputs(predictions_out: Path | None, report_dir: Path | None) -> None:
    if predictions_out is not None:
        if predictions_out.suffix not in (".csv", ".parquet"):
            raise ValueError("--predictions-out: expected a .csv or .parquet file, got "
                             f"{predictions_out.name!r}")
        if not predictions_out.parent.is_dir():
            raise ValueError(f"--predictions-out: folder {predictions_out.parent} does not exist")
    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise ValueError(f"--report: {report_dir} exists and is not a folder")


def predictions_frame(data: RctData, uplift: np.ndarray, fold: np.ndarray) -> pd.DataFrame:
    """One row per analysed input row: its arm, outcome, fold and out-of-fold uplift per arm."""
    frame = pd.DataFrame({"row": data.row, "arm": np.asarray(data.arm_names)[data.arm],
                          "outcome": data.outcome, "fold": fold})
    for j, name in enumerate(data.arm_names[1:]):
        frame[f"uplift_{name}"] = uplift[:, j]
    frame["best_arm"] = np.asarray(data.arm_names)[best_arm(uplift)]
    return frame


def evaluate_frame(frame: pd.DataFrame, options: EvaluateOptions,
                   progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any],
                                                                        pd.DataFrame]:
    """The report dictionary and the per-row predictions."""
    o = options
    if o.folds < 2 or o.inner_folds < 2:
        raise ValueError("--folds/--inner-folds: at least 2")
    if o.bootstrap < 20:
        raise ValueError("--bootstrap: at least 20 resamples")
    for name in o.learners or []:
        make_learner(name)
    data = prepare(frame, o.treatment_col, o.treated, o.control, o.outcome, o.features,
                   o.exclude)
    if progress:
        progress(f"balance check on {data.X.shape[1]} column(s), {len(data.outcome)} rows")
    balance = balance_report(data.X, data.arm, data.arm_names, seed=o.seed)
    excluded = [{"column": c, "reason": "treatment column"} for c in [o.treatment_col]]
    excluded += [{"column": o.outcome, "reason": "outcome column"}]
    excluded += [{"column": c, "reason": "--exclude"} for c in o.exclude]
    warnings: list[str] = []
    flagged = balance.flagged
    if o.features:
        if flagged:
            warnings.append(f"columns {flagged} differ between arms (see balance) but were kept "
                            "because --features names them: if they were measured after the "
                            "treatment, the uplift figures are not trustworthy.")
    elif flagged:
        excluded += [{"column": c, "reason": "flagged by the balance check"} for c in flagged]
        kept = [c for c in data.X.columns if c not in flagged]
        if not kept:
            raise ValueError("--features: every column differs between arms; name pre-treatment "
                             "columns with --features")
        data = RctData(data.X[kept], data.arm, data.arm_names, data.outcome, data.row,
                       data.dropped)
    if not balance.randomization_ok:
        warnings.append("the columns together predict the arm (balance.overall_auc): the "
                        "randomization may be broken, and uplift estimates may be biased.")
    fit = fit_uplift(data, o.learners, o.folds, o.inner_folds, o.seed, progress)
    arms = fit_report(data, fit, o.bootstrap, o.seed)
    policy = policy_value(data, fit.nested, o.bootstrap, o.seed)
    counts = np.bincount(data.arm, minlength=len(data.arm_names))
    report = {
        "data": {"rows_used": int(len(data.outcome)), "rows_dropped": data.dropped,
                 "outcome": o.outcome, "treatment_col": o.treatment_col,
                 "control": data.arm_names[0], "treated": data.arm_names[1:],
                 "rows_per_arm": {n: int(c) for n, c in zip(data.arm_names, counts, strict=True)},
                 "folds": o.folds, "inner_folds": o.inner_folds, "bootstrap": o.bootstrap,
                 "seed": o.seed},
        "features": {"used": list(data.X.columns), "excluded": excluded},
        "balance": balance.to_dict(),
        "arms": arms,
        "policy": policy.to_dict(),
        "warnings": warnings + warnings_for(arms),
        "metric_definitions": "scikit-uplift (sklift.metrics): qini_auc_score, "
                              "uplift_auc_score, uplift_at_k(strategy='overall')",
    }
    return report, predictions_frame(data, fit.nested, fit.fold)


def evaluate_file(data_path: Path, options: EvaluateOptions, predictions_out: Path | None = None,
                  report_dir: Path | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read, evaluate, and write the optional per-row scores and the HTML/JSON report."""
    _check_outputs(predictions_out, report_dir)
    report, predictions = evaluate_frame(read_table(data_path), options, progress)
    report["data"]["path"] = str(data_path)
    if predictions_out is not None:
        write_table(predictions, predictions_out)
        report["predictions_out"] = str(predictions_out)
    if report_dir is not None:
        from training.uplift.render import write_report

        report["report"] = {k: str(v) for k, v in write_report(report, report_dir).items()}
    return report
