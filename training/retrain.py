"""`rewards retrain`: the learning loop's one command, from the event store to a gated champion.

    snapshot (closed decisions, frozen labels, dataset hash)
    -> point-in-time features from the event store (and the online store refreshed)
    -> reward and difficulty models (the service's own decisions weighted by their logged
       probabilities, tempered: REWARDS_TRAIN_LOGGING_WEIGHTS)
    -> held-out metrics on a later time split
    -> off-policy estimates of candidate and champion on the latest logged decisions, and of
       the version on trial (if any) on the decisions it was in play for
    -> promote only when the evidence says so, else keep the champion and say why; a kept
       candidate goes on trial (served on a share of decisions, REWARDS_TRIAL_SHARE) so
       the next retrain can measure it on its own traffic
    -> running services reload

Cron-ready: a run that finds the same dataset as the last one (same snapshot id: closed
decisions, labels and the inputs of their features) does nothing and says so; `--force` trains
anyway. Every step is logged to MLflow with the dataset hash. Nothing on this path reads a
simulator's hidden truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.config import ServeSettings, StoreSettings
from training.config import TrainSettings

Progress = Callable[[str], None]
SNAPSHOTS = "snapshots"


class RetrainSettings(BaseSettings):
    """The gate and the reload of `rewards retrain` (env prefix ``REWARDS_RETRAIN_``)."""

    model_config = SettingsConfigDict(env_prefix="REWARDS_RETRAIN_", extra="ignore")

    min_decisions: int = Field(1000, ge=1, description="logged decisions in the evaluation "
                               "period below which no reward model is promoted")
    min_assignments: int = Field(500, ge=1, description="assignments in the test period below "
                                 "which no difficulty model is promoted")
    bootstrap: int = Field(500, ge=50, description="bootstrap resamples of the OPE intervals")
    clip: float | None = Field(None, gt=0, description="cap of the importance weights "
                               "(None: unclipped, unbiased)")
    gate_test: Literal["paired", "marginal"] = Field(
        "paired", description="the candidate's DR lower bound: 'paired' (champion's DR + the "
        "lower bound of the candidate-minus-champion difference on the same decisions) or "
        "'marginal' (the candidate's own interval: wider, the noise both share counted)")
    trials: bool = Field(True, description="put a kept reward candidate on trial (the "
                         "registry's `trial` alias: serving runs it on REWARDS_TRIAL_SHARE "
                         "of decisions); the next retrain evaluates it on the decisions it "
                         "was in play for")
    trial_max_logloss_increase: float = Field(
        0.02, ge=0, description="a candidate goes on trial only if its held-out log loss "
        "(the test period's offers, weighted as in training) is at most this fraction above "
        "the champion's on the same offers: a broken candidate never serves")
    trial_patience: float = Field(2.0, ge=0, description="a version on trial that the gate "
                                  "could not promote stays on trial (instead of the newest "
                                  "candidate) while its estimated gain is positive and would "
                                  "be shown on at most this many times the decisions it was "
                                  "evaluated on; 0 always moves on to the newest candidate")
    reload_urls: list[str] = Field(default_factory=list, description="base URLs of running "
                                   "services to reload after a promotion (else they poll)")
    reload_key: str | None = Field(None, description="admin API key for the reload calls")


@dataclass
class FamilyOutcome:
    name: str
    candidate: str
    champion_before: str | None
    promoted: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    #: the version that was on trial before this retrain, evaluated on its own traffic:
    #: {"version", "promoted", "reason", "metrics"} (None: no trial was running)
    trial: dict[str, Any] | None = None
    #: the version on trial after this retrain (None: none)
    on_trial: str | None = None
    #: whether the registry's aliases moved (champion or trial): running services reload
    changed: bool = False


def _quiet(_: str) -> None:
    return None


def retrain(store: StoreSettings, settings: TrainSettings, loop: RetrainSettings, *,
            as_of: datetime | None = None, force: bool = False, as_present: bool | None = None,
            progress: Progress = _quiet) -> dict[str, Any]:
    """Run the loop once; returns what happened (also written to ``snapshots/latest.json``).
    Raises ``DataFolderBusy`` when another job writes to the data folder (an overlapping cron
    run): it changes nothing then.

    ``as_present`` says whether ``as_of`` is the program's present (default: only when no
    ``as_of`` is given). Then the online store is refreshed from the run's features and they
    become the feature folder's. Otherwise (a backfill) the run builds and trains on features
    as of then in a folder of its own (training.data.backfill), and serving's feature folder
    and online store are left as they were; unless serving has no features yet (a program's
    first run after importing its history), which then become these.
    A simulation whose clock is not the wall clock passes True."""
    from training.data.backfill import backfill_store, has_live_features
    from training.data.job_lock import exclusive

    cut = pd.Timestamp(as_of or datetime.now(UTC))
    if cut.tzinfo is None:
        raise ValueError(f"--as-of: give a time zone (e.g. {cut.isoformat()}Z)")
    present = as_of is None if as_present is None else as_present
    with exclusive(store.data, "rewards retrain"):
        if not present and not has_live_features(store):
            progress("no features yet: this run's, as of its --as-of, become serving's")
            present = True
        if present:
            return _retrain(store, settings, loop, cut, force, progress, present=True)
        progress(f"a back-dated run (as of {cut.isoformat()}): features built apart, "
                 "serving's feature folder and online store left as they are")
        with backfill_store(store, cut.to_pydatetime()) as scratch:
            return _retrain(scratch, settings, loop, cut, force, progress, present=False,
                            serving=store)


def _retrain(store: StoreSettings, settings: TrainSettings, loop: RetrainSettings,
             cut: pd.Timestamp, force: bool, progress: Progress, *, present: bool,
             serving: StoreSettings | None = None) -> dict[str, Any]:
    from training.cli.data import build_store_features, materialize
    from training.data.history import read_watermark
    from training.data.snapshots import read_latest, take_snapshot, write_latest

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def step(label: str, fn: Callable[[], Any]) -> Any:
        progress(f"- {label} ...")
        t0 = time.perf_counter()
        out = fn()
        timings[label] = round(time.perf_counter() - t0, 1)
        progress(f"  {label}: {timings[label]:.1f} s")
        return out

    snapshots_dir = store.data / SNAPSHOTS
    built = step("features and labelled decisions from the event store",
                 lambda: build_store_features(store, as_of=cut, progress=False))
    read_at = read_watermark(store.features_dir)  # when the build read the store
    snap = step("snapshot (closed decisions, frozen labels)",
                lambda: take_snapshot(store.features_dir, snapshots_dir, cut,
                                      None if read_at is None else pd.Timestamp(read_at)))
    progress(f"  snapshot {snap.id}: {snap.offers:,} offers, {snap.assignments:,} assignments "
             f"({snap.newly_labelled:,} newly labelled, {snap.open_left_out:,} open windows "
             "left out)")
    last = read_latest(snapshots_dir)
    if last is not None and last.get("snapshot") == snap.id and not force:
        progress(f"  nothing new since the last retrain (snapshot {snap.id}): models unchanged")
        return {"status": "unchanged", "snapshot": snap.id, "snapshot_detail": snap.as_dict(),
                "last": last, "online_store": "unchanged"}
    if present:
        step("online store (apply, materialize)",
             lambda: materialize(store, apply=True, echo=False))
    else:  # the registry only: training reads the offline sources through it
        from training.data.feast_ops import apply_repo

        step("feature registry (apply)", lambda: apply_repo(store))
        if serving is not None:
            same_inputs_as_serving(store, serving, settings)

    from training.pipeline import Publish, train_difficulty, train_reward

    publish = Publish(first_is_champion=False, oracle=False,
                      tags={"dataset.hash": snap.id, "retrain.as_of": cut.isoformat()})
    sub = lambda msg: progress("  " + msg)  # noqa: E731
    reward = step("reward model", lambda: train_reward(store, settings, sub, publish=publish))
    difficulty = step("difficulty model",
                      lambda: train_difficulty(store, settings, sub, publish=publish))
    outcomes = [
        step("off-policy gate (reward)", lambda: _gate_reward(store, settings, loop, reward,
                                                                 Path(snap.path))),
        step("held-out gate (difficulty)",
             lambda: _gate_difficulty(store, settings, loop, difficulty)),
    ]
    for o in outcomes:
        verdict = "PROMOTED" if o.promoted else "kept champion " + (o.champion_before or "none")
        progress(f"  {o.name} v{o.candidate}: {verdict}: {o.reason}")
    for o in outcomes:
        if o.trial is not None:
            verdict = "PROMOTED" if o.trial["promoted"] else "not promoted"
            progress(f"  {o.name} v{o.trial['version']} (on trial): {verdict}: "
                     f"{o.trial['reason']}")
        if o.on_trial:
            progress(f"  {o.name} v{o.on_trial} is on trial")
    reloads = _reload(loop) if any(o.promoted or o.changed for o in outcomes) else []
    record = {
        "status": "trained", "as_of": cut.isoformat(), "snapshot": snap.id,
        "snapshot_detail": snap.as_dict(), "rows": built.get("rows", {}),
        "families": [o.__dict__ for o in outcomes], "reloads": reloads,
        "online_store": "refreshed" if present else "unchanged (back-dated run)",
        "timings": timings, "seconds": round(time.perf_counter() - started, 1),
    }
    _log_run(store, settings, record)
    write_latest(snapshots_dir, record)
    return record


def same_inputs_as_serving(scratch: StoreSettings, serving: StoreSettings,
                           settings: TrainSettings) -> None:
    """A backfill's models must read the features serving has. The member view's columns
    follow the catalog's vocabulary as it is at build time; serving's registry has them as of
    its last build. If a category, reward type or challenge kind came since, a model of the
    backfill would be promoted and then refused by every service (its inputs are not online):
    stop before training and say what to run."""
    from serving.stores.features import open_store, service_feature_names

    backfill, live = open_store(scratch), open_store(serving)
    for service in (settings.reward_service, settings.difficulty_service):
        ours = service_feature_names(backfill, service)
        theirs = service_feature_names(live, service)
        if ours != theirs:
            new, gone = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
            raise ValueError(
                f"backfill refused: feature service {service!r} would read other features "
                f"than serving's (new: {new[:5]}, gone: {gone[:5]}): the catalog changed "
                "since the last build; run `rewards retrain` (as of now) first so that "
                "serving has them too")


def model_version(store: StoreSettings, name: str, version: str) -> tuple[Any, Any]:
    """A registered version's native model and its ONNX metadata."""
    import mlflow
    import mlflow.lightgbm
    from mlflow import MlflowClient

    from serving.contract.model_meta import read_onnx_metadata
    from serving.stores.registry import download_version
    from training.models import tracking

    run_id = MlflowClient().get_model_version(name, version).run_id
    model = mlflow.lightgbm.load_model(f"runs:/{run_id}/{tracking.NATIVE_ARTIFACT}")
    return model, read_onnx_metadata(download_version(mlflow.get_tracking_uri(), name, version,
                                                      store.models, refresh=True))


def registered_policy(store: StoreSettings, name: str, version: str, data: Any,
                      margin: float) -> Any:
    """A registered reward model version as the gate's PolicyModel: its native model scoring
    ``data``'s rows with the features and value parameters its ONNX metadata records."""
    return _as_policy(*model_version(store, name, version), version, data, margin)


def _as_policy(model: Any, meta: Any, version: str, data: Any, margin: float) -> Any:
    from training.evaluation.gate import PolicyModel
    from training.evaluation.scoring import score_rewards

    features = list(meta.service_features)
    return PolicyModel(f"v{version}", lambda m, i: score_rewards(
        model, m, i, features, data.vocabulary), {"margin": margin, **(meta.value_params or {})})


def earlier_arm_models(store: StoreSettings, name: str, champion: str | None,
                       rows: pd.DataFrame, experiments: list[Any], data: Any,
                       margin: float) -> dict[str, Any]:
    """The earlier versions that served the model arm of experiment decisions in ``rows`` (a
    promotion inside the evaluation period), loaded from the registry so the gate re-derives
    their arm's probabilities. A version deleted from the registry, or reading features the
    rows no longer carry, is left out, and so are the decisions it served."""
    from mlflow.exceptions import MlflowException

    from serving.contract.model_meta import ModelRefused
    from serving.decisioning.candidates import REWARD_ITEM_COLUMNS
    from training.evaluation.gate import arm_versions

    out = {}
    for version in sorted(arm_versions(rows, experiments, (name, champion))):
        try:
            model, meta = model_version(store, name, version)
        except (MlflowException, ModelRefused):  # deleted, or its artifact refused
            continue
        if set(meta.service_features) - set(REWARD_ITEM_COLUMNS) <= set(rows.columns):
            out[version] = _as_policy(model, meta, version, data, margin)
    return out


def exploration_settings(store: StoreSettings) -> Any:
    """What serving randomizes with (its settings and rules), for the target policies."""
    from serving.decisioning.rules import load_rules
    from training.evaluation.gate import Exploration

    serve = ServeSettings()
    rules = load_rules(serve.rules(store))
    return Exploration(no_offer_share=float(getattr(serve, "no_offer_share", 0.0)),
                       epsilon=float(rules.exploration.epsilon),
                       floor=float(getattr(serve, "exploration_floor", 0.0)))


def experiment_arms(store: StoreSettings, events_url: str | None = None) -> list[Any]:
    """The uplift experiments' periods and arm shares, for the gate to read their decisions
    (from the event store of ``events_url``, default serving's: REWARDS_EVENTS_URL)."""
    from serving.experiments.service import list_experiments
    from serving.stores.events import open_event_store
    from training.evaluation.gate import ArmShares

    events = open_event_store(events_url or ServeSettings().events(store))
    try:
        return [ArmShares(pd.Timestamp(e.start), pd.Timestamp(e.end),
                          {a.name: float(a.share) for a in e.arms})
                for e in list_experiments(events)]
    finally:
        events.close()


def served_decisions(store: StoreSettings, times: pd.Series) -> pd.DataFrame:
    """The decision log (features served, ranking context) of the period ``times`` spans,
    from serving's event store, for the gate to re-run the policies as serving did."""
    from serving.stores.events import open_event_store

    if times.empty:
        return pd.DataFrame(columns=["decision_id", "features", "ranking"])
    events = open_event_store(ServeSettings().events(store))
    try:
        decisions, _ = events.decision_log(since=times.min().to_pydatetime(),
                                           until=(times.max() + pd.Timedelta(seconds=1))
                                           .to_pydatetime())
    finally:
        events.close()
    return decisions


def _gate_reward(store: StoreSettings, settings: TrainSettings, loop: RetrainSettings,
                 result: Any, snapshot_dir: Any) -> FamilyOutcome:
    """The candidate against the champion on the test period's decisions and, when a version
    is on trial, the trial against the champion on the decisions it was in play for (its
    own traffic: importance weights bounded by 1 / the trial share where it differs). One of
    them may be promoted (the trial first: its evidence is the stronger); a kept candidate
    goes on trial unless the gate showed it worse."""
    from training.evaluation.evaluate import fit_value_params
    from training.evaluation.gate import (
        PolicyModel, evaluate_gate, trial_rows, with_served_context,
    )
    from training.evaluation.scoring import score_rewards
    from training.data.history import read_history_meta
    from training.models import tracking

    data = result.data
    name = settings.reward_model_name
    before = tracking.champion_version(name)
    trial_before = tracking.trial_version(name)
    items = pd.read_parquet(store.features_dir / "reward_features.parquet")
    margin = read_history_meta(store.features_dir).margin
    champ_model = None if before is None else model_version(store, name, before)
    champ = (None if champ_model is None or before is None
             else _as_policy(*champ_model, before, data, margin))
    experiments = experiment_arms(store)
    exploration = exploration_settings(store)
    test = data.rows[data.part == "test"]
    on_trial_rows = (trial_rows(data.rows, name, trial_before) if trial_before is not None
                     else data.rows.iloc[:0])
    decisions = served_decisions(store, pd.concat([test["event_timestamp"],
                                                   on_trial_rows["event_timestamp"]]))

    def gate_on(rows: pd.DataFrame, policy: Any) -> Any:
        rows = with_served_context(rows, decisions)  # as serving ran: its features, its ranking
        return evaluate_gate(rows, items, policy, champ, exploration,
                             min_decisions=loop.min_decisions, n_bootstrap=loop.bootstrap,
                             seed=settings.seed, clip=loop.clip, test=loop.gate_test,
                             experiments=experiments, served=(name, before),
                             arm_models=earlier_arm_models(store, name, before, rows,
                                                           experiments, data, margin))

    cand = PolicyModel(f"v{result.version}", lambda m, i: score_rewards(
        result.model, m, i, data.service_features, data.vocabulary),
        fit_value_params(data, margin))
    gate = gate_on(test, cand)
    if gate.policies is not None:  # what the gate compared, beside the snapshot it read
        gate.policies.to_parquet(snapshot_dir / "gate_reward.parquet", index=False)

    trial_gate, trial = None, None
    if trial_before is not None and champ is not None and trial_before != before:
        trial_gate = gate_on(on_trial_rows,
                             registered_policy(store, name, trial_before, data, margin))
        if trial_gate.policies is not None:
            trial_gate.policies.to_parquet(snapshot_dir / "gate_reward_trial.parquet",
                                           index=False)
        trial = {"version": trial_before, "promoted": False,
                 "reason": "on trial: " + trial_gate.reason,
                 "metrics": {k.replace("gate.", "gate.trial.", 1): v
                             for k, v in trial_gate.metrics.items()}}

    promoted = False
    if trial_gate is not None and trial is not None and trial_gate.promote:
        trial["promoted"] = _promote(name, str(trial["reason"]), version=trial_before)
    if gate.promote and not (trial is not None and trial["promoted"]):
        # (the trial first; a passing candidate still goes when the registry refused it)
        promoted = _promote(name, gate.reason)
    changed = promoted or bool(trial and trial["promoted"])
    on_trial = tracking.trial_version(name)
    reason, fit_metrics = gate.reason, dict[str, float]()
    if loop.trials and not promoted:  # a candidate may go on trial: is it fit to serve?
        fit, fit_reason, fit_metrics = heldout_check(data, result.model, champ_model,
                                                     loop.trial_max_logloss_increase)
        want = _next_trial(trial_gate, trial, on_trial, result.version if fit else None,
                           tracking.champion_version(name) is not None, loop.trial_patience)
        if not fit:
            reason += "; not put on trial: " + fit_reason
        if want != on_trial:
            why = ("kept by the off-policy gate: served on a share of decisions so that the "
                   "next retrain can measure it" if want
                   else "shown worse than the champion on its own traffic")
            tracking.set_trial(name, want, reason=why, actor="rewards retrain")
            on_trial, changed = want, True
    elif promoted and on_trial is not None:
        tracking.set_trial(name, None, reason=f"v{result.version} promoted",
                           actor="rewards retrain")
        on_trial, changed = None, True
    metrics = {**gate.metrics, **fit_metrics}
    if trial is not None:
        metrics.update(trial["metrics"])
    verdict = "promoted" if promoted else "kept"
    _tag(result.run_id, metrics, {"gate.verdict": verdict, "gate.reason": reason,
                                  **({"gate.trial": f"v{trial['version']}: "
                                      + ("promoted" if trial["promoted"] else "kept")}
                                     if trial else {}),
                                  **({"trial": "started"} if on_trial == result.version
                                     else {})})
    return FamilyOutcome(name, result.version, before, promoted, reason,
                         {**gate.metrics, **fit_metrics}, trial=trial, on_trial=on_trial,
                         changed=changed)


def heldout_check(data: Any, model: Any, champion: tuple[Any, Any] | None,
                  max_increase: float) -> tuple[bool, str, dict[str, float]]:
    """Whether the candidate is fit to serve on trial: its held-out log loss against the
    champion's on the test period's offers (the latest: neither model trained on them).

    The off-policy gate cannot judge a candidate on its champion's decisions (see
    :func:`_next_trial`), so without this a candidate broken in training (a corrupted
    import, a feature gone constant) would serve the trial share for a whole period. Log
    loss is a coarse guard, not a ranking: a better policy may predict a little worse, hence
    the tolerance. With no champion, or one reading other features, there is nothing to
    compare and the candidate passes."""
    from training.evaluation.metrics import log_loss
    from training.models.lgbm import predict_proba

    test = data.part == "test"
    n = int(test.sum())
    if champion is None or n == 0 \
            or list(champion[1].service_features) != list(data.service_features):
        return True, "", {}
    y, weight = data.y[test], data.weights("test")
    cand = log_loss(y, predict_proba(model, data.X[test]), weight)
    champ = log_loss(y, predict_proba(champion[0], data.X[test]), weight)
    ok, reason = heldout_verdict(cand, champ, n, max_increase)
    return ok, reason, {"gate.heldout.offers": float(n), "gate.heldout.candidate.logloss": cand,
                        "gate.heldout.champion.logloss": champ}


def heldout_verdict(candidate: float, champion: float, n: int,
                    max_increase: float) -> tuple[bool, str]:
    """The candidate passes when its log loss is at most ``max_increase`` (a fraction) above
    the champion's; the reason names both figures and the setting."""
    change = candidate / champion - 1 if champion > 0 else 0.0
    text = (f"held-out log loss {candidate:.4f} vs champion {champion:.4f} on {n:,} test "
            f"offers ({change:+.1%})")
    if change <= max_increase + 1e-12:  # the boundary is allowed, whatever the rounding
        return True, text
    return False, (text + f", more than {max_increase:.1%} worse "
                   "(REWARDS_RETRAIN_TRIAL_MAX_LOGLOSS_INCREASE)")


def _next_trial(trial_gate: Any, trial: dict[str, Any] | None, on_trial: str | None,
                candidate: str | None, has_champion: bool, patience: float) -> str | None:
    """The version to run on trial next: the current one while it is :func:`promising` (the
    reason says so), else the candidate (when there is a champion to run it beside and
    :func:`heldout_check` passed it; None when it did not), else the current one unless it
    was shown worse.

    The candidate's own gate does not veto its trial: on decisions its champion logged, the
    candidate's picks where the two disagree carry weights of about 1 / the exploration floor,
    and that interval is unreliable both ways (on the learning-loop bench it once put a true
    gain of +0.3 at -8.0 [-18.6, -0.3]). The trial measures it on its own traffic, where a
    version shown worse ends its trial at the next retrain: what a bad candidate can cost is
    the trial share of one period."""
    if trial_gate is not None and trial is not None and not trial["promoted"]:
        if trial_gate.difference is None and on_trial is not None:
            # too few of its decisions labelled yet (a retrain more frequent than the
            # attribution window): it has not been measured, so neither replaced nor ended
            trial["reason"] += "; kept on trial until enough of its decisions are labelled"
            return on_trial
        if promising(trial_gate, patience):
            need = trial_gate.difference.decisions_to_show(trial_gate.difference.dr)
            trial["reason"] += (f"; kept on trial: its estimated gain would be shown on about "
                                f"{need:,.0f} decisions")
            return on_trial
    if has_champion and candidate is not None:
        return candidate
    if trial_gate is not None and trial_gate.difference is not None \
            and trial_gate.difference.ci_high < 0:
        return None
    return on_trial


def promising(gate: Any, patience: float) -> bool:
    """A trial worth keeping: its estimated gain is positive and would be shown on at most
    ``patience`` times the decisions it has been evaluated on (so about one more evaluation
    period, at ``patience`` 2, would settle it)."""
    diff = gate.difference
    if diff is None or diff.dr <= 0 or patience <= 0:
        return False
    need = diff.decisions_to_show(diff.dr)
    return need is not None and need <= patience * gate.decisions


def _gate_difficulty(store: StoreSettings, settings: TrainSettings, loop: RetrainSettings,
                     result: Any) -> FamilyOutcome:
    """Log loss on the candidate's test assignments (the latest), candidate vs champion."""
    from training.models import tracking
    from training.models.lgbm import predict_proba

    data = result.data
    name = settings.difficulty_model_name
    before = tracking.champion_version(name)
    test = data.part == "test"
    n = int(test.sum())
    y = data.y[test]
    weight = data.weights("test")

    def logloss(model: Any) -> float:
        p = np.clip(predict_proba(model, data.X[test])[:, 1], 1e-6, 1 - 1e-6)
        terms = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        return float(np.average(terms, weights=weight))

    metrics = {"gate.test_assignments": float(n)}
    if n < loop.min_assignments:
        reason = (f"only {n} assignments in the test period, {loop.min_assignments} needed "
                  "(REWARDS_RETRAIN_MIN_ASSIGNMENTS)")
        promote = False
    else:
        cand = logloss(result.model)
        metrics["gate.candidate.logloss"] = cand
        loaded = None if before is None else model_version(store, name, before)
        if loaded is None:
            promote, reason = True, (f"first difficulty model (log loss {cand:.4f} on {n} test "
                                     "assignments); cold start served until now")
        elif list(loaded[1].service_features) != list(data.service_features):
            promote, reason = False, ("the champion reads other features: compare with "
                                      "`rewards models promote`")
        else:
            champ = logloss(loaded[0])
            metrics["gate.champion.logloss"] = champ
            promote = cand <= champ
            reason = (f"test log loss {cand:.4f} vs champion {champ:.4f} on {n} assignments")
    promoted = promote and _promote(name, reason)
    _tag(result.run_id, metrics, {"gate.verdict": "promoted" if promoted else "kept",
                                  "gate.reason": reason})
    return FamilyOutcome(name, result.version, before, promoted, reason, metrics)


def _promote(name: str, reason: str, version: str | None = None) -> bool:
    """Move the champion to the candidate (the newest version) or to ``version``."""
    from training.models import tracking

    result = tracking.promote(name, lambda challenger, champion: [], reason=reason,
                              actor="rewards retrain", version=version)
    return result.promoted


def _tag(run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
    for k, tag in tags.items():
        client.set_tag(run_id, k, tag[:5000])


def _reload(loop: RetrainSettings) -> list[dict[str, Any]]:
    """Tell running services to load the new champion now (else they poll the registry)."""
    import httpx

    out = []
    for url in loop.reload_urls:
        headers = {"Authorization": f"Bearer {loop.reload_key}"} if loop.reload_key else {}
        try:
            r = httpx.post(url.rstrip("/") + "/v1/admin/reload", headers=headers, timeout=60)
            out.append({"url": url, "status": r.status_code})
        except httpx.HTTPError as exc:
            out.append({"url": url, "error": f"{type(exc).__name__}: {exc}"})
    return out


def _log_run(store: StoreSettings, settings: TrainSettings, record: dict[str, Any]) -> None:
    """One MLflow run per retrain: the snapshot, the verdicts and their reasons."""
    import mlflow

    from training.models import tracking

    tracking.configure_mlflow(store.tracking_uri, store.artifact_root, settings.experiment)
    with mlflow.start_run(run_name=f"retrain {record['snapshot']}"):
        mlflow.set_tags({"kind": "retrain", "dataset.hash": record["snapshot"],
                         "retrain.as_of": record["as_of"]})
        detail = record["snapshot_detail"]
        mlflow.log_metrics({f"snapshot.{k}": float(v) for k, v in detail.items()
                            if isinstance(v, int | float)})
        for fam in record["families"]:
            mlflow.set_tag(f"{fam['name']}.verdict",
                           "promoted" if fam["promoted"] else "kept")
            mlflow.set_tag(f"{fam['name']}.reason", fam["reason"][:5000])
            mlflow.set_tag(f"{fam['name']}.candidate", fam["candidate"])
            mlflow.log_metrics({f"{fam['name']}.{k}": float(v)
                                for k, v in fam["metrics"].items()})
        mlflow.log_dict(record, "retrain.json")
