"""The off-policy promotion gate of `rewards retrain`.

Before a retrained reward model replaces the champion, both are evaluated on the service's latest
logged decisions (the test period of the retrain's time split), as the policies serving would
run with them: the no-offer share, then the best eligible reward by predicted incremental value
with the exploration mix (``serving.decisioning.ranking``). Estimates are IPS, SNIPS and doubly
robust with bootstrap intervals (``training.evaluation.logged_ope``); the candidate is promoted
only when enough decisions exist and its DR lower bound beats the champion's DR estimate. With no
champion yet (cold start), the bar is the value of what served: the logged decisions' mean.

The lower bound is paired by default (``test="paired"``): the champion's DR plus the lower bound
of the candidate-minus-champion DR difference, each decision's two terms differenced before the
bootstrap. Both policies are scored on the same decisions, so the noise they share (every
decision where they act alike) cancels; the candidate's own interval (``test="marginal"``)
counts it in full (1.5-1.9 times wider under the near-greedy logging of the learning-loop
bench, BENCHMARKS.md).

Decisions made inside an uplift experiment are read with each action's probability over the
arm draw (:func:`mixture_propensity`): given its arm a decision rules out actions the policies
take (a holdout never shows a reward, no arm draws the no-offer), over the draw it does not.
The model arm's probabilities are re-derived from the version that served each decision: the
champion, or an earlier one loaded from the registry when a promotion falls inside the
evaluation period (``arm_models``).

The policies are re-run on each decision as serving ran it (:func:`with_served_context`): on
the member feature values the models were given (the decision log's ``features``, not the
point-in-time features training reads, which know the events since the online store was last
refreshed) and with the ranking's context the decision logged (``ranking``: the budget's cost
multiplier, the rewards kept out by a cooldown, an exclusion or a daily cap, the novelty
decay). Without them a third of the champion's greedy choices on the learning-loop bench were
not what it had served, and every such decision weighed up to 1 / the exploration floor.

Only the first slot of a decision is evaluated (its logged probability is a marginal; later
slots' are conditional on the first). The new-reward exploration is left out of the target
policies: it acts the same on both and is second order here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from serving.decisioning.rules import slot_epsilon
from serving.decisioning.scoring import RewardScores
from training.evaluation.evaluate import eligible_rewards, member_baskets
from training.evaluation.logged_ope import (
    PairedDifference,
    PolicyEstimate,
    estimate_policy,
    paired_dr_difference,
)
from training.evaluation.ope import expected_profits

#: (member rows, reward items) -> the model's reward scores for every member x reward
Scorer = Callable[[pd.DataFrame, pd.DataFrame], RewardScores]


@dataclass(frozen=True)
class Exploration:
    """How serving randomizes (serving's settings and rules): the target policies use the same."""

    no_offer_share: float
    epsilon: float
    floor: float


@dataclass(frozen=True)
class PolicyModel:
    """A reward model as a policy: its scores and its value parameters (with the margin)."""

    name: str
    scorer: Scorer
    value_params: dict[str, float]


@dataclass
class GateResult:
    promote: bool
    reason: str
    decisions: int
    candidate: PolicyEstimate | None = None
    champion: PolicyEstimate | None = None
    champion_label: str = ""
    #: candidate minus champion (paired on the same decisions)
    difference: PairedDifference | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: per evaluated decision and action ('' = no offer): each policy's probability (long
    #: format) and the logged action's probability as read, kept with the snapshot so anyone
    #: can audit or re-score what the gate compared
    policies: pd.DataFrame | None = None


#: An experiment's arms, in the order of :func:`mixture_propensity`'s columns.
ARMS = ("model", "random", "holdout")


@dataclass(frozen=True)
class ArmShares:
    """An experiment's period [start, end) and its arms' traffic shares (serving.experiments)."""

    start: pd.Timestamp
    end: pd.Timestamp
    shares: dict[str, float]


def experiment_shares(rows: pd.DataFrame, experiments: Sequence[ArmShares]) -> np.ndarray:
    """(rows x 3) the shares of the model, random and holdout arms of the experiment each row's
    decision was made in; all 0 outside experiments and where the experiment is not known
    (periods never overlap, so the decision's time names its experiment)."""
    out = np.zeros((len(rows), len(ARMS)))
    if not experiments or "arm" not in rows:
        return out
    arm = rows["arm"].fillna("").to_numpy(dtype=object)
    t = rows["event_timestamp"]
    for exp in experiments:
        inside = ((t >= exp.start) & (t < exp.end)).to_numpy() & (arm != "")
        if set(exp.shares) <= set(ARMS):
            out[inside] = [exp.shares.get(a, 0.0) for a in ARMS]
    return out


def served_versions(rows: pd.DataFrame, model: str) -> np.ndarray:
    """The version of ``model`` that served each row's decision, from its logged model
    versions: "" when none of that name served (cold start), "?" when versions were not
    logged (feature files built before they were)."""
    if "model_versions" not in rows:
        return np.full(len(rows), "?", dtype=object)
    text = rows["model_versions"].fillna("").astype(str)
    return text.map(lambda t: str(json.loads(t).get(model) or "") if t else "?").to_numpy(
        dtype=object)


def with_served_context(rows: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with each decision's member feature values replaced by those it was served
    with and its ranking context attached (column ``ranking``, JSON text), both from the
    decision log (``decisions``: EventStore.decision_log's frame). Rows of decisions the log
    does not hold, or that logged no features, keep theirs."""
    if rows.empty or decisions.empty or "decision_id" not in rows:
        return rows
    log = decisions.drop_duplicates("decision_id").set_index("decision_id")
    at = log.index.get_indexer(rows["decision_id"])
    out = rows.copy()
    if "ranking" in log:
        out["ranking"] = np.where(at >= 0, log["ranking"].to_numpy(dtype=object)[at], None)
    text = np.where(at >= 0, log["features"].to_numpy(dtype=object)[at], None)
    has = np.flatnonzero([isinstance(t, str) for t in text])
    if len(has):
        served = pd.DataFrame.from_records([json.loads(str(text[i])) for i in has])
        for column in served.columns.intersection(out.columns):
            values = served[column].to_numpy(dtype=np.float64)
            keep = ~np.isnan(values)  # a value the log kept as null: the row's own stays
            col = out[column].to_numpy(dtype=np.float64, copy=True)
            col[has[keep]] = values[keep]
            out[column] = col
    return out


def ranking_context(rows: pd.DataFrame, reward_ids: Sequence[str]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, what its logged ranking context (``ranking``, :func:`with_served_context`)
    says: the cost multiplier (n), the rewards kept out ((n x rewards) bool) and each
    reward's novelty factor ((n x rewards), 1 where none). Rows without one: 1, none, 1."""
    n, m = len(rows), len(reward_ids)
    lam, blocked, novelty = np.ones(n), np.zeros((n, m), dtype=bool), np.ones((n, m))
    if "ranking" not in rows:
        return lam, blocked, novelty
    index = {r: j for j, r in enumerate(reward_ids)}
    for i, text in enumerate(rows["ranking"].to_numpy(dtype=object)):
        if not isinstance(text, str):
            continue
        ctx = json.loads(text)
        lam[i] = float(ctx.get("cost_multiplier", 1.0))
        for r in ctx.get("blocked", ()):
            if r in index:
                blocked[i, index[r]] = True
        for r, factor in ctx.get("novelty", {}).items():
            if r in index:
                novelty[i, index[r]] = float(factor)
    return lam, blocked, novelty


def trial_rows(rows: pd.DataFrame, model: str, version: str) -> pd.DataFrame:
    """The rows of the period ``model`` v``version`` was on trial: from the first decision
    that names it in play (``model_versions["<model>@trial"]``) to the last, every decision
    in between. Selected by time, not by the tag, so the selection cannot depend on what a
    decision drew or served (a trial that failed to score for some member leaves that
    decision to the champion, logged as such: still a valid logged decision)."""
    from serving.decisioning.recommend import TRIAL_SUFFIX

    if "model_versions" not in rows or rows.empty:
        return rows.iloc[:0]
    key = model + TRIAL_SUFFIX
    text = rows["model_versions"].fillna("").astype(str)
    tagged = text.str.contains(f'"{key}"', regex=False).to_numpy()
    if tagged.any():
        tagged[tagged] = text[tagged].map(
            lambda t: str(json.loads(t).get(key)) == version).to_numpy(dtype=bool)
    if not tagged.any():
        return rows.iloc[:0]
    t = rows["event_timestamp"]
    first, last = t[tagged].min(), t[tagged].max()
    return rows[((t >= first) & (t <= last)).to_numpy()]


def logged_rows(rows: pd.DataFrame, experiments: Sequence[ArmShares] = (),
                champion: tuple[str, str | None] | None = None,
                readable: Collection[str] = ()) -> pd.DataFrame:
    """The service's own decisions in ``rows`` (test-period reward rows), one per decision:
    the first slot's offer, or the no-offer draw, with the version of the ``champion``'s model
    (name, version) that served each (``served_version``, :func:`served_versions`).

    Decisions inside an experiment are kept only when its arms are known (``experiments``):
    given its arm, a decision could not take actions the evaluated policies take (a holdout
    never shows a reward, the other arms never draw the no-offer), but over the arm draw every
    action has its share-weighted probability (:func:`mixture_propensity`), the model arm's
    re-derived from the model that served it: so only those the champion, a ``readable``
    version (one the caller can load) or no model (its model arm was uniform then) served."""
    if "source" not in rows:
        return rows.iloc[:0]
    own = rows[(rows["source"] == "service") & rows["policy"].isin(("model", "cold_start"))]
    own = own.assign(served_version=served_versions(own, champion[0]) if champion is not None
                     else np.full(len(own), "?", dtype=object))
    if "arm" in own:
        inside = (own["arm"].fillna("") != "").to_numpy()
        known = experiment_shares(own, experiments).sum(axis=1) > 0
        if champion is not None and inside.any():
            known &= own["served_version"].isin(
                {"?", "", champion[1] or "", *readable}).to_numpy()
        own = own[~inside | known]
    own = own[(own["slot"] == 0) | ~own["treated"].astype(bool)]
    return own.drop_duplicates("decision_id").reset_index(drop=True)


def arm_versions(rows: pd.DataFrame, experiments: Sequence[ArmShares],
                 champion: tuple[str, str | None]) -> set[str]:
    """The versions other than the champion that served decisions of ``experiments`` in
    ``rows``: the models the gate needs (``evaluate_gate(arm_models=...)``) to read them."""
    own = logged_rows(rows, experiments, None)
    inside = experiment_shares(own, experiments).sum(axis=1) > 0
    found = set(served_versions(own[inside], champion[0]))
    return found - {"", "?", champion[1] or ""}


def mixture_propensity(logged: np.ndarray, arm: np.ndarray, shares: np.ndarray,
                       model_arm: np.ndarray, random_arm: np.ndarray,
                       offered: np.ndarray) -> np.ndarray:
    """Each logged action's probability over the experiment's arm draw: sum over the arms of
    share x the arm's probability of that action (the balance heuristic of multiple logging
    policies, exact here because the arm is drawn from the member's salted hash, independent
    of the member's features and outcomes).

    ``logged``: the probability given the row's own arm, as logged (the holdout's is 1 for its
    no-offer whatever was logged); ``model_arm`` / ``random_arm``: the other arms' probability
    of the logged action (the model arm's ranking with exploration and no no-offer draw, a
    uniform eligible reward); ``offered``: the action is a reward, not the no-offer. Rows with
    all shares 0 (outside experiments) keep ``logged``."""
    terms = np.column_stack([model_arm, random_arm, (~offered).astype(np.float64)])
    index = {a: i for i, a in enumerate(ARMS)}
    inside = shares.sum(axis=1) > 0
    rows = np.flatnonzero(inside)
    own = np.array([index.get(str(a), -1) for a in arm[inside]], dtype=int)
    mine = own >= 0
    mine_logged = np.where(own[mine] == index["holdout"], 1.0, logged[rows[mine]])
    terms[rows[mine], own[mine]] = mine_logged
    out = logged.astype(np.float64).copy()
    out[inside] = (shares[inside] * terms[inside]).sum(axis=1)
    return out


def policy_distribution(value: np.ndarray, eligible: np.ndarray,
                        exploration: Exploration) -> np.ndarray:
    """(rows x (rewards + 1)) probabilities of each reward in the first slot, no offer last:
    the no-offer share, then per slot the best eligible reward with probability 1 - e and a
    uniform eligible one with e = min(1, max(epsilon, n_eligible x floor))."""
    n = eligible.sum(axis=1).astype(np.float64)
    e = np.array([slot_epsilon(exploration.epsilon, int(c), exploration.floor) for c in n])
    best = np.argmax(np.where(eligible, value, -np.inf), axis=1)
    probs = np.where(eligible, (e / np.maximum(n, 1.0))[:, None], 0.0)
    probs[np.arange(len(best)), best] += 1.0 - e
    probs[n == 0] = 0.0
    offer = 1.0 - exploration.no_offer_share
    out = np.zeros((len(value), value.shape[1] + 1))
    out[:, :-1] = offer * probs
    out[:, -1] = np.where(n == 0, 1.0, exploration.no_offer_share)
    return out


def evaluate_gate(rows: pd.DataFrame, items: pd.DataFrame, candidate: PolicyModel,
                  champion: PolicyModel | None, exploration: Exploration, *,
                  min_decisions: int, n_bootstrap: int = 500, seed: int = 0,
                  clip: float | None = None,
                  test: Literal["paired", "marginal"] = "paired",
                  experiments: Sequence[ArmShares] = (),
                  served: tuple[str, str | None] | None = None,
                  arm_models: Mapping[str, PolicyModel] | None = None) -> GateResult:
    """Estimate candidate and champion on the logged decisions in ``rows`` and decide.
    ``experiments``: the uplift experiments whose decisions may be read (their arm shares);
    ``served``: the champion's (model name, version), the model their model arm was served by
    unless ``arm_models`` holds the version that did (earlier champions, by version:
    :func:`arm_versions` names them)."""
    arm_models = dict(arm_models or {})
    own = logged_rows(rows, experiments, served, readable=arm_models)
    margin = float(candidate.value_params["margin"])
    cost = items["reward_cost"].to_numpy(dtype=np.float64)
    reward_index = {r: i for i, r in enumerate(items["reward_id"])}
    m = len(cost)
    treated = own["treated"].to_numpy(dtype=bool)
    action = np.where(treated, own["reward_id"].map(reward_index).fillna(-1).to_numpy(int), m)
    known = action >= 0  # a reward retired from the catalog: its rows cannot be re-scored
    own, action, treated = own[known].reset_index(drop=True), action[known], treated[known]
    n = len(own)  # the minimum counts the decisions the estimates are made on
    if n < min_decisions:
        retired = (f" ({int((~known).sum())} more logged a reward retired since)"
                   if (~known).any() else "")
        return GateResult(False, f"only {n} logged decisions in the evaluation period{retired}, "
                                 f"{min_decisions} needed (REWARDS_RETRAIN_MIN_DECISIONS)", n)
    r_idx = np.arange(len(own))
    realized = margin * own["spend"].to_numpy(dtype=np.float64) - np.where(
        treated, own["redeemed"].to_numpy(dtype=np.float64) * cost[np.minimum(action, m - 1)],
        0.0)
    propensity = own["propensity"].to_numpy(dtype=np.float64)
    lam, blocked, novelty = ranking_context(own, items["reward_id"].astype(str).tolist())
    eligible = eligible_rewards(own, items) & ~blocked

    def value(model: PolicyModel, at: np.ndarray | slice = slice(None),
              scores: RewardScores | None = None) -> np.ndarray:
        """What the model ranks each reward by for each of ``own``'s rows ``at``: its value
        with the decision's cost multiplier, decayed by novelty (as serving ranks)."""
        rows = own.iloc[at]
        scores = model.scorer(rows, items) if scores is None else scores
        v = scores.values(member_baskets(rows, model.value_params), cost,
                          float(model.value_params.get("margin", margin)), lam[at][:, None])
        return v * np.where(v > 0, novelty[at], 1.0)

    champ_value = None if champion is None else value(champion)
    shares = experiment_shares(own, experiments)
    in_experiments, earlier = int((shares.sum(axis=1) > 0).sum()), 0
    if in_experiments:
        version = own["served_version"].to_numpy(dtype=object)
        # the value each decision's model arm ranked by: the champion's, an earlier version's
        # (re-scored), none where no reward model served (uniform); where versions were not
        # logged, the champion's, or none when the policy says cold start
        arm_value = np.zeros((len(own), m)) if champ_value is None else champ_value.copy()
        ranked = np.full(len(own), champ_value is not None)
        for v, model in arm_models.items():
            at = np.flatnonzero((version == v) & (shares.sum(axis=1) > 0))
            if len(at):
                arm_value[at], ranked[at] = value(model, at), True
                earlier += len(at)
        cold = ((version == "") | ((version == "?") & (own["policy"].to_numpy() == "cold_start"))
                | ~ranked)
        propensity = _over_arms(own, propensity, shares, action, treated, eligible,
                                arm_value, exploration, cold)

    cand_scores = candidate.scorer(own, items)
    q = np.column_stack(expected_profits(cand_scores, member_baskets(own, candidate.value_params),
                                         cost, margin))  # each reward, then no offer
    q_logged = q[r_idx, action]
    dists = {"p_candidate": policy_distribution(value(candidate, scores=cand_scores), eligible,
                                                exploration)}
    if champ_value is not None:
        dists["p_champion"] = policy_distribution(champ_value, eligible, exploration)

    def on_logged(pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A policy's probability of each logged action, and its expected reward by q."""
        return pi[r_idx, action], (pi * q).sum(axis=1)

    def estimate(pi: np.ndarray) -> PolicyEstimate:
        prob, q_target = on_logged(pi)
        return estimate_policy(realized, propensity, prob, q_logged, q_target, clip=clip,
                               n_bootstrap=n_bootstrap, seed=seed)

    pi_cand = dists["p_candidate"]
    cand = estimate(pi_cand)
    if champion is not None and "p_champion" in dists:
        pi_champ = dists["p_champion"]
        champ = estimate(pi_champ)
        champ_prob, champ_q = on_logged(pi_champ)
        who = label = f"champion {champion.name}"
    else:  # what served (cold start): its value is the logged decisions' own mean
        champ = estimate_policy(realized, propensity, propensity, n_bootstrap=n_bootstrap,
                                seed=seed)
        champ = _with_dr(champ)
        # on-policy: weight 1 and q_target = q_logged make each DR term the realized reward
        champ_prob, champ_q = propensity, q_logged
        who = "the logging policy"
        label = f"{who} (no champion yet)"
    diff = paired_dr_difference(realized, propensity, q_logged, *on_logged(pi_cand),
                                champ_prob, champ_q, clip=clip, n_bootstrap=n_bootstrap,
                                seed=seed)
    if champ.dr is None or cand.dr_ci_low is None:  # both come with a reward model
        raise ValueError("the gate's estimates carry no doubly robust figure")
    bar = float(champ.dr)
    if test == "paired":
        low = bar + diff.ci_low
        how = (f"paired DR lower bound {low:.3f} (candidate - {who}: "
               f"{diff.dr:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}], the policies differ "
               f"on {diff.differing} decisions)")
    else:
        low = float(cand.dr_ci_low)
        how = f"DR lower bound {low:.3f}"
    verdict = low > bar
    by_earlier = (f", {earlier} of them served by an earlier version "
                  f"({', '.join('v' + v for v in sorted(arm_models))}), re-scored with it"
                  if earlier else "")
    inside = (f" ({in_experiments} in uplift experiments, weighed over their arms{by_earlier})"
              if in_experiments else "")
    reason = (f"candidate {how} {'beats' if verdict else 'does not beat'} {label}'s DR "
              f"estimate {bar:.3f} on {len(own)} logged decisions{inside}")
    power, power_metrics = gate_power(diff, bar)
    if not verdict:
        reason += power
    metrics = {**{f"gate.candidate.{k}": float(v) for k, v in cand.as_dict().items()
                  if v is not None},
               **{f"gate.champion.{k}": float(v) for k, v in champ.as_dict().items()
                  if v is not None},
               **{f"gate.difference.{k}": float(v) for k, v in diff.as_dict().items()},
               "gate.paired_lower_bound": bar + diff.ci_low,
               "gate.experiment_decisions": float(in_experiments),
               "gate.experiment_decisions_earlier_versions": float(earlier), **power_metrics}
    actions = np.append(items["reward_id"].astype(str).to_numpy(), "")
    policies = pd.DataFrame({
        "decision_id": np.repeat(own["decision_id"].to_numpy(), m + 1),
        "member_id": np.repeat(own["member_id"].astype(str).to_numpy(), m + 1),
        "action": np.tile(actions, len(own)),
        "logged": (np.arange(m + 1)[None, :] == action[:, None]).ravel(),
        # the probability the gate weighed the logged action by (over the arms in experiments)
        "p_logging": np.repeat(propensity, m + 1),
        **{k: v.ravel() for k, v in dists.items()}})
    return GateResult(verdict, reason, len(own), cand, champ, label, diff, metrics, policies)


def _over_arms(own: pd.DataFrame, propensity: np.ndarray, shares: np.ndarray,
               action: np.ndarray, treated: np.ndarray, eligible: np.ndarray,
               arm_value: np.ndarray, exploration: Exploration,
               cold: np.ndarray) -> np.ndarray:
    """The logged actions' probabilities over the experiments' arm draw
    (:func:`mixture_propensity`): the random arm's uniform eligible reward, and the model arm
    as it served (the ranking by ``arm_value``, the serving model's, with exploration and no
    no-offer draw; uniform where no reward model served, ``cold``)."""
    r = np.arange(len(own))
    n = eligible.sum(axis=1)
    m = eligible.shape[1]
    uniform = np.where(treated, eligible[r, np.minimum(action, m - 1)] / np.maximum(n, 1),
                       (n == 0).astype(np.float64))
    arm_policy = Exploration(0.0, exploration.epsilon, exploration.floor)
    ranked = policy_distribution(arm_value, eligible, arm_policy)[r, action]
    model_arm = np.where(cold, uniform, ranked)
    return mixture_propensity(propensity, own["arm"].fillna("").to_numpy(dtype=object), shares,
                              model_arm, uniform, treated)


def gate_power(diff: PairedDifference, bar: float) -> tuple[str, dict[str, float]]:
    """Why a champion was kept, in figures an operator can act on (a longer evaluation period,
    more exploration, or a forced promotion with a reason): the smallest gain these decisions
    can show, and how many such decisions the estimated gain would take."""
    half = diff.half_width
    share = f" ({half / abs(bar):.1%} of the champion's value)" if bar else ""
    text = (f"; gains below about {half:.2f} per decision{share} cannot be shown on these "
            f"{diff.n:,} decisions")
    metrics = {"gate.detectable_gain": half}
    need = diff.decisions_to_show(diff.dr)
    if need is not None:
        text += (f"; showing the estimated gain {diff.dr:+.2f} would take about {need:,.0f} "
                 "decisions")
        metrics["gate.decisions_to_show_estimate"] = need
    return text, metrics


def _with_dr(estimate: PolicyEstimate) -> PolicyEstimate:
    """On-policy: DR equals the (unweighted) mean, the same as IPS."""
    from dataclasses import replace

    return replace(estimate, dr=estimate.ips, dr_ci_low=estimate.ips_ci_low,
                   dr_ci_high=estimate.ips_ci_high)
