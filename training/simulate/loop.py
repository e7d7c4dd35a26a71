"""Simulated members in the learning loop: they ask the real app, answer as the truth says.

The loop's proof (bench/learning_loop.py) and its integration test share this: a world joins
the product with its members and their behaviour only (no logged offers, no model), its members
ask the app for one reward and one challenge, answer per the hidden truth and post their
outcomes through ``/v1/events``. The truth is read here and in the reports only, never by the
product.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.simulate.live import answers_frame

BATCH = 500


def _organic(events: pd.DataFrame) -> pd.Series:
    """The members' own activity: no logged offer or assignment, no outcome of one."""
    return ~events["event_type"].isin(("impression", "holdout")) & events["decision_id"].isna()


def onboard_without_offers(world_dir: Path, events_url: str, *,
                           until: datetime | None = None) -> dict[str, int]:
    """Import the world's catalog, members and behaviour with no logged decision: the service
    starts from nothing, as for a program that never logged its offers.

    The behaviour is the program's transaction history: every purchase, redemption, visit,
    review... including those that fell in a world offer's window (most of a member's
    purchases do), with their decision ids removed; the impressions and holdouts themselves
    are left out. ``until``: only the history before it (the rest is the members' future, see
    :func:`import_behaviour`)."""
    from training.simulate.onboard import onboard, program_files

    files = program_files(world_dir)
    staged = world_dir.parent / "world_without_offers"
    program = staged / files["events"].parent.name
    program.mkdir(parents=True, exist_ok=True)
    for kind, path in files.items():
        if kind != "events":
            shutil.copy(path, program / path.name)
    events = pd.read_parquet(files["events"])
    keep = ~events["event_type"].isin(("impression", "holdout"))
    if until is not None:
        keep &= events["timestamp"] < pd.Timestamp(until)
    history = events[keep].assign(decision_id=None)
    history.to_parquet(program / files["events"].name, index=False)
    onboard(staged, events_url, progress=False)
    return {"events_in_world": len(events), "imported": int(keep.sum())}


def import_behaviour(world_dir: Path, events_url: str, since: datetime,
                     until: datetime) -> int:
    """The members' own activity in [since, until) (purchases, visits, ...: no offer and no
    outcome of one), imported as a program's periodic export would be (`rewards import
    events`). Members keep living between decisions; without this their recency features
    would only age. Returns the number of events imported."""
    return Behaviour(world_dir, since).import_between(events_url, since, until)[1]


class Behaviour:
    """The members' own activity from ``since`` on, read from the world once and imported
    slice by slice (see :func:`import_behaviour`)."""

    def __init__(self, world_dir: Path, since: datetime) -> None:
        from training.simulate.onboard import program_files

        self.folder = world_dir.parent / "world_without_offers"
        events = pd.read_parquet(program_files(world_dir)["events"])
        keep = _organic(events) & (events["timestamp"] >= pd.Timestamp(since))
        self.events = events[keep].sort_values("timestamp", kind="stable")

    def import_between(self, events_url: str, since: datetime, until: datetime
                       ) -> tuple[pd.DataFrame, int]:
        """Import the activity in [since, until) through `rewards import events`' own code
        (idempotent); the activity and the number of events new to the store."""
        from serving.stores.events import open_event_store
        from training.data.imports import import_events_file

        ts = self.events["timestamp"]
        lo, hi = ts.searchsorted(pd.Timestamp(since)), ts.searchsorted(pd.Timestamp(until))
        part = self.events.iloc[lo:hi]
        if part.empty:
            return part, 0
        path = self.folder / f"behaviour_{pd.Timestamp(since):%Y%m%d%H%M}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(path, index=False)
        store = open_event_store(events_url)
        try:
            summary = import_events_file(path, store, progress=False)
        finally:
            store.close()
        return part, int(summary.imported)


class SimulatedLife:
    """What a live program does between decisions, on the simulation's clock.

    Members' own activity is imported as time passes, and every ``refresh_days`` (0: never)
    the members who changed since the previous refresh (a decision, an outcome, their own
    activity) get their features recomputed and written to the online store: what
    `rewards serve --refresh-seconds N` does for a live program. The product's refresher
    finds changed members by when events were *received*; here outcomes are posted ahead of
    their simulated time, so the loop names the members itself (``note``), and each refresh
    counts only events before its simulated midnight.
    """

    def __init__(self, world_dir: Path, settings: Any, events_url: str, start: datetime, *,
                 behaviour: bool = True, refresh_days: int = 1) -> None:
        if pd.Timestamp(start) != pd.Timestamp(start).floor("D"):
            raise ValueError(f"start {start} is not a midnight: refreshes fall on midnights")
        self.settings, self.events_url, self.refresh_days = settings, events_url, refresh_days
        self.behaviour = Behaviour(world_dir, start) if behaviour else None
        self.now = start
        self.next_refresh = start + timedelta(days=refresh_days) if refresh_days else None
        self.pending: list[pd.DataFrame] = []
        self.stats = {"behaviour_events": 0, "refreshes": 0, "members_refreshed": 0,
                      "refresh_seconds": 0.0}

    def note(self, member_ids: Any, times: Any) -> None:
        """Members whose features change at these (simulated) times."""
        at = pd.to_datetime(list(times), utc=True, format="ISO8601")  # datetimes or ISO text
        self.pending.append(pd.DataFrame({"member_id": np.asarray(member_ids).astype(str),
                                          "at": at}))

    def covered(self, until: datetime) -> None:
        """A features build counted everything before ``until``: no refresh owes it."""
        self._take(until)

    def advance(self, to: datetime) -> None:
        """Live until ``to``: import the activity before it, refresh at each boundary passed."""
        while self.next_refresh is not None and self.next_refresh <= to:
            self._import(self.next_refresh)
            self._push(self.next_refresh)
            self.next_refresh += timedelta(days=self.refresh_days)
        self._import(to)

    def _import(self, until: datetime) -> None:
        if until <= self.now:
            return
        if self.behaviour is not None:
            part, imported = self.behaviour.import_between(self.events_url, self.now, until)
            self.stats["behaviour_events"] += imported
            if len(part):
                self.note(part["member_id"].to_numpy(), part["timestamp"])
        self.now = until

    def _take(self, until: datetime) -> list[str]:
        if not self.pending:
            return []
        frame = pd.concat(self.pending, ignore_index=True)
        due = frame["at"] < pd.Timestamp(until)
        self.pending = [frame[~due]]
        return sorted(set(frame.loc[due, "member_id"]))

    def _push(self, at: datetime) -> None:
        import time

        from serving.stores.catalog import open_catalog_store
        from serving.stores.events import open_event_store
        from serving.stores.features import open_store
        from training.data.features import built_vocabulary
        from training.data.history import read_history_meta
        from training.data.refresh import push_members

        members = self._take(at)
        if not members:
            return
        t0 = time.perf_counter()
        catalog = open_catalog_store(self.events_url)
        try:
            rewards = catalog.frame("rewards", include_retired=True)
            challenges = catalog.frame("challenges", include_retired=True)
        finally:
            catalog.close()
        features_dir = self.settings.features_dir
        events = open_event_store(self.events_url)
        try:
            # a microsecond before midnight: the row counts the events before it, no later
            push_members(events, open_store(self.settings), members, rewards, challenges,
                         built_vocabulary(features_dir), read_history_meta(features_dir),
                         at - timedelta(microseconds=1))
        finally:
            events.close()
        self.stats["refreshes"] += 1
        self.stats["members_refreshed"] += len(members)
        self.stats["refresh_seconds"] += time.perf_counter() - t0


class Truth:
    """The hidden response of every member to every reward (the bench's eyes only)."""

    def __init__(self, world_dir: Path) -> None:
        from training.simulate.generate.catalog import VOCABULARY
        from training.simulate.oracle import WorldTruth

        self.world = WorldTruth.load(world_dir)
        self.rewards = self.world.rewards
        tiers = list(VOCABULARY.tiers)
        self.min_rank = self.rewards["min_tier"].map(tiers.index).to_numpy()
        self.tier_rank = self.world.members["tier"].map(tiers.index)
        self.consent = self.world.members["consent"].fillna(True).astype(bool)
        self.cost = self.rewards["cost"].to_numpy(dtype=np.float64)

    def matrices(self, member_ids: np.ndarray) -> dict[str, np.ndarray]:
        tr = self.world.reward_response(member_ids.astype(str))
        rank = self.tier_rank.loc[member_ids.astype(np.int64)].to_numpy()
        tr["eligible"] = rank[:, None] >= self.min_rank[None, :]
        margin = self.world.margin
        tr["q_offer"] = (margin * tr["basket_value"] * tr["p_convert_offer"]
                         - tr["p_redeem"] * self.cost[None, :])
        tr["q_none"] = margin * tr["basket_value"][:, 0] * tr["p_convert_control"][:, 0]
        return tr

    def shares(self, member_ids: np.ndarray, served: np.ndarray,
               greedy: np.ndarray | None) -> dict[str, float]:
        """Shares of the oracle's true incremental value: served (column, -1 = no offer),
        greedy choice, random eligible.

        The oracle serves each member's best eligible reward. A member without
        personalization consent may only be served as a history-less member of the tier, so
        the best a program may do for them is one reward per tier: the ``permitted`` oracle
        takes, for those members, the reward with the highest mean true value over this
        sample's non-consenting members of the tier (in-sample: a bar set slightly high).
        ``consenting_policy_share_of_oracle``: the greedy share among consenting members."""
        tr = self.matrices(member_ids)
        inc, ok = tr["incremental_value"], tr["eligible"]
        r = np.arange(len(member_ids))
        oracle = np.where(ok, inc, -np.inf).max(axis=1)
        consent = self.consent.loc[member_ids.astype(np.int64)].to_numpy(dtype=bool)
        permitted = self._permitted(member_ids, inc, ok, oracle, consent)
        value = np.where(served >= 0, inc[r, np.maximum(served, 0)], 0.0)
        random = np.where(ok, inc, 0.0).sum(axis=1) / ok.sum(axis=1)
        out = {"oracle_value": float(oracle.mean()),
               "value_share_of_oracle": float(value.mean() / oracle.mean()),
               "random_share_of_oracle": float(random.mean() / oracle.mean()),
               "consent_share": float(consent.mean()),
               "permitted_oracle_value": float(permitted.mean()),
               "value_share_of_permitted_oracle": float(value.mean() / permitted.mean())}
        if greedy is not None:
            g = np.where(greedy >= 0, inc[r, np.maximum(greedy, 0)], 0.0)
            out["policy_share_of_oracle"] = float(g.mean() / oracle.mean())
            out["policy_share_of_permitted_oracle"] = float(g.mean() / permitted.mean())
            if consent.any():
                out["consenting_policy_share_of_oracle"] = float(
                    g[consent].mean() / oracle[consent].mean())
        return out

    def _permitted(self, member_ids: np.ndarray, inc: np.ndarray, ok: np.ndarray,
                   oracle: np.ndarray, consent: np.ndarray) -> np.ndarray:
        """Per member, the permitted oracle's true incremental value (see ``shares``);
        ``consent``: each member's, as ``shares`` read it."""
        tiers = self.tier_rank.loc[member_ids.astype(np.int64)].to_numpy()
        out = oracle.copy()
        for tier in np.unique(tiers[~consent]):
            rows = ~consent & (tiers == tier)
            mean = np.where(ok[rows], inc[rows], 0.0).sum(axis=0) / len(np.flatnonzero(rows))
            allowed = ok[rows].all(axis=0)  # the tier's eligible rewards (the same for all)
            out[rows] = inc[rows, int(np.argmax(np.where(allowed, mean, -np.inf)))]
        return out

    def policy_value(self, gate: pd.DataFrame, column: str) -> float:
        """True expected profit per decision of a policy's distribution in the gate's file."""
        ids = gate["member_id"].to_numpy()
        decisions = gate["decision_id"].to_numpy()
        first = np.r_[True, decisions[1:] != decisions[:-1]]
        members = ids[first]
        tr = self.matrices(members.astype(np.int64))
        m = len(self.rewards)
        per = len(gate) // len(members)  # actions per decision: the gate's catalog + no offer
        q = np.column_stack([tr["q_offer"], tr["q_none"]])
        order = pd.Index(self.rewards["reward_id"].astype(str)).get_indexer(
            gate["action"].iloc[:per].to_numpy())
        order = np.where(order < 0, m, order)  # '' (no offer) -> last column
        p = gate[column].to_numpy().reshape(len(members), per)
        return float((p * q[:, order]).sum(axis=1).mean())


    def greedy_share(self, gate: pd.DataFrame, column: str,
                     of: str = "value_share_of_oracle") -> float:
        """Share of the oracle (``of``: or "value_share_of_permitted_oracle") of a policy's
        first choice (its most likely reward) on the decisions in the gate's file: what the
        policy would pick before exploration."""
        members = gate["member_id"].to_numpy()[::self._per(gate)]
        p = gate[column].to_numpy().reshape(len(members), -1)
        actions = gate["action"].iloc[:p.shape[1]].to_numpy()
        offer = actions != ""
        pick = actions[offer][np.argmax(p[:, offer], axis=1)]
        served = pd.Index(self.rewards["reward_id"].astype(str)).get_indexer(pick)
        return self.shares(members.astype(np.int64), served, None)[of]

    @staticmethod
    def _per(gate: pd.DataFrame) -> int:
        decisions = gate["decision_id"].to_numpy()
        return int(np.argmax(decisions != decisions[0])) or len(decisions)


def greedy_choice(features: list[dict[str, float] | None], model: Any, catalog: Any
                  ) -> np.ndarray:
    """The served reward model's first choice per decision (catalog column), from the
    features the decision log kept; -1 where nothing could be scored."""
    from serving.decisioning.ranking import member_basket
    from serving.decisioning.candidates import candidate_rows
    from serving.decisioning.scoring import scores_from_proba

    cols = catalog.reward_cols
    out = np.full(len(features), -1)
    if model is None:
        return out
    params = model.meta.value_params
    rows = candidate_rows(catalog, "reward", model.meta.service_features)
    m = len(cols["reward_id"])
    for i, f in enumerate(features):
        if not f:
            continue
        ok = cols["min_tier_rank"] <= f.get("tier_rank", 0.0)
        idx = np.flatnonzero(ok)
        X = rows.matrix(f, np.append(idx, m))
        s = scores_from_proba(model.predict(X), 1)
        basket = member_basket(f.get("avg_basket_90d", 0.0), params)
        v = s.values(basket, cols["cost"][idx].astype(np.float64),
                     params.get("margin", 0.3))[0]
        out[i] = int(idx[int(np.argmax(v))])
    return out


def run_round(client: Any, services: Any, ids: np.ndarray, start: datetime, spread_days: float,
              rng: np.random.Generator, *,
              before: Callable[[datetime], None] | None = None,
              after: Callable[[pd.DataFrame, list[datetime]], None] | None = None
              ) -> tuple[pd.DataFrame, list[datetime]]:
    """One decision per member through /v1/recommendations/batch, batches spread in time.

    ``before(at)`` runs before each batch (time passes: :meth:`SimulatedLife.advance`),
    ``after(frame, times)`` after it (its members answer)."""
    order = rng.permutation(ids)
    parts, times = [], []
    n_batches = max(1, -(-len(order) // BATCH))
    for b in range(n_batches):
        chunk = order[b * BATCH:(b + 1) * BATCH]
        at = start + timedelta(days=spread_days * b / n_batches)
        if before is not None:
            before(at)
        services.clock = lambda at=at: at
        r = client.post("/v1/recommendations/batch",
                        json={"member_ids": [str(i) for i in chunk], "channel": "app",
                              "k_rewards": 1, "k_challenges": 1})
        r.raise_for_status()
        part = answers_frame(r.json()["results"])
        if after is not None:
            after(part, [at] * len(chunk))
        parts.append(part)
        times += [at] * len(chunk)
    return pd.concat(parts, ignore_index=True), times


def answer_round(client: Any, world_dir: Path, frame: pd.DataFrame, times: list[datetime],
                 window: int, rewards: pd.DataFrame, rng: np.random.Generator
                 ) -> list[dict[str, Any]]:
    """Members answer as the truth says; their outcomes go through ``/v1/events`` (inside the
    attribution window after each decision). Returns the events posted."""
    from training.simulate.live import outcome_events, respond

    world_dir = Path(world_dir)
    resp = respond(world_dir, frame, window, rng,
                   **_world_frames(world_dir, (world_dir / "world.json").stat().st_mtime_ns))
    events = outcome_events(frame, resp, times, rng.uniform(0.01, 0.9 * window, len(frame)),
                            rewards)
    for lo in range(0, len(events), 1000):
        client.post("/v1/events", json={"events": events[lo:lo + 1000]}).raise_for_status()
    return events


@functools.lru_cache(maxsize=2)
def _world_frames(world_dir: Path, stamp: int) -> dict[str, pd.DataFrame]:
    """The world's files ``respond`` reads, once per world and version (``stamp``, the mtime
    of its world.json): a round answers in batches."""
    return {"roster": pd.read_parquet(world_dir / "members.parquet"),
            "traits": pd.read_parquet(world_dir / "truth" / "member_traits.parquet"),
            "rewards": pd.read_parquet(world_dir / "rewards.parquet"),
            "challenges": pd.read_parquet(world_dir / "challenges.parquet")}


def round_shares(services: Any, frame: pd.DataFrame, truth: Truth,
                 since: datetime) -> dict[str, float]:
    """The round's shares of the oracle (``Truth.shares``): what was served, the served reward
    model's greedy choice (re-scored from the features the decision log kept; the uniform draw
    itself in cold start) and a random eligible reward. With a version on trial, the greedy
    choice is that of the version that served each decision, and the champion's and the
    trial's own greedy shares on every decision come too (``champion_`` / ``trial_``)."""
    name = services.settings.reward_model_name
    served = pd.Index(truth.rewards["reward_id"]).get_indexer(frame["reward_id"].fillna("-"))
    model = services.models.get(name)
    trial = services.models.trial(name)
    greedy = None
    extra: dict[str, float] = {}
    if model is not None:
        decisions, _ = services.events.decision_log(since=since)
        feats = decisions.set_index("decision_id")["features"].reindex(frame["decision_id"])
        rows = [json.loads(f) if isinstance(f, str) else None for f in feats]
        catalog = services.recommender.catalog
        ids = np.append(catalog.reward_cols["reward_id"], "-")
        index = pd.Index(truth.rewards["reward_id"])
        greedy = index.get_indexer(ids[greedy_choice(rows, model, catalog)])
        if trial is not None:
            by_trial = index.get_indexer(ids[greedy_choice(rows, trial, catalog)])
            members = frame["member_id"].to_numpy()
            on_trial = frame["versions"].map(
                lambda v: json.loads(v).get(name) == trial.meta.version).to_numpy(dtype=bool)
            extra = {"trial_served_share": float(on_trial.mean())}
            for who, choice in (("champion", greedy), ("trial", by_trial)):
                mine = truth.shares(members, served, choice)
                extra |= {f"{who}_{k}": mine[k] for k in (
                    "policy_share_of_oracle", "policy_share_of_permitted_oracle")}
            greedy = np.where(on_trial, by_trial, greedy)
    shares = truth.shares(frame["member_id"].to_numpy(), served, greedy)
    if model is None:  # cold start: the policy is the uniform draw itself
        shares["policy_share_of_oracle"] = shares["value_share_of_oracle"]
        shares["policy_share_of_permitted_oracle"] = shares["value_share_of_permitted_oracle"]
    return {**shares, **extra}
