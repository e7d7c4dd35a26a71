"""The figures ``rewards uplift evaluate`` reports, as one JSON-ready dictionary.

Every Qini here is out-of-fold and comes with a bootstrap interval: on campaign data a Qini of
0.01 can be noise, and a reader should see that before targeting anyone with it. The chosen
learner is compared with the plain baselines *paired* (same bootstrap rows), which is the honest
way to say "not worse beyond noise".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.experiments import stats
from training.uplift.crossfit import ArmFit, UpliftFit, bootstrap_qini
from training.uplift.data import RctData
from training.uplift.learners import BASELINES

NESTED = "chosen (selected inside folds)"


def _at(y: np.ndarray, t: np.ndarray, s: np.ndarray, k: float) -> float | None:
    try:
        return stats.uplift_at_k(y, t, s, k=k, strategy="overall")
    except ValueError:  # the top k% holds no treated or no control row
        return None


def score_metrics(y: np.ndarray, t: np.ndarray, s: np.ndarray) -> dict[str, float | None]:
    """scikit-uplift's metrics of one score vector."""
    return {"qini_auc": stats.qini_auc_score(y, t, s),
            "uplift_auc": stats.uplift_auc_score(y, t, s),
            "uplift_at_10": _at(y, t, s, 0.1), "uplift_at_30": _at(y, t, s, 0.3)}


def _ci(draws: np.ndarray, alpha: float) -> list[float]:
    lo, hi = np.nanquantile(draws, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def arm_report(data: RctData, arm: ArmFit, k: int, bootstrap: int = 200, seed: int = 0,
               alpha: float = 0.05) -> dict[str, Any]:
    """ATE, every learner's out-of-fold figures, the nested choice and its paired comparisons."""
    rows = arm.rows
    y, t = data.outcome[rows], (data.arm[rows] == k).astype(float)
    ate, low, high, p = stats.ate_difference_in_means(y, t, alpha)
    scores = {NESTED: arm.nested[rows], **{name: s[rows] for name, s in arm.oof.items()}}
    draws = bootstrap_qini(y, t, scores, bootstrap, seed)
    learners = []
    for name, s in arm.oof.items():
        learners.append({"learner": name, **score_metrics(y, t, s[rows]),
                         "qini_ci": _ci(draws[name], alpha),
                         "role": "baseline" if name in BASELINES else "candidate",
                         "chosen": name == arm.chosen})
    nested: dict[str, Any] = {**score_metrics(y, t, scores[NESTED]), "qini_ci": _ci(draws[NESTED], alpha),
              "chosen_per_fold": arm.chosen_per_fold,
              "inner_qini": [{n: round(float(q), 6) if np.isfinite(q) else None
                              for n, q in fold.items()} for fold in arm.inner_qini]}
    versus = {}
    for name in BASELINES:
        if name in draws:
            diff = draws[NESTED] - draws[name]
            versus[name] = {"qini_difference": nested["qini_auc"] - stats.qini_auc_score(
                y, t, scores[name]), "ci": _ci(diff, alpha)}
    x, q = stats.qini_curve(y, t, scores[NESTED])
    keep = np.unique(np.linspace(0, len(x) - 1, min(len(x), 101)).astype(int))
    return {
        "arm": arm.name, "n_treated": int(t.sum()), "n_control": int((1 - t).sum()),
        "rate_treated": float(y[t == 1].mean()), "rate_control": float(y[t == 0].mean()),
        "ate": ate, "ate_ci": [low, high], "ate_p_value": p,
        "chosen_learner": arm.chosen, "nested": nested, "versus_baselines": versus,
        "learners": learners,
        "qini_curve": {"share": x[keep].tolist(), "incremental": q[keep].tolist()},
    }


def warnings_for(arms: list[dict[str, Any]]) -> list[str]:
    """Plain-language cautions a reader must not miss."""
    out = []
    for a in arms:
        lo, hi = a["nested"]["qini_ci"]
        if lo <= 0 <= hi:
            out.append(f"arm {a['arm']}: the chosen model's Qini interval includes 0; there is no "
                       "clear evidence that it ranks members by uplift better than random.")
        for name, cmp in a["versus_baselines"].items():
            if cmp["ci"][1] < 0:
                out.append(f"arm {a['arm']}: the chosen model is worse than the {name} baseline "
                           "beyond noise.")
    return out


def fit_report(data: RctData, fit: UpliftFit, bootstrap: int = 200, seed: int = 0
               ) -> list[dict[str, Any]]:
    """One report per treated arm."""
    return [arm_report(data, arm, k, bootstrap, seed + k)
            for k, arm in enumerate(fit.arms, start=1)]
