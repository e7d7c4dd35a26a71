"""Everything a request needs, built once in the app's lifespan and torn down after it.

Every dependency that can fail (feature store, registry, event store) is opened defensively:
a failure is recorded for /readyz and requests degrade instead of failing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
from serving import worker_group
from serving.config import ServeSettings, StoreSettings
from serving.contract.events import EventIn, ExposureRecord
from serving.stores.events import EventStore, open_event_store
from serving.experiments.registry import ExperimentCache
from serving.stores.models import ChampionSource, ModelManager
from serving.api.observability import Metrics
from serving.stores.features import MemberRow, OnlineFeatureReader
from serving.decisioning.catalog import Catalog
from serving.decisioning.recommend import FAMILIES, Decision, MemberFacts, Recommender
from serving.stores.catalog import (
    CatalogSettings, CatalogStore, open_catalog_store,
)
from serving.decisioning.rules import cost_multiplier, day_fraction, load_rules
from serving.worker_group import HEARTBEAT_SECONDS, WorkerGroup
from serving.stores.writer import GroupCommitter

log = logging.getLogger("rewards.services")
MEMBER_VIEW = "member_daily"


def wall_clock() -> datetime:
    """Now, in UTC: the decision time of a served request (``Services.clock``)."""
    return datetime.now(UTC)


@dataclass
class BudgetState:
    """Today's program spend and per-reward redemptions, refreshed in the background."""

    spent_today: float = 0.0
    redemptions_today: dict[str, int] = field(default_factory=dict)
    refreshed_at: datetime | None = None


@dataclass
class Services:
    store: StoreSettings
    settings: ServeSettings
    metrics: Metrics
    events: EventStore
    models: ModelManager
    recommender: Recommender
    reader: OnlineFeatureReader | None
    event_writer: GroupCommitter[EventIn, tuple[str, bool]]
    decision_writer: GroupCommitter[Decision, None]
    budget: BudgetState = field(default_factory=BudgetState)
    experiments: ExperimentCache = field(default_factory=lambda: ExperimentCache(list))
    exposure_writer: GroupCommitter[ExposureRecord, None] | None = None
    problems: dict[str, str] = field(default_factory=dict)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    #: the other workers of `rewards serve --workers N` (None: this process serves alone)
    group: WorkerGroup | None = None
    #: the group's reload generation read before the first models were loaded
    loaded_generation: int = 0
    #: the model versions last reported as loaded in the metrics
    reported_versions: dict[str, str] = field(default_factory=dict)
    #: the catalog tables, polled for a new version (None: the catalog never changes)
    catalog_store: CatalogStore | None = None
    catalog_refresh_seconds: float = 5.0
    #: the time of a decision (and of "today" for the budget): wall-clock UTC. A simulation
    #: running the app in-process replaces it (``app.state.services.clock = sim.now``) so
    #: that decisions are made and logged at simulated times.
    clock: Callable[[], datetime] = wall_clock
    _catalog_lock: threading.Lock = field(default_factory=threading.Lock)
    _decision_counters: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    # -- request path -------------------------------------------------------------------------

    async def member_facts(self, member_id: str, now: datetime) -> MemberFacts:
        """Online features + event-store facts; any failure degrades, never raises."""
        reasons: list[str] = []
        row: MemberRow | None = None
        if self.reader is None:
            reasons.append("online store unavailable")
        else:
            try:
                if self.store.feast_env == "local":
                    # local SQLite answers in ~1 ms: a thread hop would cost as much again
                    row = self.reader.read(member_id)
                else:  # a network store can hang: bounded by a timeout, off the event loop
                    row = await asyncio.wait_for(asyncio.to_thread(self.reader.read, member_id),
                                                 self.settings.online_timeout_ms / 1000)
            except TimeoutError:
                reasons.append("online store timeout")
            except Exception as exc:  # noqa: BLE001
                reasons.append(f"online store error: {type(exc).__name__}")
        recent: dict[str, datetime] = {}
        consent_override: bool | None = None
        try:
            since = now - timedelta(days=max(self.recommender.rules.novelty.window_days,
                                             self.recommender.rules.frequency.challenge_cooldown_days))
            recent, consent_override = self.events.member_context(member_id, since)
        except Exception as exc:  # noqa: BLE001
            reasons.append(f"event store error: {type(exc).__name__}")
        features = row.values if row is not None else None
        if row is not None and row.event_timestamp is not None:
            age = (now - row.event_timestamp).total_seconds()
            self.metrics.feature_age.observe(max(age, 0.0))
        consent = bool(features.get("consent", 1.0)) if features else True
        if consent_override is not None:
            consent = consent_override
        read_ok = not any(r.startswith("online") for r in reasons)
        return MemberFacts(member_id, features, consent, recent, reasons,
                           unknown=read_ok and features is None)

    def cost_multiplier(self, now: datetime) -> float:
        b = self.recommender.rules.budget
        return cost_multiplier(self.budget.spent_today, b.daily_budget, day_fraction(now),
                               b.lambda_gain, b.lambda_max)

    def no_champion(self) -> tuple[str, ...]:
        """The families ("reward", "difficulty") whose registry never promoted a model: they
        are served by uniform exploration (cold start), not by the degraded fallback. What
        the last model refresh learnt: no registry call on the request path."""
        names = (self.settings.reward_model_name, self.settings.difficulty_model_name)
        return tuple(family for family, name in zip(FAMILIES, names, strict=True)
                     if self.models.never_promoted(name))

    def capped_rewards(self) -> set[str]:
        caps = self.recommender.rules.budget.reward_daily_caps
        return {r for r, cap in caps.items() if self.budget.redemptions_today.get(r, 0) >= cap}

    async def decide(self, member_id: str, *, channel: str, k_rewards: int, k_challenges: int,
                     exclude: set[str], tier_hint: str | None) -> Decision:
        now = self.clock()
        facts = await self.member_facts(member_id, now)
        experiment = self.experiments.active(now)  # in memory: no query per request
        decision = self.recommender.recommend(
            facts, self.models.get(self.settings.reward_model_name),
            self.models.get(self.settings.difficulty_model_name),
            k_rewards=k_rewards, k_challenges=k_challenges, channel=channel,
            exclude=exclude | self.capped_rewards(), now=now,
            cost_multiplier=self.cost_multiplier(now), tier_hint=tier_hint,
            arm=experiment.arm_of(member_id) if experiment else None,
            experiment_id=experiment.id if experiment else None,
            no_champion=self.no_champion(),
            reward_trial=self.models.trial(self.settings.reward_model_name))
        self._count(decision)
        # group-committed, not awaited; the writer validates the record (Decision.record)
        self.decision_writer.submit([decision])
        if decision.exposure is not None and self.exposure_writer is not None:
            self.exposure_writer.submit([decision.exposure])
        return decision

    def _count(self, decision: Decision) -> None:
        r = decision.response
        labels = (r.experiment_arm or "none",
                  r.model_versions.get(self.settings.reward_model_name, "-"),
                  r.model_versions.get(self.settings.difficulty_model_name, "-"))
        child = self._decision_counters.get(labels)
        if child is None:  # labels() takes a lock and builds the key: once per combination
            child = self._decision_counters[labels] = self.metrics.decisions.labels(*labels)
        child.inc()
        for kind, on in (("cold_start", r.cold_start), ("degraded", r.degraded),
                         ("not_personalized", not r.personalized)):
            if on:
                self.metrics.fallbacks.labels(kind).inc()

    # -- background ---------------------------------------------------------------------------

    def refresh_models(self) -> dict[str, str]:
        outcomes = self.models.refresh()
        for name, slot in self.models.slots.items():
            self.metrics.model_refusals.labels(name).set(slot.refusals)
            if slot.current is not None:
                version = slot.current.meta.version
                before = self.reported_versions.get(name)
                if before is not None and before != version:
                    self.metrics.model_version.labels(name, before).set(0)
                self.metrics.model_version.labels(name, version).set(1)
                self.reported_versions[name] = version
        return outcomes

    def refresh_catalog(self) -> bool:
        """Swap in the store's catalog when its version moved (otherwise one indexed read);
        True when a new catalog serves from the next request on. Requests in flight finish
        on the catalog they started with (Recommender.set_catalog)."""
        if self.catalog_store is None:
            return False
        with self._catalog_lock:  # the poller and an admin write: one reload at a time
            if self.catalog_store.version() == self.recommender.catalog.version:
                return False
            catalog = self.catalog_store.catalog()
            self.recommender.set_catalog(catalog)
            problem = catalog_problem(catalog)
            if problem is None:
                self.problems.pop("catalog", None)
            else:  # emptied since (every item deactivated): not ready again
                self.problems["catalog"] = problem
        log.info("catalog reloaded", extra={"version": catalog.version,
                                            "rewards": len(catalog.rewards),
                                            "challenges": len(catalog.challenges)})
        return True

    def refresh_budget(self) -> None:
        now = self.clock()
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        self.budget = BudgetState(self.events.spend_since(start),
                                  self.events.reward_redemptions_since(start), now)

    async def _every(self, seconds: float, fn: Any, label: str) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(fn)
            except Exception:  # noqa: BLE001 - a background refresh must never die
                log.exception(f"{label} refresh failed")

    async def reload_everywhere(self, timeout: float = 30.0) -> tuple[dict[str, str], int, int]:
        """Reload here now, then have every other live worker reload before answering.

        Returns this worker's outcomes and (workers that applied the reload, live workers).
        """
        outcomes = await asyncio.to_thread(self.refresh_models)
        if self.group is None:
            return outcomes, 1, 1
        generation = self.group.request_reload()
        self.group.mark_seen(generation)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            live = self.group.live_workers()
            done = sum(seen >= generation for _, seen in live)
            if done == len(live) or asyncio.get_running_loop().time() >= deadline:
                return outcomes, done, len(live)
            await asyncio.sleep(0.05)

    async def _heartbeat(self, group: WorkerGroup) -> None:
        """Its own task, so that a worker busy reloading still counts as alive."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            group.heartbeat()

    async def _follow_group(self, group: WorkerGroup) -> None:
        """Apply reloads that another worker was asked for."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                generation = group.generation()
                if generation > group.seen():
                    await asyncio.to_thread(self.refresh_models)
                    group.mark_seen(generation)
            except Exception:  # noqa: BLE001 - a background task must never die
                log.exception("worker group follow failed")

    def start_background(self) -> None:
        if self.group is not None:
            self.group.join(self.loaded_generation)
            self.tasks.append(asyncio.create_task(self._heartbeat(self.group)))
            self.tasks.append(asyncio.create_task(self._follow_group(self.group)))
        if self.settings.model_poll_seconds > 0:
            self.tasks.append(asyncio.create_task(
                self._every(self.settings.model_poll_seconds, self.refresh_models, "model")))
        self.tasks.append(asyncio.create_task(
            self._every(self.settings.budget_refresh_seconds, self.refresh_budget, "budget")))
        self.tasks.append(asyncio.create_task(self._every(
            self.settings.budget_refresh_seconds, self.experiments.refresh, "experiments")))
        if self.catalog_store is not None:
            self.tasks.append(asyncio.create_task(self._every(
                self.catalog_refresh_seconds, self.refresh_catalog, "catalog")))

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.group is not None:
            self.group.leave()
        self.decision_writer.close()
        if self.exposure_writer is not None:
            self.exposure_writer.close()
        self.event_writer.close()
        self.events.close()
        if self.catalog_store is not None:
            self.catalog_store.close()


def catalog_problem(catalog: Catalog) -> str | None:
    """What /readyz reports about the catalog: None when it has something to offer."""
    if len(catalog.rewards) or len(catalog.challenges):
        return None
    return ("the catalog is empty: `rewards catalog import FILE` or "
            "PUT /v1/catalog/rewards/{id} (served without a restart)")


def build_services(store: StoreSettings, settings: ServeSettings, metrics: Metrics) -> Services:
    """Open every dependency; record (not raise) what is unavailable."""
    from serving.stores.features import open_store, service_feature_names

    problems: dict[str, str] = {}
    events = open_event_store(settings.events(store))
    rules = load_rules(settings.rules(store))
    reader: OnlineFeatureReader | None = None
    feast_store = None
    # The catalog: tables in the event store's database, item features computed from the rows
    # (no feature store).
    catalog_settings = CatalogSettings()
    catalog_store = open_catalog_store(settings.events(store))
    catalog = catalog_store.catalog()
    problem = catalog_problem(catalog)
    if problem is not None:
        problems.setdefault("catalog", problem)
    try:
        feast_store = open_store(store)
        reader = OnlineFeatureReader(feast_store, MEMBER_VIEW)
    except Exception as exc:  # noqa: BLE001
        problems["feature_store"] = f"{type(exc).__name__}: {exc}"

    def service_features(service: str) -> list[str]:
        if feast_store is None:
            raise RuntimeError("feature store unavailable: cannot verify model contract")
        return service_feature_names(feast_store, service)

    manager = ModelManager(ChampionSource(store.tracking_uri, store.models), service_features)
    manager.add(settings.reward_model_name, settings.reward_service, REWARD_DERIVED,
                trials=settings.trial_share > 0)
    manager.add(settings.difficulty_model_name, settings.difficulty_service, DIFFICULTY_DERIVED)
    services = Services(
        store=store, settings=settings, metrics=metrics, events=events, models=manager,
        recommender=Recommender(catalog, rules, settings.seed,
                                catalog_settings.new_reward_epsilon,
                                no_offer_share=settings.no_offer_share,
                                exploration_floor=settings.exploration_floor,
                                target_exploration=settings.target_exploration,
                                trial_share=settings.trial_share), reader=reader,
        event_writer=GroupCommitter(events.add_events, "event-writer"),
        decision_writer=GroupCommitter(_log_decisions(events), "decision-writer",
                                       linger_seconds=settings.decision_log_linger_ms / 1000),
        experiments=ExperimentCache(events.experiments),
        exposure_writer=GroupCommitter(_log_exposures(events), "exposure-writer",
                                       linger_seconds=settings.decision_log_linger_ms / 1000),
        problems=problems, group=worker_group.current(), catalog_store=catalog_store,
        catalog_refresh_seconds=catalog_settings.catalog_refresh_seconds)
    if services.group is not None:  # before loading: a reload asked for meanwhile still counts
        services.loaded_generation = services.group.generation()
    services.refresh_models()
    services.refresh_budget()
    services.experiments.refresh()
    return services


def _log_decisions(events: EventStore):  # noqa: ANN202
    def commit(items):  # noqa: ANN001, ANN202
        records = []
        for item in items:
            try:  # a Decision's record is validated here, in the writer thread
                records.append(item.record)
            except ValidationError as exc:  # one bad record must not cost the batch
                log.error("decision not logged: record outside its schema",
                          extra={"error": str(exc)[:500]})
        events.log_decisions(records)
        return [None] * len(items)

    return commit


def _log_exposures(events: EventStore):  # noqa: ANN202
    def commit(records):  # noqa: ANN001, ANN202
        events.log_exposures(records)
        return [None] * len(records)

    return commit

