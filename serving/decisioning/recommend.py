"""From one member's features to ranked rewards and challenges.

The route gathers the inputs (online features, event-store facts, models); this module turns
them into a decision with no I/O, so every flag and rule is testable on plain values. Each
model is called once per request on the whole candidate matrix.

The catalog can change while serving (``Recommender.set_catalog``): a request reads the
recommender's current catalog once, with the candidate matrices compiled for it, and uses that
pair throughout, so a swap never mixes two catalogs in one decision.

Every item is drawn with a known probability, logged with the decision so that the service can
learn from its own decisions (README "Exploration and the decision log"): outside experiments a
share of decisions offers no reward (the control group of uplift); a family whose model was
never promoted explores uniformly (cold start); once it has one, epsilon-greedy slots keep a
floor per item, and challenge targets move to a neighbour of the flow-zone pick now and then.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from datetime import datetime

import numpy as np
from pydantic import ValidationError

from serving.decisioning.candidates import (
    CHALLENGE_ITEM_COLUMNS, REWARD_ITEM_COLUMNS, MemberRows, candidate_rows, cold_start_features,
)
from serving.contract.events import DecisionRecord, ExposureRecord, Policy
from serving.decisioning.ids import new_decision_id
from serving.decisioning.ranking import (
    explore_targets, flow_zone_choice, flow_zone_targets, member_basket,
    mixture_slot_probabilities, select_slate_exploring_new, slate_probabilities,
    target_neighbours, uniform_slate, uniform_targets,
)
from serving.decisioning.catalog import Catalog, model_cutoff_us
from serving.decisioning.scoring import ScoringModel, scores_from_proba
from serving.decisioning.rules import Rules, novelty_factor, select_slate
from serving.contract.schemas import ChallengeOut, RecommendationResponse, RewardOut

DEFAULT_MARGIN = 0.3
#: Probability that a slate's last reward slot shows a reward new to the reward model
#: (serving.stores.catalog.CatalogSettings.new_reward_epsilon; README "Catalog").
NEW_REWARD_EPSILON = 0.1
#: Defaults of the exploration settings (serving.config.ServeSettings: no_offer_share,
#: exploration_floor, target_exploration).
NO_OFFER_SHARE = 0.05
EXPLORATION_FLOOR = 0.002
TARGET_EXPLORATION = 0.05
COLD_START_REASON = "cold start: uniform exploration until a first model is promoted"
#: degraded_reasons of an answer asking for what the catalog has none of: a program that
#: has not imported its catalog (or deactivated all of it) is told so in every answer, not
#: only by /readyz, so an automation does not mistake "nothing" for "nothing suits"
NO_REWARDS_REASON = "catalog: no active reward"
NO_CHALLENGES_REASON = "catalog: no active challenge template"
#: degraded_reasons of a member whose tier the catalog's vocabulary does not know (a new tier
#: not appended yet, or no tier at all): served as a member of the lowest tier
UNKNOWN_TIER_REASON = "member tier unknown to the catalog: served as the lowest tier"
#: Default share of decisions served by a reward model on trial (ServeSettings.trial_share).
TRIAL_SHARE = 0.3
#: ``model_versions`` key of the version on trial in a decision it was drawn for:
#: ``{name}@trial`` (``model_versions[name]`` is the version that served)
TRIAL_SUFFIX = "@trial"
#: The model families, as ``Recommender.recommend``'s ``no_champion`` names them.
FAMILIES = ("reward", "difficulty")
log = logging.getLogger("rewards.recommend")


@dataclass
class MemberFacts:
    """Everything known about the member at decision time, gathered by the route."""

    member_id: str
    features: dict[str, float] | None  # None: not in the online store (cold start)
    consent: bool
    recent: dict[str, datetime] = field(default_factory=dict)  # item id -> last shown
    degraded_reasons: list[str] = field(default_factory=list)
    unknown: bool = False  # the store answered and has no row: a new member (cold start)


@dataclass
class Decision:
    response: RecommendationResponse
    #: the decision log's fields, items as plain dicts: validated into a DecisionRecord when
    #: the log writer asks for ``record``, off the request path (~30 us a request)
    record_fields: dict[str, Any]
    exposure: ExposureRecord | None = None  # set when the member is in an active experiment
    #: the member's values and the models' input names: the logged ``features``, built with
    #: the record, off the request path
    feature_values: Mapping[str, float] | None = None
    feature_names: Sequence[str] = ()

    @functools.cached_property
    def record(self) -> DecisionRecord:
        fields = self.record_fields
        if self.feature_values is not None and "features" not in fields:
            values = self.feature_values
            fields = {**fields, "features": {n: float(values.get(n, 0.0))
                                             for n in self.feature_names}}
        return DecisionRecord(**fields)


RowsKey = tuple[str, tuple[str, ...]]


class _Loaded:
    """A catalog and the candidate matrices compiled for it: swapped together, never apart."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.rows: dict[RowsKey, MemberRows] = {}
        self.logged: dict[tuple[tuple[str, ...], ...], list[str]] = {}
        #: per grid row, the rows of the next lower and higher target (target exploration),
        #: as lists: a request looks up a few of them
        lower, higher = target_neighbours(catalog.target_layout,  # type: ignore[attr-defined]
                                          len(catalog.targets))
        self.lower_target, self.higher_target = lower.tolist(), higher.tolist()

    def logged_names(self, models: Sequence[ScoringModel]) -> list[str]:
        """The member features the models read (their inputs less the item columns), each
        once, in order: what a decision logs as its ``features``. Cached per model contract."""
        key = tuple(tuple(m.meta.service_features) for m in models)
        names = self.logged.get(key)
        if names is None:
            items = set(REWARD_ITEM_COLUMNS) | set(CHALLENGE_ITEM_COLUMNS)
            seen = dict.fromkeys(n for m in models for n in m.meta.service_features
                                 if n not in items)
            names = self.logged[key] = list(seen)
        return names

    def member_rows(self, kind: str, service_features: Sequence[str]) -> MemberRows:
        key = (kind, tuple(service_features))
        rows = self.rows.get(key)
        if rows is None:
            rows = self.rows[key] = candidate_rows(self.catalog, kind, service_features)
        return rows


class Recommender:
    """Scores and ranks for one member. Its mutable state: its random generator and the
    current catalog, replaced whole by ``set_catalog``."""

    def __init__(self, catalog: Catalog, rules: Rules, seed: int | None = None,
                 new_reward_epsilon: float = NEW_REWARD_EPSILON, *,
                 no_offer_share: float = NO_OFFER_SHARE,
                 exploration_floor: float = EXPLORATION_FLOOR,
                 target_exploration: float = TARGET_EXPLORATION,
                 trial_share: float = TRIAL_SHARE) -> None:
        for name, value, high in (("new_reward_epsilon", new_reward_epsilon, 1.0),
                                  ("trial_share", trial_share, 0.5),
                                  ("no_offer_share", no_offer_share, 0.5),
                                  ("exploration_floor", exploration_floor, 0.5),
                                  ("target_exploration", target_exploration, 1 / 3)):
            if not 0.0 <= value <= high:
                raise ValueError(f"{name} must be in [0, {high:g}], got {value}")
        self._loaded = _Loaded(catalog)
        self.rules = rules
        self.rng = np.random.default_rng(seed)
        self.new_reward_epsilon = new_reward_epsilon
        #: outside experiments, the probability that a decision asking for rewards offers none
        self.no_offer_share = no_offer_share
        #: least probability of each eligible item per slot once its family has a model
        self.exploration_floor = exploration_floor
        #: probability of each neighbour of a flow-zone target (difficulty model only)
        self.target_exploration = target_exploration
        #: outside experiments, the probability that a reward model on trial serves a
        #: decision instead of the champion
        self.trial_share = trial_share
        self._cutoffs: dict[tuple[str, str], int | None] = {}

    @property
    def catalog(self) -> Catalog:
        return self._loaded.catalog

    def set_catalog(self, catalog: Catalog) -> None:
        """Serve ``catalog`` from the next request on. The candidate matrices of the models
        served so far are compiled before the swap, so no request pays for them; requests in
        flight finish on the catalog they started with."""
        loaded = _Loaded(catalog)
        for kind, names in list(self._loaded.rows):
            loaded.member_rows(kind, names)
        self._loaded = loaded  # one reference assignment: atomic for every reader

    def member_rows(self, kind: str, service_features: list[str]) -> MemberRows:
        """The compiled candidate matrix of a model over the whole current catalog (built on
        first use per feature list, i.e. once per model contract and catalog): every reward
        then the no-offer row, or every template x allowed target. Requests pick their
        eligible rows from it."""
        return self._loaded.member_rows(kind, service_features)

    def new_rewards(self, catalog: Catalog, model: ScoringModel | None) -> np.ndarray:
        """Per reward of ``catalog``: new to the reward ``model`` (created at or after the end
        of its data window); none without a model (nothing has been learnt about any)."""
        if model is None:
            return np.zeros(len(catalog.rewards), dtype=bool)
        key = (model.meta.name, model.meta.version)
        if key not in self._cutoffs:  # parsed once per model version
            self._cutoffs[key] = model_cutoff_us(model.meta.data_window, model.meta.trained_at)
        return catalog.new_rewards(self._cutoffs[key])

    def recommend(self, facts: MemberFacts, reward_model: ScoringModel | None,
                  difficulty_model: ScoringModel | None, *, k_rewards: int, k_challenges: int,
                  channel: str, exclude: set[str], now: datetime, cost_multiplier: float,
                  tier_hint: str | None = None, arm: str | None = None,
                  experiment_id: str | None = None,
                  no_champion: Collection[str] = (),
                  reward_trial: ScoringModel | None = None) -> Decision:
        """One member's decision and its log record.

        A family ("reward", "difficulty") passed without a model is in cold start when it is
        in ``no_champion`` (no model was ever promoted: uniform exploration, not degraded),
        else it falls back to the rules (its model is broken: degraded).

        ``reward_trial``: a reward model on trial beside the champion. Outside experiments it
        serves a ``trial_share`` of the decisions that offer rewards; both are scored, and every
        slot logs its probability over the draw given the earlier slots (the first: (1 - share)
        x the champion's + share x the trial's; ranking.mixture_slot_probabilities), so the
        next off-policy gate can evaluate the trial on its own traffic. The log names both
        (``model_versions``: the serving one under the model's name, the trial under
        ``name@trial``).
        """
        loaded = self._loaded  # this request's catalog, whatever set_catalog does meanwhile
        vocabulary = loaded.catalog.vocabulary
        reasons = list(facts.degraded_reasons)
        if k_rewards > 0 and not loaded.catalog.reward_cols["reward_id"].size:
            reasons.append(NO_REWARDS_REASON)
        if k_challenges > 0 and not loaded.catalog.target_cols["challenge_id"].size:
            reasons.append(NO_CHALLENGES_REASON)
        cold = facts.unknown
        personalized = facts.consent or not self.rules.eligibility.respect_consent
        if facts.features is None or not personalized:
            # New member, failed read, or no consent: score a history-less member of the tier.
            tier = (tier_hint if facts.features is None
                    else _tier_of(facts.features, vocabulary.tiers))
            # (a version on trial reads its own inputs: they get the history-less values too)
            features = cold_start_features(
                _member_names(reward_model, difficulty_model, reward_trial), tier, vocabulary)
        else:
            features = facts.features
        history = facts.features is not None and personalized
        known_rank = _known_rank(features)
        if known_rank is None:  # eligibility would refuse every reward: the lowest tier's are
            reasons.append(UNKNOWN_TIER_REASON)  # what such a member may have
        tier_rank = known_rank or 0.0
        reward_cold = reward_model is None and "reward" in no_champion
        difficulty_cold = difficulty_model is None and "difficulty" in no_champion
        fell_back: list[str] = []  # families whose model failed in this decision

        # The no-offer draw (outside experiments, whose arms decide who gets what: a holdout
        # logs no offer with probability 1, below): the control group uplift is learnt from.
        # Drawn first, so a withheld offer costs no reward scoring; no draw at all with a
        # share of 0 (the random stream is unchanged).
        no_offer_p = self.no_offer_share if arm is None and k_rewards > 0 else None
        no_offer = bool(no_offer_p) and self.rng.random() < self.no_offer_share
        # Experiment arms (serving.experiments.definition.ARM_BEHAVIOUR): the reward model scores
        # in every arm, so the model's uplift score is logged for holdout members too (Qini).
        rewards: list[RewardOut]
        reward_items: list[dict[str, Any]]
        uplift_score: float | None
        models = [m for m in (reward_model, difficulty_model) if m is not None]
        versions = {m.meta.name: m.meta.version for m in models}
        # a version on trial is in play in every decision asking for rewards outside
        # experiments (no-offer draws included: the gate reads them too)
        trial = (reward_trial if arm is None and reward_model is not None and k_rewards > 0
                 and self.trial_share > 0 else None)
        if trial is not None:
            versions[trial.meta.name + TRIAL_SUFFIX] = trial.meta.version
        context: dict[str, Any] = {}
        if no_offer:
            rewards, reward_items, uplift_score = [], [], None
        else:
            rewards, reward_items, uplift_score = self._rewards(
                loaded, features, tier_rank, reward_model,
                max(k_rewards, 1) if arm else k_rewards, exclude, facts.recent, now,
                cost_multiplier, reasons, history, personalized, random_arm=arm == "random",
                cold=reward_cold, offer_share=1.0 - (no_offer_p or 0.0), fell_back=fell_back,
                trial=trial, versions=versions, context=context)
        if arm is not None:
            rewards, reward_items = rewards[:k_rewards], reward_items[:k_rewards]
        challenges: list[ChallengeOut]
        challenge_items: list[dict[str, Any]]
        if arm == "holdout":
            rewards, reward_items, challenges, challenge_items = [], [], [], []
            if k_rewards > 0:  # the arm withheld every reward: a no-offer with probability 1
                # given the arm (assigned at random), the control rows learning reads
                no_offer_p, no_offer = 1.0, True
        else:
            challenges, challenge_items = self._challenges(
                loaded, features, difficulty_model, k_challenges, exclude, facts.recent, now,
                reasons, history, cold=difficulty_cold, fell_back=fell_back)
        if trial is not None and trial.meta.name + TRIAL_SUFFIX in versions:
            models.append(trial)  # its inputs are logged too
        policy: Policy = (
            "fallback" if fell_back or (reward_model is None and not reward_cold)
            or (difficulty_model is None and not difficulty_cold)
            else "cold_start" if reward_cold or difficulty_cold else "model")
        decision_id = new_decision_id()
        response = RecommendationResponse(
            decision_id=decision_id, member_id=facts.member_id, rewards=rewards,
            challenges=challenges, model_versions=versions, experiment_arm=arm,
            experiment_id=experiment_id,
            personalized=history, cold_start=cold, degraded=bool(reasons),
            degraded_reasons=reasons, cost_multiplier=round(cost_multiplier, 4), policy=policy)
        record = dict(
            decision_id=decision_id, member_id=facts.member_id, created_at=now, channel=channel,
            arm=arm, experiment_id=experiment_id, model_versions=versions,
            items=reward_items + challenge_items,
            flags={"personalized": response.personalized, "cold_start": cold,
                   "degraded": response.degraded, "no_offer": no_offer,
                   # per family, its model chose its items: ``policy`` names the decision's
                   # weakest family, and training weights each family's rows by its own
                   "reward_model": reward_model is not None and "reward" not in fell_back,
                   "difficulty_model": (difficulty_model is not None
                                        and "difficulty" not in fell_back)},
            policy=policy, no_offer_probability=no_offer_p,
            ranking=context if context and reward_items else None)
        exposure = None
        if experiment_id is not None and arm is not None:
            exposure = ExposureRecord(
                experiment_id=experiment_id, member_id=facts.member_id, arm=arm, exposed_at=now,
                decision_id=decision_id, channel=channel,
                tier=_tier_of(features, vocabulary.tiers),
                uplift_score=uplift_score)
        if not models:  # cold start: no model contract names the inputs; the first model will
            # learn from these decisions, so log every member value the service read
            return Decision(response, record, exposure, features, sorted(features))
        return Decision(response, record, exposure, features, loaded.logged_names(models))

    # -- rewards ------------------------------------------------------------------------------

    def _rewards(self, loaded: _Loaded, features: dict[str, float], tier_rank: float,
                 model: ScoringModel | None,
                 k: int, exclude: set[str], recent: dict[str, datetime], now: datetime,
                 lam: float, reasons: list[str], history: bool, consent: bool,
                 random_arm: bool = False, cold: bool = False, offer_share: float = 1.0,
                 fell_back: list[str] | None = None, trial: ScoringModel | None = None,
                 versions: dict[str, str] | None = None, context: dict[str, Any] | None = None
                 ) -> tuple[list[RewardOut], list[dict[str, Any]], float | None]:
        """Ranked rewards, their log items, and the model's uplift for its first offer.

        ``cold``: no reward model was ever promoted, the rewards are drawn uniformly.
        ``offer_share``: the probability that this decision offers rewards at all (1 - the
        no-offer share), a factor of the first slot's shown probability (later slots are
        given the earlier ones: an offer is certain there). ``trial``: a version on trial
        (``recommend``); ``versions`` (the decision's model versions) then names it and the
        version that served. ``context`` receives the ranking's context (the decision log's
        ``ranking``: cost multiplier, blocked rewards, novelty factors).
        """
        versions = {} if versions is None else versions
        catalog = loaded.catalog
        cat = catalog.reward_cols
        ok = np.ones(len(cat["reward_id"]), dtype=bool)
        if self.rules.eligibility.respect_min_tier:
            ok &= cat["min_tier_rank"] <= tier_rank
        allowed = ok  # by the member's tier
        if exclude:
            ok = ok & ~np.isin(cat["reward_id"], list(exclude))
        days_since = _days_since(cat["reward_id"], recent, now)
        if recent:  # never shown (no recent offers): nothing is in a cooldown
            ok = ok & ~(days_since < self.rules.frequency.reward_cooldown_days)
        idx = np.flatnonzero(ok)  # the eligible rewards; i below indexes into idx
        if k == 0 or len(idx) == 0:
            return [], [], None
        # novelty decay applies only to items shown before (None: nothing was)
        nov = self.rules.novelty
        novelty = novelty_factor(days_since[idx], nov.window_days, nov.decay) if recent else None
        if context is not None:  # what the ranking applies besides the scores (RankingContext)
            context["cost_multiplier"] = float(lam)
            if exclude or recent:
                context["blocked"] = cat["reward_id"][allowed & ~ok].tolist()
            if novelty is not None and nov.decay > 0:
                context["novelty"] = {cat["reward_id"][idx[i]]: float(novelty[i])
                                      for i in np.flatnonzero(novelty < 1.0).tolist()}
        n = len(idx)
        cost = cat["cost"][idx].astype(np.float64)
        if cold and not random_arm:
            return self._uniform_rewards(cat, idx, cost, k, offer_share)
        if model is not None:
            try:
                # the eligible rewards' rows, then the no-offer row (last in the compiled matrix)
                X = loaded.member_rows("reward", model.meta.service_features).matrix(
                    features, np.append(idx, len(ok)))
                proba = model.predict(X)  # one call: every candidate + the no-offer row
            except Exception as exc:  # noqa: BLE001 - a broken model degrades, never fails
                reasons.append(f"reward model error: {type(exc).__name__}")
                model = None
                if fell_back is not None:
                    fell_back.append("reward")
        if model is None and not cold:  # cold: the random arm of an experiment, below
            reasons.append("reward model unavailable: cheapest eligible rewards")
        if model is None:
            value = -cost
            scores = {"propensity": np.full(n, np.nan), "uplift": np.full(n, np.nan)}
        else:
            value, scores = _reward_values(proba, model, features, cost, lam)
        ranked = _decayed(value, novelty)
        # A version on trial (REWARDS_TRIAL_SHARE): scored too, and drawn to serve with
        # probability trial_share; every slot then logs its probability over that draw.
        on_trial: tuple[ScoringModel, np.ndarray] | None = None
        if trial is not None and model is not None and self.trial_share > 0:
            try:
                X = loaded.member_rows("reward", trial.meta.service_features).matrix(
                    features, np.append(idx, len(ok)))
                t_value, t_scores = _reward_values(trial.predict(X), trial, features, cost, lam)
                on_trial = trial, _decayed(t_value, novelty)
            except Exception as exc:  # noqa: BLE001 - a broken trial leaves the champion alone
                log.warning("trial model error", extra={"model": trial.meta.name,
                                                        "error": type(exc).__name__})
        serving, other = model, None
        if on_trial is None and trial is not None:  # it could not score: the champion alone
            versions.pop(trial.meta.name + TRIAL_SUFFIX, None)
        if on_trial is not None:
            if self.rng.random() < self.trial_share:
                serving, other = on_trial[0], (model, ranked)
                value, scores, ranked = t_value, t_scores, on_trial[1]
                versions[trial.meta.name] = trial.meta.version  # type: ignore[union-attr]
            else:
                other = on_trial
        category = catalog.reward_category_index[idx]  # type: ignore[attr-defined]
        cap, epsilon = self.rules.diversity.max_per_category, self.rules.exploration.epsilon
        slate, explored = select_slate_exploring_new(
            ranked, category, k, cap, epsilon, self.rng,
            self.new_rewards(catalog, serving)[idx], self.new_reward_epsilon,
            self.exploration_floor)
        if other is not None and len(slate.index):
            # every slot's probability over the draw of the serving version: what the other
            # would have logged for the same slate, mixed by how likely each is to have
            # shown the slots before
            p_other = slate_probabilities(
                other[1], category, slate.index.tolist(), k, cap, epsilon,
                self.new_rewards(catalog, other[0])[idx], self.new_reward_epsilon,
                self.exploration_floor)
            s = self.trial_share
            slate.probability[:] = mixture_slot_probabilities(
                slate.probability, p_other, 1 - s if serving is model else s)
        model = serving
        model_uplift = None
        if model is not None and len(slate.index):
            # what the model expects its first offer to add: the score the Qini curve ranks by
            model_uplift = _f(scores["uplift"][slate.index[0]])
        if random_arm:  # uniform over eligible rewards, drawn without replacement
            slate, explored = uniform_slate(n, k, self.rng), False
        out, items = [], []
        for rank, (i, p) in enumerate(zip(slate.index.tolist(), slate.probability.tolist(),
                                          strict=True)):
            j = int(idx[i])
            reward_id, item_value, item_cost = cat["reward_id"][j], _f(value[i]), float(cost[i])
            if random_arm:
                reason = "random arm of an experiment: a random eligible reward"
            elif explored and rank == len(slate.index) - 1:
                reason = "exploring a reward new to the model: no history to rank it by yet"
            else:
                reason = _reward_reason(scores, i, value[i], history, consent, model)
            if rank == 0:  # P(an offer at all) x P(item | offer); later slots are given
                p *= offer_share  # the earlier ones, so an offer is certain there
            out.append(_item_out(RewardOut,
                reward_id=reward_id, name=cat["name"][j], type=cat["reward_type"][j],
                category=cat["category"][j], propensity=_f(scores["propensity"][i]),
                uplift=_f(scores["uplift"][i]), expected_value=item_value, cost=item_cost,
                shown_probability=round(p, 6), reason=reason))
            items.append(dict(item_type="reward", item_id=reward_id, rank=rank,
                                      score=item_value, shown_probability=p, cost=item_cost))
        return out, items, model_uplift

    def _uniform_rewards(self, cat: Mapping[str, np.ndarray], idx: np.ndarray,
                         cost: np.ndarray, k: int, offer_share: float
                         ) -> tuple[list[RewardOut], list[dict[str, Any]], None]:
        """Cold start: up to k of the eligible rewards ``idx`` drawn uniformly without
        replacement (diversity caps do not apply, as in an experiment's random arm: every
        eligible reward equally likely), the first shown with offer_share / n, each later one
        with 1 / (n - rank) given those before it."""
        slate = uniform_slate(len(idx), k, self.rng)
        out, items = [], []
        for rank, (i, p) in enumerate(zip(slate.index.tolist(), slate.probability.tolist(),
                                          strict=True)):
            j, p = int(idx[i]), p * offer_share if rank == 0 else p  # (later: given the first)
            reward_id, item_cost = cat["reward_id"][j], float(cost[i])
            out.append(_item_out(RewardOut,
                reward_id=reward_id, name=cat["name"][j], type=cat["reward_type"][j],
                category=cat["category"][j], propensity=0.0, uplift=0.0, expected_value=0.0,
                cost=item_cost, shown_probability=round(p, 6), reason=COLD_START_REASON))
            items.append(dict(item_type="reward", item_id=reward_id, rank=rank, score=0.0,
                              shown_probability=p, cost=item_cost))
        return out, items, None

    # -- challenges ---------------------------------------------------------------------------

    def _challenges(self, loaded: _Loaded, features: dict[str, float],
                    model: ScoringModel | None, k: int,
                    exclude: set[str], recent: dict[str, datetime], now: datetime,
                    reasons: list[str], history: bool, cold: bool = False,
                    fell_back: list[str] | None = None
                    ) -> tuple[list[ChallengeOut], list[dict[str, Any]]]:
        """Challenges and their log items: templates ranked by the engagement value of each
        one's flow-zone target, then (with a difficulty model) each shown template's target
        moved to a neighbour with a small logged probability. ``cold``: no difficulty model
        was ever promoted, templates and targets are drawn uniformly."""
        catalog = loaded.catalog
        cols = catalog.target_cols
        cooldown = self.rules.frequency.challenge_cooldown_days
        blocked = [c for c in catalog.template_ids  # type: ignore[attr-defined]
                   if c in exclude or _days(now, recent.get(c)) < cooldown
                   ] if exclude or recent else []
        # rows: the allowed (template, target) pairs, as indices into the catalog's grid
        rows = np.flatnonzero(~np.isin(cols["challenge_id"], blocked)) if blocked else None
        if k == 0 or len(cols["challenge_id"]) == 0 or (rows is not None and len(rows) == 0):
            return [], []
        grid = slice(None) if rows is None else rows
        template, target = catalog.target_template_index[grid], cols["target"][grid]  # type: ignore[attr-defined]
        if cold:
            return self._uniform_challenges(loaded, template, rows is None, k)
        flow = self.rules.challenges.flow_zone
        if model is not None:
            try:
                X = loaded.member_rows("difficulty", model.meta.service_features).matrix(
                    features, rows)
                p = model.predict(X)[:, 1]  # one call: every template x allowed target
            except Exception as exc:  # noqa: BLE001
                reasons.append(f"difficulty model error: {type(exc).__name__}")
                model = None
                if fell_back is not None:
                    fell_back.append("difficulty")
        if model is None:
            reasons.append("difficulty model unavailable: easiest targets")
            p = np.full(len(target), np.nan)
            # the easiest target of each template (targets ascend within a template)
            chosen = flow_zone_choice(template, target,
                                      1.0 - 1e-9 * target.astype(np.float64), 0.999999)
        elif rows is None:  # the whole grid (nothing blocked): the catalog's layout
            chosen = flow_zone_targets(p[None, :], catalog.target_layout, flow)[0]  # type: ignore[attr-defined]
        else:
            chosen = flow_zone_choice(template, target, p, flow)
        picked = chosen if rows is None else rows[chosen]  # one row per template, in the grid
        picked_p = p[chosen]
        # engagement value: expected points, nudged towards targets right in the flow zone
        closeness = 1.0 - np.abs(np.where(np.isnan(picked_p), flow, picked_p) - flow)
        value = closeness * cols["points"][picked].astype(np.float64)
        if recent:  # novelty decay applies only to templates shown before
            nov = self.rules.novelty
            value = value * novelty_factor(_days_since(cols["challenge_id"][picked], recent, now),
                                           nov.window_days, nov.decay)
        slate = select_slate(value, catalog.target_kind_index[picked], k, 1,  # type: ignore[attr-defined]
                             self.rules.exploration.epsilon, self.rng, self.exploration_floor)
        shown = picked[slate.index].tolist()
        served, target_p = shown, [1.0] * len(shown)
        if model is not None and self.target_exploration > 0:
            served, target_p = explore_targets(shown, loaded.lower_target, loaded.higher_target,
                                               len(cols["target"]), self.target_exploration,
                                               self.rng)
        out, items = [], []
        for rank, (i, prob) in enumerate(zip(slate.index.tolist(), slate.probability.tolist(),
                                             strict=True)):
            j, tp = served[rank], target_p[rank]
            prob *= tp
            # a neighbour's prediction: p is over the allowed rows, ascending in the grid
            pc = _f(picked_p[i] if j == shown[rank]
                    else p[j if rows is None else int(np.searchsorted(rows, j))])
            row_target = float(cols["target"][j])
            if model is None:
                reason = "model unavailable: easiest target"
            elif j != shown[rank]:
                reason = (f"exploring a target next to the flow-zone pick ({pc:.0%} predicted "
                          "completion)")
            elif history:
                reason = (f"target {row_target:g} {cols['unit'][j]} puts predicted completion "
                          f"at {pc:.0%}, nearest the {flow:.0%} flow zone")
            else:
                reason = f"target for a member without history ({pc:.0%} predicted completion)"
            out.append(_item_out(ChallengeOut,
                challenge_id=cols["challenge_id"][j], name=cols["name"][j], kind=cols["kind"][j],
                target=row_target, unit=cols["unit"][j],
                duration_days=int(cols["duration_days"][j]), completion_probability=pc,
                points=int(cols["points"][j]), shown_probability=round(prob, 6), reason=reason))
            items.append(dict(item_type="challenge", item_id=cols["challenge_id"][j],
                                      rank=rank, score=float(value[i]), shown_probability=prob,
                                      target=row_target, target_probability=tp))
        return out, items

    def _uniform_challenges(self, loaded: _Loaded, template: np.ndarray, whole_grid: bool,
                            k: int) -> tuple[list[ChallengeOut], list[dict[str, Any]]]:
        """Cold start: up to k allowed templates (codes of the allowed grid rows' templates
        in ``template``) drawn uniformly without replacement (no cap per kind: every template
        equally likely), each with a target drawn uniformly among its allowed ones; shown with
        1 / (n_templates - rank) x 1 / n_targets."""
        catalog = loaded.catalog
        cols = catalog.target_cols
        layout = catalog.target_layout  # type: ignore[attr-defined]
        allowed = np.arange(len(layout)) if whole_grid else np.unique(template)
        slate = uniform_slate(len(allowed), k, self.rng)
        served, target_p = uniform_targets(allowed[slate.index], layout, len(cols["target"]),
                                           self.rng)
        out, items = [], []
        for rank, (prob, row, tp) in enumerate(zip(slate.probability.tolist(), served.tolist(),
                                                   target_p.tolist(), strict=True)):
            prob *= tp
            row_target = float(cols["target"][row])
            out.append(_item_out(ChallengeOut,
                challenge_id=cols["challenge_id"][row], name=cols["name"][row],
                kind=cols["kind"][row], target=row_target, unit=cols["unit"][row],
                duration_days=int(cols["duration_days"][row]), completion_probability=0.0,
                points=int(cols["points"][row]), shown_probability=round(prob, 6),
                reason=COLD_START_REASON))
            items.append(dict(item_type="challenge", item_id=cols["challenge_id"][row],
                              rank=rank, score=0.0, shown_probability=prob, target=row_target,
                              target_probability=tp))
        return out, items


_Out = TypeVar("_Out", RewardOut, ChallengeOut)


def _item_out(cls: type[_Out], **fields: Any) -> _Out:
    """A validated response item; should a value ever break the schema, the item unchecked
    (and a warning), never a failed answer. Validation is also the faster of the two here:
    pydantic-core's constructor takes ~2 us, ``model_construct``'s Python loop ~4.4 us."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        log.warning("response item outside its schema", extra={"error": str(exc)[:500]})
        return cls.model_construct(**fields)


def _decayed(value: np.ndarray, novelty: np.ndarray | None) -> np.ndarray:
    """What the slate ranks by: the value, a positive one decayed by its novelty factor."""
    return value if novelty is None else value * np.where(value > 0, novelty, 1.0)


def _reward_values(proba: np.ndarray, model: ScoringModel, features: Mapping[str, float],
                   cost: np.ndarray, lam: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A reward model's expected value of each candidate (the last row of ``proba`` is the
    no-offer's), and its propensity and uplift scores."""
    member = scores_from_proba(proba, 1)
    params = model.meta.value_params
    # float64, not a Python float: NumPy would compute in float32 with it
    basket = member_basket(features.get("avg_basket_90d", 0.0), params)
    value = member.values(basket, cost, params.get("margin", DEFAULT_MARGIN), lam)[0]
    return value, {"propensity": member.propensity[0], "uplift": member.uplift[0]}


def _member_names(*models: ScoringModel | None) -> list[str]:
    names: list[str] = []
    for m in models:
        if m is not None:
            names += [n for n in m.meta.service_features if n not in names]
    return names or ["tier_rank"]


def _known_rank(features: dict[str, float] | None) -> float | None:
    """The member's tier rank; None when unknown (-1: a tier the vocabulary lacks; NaN or
    infinite: none read)."""
    value = float((features or {}).get("tier_rank", 0.0))
    return value if math.isfinite(value) and value >= 0 else None


def _tier_of(features: dict[str, float] | None, tiers: Sequence[str]) -> str:
    """The member's tier by its rank; the lowest when the rank is unknown."""
    if not tiers:
        return ""
    return tiers[min(int(_known_rank(features) or 0), len(tiers) - 1)]


def _days_since(ids: np.ndarray, recent: dict[str, datetime], now: datetime) -> np.ndarray:
    """Days since each item was last shown to the member (inf if never)."""
    if not recent:
        return np.full(len(ids), np.inf)
    return np.array([_days(now, recent.get(i)) for i in ids])


def _days(now: datetime, then: datetime | None) -> float:
    return np.inf if then is None else (now - then).total_seconds() / 86_400


def _f(x: float) -> float:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else 0.0


def _reward_reason(scores: dict[str, np.ndarray], i: int, value: float, history: bool,
                   consent: bool, model: ScoringModel | None) -> str:
    if model is None:
        return "model unavailable: low-cost default"
    if not consent:
        return "non-personalized default (no personalization consent)"
    if not history:
        return "best expected value for a new member of this tier"
    return (f"+{scores['uplift'][i]:.1%} purchase probability vs no offer, "
            f"{scores['propensity'][i]:.0%} likely to redeem, expected value {value:.2f}")
