"""A "live" period of an experiment: real API calls, simulated members answering.

Members of the simulated world ask the running service for recommendations (so the experiment's
arms are applied by the real request path); each then behaves as the simulator's hidden truth
says a member with their traits would, given the reward actually offered or no offer, and the
outcomes go back through ``POST /v1/events``. Because the truth is known, the expected effect of
the model arm over the holdout is known too, and the experiment report can be checked against it.

Simplifications (said in the output): one reward and one challenge per decision; outcomes are
stamped inside the attribution window after the decisions (so they may lie in the future).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.simulate.truth import (
    MemberArrays,
    RewardArrays,
    completion_probability,
    response_arrays,
)

CHANNELS = ("app", "email", "web")
CHUNK = 500
AMOUNT_SIGMA = 0.45  # lognormal noise of a basket, mean-preserving (as the simulator)
WORLD_FILES = ("world.json", "members.parquet", "rewards.parquet", "challenges.parquet",
               "truth/member_traits.parquet")


def missing_world(world_dir: Path) -> str | None:
    """Why a live period cannot run on ``world_dir`` (one line saying what to run first), or
    None: it needs a simulated world with its hidden truth, which a real program never has."""
    missing = [name for name in WORLD_FILES if not (Path(world_dir) / name).is_file()]
    if not missing:
        return None
    if missing == [WORLD_FILES[-1]]:
        return (f"the world at {world_dir} has no hidden truth (not a simulated world): "
                "simulate-live needs one, run `rewards demo` or `rewards simulate` first")
    return (f"no simulated world at {world_dir} ({missing[0]} missing): run `rewards demo` "
            "or `rewards simulate` first")


class ServiceRefused(RuntimeError):
    """The service answered a live-period call with an error (no models, no features, ...)."""


def _post(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(path, json=body)
    if r.status_code != 200:
        text = " ".join(r.text[:300].split())
        raise ServiceRefused(f"{path} answered {r.status_code}: {text}")
    return r.json()


def simulate_live(client: Any, world_dir: Any, experiment_id: str, members: int,
                  seed: int = 0) -> dict[str, Any]:
    """Run the period through ``client`` (TestClient or httpx.Client); return counts and truth.

    Truth returned: for each non-model arm, the average over the model arm's members of what
    the model's offer changed compared with that arm's treatment (holdout: no offer), in
    redemption rate, purchase rate and spend per member, computed from the hidden response
    probabilities (not from the draws).
    """
    r = client.get(f"/v1/experiments/{experiment_id}")
    if r.status_code != 200:
        raise ValueError(f"ID: no experiment {experiment_id!r} in the service")
    exp = r.json()
    now = datetime.now(UTC)
    if not (datetime.fromisoformat(exp["start"]) <= now < datetime.fromisoformat(exp["end"])):
        raise ValueError(f"ID: experiment {experiment_id!r} is not running now "
                         f"({exp['start']} to {exp['end']})")
    window = int(exp["attribution_window_days"])
    rng = np.random.default_rng(seed)
    roster = pd.read_parquet(world_dir / "members.parquet")
    traits = pd.read_parquet(world_dir / "truth" / "member_traits.parquet")
    rewards = pd.read_parquet(world_dir / "rewards.parquet")
    challenges = pd.read_parquet(world_dir / "challenges.parquet")
    if members > len(roster):
        raise ValueError(f"--members: the world has only {len(roster)} members")
    ids = np.sort(rng.choice(roster["member_id"].to_numpy(), size=members, replace=False))

    # 1. decisions through the API: the service assigns arms and applies them
    answers: list[dict[str, Any]] = []
    for k, start in enumerate(range(0, len(ids), CHUNK)):
        chunk = [str(int(i)) for i in ids[start:start + CHUNK]]  # the API's ids are strings
        body = {"member_ids": chunk, "channel": CHANNELS[k % len(CHANNELS)],
                "k_rewards": 1, "k_challenges": 1}
        answers += _post(client, "/v1/recommendations/batch", body)["results"]
    frame = answers_frame(answers)
    if frame["arm"].isna().any():
        raise RuntimeError("some decisions carried no experiment arm: is the experiment active?")

    # 2. members answer as the hidden truth says
    resp = respond(world_dir, frame, window, rng, traits=traits, roster=roster,
                   rewards=rewards, challenges=challenges)
    p_offer, p_control, p_redeem = resp["p_offer"], resp["p_control"], resp["p_redeem"]
    basket, convert, redeem, complete = (resp["basket"], resp["convert"], resp["redeem"],
                                         resp["complete"])

    # 3. outcomes posted as events, inside each member's window
    t0 = datetime.now(UTC) + timedelta(seconds=1)  # after every decision (first exposure)
    events = outcome_events(frame, resp, [t0] * len(frame),
                            rng.uniform(0.01, 0.9 * window, len(frame)), rewards,
                            impressions=True)
    for start in range(0, len(events), 1000):
        _post(client, "/v1/events", {"events": events[start:start + 1000]})

    # 4. the truth the report should recover
    model = (frame["arm"] == "model").to_numpy()
    true_effects: dict[str, dict[str, float]] = {}
    if model.any():
        p_m, r_m = p_offer[model], p_redeem[model]
        true_effects["holdout"] = {
            "redeemed": float(r_m.mean()),
            "purchased": float((p_m - p_control[model]).mean()),
            "spend": float((basket[model] * (p_m - p_control[model])).mean()),
        }
    random_arm = (frame["arm"] == "random").to_numpy()
    if model.any() and random_arm.any():
        true_effects["random"] = {  # model arm's expected rates minus the random arm's
            "redeemed": float(p_redeem[model].mean() - p_redeem[random_arm].mean()),
            "purchased": float(p_offer[model].mean() - p_offer[random_arm].mean()),
        }
    return {
        "experiment_id": experiment_id, "members": int(len(frame)),
        "arms": frame["arm"].value_counts().to_dict(), "events_posted": len(events),
        "purchases": int(convert.sum()), "redemptions": int(redeem.sum()),
        "challenge_completions": int(complete.sum()),
        "true_effect_vs": true_effects,
        "notes": "true_effect_vs.holdout = mean over model-arm members of the hidden truth's "
                 "effect of the reward offered vs no offer; vs random compares arm averages "
                 "of expected rates (members differ between arms).",
    }


def answers_frame(answers: list[dict[str, Any]]) -> pd.DataFrame:
    """The API's answers (one reward and one challenge asked each) as one row per decision:
    member_id back to the simulator's int ids, the first reward and challenge (None when the
    answer had none), the challenge's target, the experiment arm, the policy and the model
    versions (canonical JSON)."""
    return pd.DataFrame({
        "member_id": [int(a["member_id"]) for a in answers],
        "arm": [a["experiment_arm"] for a in answers],
        "decision_id": [a["decision_id"] for a in answers],
        "reward_id": [a["rewards"][0]["reward_id"] if a["rewards"] else None for a in answers],
        "challenge_id": [a["challenges"][0]["challenge_id"] if a["challenges"] else None
                         for a in answers],
        "target": [a["challenges"][0]["target"] if a["challenges"] else np.nan
                   for a in answers],
        "policy": [a["policy"] for a in answers],
        "versions": [json.dumps(a["model_versions"], sort_keys=True) for a in answers],
    })


def respond(world_dir: Path, frame: pd.DataFrame, window: int, rng: np.random.Generator, *,
            traits: pd.DataFrame | None = None, roster: pd.DataFrame | None = None,
            rewards: pd.DataFrame | None = None, challenges: pd.DataFrame | None = None
            ) -> dict[str, np.ndarray]:
    """How each decision's member answers, drawn from the hidden truth.

    ``frame``: member_id (the simulator's int ids), reward_id (None: no offer), challenge_id
    (None: none) and target, one row per decision. Returns the true probabilities (p_offer:
    P(convert) given what was offered, p_control, p_redeem, p_complete), the basket, and the
    draws (convert, redeem, spend, complete).
    """
    world_dir = Path(world_dir)
    world = json.loads((world_dir / "world.json").read_text())
    roster = pd.read_parquet(world_dir / "members.parquet") if roster is None else roster
    traits = (pd.read_parquet(world_dir / "truth" / "member_traits.parquet")
              if traits is None else traits)
    rewards = pd.read_parquet(world_dir / "rewards.parquet") if rewards is None else rewards
    challenges = (pd.read_parquet(world_dir / "challenges.parquet")
                  if challenges is None else challenges)
    ids = np.unique(frame["member_id"].to_numpy())
    sel_traits = traits[traits["member_id"].isin(ids)].sort_values("member_id")
    sel_members = roster[roster["member_id"].isin(ids)].sort_values("member_id")
    m = MemberArrays.from_frames(sel_traits, sel_members)
    truth = response_arrays(m, RewardArrays.from_frame(rewards), float(world["margin"]), window)
    row = np.searchsorted(m.member_id, frame["member_id"].to_numpy())
    col = pd.Index(rewards["reward_id"]).get_indexer(frame["reward_id"].fillna("-"))
    offered = col >= 0
    safe_col = np.where(offered, col, 0)
    p_control = truth["p_convert_control"][row, 0]
    p_offer = np.where(offered, truth["p_convert_offer"][row, safe_col], p_control)
    p_redeem = np.where(offered, truth["p_redeem"][row, safe_col], 0.0)
    basket = truth["basket_value"][row, 0]
    n = len(frame)
    convert = rng.random(n) < p_offer
    redeem = convert & (rng.random(n) < np.divide(
        p_redeem, p_offer, out=np.zeros_like(p_redeem), where=p_offer > 0))
    spend = np.where(convert, basket * rng.lognormal(-AMOUNT_SIGMA**2 / 2, AMOUNT_SIGMA, n),
                     0.0)
    has_ch = frame["challenge_id"].notna().to_numpy()
    p_complete = np.zeros(n)
    if has_ch.any():
        p_complete[has_ch] = completion_probability(
            sel_traits, challenges, frame["member_id"].to_numpy()[has_ch],
            frame["challenge_id"].to_numpy()[has_ch], frame["target"].to_numpy()[has_ch])
    complete = has_ch & (rng.random(n) < p_complete)
    return {"p_offer": p_offer, "p_control": p_control, "p_redeem": p_redeem,
            "p_complete": p_complete, "basket": basket, "convert": convert, "redeem": redeem,
            "spend": spend, "complete": complete}


def outcome_events(frame: pd.DataFrame, resp: dict[str, np.ndarray], decided_at: Any,
                   offset_days: np.ndarray, rewards: pd.DataFrame, *,
                   impressions: bool = False) -> list[dict[str, Any]]:
    """The events a CRM would post for each decision of ``frame`` (with ``decision_id``):
    optional impressions at the decision time, then a purchase, a redemption and a challenge
    completion when drawn, ``offset_days`` after the decision."""
    cost = dict(zip(rewards["reward_id"], rewards["cost"].astype(float), strict=True))
    events: list[dict[str, Any]] = []
    for i, rec in enumerate(frame.itertuples(index=False)):
        base = {"member_id": str(rec.member_id), "decision_id": rec.decision_id}
        at = decided_at[i]
        when = (at + timedelta(days=float(offset_days[i]))).isoformat()
        if impressions and rec.reward_id is not None:
            events.append({**base, "event_type": "impression", "reward_id": rec.reward_id,
                           "timestamp": at.isoformat()})
        if impressions and rec.challenge_id is not None:
            events.append({**base, "event_type": "impression", "challenge_id": rec.challenge_id,
                           "timestamp": at.isoformat()})
        if resp["convert"][i]:
            events.append({**base, "event_type": "purchase",
                           "amount": round(float(resp["spend"][i]), 2), "timestamp": when})
        if resp["redeem"][i]:
            events.append({**base, "event_type": "redemption", "reward_id": rec.reward_id,
                           "cost": cost[rec.reward_id], "timestamp": when})
        if resp["complete"][i]:
            events.append({**base, "event_type": "challenge_completed",
                           "challenge_id": rec.challenge_id, "timestamp": when})
    for e in events:
        e["event_id"] = f"sim-{uuid.uuid4().hex[:20]}"
    return events
