"""The experiment report: one pure computation behind the JSON API, the HTML page and the CLI.

Inputs are plain frames (exposures, events, optional member segments) so the same function runs
in the service, in a batch job and in tests; :mod:`serving.experiments.service` does the I/O.

Analysis is intent-to-treat over *members*: a member counts in the arm of their first exposure
(the first decision served while the experiment ran), and their outcomes are the events in the
attribution window ``[first exposure, first exposure + window)``. Comparing whole arms keeps the
randomization intact; comparing only members who redeemed or saw an offer would not.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy import stats as scipy_stats

from serving.experiments import stats
from serving.experiments.definition import ARM_BEHAVIOUR, Experiment

Outcome = Literal["redeemed", "completed", "purchased", "spend"]
BINARY: tuple[Outcome, ...] = ("redeemed", "completed", "purchased")
PRIMARY_OUTCOME: dict[str, Outcome] = {
    "redemption": "redeemed", "challenge_completion": "completed", "incremental_spend": "spend"}
OUTCOME_LABEL: dict[str, str] = {
    "redeemed": "redemption rate", "completed": "challenge completion rate",
    "purchased": "purchase rate", "spend": "spend per member"}
VERB: dict[str, str] = {
    "redeemed": "redeemed a reward", "completed": "completed a challenge",
    "purchased": "made a purchase"}
ARM_PHRASE: dict[str, str] = {
    "model": "personalized offers", "random": "a random offer", "holdout": "no offer"}
MIN_MEMBERS_PER_ARM = 100
SEGMENT_COLUMNS = ("tier", "channel", "region", "player_type")
MAX_CURVE_POINTS = 200


class Interval(BaseModel):
    value: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, e: stats.Estimate) -> Interval:
        return cls(value=e.value, ci_low=e.ci_low, ci_high=e.ci_high)


class ArmSummary(BaseModel):
    arm: str
    behaviour: str
    share: float
    members: int
    exposed: int
    conversion_rate: Interval | None  # the primary metric's binary outcome (purchase for spend)
    purchase_rate: Interval | None
    redemption_rate: Interval | None
    completion_rate: Interval | None
    spend_per_member: Interval | None
    cost_per_member: Interval | None


class Uplift(BaseModel):
    treatment: str
    control: str
    outcome: Outcome
    label: str
    treated_mean: float
    control_mean: float
    absolute: Interval
    relative: Interval | None
    p_value: float
    mde: float
    n_treated: int
    n_control: int
    significant: bool
    warning: str | None
    sentence: str


class Qini(BaseModel):
    available: bool
    reason: str | None = None
    outcome: str = "purchased"
    n: int = 0
    qini_auc: float | None = None
    uplift_auc: float | None = None
    uplift_at_10: float | None = None
    uplift_at_30: float | None = None
    curve_x: list[float] = []
    curve_y: list[float] = []


class SegmentRow(BaseModel):
    segment: str
    value: str
    n_treated: int
    n_control: int
    treated_rate: float | None  # of the primary outcome
    control_rate: float | None
    uplift: Interval | None  # primary outcome, treated minus control
    purchase_uplift: Interval | None  # purchase rate, treated minus control


class BudgetView(BaseModel):
    treatment: str
    control: str
    cost_per_member: float
    incremental_cost_per_member: float
    incremental_spend_per_member: Interval
    incremental_spend_per_point: Interval | None
    incremental_purchases_per_1000_points: float | None
    sentence: str


class ExperimentReport(BaseModel):
    experiment: Experiment
    as_of: datetime
    primary_outcome: Outcome
    members: int
    window_complete_share: float
    arms: list[ArmSummary]
    uplifts: list[Uplift]
    qini: Qini
    segments: list[SegmentRow]
    budget: BudgetView | None
    sample_ratio_p_value: float | None
    summary: list[str]
    warnings: list[str]


# --- per-member outcomes -----------------------------------------------------------------------


def member_outcomes(exposures: pd.DataFrame, events: pd.DataFrame, window_days: int,
                    item_costs: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per exposed member: arm, segments, and outcomes inside their attribution window.

    A redemption's cost is the event's own ``cost``, else the reward's catalog cost
    (``item_costs``), else 0.
    """
    base = exposures.reset_index(drop=True).copy()
    cols = {"impressions": 0, "redeemed": 0, "completed": 0, "purchased": 0,
            "spend": 0.0, "cost": 0.0}
    if base.empty or events.empty:
        for c, v in cols.items():
            base[c] = v
        return base
    joined = events.merge(base[["member_id", "exposed_at"]], on="member_id", how="inner")
    end = joined["exposed_at"] + pd.Timedelta(days=window_days)
    joined = joined[(joined["event_timestamp"] >= joined["exposed_at"])
                    & (joined["event_timestamp"] < end)]
    kind = joined["event_type"]
    cost = joined["cost"].astype("float64")
    if item_costs:
        cost = cost.fillna(joined["reward_id"].map(item_costs).astype("float64"))
    per = pd.DataFrame({
        "member_id": joined["member_id"],
        "impressions": (kind == "impression").astype(int),
        "redeemed": (kind == "redemption").astype(int),
        "completed": (kind == "challenge_completed").astype(int),
        "purchased": (kind == "purchase").astype(int),
        "spend": np.where(kind == "purchase", joined["amount"].astype("float64").fillna(0), 0.0),
        "cost": np.where(kind == "redemption", cost.fillna(0.0), 0.0),
    }).groupby("member_id").sum()
    out = base.merge(per, left_on="member_id", right_index=True, how="left")
    for c, v in cols.items():
        out[c] = out[c].fillna(v).astype(type(v))
    for c in BINARY:  # "at least once in the window"
        out[c] = (out[c] > 0).astype(int)
    return out


# --- the report -------------------------------------------------------------------------------


def build_report(experiment: Experiment, exposures: pd.DataFrame, events: pd.DataFrame,
                 as_of: datetime, item_costs: dict[str, float] | None = None,
                 segments: pd.DataFrame | None = None, alpha: float = 0.05) -> ExperimentReport:
    """Everything a marketer's page, the JSON API and the CLI show, from the raw frames."""
    window = experiment.attribution_window_days
    m = member_outcomes(exposures, events, window, item_costs)
    if segments is not None and not m.empty:
        extra = [c for c in segments.columns if c != "member_id" and c not in m.columns]
        m = m.merge(segments[["member_id", *extra]], on="member_id", how="left")
    primary: Outcome = PRIMARY_OUTCOME[experiment.primary_metric]
    conversion: Outcome = "purchased" if primary == "spend" else primary
    arms = [_arm_summary(a.name, a.share, m, conversion, alpha) for a in experiment.arms]
    warnings: list[str] = []
    uplifts: list[Uplift] = []
    present = {a.name for a in experiment.arms}
    for control in ("holdout", "random"):
        if control not in present:
            continue
        for outcome in dict.fromkeys([primary, "purchased", "spend"]):
            u = _uplift(m, "model", control, outcome, alpha)
            if u is not None:
                uplifts.append(u)
    headline = next((u for u in uplifts if u.outcome == primary), None)
    if headline and headline.warning:
        warnings.append(headline.warning)
    control_arm = "holdout" if "holdout" in present else ("random" if "random" in present else None)
    srm = _sample_ratio_p(experiment, m)
    if srm is not None and srm < 0.001:
        warnings.append(
            f"Arm sizes differ from the configured shares more than chance allows (p={srm:.1g}): "
            "check that every channel calls the service while the experiment runs.")
    complete = (float(((m["exposed_at"] + timedelta(days=window)) <= as_of).mean())
                if len(m) else 0.0)
    if len(m) and complete < 1.0:
        warnings.append(f"The {window}-day attribution window is still open for "
                        f"{1 - complete:.0%} of members: numbers can still change.")
    budget = _budget(m, control_arm, alpha) if control_arm else None
    summary = [u.sentence for u in uplifts if u.control == control_arm][:3]
    if budget is not None:
        summary.append(budget.sentence)
    return ExperimentReport(
        experiment=experiment, as_of=as_of, primary_outcome=primary, members=int(len(m)),
        window_complete_share=complete, arms=arms, uplifts=uplifts,
        qini=_qini(m, control_arm), segments=_segments(m, primary, control_arm, alpha),
        budget=budget, sample_ratio_p_value=srm, summary=summary, warnings=warnings)


def _arm_summary(arm: str, share: float, m: pd.DataFrame, conversion: Outcome,
                 alpha: float) -> ArmSummary:
    g = m[m["arm"] == arm] if len(m) else m
    n = int(len(g))

    def rate(col: str) -> Interval | None:
        return Interval.of(stats.proportion_ci(int(g[col].sum()), n, alpha)) if n else None

    def mean(col: str) -> Interval | None:
        if n < 2:
            return None
        return Interval.of(stats.mean_ci(g[col].to_numpy(dtype=float), alpha))

    return ArmSummary(
        arm=arm, behaviour=ARM_BEHAVIOUR[arm], share=share, members=n,
        exposed=int((g["impressions"] > 0).sum()) if n else 0,
        conversion_rate=rate(conversion), purchase_rate=rate("purchased"),
        redemption_rate=rate("redeemed"), completion_rate=rate("completed"),
        spend_per_member=mean("spend"), cost_per_member=mean("cost"))


def _uplift(m: pd.DataFrame, treatment: str, control: str, outcome: Outcome,
            alpha: float) -> Uplift | None:
    if not len(m):
        return None
    t = m.loc[m["arm"] == treatment, outcome].to_numpy(dtype=float)
    c = m.loc[m["arm"] == control, outcome].to_numpy(dtype=float)
    if t.size < 2 or c.size < 2:
        return None
    cmp = stats.compare_groups(t, c, alpha)
    significant = cmp.p_value < alpha
    warning = None
    if min(t.size, c.size) < MIN_MEMBERS_PER_ARM:
        warning = (f"Too few members to conclude ({t.size:,} vs {c.size:,}; at least "
                   f"{MIN_MEMBERS_PER_ARM} per arm needed).")
    elif not significant:
        warning = ("Not enough evidence of a difference yet: with this sample only differences "
                   f"of at least {_fmt(outcome, cmp.mde, points=True)} would reliably show; "
                   "a smaller effect cannot be ruled out.")
    return Uplift(
        treatment=treatment, control=control, outcome=outcome, label=OUTCOME_LABEL[outcome],
        treated_mean=cmp.treated_mean, control_mean=cmp.control_mean,
        absolute=Interval.of(cmp.absolute),
        relative=Interval.of(cmp.relative) if cmp.relative else None, p_value=cmp.p_value,
        mde=cmp.mde, n_treated=cmp.n_treated, n_control=cmp.n_control, significant=significant,
        warning=warning, sentence=_sentence(treatment, control, outcome, cmp))


def _fmt(outcome: str, value: float, points: bool = False) -> str:
    if outcome == "spend":
        return f"{value:,.2f}"
    return f"{value * 100:.1f} percentage points" if points else f"{value:.1%}"


def _sentence(treatment: str, control: str, outcome: Outcome, cmp: stats.Comparison) -> str:
    """Plain language, no jargon beyond "95% confidence interval" (CI)."""
    a = cmp.absolute
    who_t, who_c = ARM_PHRASE[treatment], ARM_PHRASE[control]
    direction = "more" if a.value >= 0 else "less"
    if outcome == "spend":
        text = (f"Members who got {who_t} spent {abs(a.value):,.2f} {direction} per member than "
                f"members who got {who_c} ({cmp.treated_mean:,.2f} vs {cmp.control_mean:,.2f}; "
                f"95% CI {a.ci_low:,.2f} to {a.ci_high:,.2f})")
    else:
        text = (f"Members who got {who_t} {VERB[outcome]} {abs(a.value) * 100:.1f} percentage "
                f"points {direction} often than members who got {who_c} "
                f"({cmp.treated_mean:.1%} vs {cmp.control_mean:.1%}; 95% CI "
                f"{a.ci_low * 100:.1f} to {a.ci_high * 100:.1f} points)")
    if cmp.p_value < 0.05:
        return text + "."
    return text + ": the difference could be chance."


def _qini(m: pd.DataFrame, control: str | None) -> Qini:
    """Qini of the model's logged uplift score, treated = model arm, control = holdout/random."""
    if control is None:
        return Qini(available=False, reason="needs a model arm and a holdout or random arm")
    if not len(m):
        return Qini(available=False, reason="no members exposed yet")
    g = m[m["arm"].isin(["model", control]) & m["uplift_score"].notna()]
    y = g["purchased"].to_numpy(dtype=float)
    t = (g["arm"] == "model").to_numpy(dtype=float)
    s = g["uplift_score"].to_numpy(dtype=float)
    if len(g) < 20 or t.min() == t.max() or y.min() == y.max():
        return Qini(available=False, n=int(len(g)),
                    reason="too few members with a logged uplift score, or no variation")
    x, q = stats.qini_curve(y, t, s)
    keep = np.unique(np.linspace(0, x.size - 1, min(x.size, MAX_CURVE_POINTS)).astype(int))

    def at(k: float) -> float | None:
        try:
            return stats.uplift_at_k(y, t, s, k=k)
        except ValueError:
            return None

    return Qini(available=True, n=int(len(g)), qini_auc=stats.qini_auc_score(y, t, s),
                uplift_auc=stats.uplift_auc_score(y, t, s), uplift_at_10=at(0.1),
                uplift_at_30=at(0.3), curve_x=x[keep].tolist(), curve_y=q[keep].tolist())


def _segments(m: pd.DataFrame, outcome: Outcome, control: str | None,
              alpha: float) -> list[SegmentRow]:
    rows: list[SegmentRow] = []
    if control is None or not len(m):
        return rows
    for column in SEGMENT_COLUMNS:
        if column not in m.columns or m[column].isna().all():
            continue
        for value, g in m.groupby(m[column].astype(str), sort=True):
            t = g.loc[g["arm"] == "model", outcome].to_numpy(dtype=float)
            c = g.loc[g["arm"] == control, outcome].to_numpy(dtype=float)
            rows.append(SegmentRow(
                segment=column, value=str(value), n_treated=int(t.size), n_control=int(c.size),
                treated_rate=float(t.mean()) if t.size else None,
                control_rate=float(c.mean()) if c.size else None,
                uplift=_difference(t, c, alpha),
                purchase_uplift=_difference(
                    g.loc[g["arm"] == "model", "purchased"].to_numpy(dtype=float),
                    g.loc[g["arm"] == control, "purchased"].to_numpy(dtype=float), alpha)))
    return rows


def _difference(t: np.ndarray, c: np.ndarray, alpha: float) -> Interval | None:
    if t.size < 2 or c.size < 2:
        return None
    ate, low, high, _ = stats.ate_difference_in_means(
        np.r_[t, c], np.r_[np.ones(t.size), np.zeros(c.size)], alpha)
    return Interval(value=ate, ci_low=low, ci_high=high)


def _budget(m: pd.DataFrame, control: str, alpha: float) -> BudgetView | None:
    """Incremental spend per point of reward cost: what each point given away brought back.

    The CI divides the spend difference's CI by the cost difference, treating the cost (which
    varies far less than spend) as known: an approximation, said so on the page.
    """
    t, c = m[m["arm"] == "model"], m[m["arm"] == control]
    if len(t) < 2 or len(c) < 2:
        return None
    spend = stats.compare_groups(t["spend"].to_numpy(float), c["spend"].to_numpy(float), alpha)
    d_cost = float(t["cost"].mean() - c["cost"].mean())
    d_buy = float(t["purchased"].mean() - c["purchased"].mean())
    per_point = None
    per_1000 = None
    if d_cost > 0:
        a = spend.absolute
        per_point = Interval(value=a.value / d_cost, ci_low=a.ci_low / d_cost,
                             ci_high=a.ci_high / d_cost)
        per_1000 = 1000.0 * d_buy / d_cost
        sentence = (f"Each point spent on rewards for personalized offers brought "
                    f"{per_point.value:,.2f} of extra spend (95% CI {per_point.ci_low:,.2f} to "
                    f"{per_point.ci_high:,.2f}) compared with {ARM_PHRASE[control]}.")
    else:
        sentence = "No extra reward cost was recorded for personalized offers."
    return BudgetView(
        treatment="model", control=control, cost_per_member=float(t["cost"].mean()),
        incremental_cost_per_member=d_cost,
        incremental_spend_per_member=Interval.of(spend.absolute),
        incremental_spend_per_point=per_point, incremental_purchases_per_1000_points=per_1000,
        sentence=sentence)


def _sample_ratio_p(experiment: Experiment, m: pd.DataFrame) -> float | None:
    """Chi-square test of arm sizes against the configured shares (sample ratio mismatch)."""
    if len(m) < 50:
        return None
    observed = np.array([(m["arm"] == a.name).sum() for a in experiment.arms], dtype=float)
    expected = np.array([a.share for a in experiment.arms]) * observed.sum()
    return float(scipy_stats.chisquare(observed, expected).pvalue)
