"""Proof of the learning loop (issue 21): from no model at all to a learnt policy, on the
service's own decisions.

A simulated world joins the product by import with its members and their history only: every
purchase, redemption, visit... of its first ``--history-days``, but no logged offer (decision ids
removed, impressions and holdouts left out) and no model. Then, round after round, its members
ask the real app (in-process, FastAPI TestClient, the same routes and stores as `rewards serve`)
for one reward and one challenge, ``--decisions-per-member`` times a round (2: an offer a week,
the world's own cadence), answer as the simulator's hidden truth says, and post what happened
through `/v1/events`; their own activity (visits, reviews, purchases outside any offer: the
world's future, without its own offers) is imported as simulated time passes, as a program's
export would be; with ``--refresh-days N``, every N-th simulated midnight the members who
changed get fresh features in the online store, as `rewards serve --refresh-seconds N` gives a
live program (``SimulatedLife``; by default served features are those of the last retrain);
between rounds `rewards retrain` runs as a separate process, as cron would
run it, and the app is told to reload. Round 0 is served by cold start (uniform exploration).

Only this bench reads the truth, to report each round:
- value_share_of_oracle: the true incremental value of what was served (exploration and the
  no-offer share included) over the oracle's (each member's best eligible reward);
- policy_share_of_oracle: the same for the served model's greedy choice (what the policy
  picks before exploration), the figure comparable with the offline champion's 0.85;
- random_share_of_oracle: a uniformly random eligible reward;
- the same against the permitted oracle (``*_of_permitted_oracle``): members without
  personalization consent (10 % of the world) can only be served as history-less members of
  their tier, so for them the best a program may do is one reward per tier
  (``Truth.shares``); consenting_policy_share_of_oracle is the greedy share among the others;
- candidate.true_value: the true expected profit per decision of the candidate's serving
  distribution on the decisions its off-policy gate evaluated (what ope_dr estimates);
- candidate.policy_share_of_oracle / champion_policy_share_of_oracle: each one's first choice
  on those decisions, as a share of the oracle (what the candidate would have served, had the
  gate promoted it);
- with a version on trial in the round (``trial_model``): policy_share_of_oracle is the greedy
  choice of the version that served each decision, champion_ / trial_policy_share_of_oracle
  each one's on every decision, trial_served_share the share it served; ``trial`` is the
  retrain's evaluation of it on its own traffic (as ``candidate``), ``on_trial_next`` the
  version on trial in the next round.

Simulated time: decisions of round r are spread over the first ``--spread-days`` of a
``--round-days`` period starting where the history ends (the app's clock is set per batch:
``Services.clock``); each batch's members answer right after it, their outcomes landing inside
the attribution window (posted at once, ahead of their time: a refresh counts only events
before its own midnight); the retrain reads the store as of the next round's start, so every
reward window of the round has closed.

    python bench/learning_loop.py --members 20000 --rounds 4 --seed 7 --json loop.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def rewards_cli(*args: str) -> str:
    """Run `rewards ...` as a user would (stdout returned; stderr streamed for progress)."""
    exe = Path(sys.executable).with_name("rewards")
    out = subprocess.run([str(exe), *args], check=True, stdout=subprocess.PIPE, text=True,
                         env=os.environ.copy())
    return out.stdout


def plot(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(x, [r["value_share_of_oracle"] for r in rounds], "o-", label="served (with "
            "exploration)")
    ax.plot(x, [r.get("policy_share_of_oracle", np.nan) for r in rounds], "s--",
            label="served model's greedy choice")
    if any("policy_share_of_permitted_oracle" in r for r in rounds):
        ax.plot(x, [r.get("policy_share_of_permitted_oracle", np.nan) for r in rounds], "s:",
                color="tab:orange", mfc="none",
                label="the same, of the permitted oracle (consent)")
    cand = [r["candidate"].get("policy_share_of_oracle") for r in rounds]
    ax.plot([v + 0.5 for v in x], [np.nan if c is None else c for c in cand], "^",
            color="tab:green", label="retrained candidate's greedy choice (after the round)")
    trial = [r.get("trial_policy_share_of_oracle") for r in rounds]
    if any(t is not None for t in trial):
        ax.plot(x, [np.nan if t is None else t for t in trial], "D", color="tab:purple",
                label="version on trial's greedy choice (its round)")
    champ = [r["candidate"].get("champion_policy_share_of_oracle") for r in rounds]
    ax.plot([v + 0.5 for v in x], [np.nan if c is None else c for c in champ], "x",
            color="grey", label="champion's greedy choice, same decisions")
    for v, r in zip(x, rounds, strict=True):
        c = r["candidate"]
        if c.get("policy_share_of_oracle") is not None:
            ax.annotate("promoted" if c["promoted"] else "kept champion",
                        (v + 0.5, c["policy_share_of_oracle"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)
        t, share = r.get("trial"), r.get("trial_policy_share_of_oracle")
        if t is not None and share is not None:
            ax.annotate(f"trial v{t['version']} {'promoted' if t['promoted'] else 'kept on trial'}",
                        (v, share), textcoords="offset points", xytext=(6, 4), ha="left",
                        fontsize=7, color="tab:purple")
    ax.plot(x, [r["random_share_of_oracle"] for r in rounds], ":", label="random eligible")
    ax.axhline(0.80, color="grey", lw=0.8)
    ax.set_xlabel("round (0: cold start)")
    ax.set_ylabel("share of the oracle's incremental value")
    ax.set_xticks(x)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Learning loop: value per round")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gate_report(truth: Any, metrics: dict[str, float], prefix: str,
                gate_file: Path) -> dict[str, Any]:
    """One gate's figures (MLflow metrics under ``prefix``) beside the truth of the policies
    it compared (the audit file ``gate_file``, when written): what the round JSON reports
    for the candidate and for the version on trial alike."""
    gate = pd.read_parquet(gate_file) if gate_file.is_file() else None
    champ = gate is not None and "p_champion" in gate
    return {"ope_dr": metrics.get(prefix + "candidate.dr"),
            "ope_ci_low": metrics.get(prefix + "candidate.dr_ci_low"),
            "ope_ci_high": metrics.get(prefix + "candidate.dr_ci_high"),
            "gate_decisions": metrics.get(prefix + "candidate.n"),
            "difference_dr": metrics.get(prefix + "difference.dr"),
            "difference_ci": [metrics.get(prefix + "difference.ci_low"),
                              metrics.get(prefix + "difference.ci_high")],
            "true_value": None if gate is None else truth.policy_value(gate, "p_candidate"),
            "policy_share_of_oracle": (
                None if gate is None else truth.greedy_share(gate, "p_candidate")),
            "policy_share_of_permitted_oracle": (
                None if gate is None else truth.greedy_share(
                    gate, "p_candidate", "value_share_of_permitted_oracle")),
            "champion_true_value": truth.policy_value(gate, "p_champion") if champ else None,
            "champion_policy_share_of_oracle": (
                truth.greedy_share(gate, "p_champion") if champ else None),
            "champion_policy_share_of_permitted_oracle": (
                truth.greedy_share(gate, "p_champion", "value_share_of_permitted_oracle")
                if champ else None)}


def start_experiment(client: Any, arms: str, start: Any, end: Any) -> str:
    """Define an uplift experiment through the API, as a marketer would (its id returned)."""
    body = {"name": "loop bench", "primary_metric": "incremental_spend",
            "attribution_window_days": 7, "start": start.isoformat(), "end": end.isoformat(),
            "arms": [{"name": name.strip(), "share": float(share)}
                     for name, _, share in (a.partition("=") for a in arms.split(","))]}
    r = client.post("/v1/experiments", json=body)
    r.raise_for_status()
    return str(r.json()["id"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--history-days", type=int, default=60)
    ap.add_argument("--round-days", type=int, default=14)
    ap.add_argument("--spread-days", type=float, default=7.0)
    ap.add_argument("--decisions-per-member", type=int, default=2,
                    help="decisions per member per round, --spread-days apart (a window "
                         "still open at the retrain is labelled by the next one); 2 per "
                         "14-day round is the world's own cadence (an offer a week)")
    ap.add_argument("--behaviour", action=argparse.BooleanOptionalAction, default=True,
                    help="members keep living during the rounds: their own activity (visits, "
                         "purchases outside any offer...) is imported as simulated time passes")
    ap.add_argument("--refresh-days", type=int, default=0,
                    help="push the changed members' features to the online store every N "
                         "simulated days, as a live program's `rewards serve --refresh-seconds` "
                         "does (0: served features are those of the last retrain; 1 doubles "
                         "the bench's time and, measured, does not change the policy's value)")
    ap.add_argument("--experiment", default=None, metavar="ARMS",
                    help="an uplift experiment from --experiment-round on, e.g. "
                         "model=0.8,random=0.1,holdout=0.1: every member is in it, so every "
                         "decision the gate reads is made in an arm")
    ap.add_argument("--experiment-round", type=int, default=1)
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "learning_loop.png")
    ap.add_argument("--replot", type=Path, default=None, metavar="JSON",
                    help="only draw --plot from an earlier run's --json output")
    args = ap.parse_args()
    if args.replot is not None:
        plot(json.loads(args.replot.read_text())["rounds"], args.plot)
        return

    data = args.data_dir or Path(tempfile.mkdtemp(prefix="learning-loop-"))
    os.environ.update({"REWARDS_DATA_DIR": str(data), "REWARDS_AUTH_DISABLED": "true",
                       "REWARDS_MODEL_POLL_SECONDS": "0", "REWARDS_SEED": str(args.seed)})
    t_all = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_all:7.1f}s] {msg}", file=sys.stderr,  # noqa: E731
                            flush=True)
    log(f"data folder {data}")
    # the world lives on through the rounds; only its first --history-days are history
    days = args.history_days + args.rounds * args.round_days
    rewards_cli("simulate", "--members", str(args.members), "--days", str(days),
                "--seed", str(args.seed), "--no-import")
    from serving.config import ServeSettings, StoreSettings

    store = StoreSettings()
    world_dir = store.world_dir
    from training.simulate.loop import onboard_without_offers

    world = json.loads((world_dir / "world.json").read_text())
    history_end = (pd.Timestamp(world["start"], tz="UTC")
                   + pd.Timedelta(days=args.history_days)).to_pydatetime()
    events_url = ServeSettings().events(store)
    onboarded = onboard_without_offers(world_dir, events_url, until=history_end)
    log(f"imported {onboarded['imported']:,} events of the first {args.history_days} days "
        f"(of {onboarded['events_in_world']:,} in the world: no logged offer)")
    rewards_cli("features", "build")
    rewards_cli("features", "materialize")
    log("features built and materialized; no model registered")

    from fastapi.testclient import TestClient

    from serving.main import create_app
    from training.simulate.loop import (
        Truth,
        SimulatedLife,
        answer_round,
        round_shares,
        run_round,
    )

    window = int(world["attribution_window_days"])
    truth = Truth(world_dir)
    rng = np.random.default_rng(args.seed)
    ids = truth.world.members.index.to_numpy()
    rounds: list[dict[str, Any]] = []
    life = SimulatedLife(world_dir, store, events_url, history_end, behaviour=args.behaviour,
                         refresh_days=args.refresh_days)
    with TestClient(create_app()) as client:
        services = client.app.state.services
        for r in range(args.rounds):
            start = history_end + timedelta(days=r * args.round_days)
            if args.experiment and r == args.experiment_round:
                end = history_end + timedelta(days=args.rounds * args.round_days + 30)
                log("experiment " + start_experiment(client, args.experiment, start, end))
            t0 = time.perf_counter()
            before = dict(life.stats)
            parts, n_events = [], 0

            def answer(part: pd.DataFrame, times: list[Any]) -> None:
                nonlocal n_events
                events = answer_round(client, world_dir, part, times, window, truth.rewards,
                                      rng)
                n_events += len(events)
                life.note(part["member_id"].to_numpy(), times)
                life.note([e["member_id"] for e in events], [e["timestamp"] for e in events])

            for k in range(args.decisions_per_member):
                at = start + timedelta(days=k * args.spread_days)
                part, _ = run_round(client, services, ids, at, args.spread_days, rng,
                                    before=life.advance, after=answer)
                parts.append(part)
            frame = pd.concat(parts, ignore_index=True)
            life.advance(start + timedelta(days=args.round_days))
            lived = {k: round(v - before[k], 1) for k, v in life.stats.items()}
            organic = int(lived["behaviour_events"])
            decide_s = time.perf_counter() - t0
            shares = round_shares(services, frame, truth, start)
            versions = frame["versions"].value_counts().index[0]
            name = services.settings.reward_model_name
            served_model = json.loads(versions).get(name) or "cold_start"
            trial_model = json.loads(versions).get(name + "@trial")
            log(f"round {r}: {len(frame):,} decisions in {decide_s:.0f} s, served by "
                f"{served_model}"
                f"{f' + trial v{trial_model}' if trial_model else ''}, {n_events:,} outcome "
                f"events, {organic:,} own-activity "
                f"events, {lived['refreshes']:.0f} feature refreshes "
                f"({lived['members_refreshed']:,.0f} members, {lived['refresh_seconds']:.0f} s)"
                f"; share of oracle "
                f"{shares['value_share_of_oracle']:.3f} (policy "
                f"{shares.get('policy_share_of_oracle', float('nan')):.3f}, random "
                f"{shares['random_share_of_oracle']:.3f}); of the permitted oracle "
                f"(one reward per tier for the {1 - shares['consent_share']:.1%} without "
                f"consent) {shares['value_share_of_permitted_oracle']:.3f} (policy "
                f"{shares.get('policy_share_of_permitted_oracle', float('nan')):.3f}); "
                f"consenting members' policy "
                f"{shares.get('consenting_policy_share_of_oracle', float('nan')):.3f}")
            as_of = start + timedelta(days=args.round_days)
            t1 = time.perf_counter()
            out = rewards_cli("retrain", "--as-of", as_of.isoformat(), "--as-present", "--json")
            record = json.loads(out)  # stdout is the JSON alone
            retrain_s = time.perf_counter() - t1
            life.covered(as_of)  # the retrain rebuilt every member's features as of then
            fam = record["families"][0]
            snapshot = Path(record["snapshot_detail"]["path"])
            met = fam["metrics"]
            candidate = {"version": fam["candidate"], "promoted": fam["promoted"],
                         "reason": fam["reason"],
                         **gate_report(truth, met, "gate.", snapshot / "gate_reward.parquet"),
                         "paired_lower_bound": met.get("gate.paired_lower_bound"),
                         "experiment_decisions": met.get("gate.experiment_decisions"),
                         "champion_dr": met.get("gate.champion.dr")}
            true_value = candidate["true_value"]
            trial = None
            if fam.get("trial"):
                tried = fam["trial"]
                trial = {"version": tried["version"], "promoted": tried["promoted"],
                         "reason": tried["reason"],
                         **gate_report(truth, tried["metrics"], "gate.trial.",
                                       snapshot / "gate_reward_trial.parquet")}
                log(f"  trial v{trial['version']}: DR diff {trial['difference_dr']} "
                    f"{trial['difference_ci']} true {trial['true_value']} vs champion "
                    f"{trial['champion_true_value']}; "
                    f"{'PROMOTED' if trial['promoted'] else 'kept'}: {trial['reason']}")
            client.post("/v1/admin/reload").raise_for_status()
            log(f"  retrain in {retrain_s:.0f} s: candidate v{fam['candidate']} DR "
                f"{candidate['ope_dr']} [{candidate['ope_ci_low']}, {candidate['ope_ci_high']}]"
                f" true {true_value}; {'PROMOTED' if fam['promoted'] else 'kept'}: "
                f"{fam['reason']}")
            rounds.append({"round": r, "decisions": len(frame), "outcome_events": n_events,
                           "behaviour_events": organic,
                           "feature_refreshes": {k: lived[k] for k in (
                               "refreshes", "members_refreshed", "refresh_seconds")},
                           "served_model": served_model, "trial_model": trial_model,
                           **shares, "candidate": candidate, "trial": trial,
                           "on_trial_next": fam.get("on_trial"),
                           "difficulty": record["families"][1],
                           "seconds": {"serve_and_answer": round(decide_s, 1),
                                       "retrain": round(retrain_s, 1)}})
    result = {"members": args.members, "rounds": rounds, "seed": args.seed,
              "decisions_per_member": args.decisions_per_member, "behaviour": args.behaviour,
              "refresh_days": args.refresh_days,
              "experiment": args.experiment, "experiment_round": args.experiment_round,
              "seconds": round(time.perf_counter() - t_all, 1),
              "join_report": json.loads(rewards_cli("data", "join-report", "--as-of",
                                                    as_of.isoformat(), "--json"))}
    plot(rounds, args.plot)
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
