"""Proof of uplift on randomized data (issue 22): synthetic campaigns whose true effects are known.

For each generator of ``training.simulate.rct`` and each seed, a training file (``--n-train``
rows, seed s) and a large test file (``--n-test`` rows, seed s + 1000) are drawn. On the training
file, as a user would run ``rewards uplift evaluate``:

1. the balance check on the default features (every column but treatment and outcome, so the
   post-treatment decoy is among them): is the decoy flagged, and which true pre-treatment
   columns are flagged by mistake;
2. ``fit_uplift`` on the true pre-treatment columns: the chosen learner (selection inside the
   folds) and the plain baselines ``t_plain`` and ``linear_plain``. ``fit_uplift`` refits the
   baselines on all rows with the same seed a one-learner call would use, so their ``predict``
   is what ``fit_uplift(data, learners=[name])`` would give, without two more cross-fits.

On the test file, per treated arm (that arm's rows and control's), Qini coefficient
(``serving.experiments.stats.qini_auc_score``) of the chosen learner, the baselines and the
oracle (score = the arm's true effect); and a low-noise version: the same formula with each
realized outcome replaced by its expectation (base + tau treated, base control). The stats
function accepts 0/1 outcomes only, so the bench computes that one with ``_qini_auc`` below
(checked equal to ``qini_auc_score`` on 0/1 outcomes at start). Policies (treat with the arm of
largest positive predicted uplift, else nothing): TRUE value on the test rows (mean of base +
tau of the chosen arm) against the oracle's, all-control and the best single arm for everyone.
Only this bench reads the truth.

    .venv/bin/python bench/uplift_rct.py                      # full run, defaults below
    .venv/bin/python bench/uplift_rct.py --generators small_effects --seeds 0 \
        --n-train 5000 --n-test 20000                         # smoke run

Progress goes to stderr; results to ``--out`` (JSON) and ``--plot`` (PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("chosen", "t_plain", "linear_plain", "oracle")
BASELINES = ("t_plain", "linear_plain")


def _qini_auc(y: np.ndarray, t: np.ndarray, score: np.ndarray) -> float:
    """``qini_auc_score``'s formula for any real outcome (here: expected outcomes).

    Qini curve ``Y_T - Y_C * N_T / N_C`` at each distinct score, x as the fraction of rows;
    normalized by the curve of the perfect ranking (treated by outcome first, control last, as
    scikit-uplift's ``y * t - y * (1 - t)``) minus the random line.
    """
    def curve(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(s, kind="mergesort")[::-1]
        ys, ts, ss = y[order], t[order], s[order]
        last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]
        n_all = last + 1.0
        n_t = np.cumsum(ts)[last]
        y_t, y_c = np.cumsum(ys * ts)[last], np.cumsum(ys * (1 - ts))[last]
        n_c = n_all - n_t
        ratio = np.divide(n_t, n_c, out=np.zeros_like(n_t), where=n_c != 0)
        return np.r_[0.0, n_all / y.size], np.r_[0.0, y_t - y_c * ratio]

    xp, vp = curve(y * t - y * (1 - t))
    xm, vm = curve(score)
    random = np.trapezoid([0.0, vp[-1]], [0.0, xp[-1]])
    return float((np.trapezoid(vm, xm) - random) / (np.trapezoid(vp, xp) - random))


def _self_check() -> None:
    """The helper must equal the project's Qini on 0/1 outcomes, ties included."""
    from serving.experiments.stats import qini_auc_score

    rng = np.random.default_rng(0)
    y, t = (rng.random(5000) < 0.2).astype(float), (rng.random(5000) < 0.5).astype(float)
    s = np.round(rng.normal(size=5000) + 0.3 * y * t, 1)
    ours, theirs = _qini_auc(y, t, s), qini_auc_score(y, t, s)
    if not np.isclose(ours, theirs, rtol=1e-9, atol=1e-12):
        raise AssertionError(f"_qini_auc {ours} != qini_auc_score {theirs}")


def _true_value(base: np.ndarray, tau: np.ndarray, choice: np.ndarray) -> float:
    """Mean true purchase probability when row i gets arm choice[i] (0 = nothing)."""
    gain = np.where(choice > 0, tau[np.arange(len(choice)), np.maximum(choice - 1, 0)], 0.0)
    return float(np.mean(base + gain))


def run_one(name: str, seed: int, n_train: int, n_test: int, folds: int, inner_folds: int,
            verbose: bool, log: Any) -> dict[str, Any]:
    """Balance check, fit and test metrics of one (generator, seed)."""
    from serving.experiments.stats import qini_auc_score
    from training.simulate.rct import make_rct
    from training.uplift.balance import balance_report
    from training.uplift.crossfit import fit_uplift
    from training.uplift.data import prepare
    from training.uplift.policy import best_arm

    train, test = make_rct(name, n_train, seed), make_rct(name, n_test, seed + 1000)
    args = (train.treatment_col, train.treated, train.control, train.outcome)
    t0 = time.perf_counter()
    everything = prepare(train.frame, *args)  # default features: the decoy included
    report = balance_report(everything.X, everything.arm, everything.arm_names)
    flagged = report.flagged
    balance = {"decoy_flagged": train.decoy in flagged,
               "pre_treatment_flagged": [c for c in flagged if c in train.features],
               "flagged": flagged, "randomization_ok": report.randomization_ok,
               "overall_auc": report.overall_auc, "seconds": round(time.perf_counter() - t0, 1)}
    log(f"  {name} seed {seed}: balance in {balance['seconds']} s; decoy flagged "
        f"{balance['decoy_flagged']}, pre-treatment columns flagged "
        f"{balance['pre_treatment_flagged']}")

    t1 = time.perf_counter()
    data = prepare(train.frame, *args, features=train.features)
    fit = fit_uplift(data, folds=folds, inner_folds=inner_folds, seed=seed,
                     progress=(lambda msg: log(f"    {msg}")) if verbose else None)
    fit_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    test_data = prepare(test.frame, *args, features=train.features)
    base, tau = test.base[test_data.row], test.tau[test_data.row]
    scores = {"chosen": fit.predict(test_data.X),
              **{b: fit.predict(test_data.X, learner=b) for b in BASELINES}, "oracle": tau}
    arm, y = test_data.arm, test_data.outcome
    arms = []
    for k, arm_fit in enumerate(fit.arms, start=1):
        rows = np.flatnonzero((arm == 0) | (arm == k))
        t = (arm[rows] == k).astype(float)
        expected = base[rows] + t * tau[rows, k - 1]
        qini = {m: qini_auc_score(y[rows], t, s[rows, k - 1]) for m, s in scores.items()}
        low = {m: _qini_auc(expected, t, s[rows, k - 1]) for m, s in scores.items()}
        nested_train = qini_auc_score(data.outcome[arm_fit.rows],
                                      (data.arm[arm_fit.rows] == k).astype(float),
                                      arm_fit.nested[arm_fit.rows])
        arms.append({
            "arm": arm_fit.name, "chosen_learner": arm_fit.chosen,
            "chosen_per_fold": list(arm_fit.chosen_per_fold),
            "true_mean_effect": float(tau[:, k - 1].mean()),
            "qini": qini, "qini_low_noise": low,
            "chosen_over_oracle": qini["chosen"] / qini["oracle"],
            "chosen_minus_best_baseline": qini["chosen"] - max(qini[b] for b in BASELINES),
            "chosen_over_oracle_low_noise": low["chosen"] / low["oracle"],
            "chosen_minus_best_baseline_low_noise": low["chosen"] - max(low[b] for b in BASELINES),
            "train_nested_qini": nested_train,
        })
    n_arms = tau.shape[1]
    single = [_true_value(base, tau, np.full(len(base), k)) for k in range(1, n_arms + 1)]
    policy = {m: _true_value(base, tau, best_arm(s)) for m, s in scores.items()}
    policy.update({"all_control": float(base.mean()), "best_single_arm": max(single),
                   "best_single_arm_name": train.treated[int(np.argmax(single))]})
    gain = policy["oracle"] - base.mean()  # share of the oracle's gain over sending nothing
    policy.update({f"{m}_share_of_oracle_gain": (policy[m] - base.mean()) / gain
                   for m in ("chosen", *BASELINES, "best_single_arm")})
    score_s = time.perf_counter() - t2
    head = arms[0]
    log(f"  {name} seed {seed}: fit {fit_s:.0f} s, test scoring {score_s:.0f} s; arm "
        f"{head['arm']} ({head['chosen_learner']}) Qini chosen {head['qini']['chosen']:.3f} "
        f"t_plain {head['qini']['t_plain']:.3f} linear_plain {head['qini']['linear_plain']:.3f} "
        f"oracle {head['qini']['oracle']:.3f}; policy value {policy['chosen']:.4f} vs oracle "
        f"{policy['oracle']:.4f}, control {policy['all_control']:.4f}")
    return {"seed": seed, "balance": balance, "arms": arms, "policy": policy,
            "seconds": {"balance": balance["seconds"], "fit": round(fit_s, 1),
                        "score": round(score_s, 1)}}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds, per arm, and the balance check's hit counts."""
    per_arm = []
    for j, first in enumerate(runs[0]["arms"]):
        arm_runs = [r["arms"][j] for r in runs]
        per_arm.append({
            "arm": first["arm"],
            "qini": {m: float(np.mean([a["qini"][m] for a in arm_runs])) for m in METHODS},
            "qini_low_noise": {m: float(np.mean([a["qini_low_noise"][m] for a in arm_runs]))
                               for m in METHODS},
            **{key: float(np.mean([a[key] for a in arm_runs]))
               for key in ("chosen_over_oracle", "chosen_minus_best_baseline",
                           "chosen_over_oracle_low_noise", "chosen_minus_best_baseline_low_noise",
                           "train_nested_qini", "true_mean_effect")},
            "chosen_learners": [a["chosen_learner"] for a in arm_runs],
        })
    numeric = [k for k, v in runs[0]["policy"].items() if isinstance(v, float)]
    return {
        "arms": per_arm,
        "policy": {k: float(np.mean([r["policy"][k] for r in runs])) for k in numeric},
        "decoy_flagged": sum(r["balance"]["decoy_flagged"] for r in runs),
        "runs_with_pre_treatment_flags": sum(bool(r["balance"]["pre_treatment_flagged"])
                                             for r in runs),
        "pre_treatment_flags": sum(len(r["balance"]["pre_treatment_flagged"]) for r in runs),
        "seeds": len(runs),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    """Qini per generator and arm: mean over seeds (bars) and each seed (dots); realized
    outcomes on top, expected outcomes below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = list(results)
    widths = [len(results[g]["summary"]["arms"]) + 0.5 for g in gens]
    fig, axes = plt.subplots(2, len(gens), figsize=(3.2 * sum(widths) / 1.5 + 1, 6.4),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    colours = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:green", "grey"), strict=True))
    for row, key in enumerate(("qini", "qini_low_noise")):
        for g, ax in zip(gens, axes[row], strict=True):
            arms = results[g]["summary"]["arms"]
            for j, arm in enumerate(arms):
                for i, m in enumerate(METHODS):
                    x = j + (i - 1.5) * 0.2
                    ax.bar(x, arm[key][m], 0.18, color=colours[m],
                           label=m if (j, row) == (0, 0) else None)
                    dots = [r["arms"][j][key][m] for r in results[g]["runs"]]
                    ax.plot([x] * len(dots), dots, "k.", ms=3)
            ax.set_xticks(range(len(arms)), [a["arm"] for a in arms], fontsize=8)
            ax.axhline(0, color="black", lw=0.6)
            ax.set_title(g if row == 0 else "", fontsize=10)
            if g == gens[0]:
                ax.set_ylabel("Qini coefficient, test" if row == 0 else
                              "Qini on expected outcomes")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Uplift on synthetic RCTs: chosen learner vs plain baselines vs oracle",
                 fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _machine() -> dict[str, Any]:
    import lightgbm
    import sklearn

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True, check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "lightgbm": lightgbm.__version__,
            "sklearn": sklearn.__version__, "commit": commit}


_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _task(item: tuple[tuple[str, int], argparse.Namespace]) -> dict[str, Any]:
    """One (generator, seed) in a worker process (module-level: it must pickle)."""
    (name, seed), args = item
    t0 = time.perf_counter()
    run = run_one(name, seed, args.n_train, args.n_test, args.folds, args.inner_folds,
                  args.verbose, _log)
    _log(f"{name} seed {seed} done in {time.perf_counter() - t0:.0f} s (pid {os.getpid()})")
    return run


def main() -> None:
    from training.simulate.rct import GENERATORS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=list(GENERATORS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--n-train", type=int, default=15_000,
                    help="15,000: the default run took 21 min with 2 jobs on the 2-core machine")
    ap.add_argument("--n-test", type=int, default=200_000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--inner-folds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2,
                    help="(generator, seed) runs in parallel processes (learners are 1-thread)")
    ap.add_argument("--verbose", action="store_true", help="fit_uplift's per-fold progress")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "uplift_rct.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "uplift_rct.png")
    args = ap.parse_args()

    t_all = time.perf_counter()
    _self_check()
    jobs = [(name, seed) for name in args.generators for seed in args.seeds]
    done: dict[tuple[str, int], dict[str, Any]] = {}

    if args.jobs > 1:
        # Learners use one thread each, so (generator, seed) runs go to separate processes.
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from training.simulate.rct import make_rct

        # The most arms first: the longest runs start early, the short ones fill the gaps.
        arms = {name: make_rct(name, 10, 0).tau.shape[1] for name in args.generators}
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(_task, (job, args)): job
                       for job in sorted(jobs, key=lambda j: -arms[j[0]])}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
    else:
        done = {job: _task((job, args)) for job in jobs}
    results: dict[str, Any] = {}
    for name in args.generators:
        runs = [done[(name, seed)] for seed in args.seeds]
        results[name] = {"runs": runs, "summary": summarize(runs)}
    out = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "machine": _machine(), "seconds": round(time.perf_counter() - t_all, 1),
           "generators": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")
    plot(results, args.plot)
    _log(f"wrote {args.out} and {args.plot}")
    for name, res in results.items():
        s = res["summary"]
        for a in s["arms"]:
            q = a["qini"]
            print(f"{name:15s} {a['arm']:14s} qini chosen {q['chosen']:.3f} t_plain "
                  f"{q['t_plain']:.3f} linear_plain {q['linear_plain']:.3f} oracle "
                  f"{q['oracle']:.3f} chosen/oracle {a['chosen_over_oracle']:.2f}")
        print(f"{name:15s} decoy flagged {s['decoy_flagged']}/{s['seeds']}, pre-treatment "
              f"flags {s['pre_treatment_flags']}; policy {s['policy']['chosen']:.4f} vs oracle "
              f"{s['policy']['oracle']:.4f}")


if __name__ == "__main__":
    main()
