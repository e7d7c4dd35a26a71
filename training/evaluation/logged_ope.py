"""Off-policy value of any policy, estimated from logged decisions of any source.

``ope.py`` evaluates this project's own models on the simulator's randomized logs; this module
is source-agnostic: a log of decisions (who knows which service made them) with the logged
probability of each action, and a candidate's full action distribution per decision. That is
what `rewards ope` reads and what the retrain gate calls before promoting a candidate, so a new
policy is judged on what was actually served, not on a simulation.

Estimators: IPS (unbiased, high variance), self-normalized IPS (small bias, lower variance) and
doubly robust (a reward model's prediction corrected by the weighted residual: unbiased if
either the propensities or the model are right, and narrower the better the model). Intervals
are percentile bootstraps (they need no normality of the heavy-tailed weighted terms), computed
on per-row sums so 500 resamples of 20,000 rows take a fraction of a second.

Pure numpy/pandas/LightGBM, no I/O: the CLI reads files and names them in errors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from training.evaluation.metrics import _importance_weights

FloatArray = NDArray[np.float64]
Progress = Callable[[str], None]

#: Cells (resamples x rows) drawn per bootstrap chunk: bounds memory at ~40 MB for any size.
_CHUNK_CELLS = 1_000_000
#: Tolerance on a target distribution's total probability per (decision_id, slot).
PROB_SUM_TOL = 1e-6
LOG_KEYS = ("decision_id", "slot", "action", "propensity", "reward")
TARGET_KEYS = ("decision_id", "slot", "action", "probability")
#: The reward model of DR: small, because it only has to beat "no model" on the residuals.
REWARD_MODEL_PARAMS: dict[str, Any] = {"n_estimators": 100, "num_leaves": 15, "min_child_samples": 20,
                       "verbose": -1, "n_jobs": 2, "deterministic": True,
                       "force_row_wise": True}


# --- estimators on arrays ----------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyEstimate:
    """A target policy's estimated mean reward per logged row, with 95 % bootstrap intervals.

    ``dr*`` are None when no reward model was given. ``ess`` (effective sample size) and
    ``max_weight`` say how much of the log actually informs the estimate: a handful of huge
    weights means the intervals are not to be trusted, whatever their width.
    """

    n: int
    ips: float
    ips_ci_low: float
    ips_ci_high: float
    snips: float
    snips_ci_low: float
    snips_ci_high: float
    dr: float | None
    dr_ci_low: float | None
    dr_ci_high: float | None
    ess: float
    max_weight: float
    clipped: int  # rows whose weight was clipped

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain JSON-ready values; a non-finite bound (all resamples degenerate) becomes None."""
        out: dict[str, float | int | None] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = None if isinstance(value, float) and not np.isfinite(value) else value
        return out


def estimate_policy(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray,
                    q_logged: np.ndarray | None = None, q_target: np.ndarray | None = None, *,
                    clip: float | None = None, n_bootstrap: int = 500, alpha: float = 0.05,
                    seed: int = 0, groups: ArrayLike | None = None) -> PolicyEstimate:
    """IPS, SNIPS and (given both ``q`` arrays) DR estimates of a target policy's value.

    ``target_prob[i]`` is the target policy's probability of row i's logged action,
    ``q_logged[i]`` the reward model's prediction for that action and ``q_target[i]`` its
    expectation under the target policy, ``sum_a pi(a|x_i) q(x_i, a)``. Weights
    ``target_prob / propensity`` are capped at ``clip`` (fewer extreme rows, some bias).

    Intervals: percentile bootstrap with ``n_bootstrap`` resamples of the rows; with ``groups``
    (e.g. decision ids when a decision has several slots) whole groups are resampled, because
    rows of one decision are not independent. The reward model is held fixed across resamples.
    """
    if (q_logged is None) != (q_target is None):
        raise ValueError("q_logged, q_target: give both (for DR) or neither")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip: expected a positive weight cap, got {clip}")
    if isinstance(n_bootstrap, bool) or int(n_bootstrap) != n_bootstrap or n_bootstrap < 2:
        raise ValueError(f"n_bootstrap: expected an integer >= 2, got {n_bootstrap!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a value in (0, 1), got {alpha}")
    models: dict[str, ArrayLike] = {}
    if q_logged is not None and q_target is not None:
        models = {"q_logged": q_logged, "q_target": q_target}
    r, raw_w, *q = _importance_weights(reward, propensity, target_prob, **models)
    w = raw_w if clip is None else np.minimum(raw_w, clip)
    if w.sum() == 0:
        raise ValueError("target_prob: zero for every logged action; the log says nothing "
                         "about this policy (SNIPS is undefined)")
    # Per-row terms whose sums give every estimator: IPS = s0/s2, SNIPS = s0/s1, DR = s3/s2.
    terms = [w * r, w, np.ones_like(r)]
    if q:
        terms.append(q[1] + w * (r - q[0]))
    table = np.column_stack(terms)
    boot = _estimators(_bootstrap_sums(table, groups, int(n_bootstrap), seed))
    with warnings.catch_warnings():  # a resample without weight has no SNIPS: left out
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    dr = float(np.mean(terms[3])) if q else None
    return PolicyEstimate(
        n=int(r.size),
        ips=float(np.mean(terms[0])), ips_ci_low=float(low[0]), ips_ci_high=float(high[0]),
        snips=float(terms[0].sum() / w.sum()),
        snips_ci_low=float(low[1]), snips_ci_high=float(high[1]),
        dr=dr, dr_ci_low=float(low[2]) if q else None, dr_ci_high=float(high[2]) if q else None,
        ess=float(w.sum() ** 2 / np.sum(w ** 2)), max_weight=float(w.max()),
        clipped=0 if clip is None else int(np.sum(raw_w > clip)),
    )


@dataclass(frozen=True)
class PairedDifference:
    """DR value of policy A minus policy B on the same logged rows, with a 95 % interval."""

    n: int
    dr: float
    ci_low: float
    ci_high: float
    #: rows where the two policies' distributions differ (only these carry the difference)
    differing: int

    @property
    def half_width(self) -> float:
        """Half the interval: about the smallest gain these rows can show (the lower bound
        clears zero when the estimate falls on the truth, half of the time)."""
        return (self.ci_high - self.ci_low) / 2

    def decisions_to_show(self, gain: float) -> float | None:
        """Logged rows (like these ones) at which the half-width would come down to ``gain``:
        it shrinks as 1/sqrt(n), so n x (half-width / gain)^2. None for a gain <= 0. Twice as
        many give the 80 % power of the usual sample-size tables (2.80 vs 1.96 standard
        errors). Why a gate keeps its champion: BENCHMARKS.md, learning loop, gate power."""
        if gain <= 0:
            return None
        return self.n * (self.half_width / gain) ** 2

    def as_dict(self) -> dict[str, float | int]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "half_width": self.half_width}


def paired_dr_difference(reward: np.ndarray, propensity: np.ndarray, q_logged: np.ndarray,
                         a_prob: np.ndarray, a_q: np.ndarray, b_prob: np.ndarray,
                         b_q: np.ndarray, *, clip: float | None = None,
                         n_bootstrap: int = 500, alpha: float = 0.05,
                         seed: int = 0) -> PairedDifference:
    """DR(A) - DR(B), each row's two DR terms differenced before resampling.

    Why paired: both policies are estimated on the same decisions with the same reward model,
    so most of each estimate's noise (the rewards of decisions where A and B act alike) is
    shared and cancels in the difference; two separate intervals would count it twice (in the
    learning-loop bench the candidate's own interval was 1.5-1.9 times wider than the paired
    one). What is left comes from the rows where the two differ, weighted by 1 / propensity.
    ``a_prob``/``b_prob``: each policy's probability of the logged action; ``a_q``/``b_q``:
    sum_a pi(a|x) q(x, a) per row.
    """
    terms = []
    for prob, q_target in ((a_prob, a_q), (b_prob, b_q)):
        r, raw_w, q_l, q_t = _importance_weights(reward, propensity, prob, q_logged=q_logged,
                                                 q_target=q_target)
        w = raw_w if clip is None else np.minimum(raw_w, clip)
        terms.append(q_t + w * (r - q_l))
    diff = terms[0] - terms[1]
    sums = _bootstrap_sums(np.column_stack([diff, np.ones_like(diff)]), None,
                           int(n_bootstrap), seed)
    low, high = np.quantile(sums[:, 0] / sums[:, 1], [alpha / 2, 1 - alpha / 2])
    differing = int(np.sum(~np.isclose(terms[0], terms[1], rtol=0.0, atol=1e-12)))
    return PairedDifference(n=int(diff.size), dr=float(diff.mean()), ci_low=float(low),
                            ci_high=float(high), differing=differing)


def _estimators(sums: FloatArray) -> FloatArray:
    """(resamples, 3 or 4) column sums -> (resamples, 2 or 3): IPS, SNIPS[, DR]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        snips = np.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1], np.nan)
        cols = [sums[:, 0] / sums[:, 2], snips]
        if sums.shape[1] > 3:
            cols.append(sums[:, 3] / sums[:, 2])
    return np.column_stack(cols)


def _bootstrap_sums(table: FloatArray, groups: ArrayLike | None, n_bootstrap: int,
                    seed: int) -> FloatArray:
    """Column sums of ``table`` over ``n_bootstrap`` resamples (with replacement) of its rows,
    or of its groups of rows. Each chunk draws an index matrix, counts each unit per resample
    and takes one matrix product for every column: bounded memory, and 500 resamples of
    20,000 rows in a few tenths of a second."""
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != (table.shape[0],):
            raise ValueError(f"groups: expected {table.shape[0]} values, got shape "
                             f"{labels.shape}")
        codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
        table = np.column_stack([np.bincount(codes, weights=c) for c in table.T])
    rng = np.random.default_rng(seed)
    units = table.shape[0]
    chunk = max(1, _CHUNK_CELLS // units)
    out = np.empty((n_bootstrap, table.shape[1]))
    for start in range(0, n_bootstrap, chunk):
        stop = min(n_bootstrap, start + chunk)
        idx = rng.integers(0, units, size=(stop - start, units))
        # Counts of each unit per resample, then one matrix product for every column.
        counts = np.bincount((idx + units * np.arange(stop - start)[:, None]).ravel(),
                             minlength=(stop - start) * units).reshape(stop - start, units)
        out[start:stop] = counts @ table
    return out


# --- logged frames -----------------------------------------------------------------------------


class OPEInputError(ValueError):
    """A LOG or TARGET frame the estimators cannot use; ``source`` names the frame."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail


def evaluate_logged(log: pd.DataFrame, target: pd.DataFrame, *, clip: float | None = None,
                    n_bootstrap: int = 500, seed: int = 0, folds: int = 5,
                    progress: Progress | None = None) -> dict:
    """Off-policy estimates of the TARGET policy on the LOG's decisions, as a JSON-ready dict.

    LOG: ``decision_id``, ``slot`` (optional, default 0), ``action``, ``propensity`` (the logging
    policy's probability of the action, in (0, 1]), ``reward``, and any other columns as context:
    numeric and boolean ones as numbers, ISO timestamps as epoch seconds, anything else as a
    categorical feature (LightGBM's native categories). TARGET: ``decision_id``, ``slot``
    (optional), ``action``, ``probability``: the candidate's full distribution per decision and
    slot. Ids and actions are compared as strings. DR (with a cross-fitted reward model) is
    reported only when the LOG has context columns; otherwise ``dr*`` are None.

    Raises :class:`OPEInputError` naming the frame, column and first offending data row
    (counted from 1, as in the file after its header).
    """
    if isinstance(folds, bool) or int(folds) != folds or folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    say = progress or (lambda _msg: None)
    log_keys, propensity, reward = _check_log(log)
    target_keys, probability = _check_target(target)
    key_log = log_keys["decision_id"] + "\x1f" + log_keys["slot"]
    key_tgt = target_keys["decision_id"] + "\x1f" + target_keys["slot"]
    missing = ~key_log.isin(pd.Index(key_tgt.unique()))
    if missing.any():
        first = int(np.flatnonzero(missing.to_numpy())[0])
        raise OPEInputError("TARGET", f"no distribution for {int(missing.sum())} LOG decisions, "
                            f"e.g. {_describe(log_keys, first)} (LOG row {first + 1})")
    # The target's probability of each logged action (0 when it is not in the distribution).
    pair_log = key_log + "\x1f" + log_keys["action"]
    prob_of = pd.Series(probability, index=(key_tgt + "\x1f" + target_keys["action"]).to_numpy())
    target_prob = pair_log.map(prob_of).fillna(0.0).to_numpy(dtype=np.float64)
    if not target_prob.any():
        raise OPEInputError("TARGET", "probability 0 for every logged action: the log says "
                            "nothing about this policy")
    # Rows of one decision (several slots) are bootstrapped together.
    decision = pd.factorize(log_keys["decision_id"])[0]
    groups = decision if len(np.unique(decision)) < len(decision) else None

    context = [c for c in log.columns if c not in LOG_KEYS]
    q_logged = q_target = None
    if context:
        features = _features(log, context)
        log_pos = pd.Series(np.arange(len(log)), index=key_log.to_numpy())
        offered = probability > 0  # q of actions the target never takes is not needed
        rows = pd.DataFrame({"pos": key_tgt[offered].map(log_pos).to_numpy(),
                             "action": target_keys["action"][offered].to_numpy(),
                             "prob": probability[offered]}).dropna(subset=["pos"])
        q_logged, q_target = _cross_fit(features, log_keys["action"].to_numpy(), reward,
                                        decision, rows, folds=int(folds), seed=seed, say=say)
    say(f"bootstrap: {n_bootstrap} resamples of {len(log):,} rows")
    estimate = estimate_policy(reward, propensity, target_prob, q_logged, q_target, clip=clip,
                               n_bootstrap=n_bootstrap, seed=seed, groups=groups)
    actions = pd.concat([log_keys["action"], target_keys["action"]]).nunique()
    return {**estimate.as_dict(), "actions": int(actions), "context_columns": context}


def _check_log(log: pd.DataFrame) -> tuple[pd.DataFrame, FloatArray, FloatArray]:
    """String keys (decision_id, slot, action), propensities and rewards of a valid LOG."""
    keys = _keys(log, "LOG", ("decision_id", "slot", "action"))
    if len(keys) < 2:
        raise OPEInputError("LOG", "need at least 2 rows for an interval")
    reward = _numbers(log, "LOG", "reward")
    propensity = _numbers(log, "LOG", "propensity")
    bad = (propensity <= 0) | (propensity > 1)
    if bad.any():
        raise OPEInputError("LOG", f"column 'propensity' has {int(bad.sum())} values outside "
                            f"(0, 1] (first at row {_first(bad)})")
    dup = keys.duplicated(subset=["decision_id", "slot"]).to_numpy()
    if dup.any():
        raise OPEInputError("LOG", f"{int(dup.sum())} duplicate (decision_id, slot) rows, e.g. "
                            f"{_describe(keys, _first(dup) - 1)} (first at row {_first(dup)})")
    return keys, propensity, reward


def _check_target(target: pd.DataFrame) -> tuple[pd.DataFrame, FloatArray]:
    """String keys and probabilities of a valid TARGET: one full distribution per decision."""
    keys = _keys(target, "TARGET", ("decision_id", "slot", "action"))
    probability = _numbers(target, "TARGET", "probability")
    negative = probability < 0
    if negative.any():
        raise OPEInputError("TARGET", f"column 'probability' has {int(negative.sum())} negative "
                            f"values (first at row {_first(negative)})")
    dup = keys.duplicated().to_numpy()
    if dup.any():
        raise OPEInputError("TARGET", f"{int(dup.sum())} duplicate (decision_id, slot, action) "
                            f"rows (first at row {_first(dup)})")
    totals = pd.Series(probability).groupby([keys["decision_id"], keys["slot"]],
                                            sort=False).transform("sum").to_numpy()
    off = np.abs(totals - 1.0) > PROB_SUM_TOL
    if off.any():
        row = _first(off)
        n_bad = keys[off].drop_duplicates(subset=["decision_id", "slot"]).shape[0]
        raise OPEInputError("TARGET", f"column 'probability' does not sum to 1 (within "
                            f"{PROB_SUM_TOL:g}) for {n_bad} (decision_id, slot) pairs, e.g. "
                            f"{_describe(keys, row - 1)} sums to {totals[row - 1]:.6g} "
                            f"(first at row {row})")
    # a distribution summing to 1 within the tolerance may hold 1.0000004 (float32 softmax):
    # valid, and the estimators take probabilities in [0, 1]
    return keys, np.minimum(probability, 1.0)


def _keys(frame: pd.DataFrame, source: str, names: tuple[str, ...]) -> pd.DataFrame:
    """Key columns as strings; a missing ``slot`` means one slot per decision (slot 0)."""
    required = [c for c in {"LOG": LOG_KEYS, "TARGET": TARGET_KEYS}[source] if c != "slot"]
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise OPEInputError(source, f"missing column(s) {', '.join(map(repr, absent))} "
                            f"(has {', '.join(map(repr, map(str, frame.columns)))})")
    if frame.empty:
        raise OPEInputError(source, "no rows")
    out = {}
    for name in names:
        if name not in frame.columns:
            out[name] = pd.Series("0", index=range(len(frame)))
            continue
        values = frame[name].reset_index(drop=True)
        null = values.isna().to_numpy()
        if null.any():
            raise OPEInputError(source, f"column {name!r} has {int(null.sum())} missing values "
                                f"(first at row {_first(null)})")
        if pd.api.types.is_float_dtype(values) and (values % 1 == 0).all():
            values = values.astype(np.int64)  # 3.0 and "3" name the same action
        text = values.astype(str)
        # and so does the text "3.0" (a CSV written from a float column: keys are read as text)
        out[name] = text.str.replace(r"^(-?\d+)\.0+$", r"\1", regex=True)
    return pd.DataFrame(out)


def _numbers(frame: pd.DataFrame, source: str, name: str) -> FloatArray:
    values = pd.to_numeric(frame[name].reset_index(drop=True), errors="coerce")
    array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(array)
    if bad.any():
        raise OPEInputError(source, f"column {name!r} has {int(bad.sum())} non-numeric or "
                            f"missing values (first at row {_first(bad)})")
    return array


def _first(mask: np.ndarray) -> int:
    """1-based data row of the first True."""
    return int(np.flatnonzero(mask)[0]) + 1


def _describe(keys: pd.DataFrame, pos: int) -> str:
    return f"decision_id {keys['decision_id'].iat[pos]!r} slot {keys['slot'].iat[pos]!r}"


# --- doubly robust: the cross-fitted reward model ----------------------------------------------


def _features(log: pd.DataFrame, context: list[str]) -> pd.DataFrame:
    """Context columns as model features: numbers stay numbers, ISO timestamps become epoch
    seconds, anything else becomes a categorical (LightGBM splits on categories natively)."""
    out = {}
    for i, name in enumerate(context):
        values = log[name].reset_index(drop=True)
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            out[f"f{i}"] = values.astype(np.float64)
            continue
        if not pd.api.types.is_datetime64_any_dtype(values):
            try:
                values = pd.to_datetime(values, format="ISO8601", utc=True)
            except (ValueError, TypeError):
                out[f"f{i}"] = values.astype("string").astype("category")
                continue
        seconds = values.astype("int64").astype(np.float64) / 1e9
        out[f"f{i}"] = seconds.where(values.notna())
    return pd.DataFrame(out)


def _cross_fit(features: pd.DataFrame, action: np.ndarray, reward: FloatArray,
               decision: np.ndarray, target_rows: pd.DataFrame, *, folds: int, seed: int,
               say: Progress) -> tuple[FloatArray, FloatArray]:
    """``q_logged`` and ``q_target`` from a reward model that never saw the row it predicts.

    Folds are drawn by decision (all slots of a decision in one fold), the model is fitted on
    the other folds: an in-sample model would fit each row's own noise, pull ``q_logged`` toward
    ``r`` and make DR's residual term, hence its interval, falsely small.
    """
    from lightgbm import LGBMRegressor

    n_decisions = int(decision.max()) + 1
    if n_decisions < 2:
        raise OPEInputError("LOG", "the reward model of DR needs at least 2 decisions")
    k = min(folds, n_decisions)
    rng = np.random.default_rng(seed)
    fold = (rng.permutation(n_decisions) % k)[decision]
    actions = pd.CategoricalDtype(sorted(set(action) | set(target_rows["action"])))
    x_log = features.assign(action=pd.Categorical(action, dtype=actions))
    pos = target_rows["pos"].to_numpy(dtype=np.int64)
    x_tgt = features.iloc[pos].reset_index(drop=True).assign(
        action=pd.Categorical(target_rows["action"].to_numpy(), dtype=actions))
    q_logged = np.empty(len(reward))
    q_rows = np.empty(len(pos))
    for j in range(k):
        say(f"reward model for DR: fold {j + 1}/{k}")
        held = fold == j
        model = LGBMRegressor(**REWARD_MODEL_PARAMS, random_state=seed)
        model.fit(x_log[~held], reward[~held])
        q_logged[held] = model.predict(x_log[held])
        held_tgt = held[pos]
        if held_tgt.any():
            q_rows[held_tgt] = model.predict(x_tgt[held_tgt])
    q_target = np.bincount(pos, weights=target_rows["prob"].to_numpy() * q_rows,
                           minlength=len(reward)).astype(np.float64)
    return q_logged, q_target
