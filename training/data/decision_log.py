"""The service's own decisions as training rows, and outcomes joined to decisions.

Two sources of labelled decisions share one shape: a program's imported history (``impression``
and ``holdout`` events, ``training.data.history``) and the decisions the service logged itself
(``EventStore.decision_log``: per slot the item, its position and the probability it was shown
with, the no-offer share, the policy that served). Rows carry ``source`` ("import" | "service")
and ``policy`` so training can weight what a non-uniform policy chose and the off-policy gate can
find the service's latest decisions.

Outcomes are attributed to a decision by its ``decision_id`` (what the API hands out and a CRM
posts back). An outcome without one that names an item (a redemption of a reward, a completion
of a challenge) goes to the member's latest decision that offered that item and whose window was
still open: the way a program that never stored our ids still closes the loop. A purchase names
no item, so without a decision id it cannot be told from the member's ordinary shopping and is
not attributed.

Everything here is pure: frames in, frames out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

TS_DTYPE = "datetime64[us, UTC]"
#: The outcome events a label is made of.
OUTCOME_TYPES = ("purchase", "redemption", "challenge_completed")
#: Offer and assignment columns besides the labels (both sources).
#: ``arm``: the experiment arm the decision was made in ("" outside experiments and for
#: imported rows): its probabilities are given the arm. ``model_versions``: the JSON of the
#: model versions that served the decision ("" for imported rows): the off-policy gate re-derives
#: an experiment's model arm only from the model that served it.
OFFER_COLUMNS = ["decision_id", "member_id", "event_timestamp", "reward_id", "treated",
                 "propensity", "source", "policy", "slot", "arm", "model_versions"]
ASSIGNMENT_COLUMNS = ["decision_id", "member_id", "event_timestamp", "challenge_id", "target",
                      "propensity", "target_probability", "source", "policy", "slot", "arm"]


def _served(decisions: pd.DataFrame, family_flag: str) -> pd.DataFrame:
    """The policy that served each decision as one family saw it, its experiment arm and model
    versions, by decision id (None where the log predates a column). The policy is ``model``
    where the family's own model chose its items (its ``family_flag``: a decision whose other
    family was in cold start or fell back still has model-chosen items, which training must
    weight), else the decision's (also where the flag was not recorded)."""
    columns = ["policy", "arm", "model_versions"]
    index = pd.Index(decisions["decision_id"], name="decision_id")
    out = pd.DataFrame({c: decisions[c].to_numpy(dtype=object, copy=True)  # not views
                        if c in decisions else None for c in columns}, index=index,
                       columns=columns)
    if family_flag in decisions:
        chosen = decisions[family_flag].astype("boolean").fillna(False).to_numpy(dtype=bool)
        out.loc[chosen, "policy"] = "model"
    return out


def offers_from_log(decisions: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Reward decisions of the service's log: each reward slot an offer (propensity: the
    probability that reward was shown in that slot), each no-offer a control row (propensity:
    the no-offer share, or 1 in an experiment's holdout arm).

    Decisions inside experiments are learnt from too. Their probabilities are conditional on
    the member's arm, which was assigned at random: a random arm's uniform rewards are the
    most informative rows there are, and a holdout adds controls that cost no extra withheld
    offer. (Holdout decisions logged before their no-offer probability was recorded have none
    and stay out.)
    """
    meta = _served(decisions, "reward_model")
    rewards = items[(items["item_type"] == "reward") & items["decision_id"].isin(meta.index)]
    offered = pd.DataFrame({
        "decision_id": rewards["decision_id"].to_numpy(),
        "member_id": rewards["member_id"].astype(str).to_numpy(),
        "event_timestamp": rewards["event_timestamp"].to_numpy(),
        "reward_id": rewards["item_id"].astype(str).to_numpy(),
        "treated": True,
        "propensity": rewards["shown_probability"].astype("float64").to_numpy(),
        "source": "service",
        "policy": meta["policy"].reindex(rewards["decision_id"]).to_numpy(),
        "slot": rewards["item_rank"].astype("int64").to_numpy(),
        "arm": meta["arm"].reindex(rewards["decision_id"]).to_numpy(),
        "model_versions": meta["model_versions"].reindex(rewards["decision_id"]).to_numpy(),
    })
    none = decisions[decisions["no_offer"].astype(bool)
                     & decisions["no_offer_probability"].gt(0)]
    control = pd.DataFrame({
        "decision_id": none["decision_id"].to_numpy(),
        "member_id": none["member_id"].astype(str).to_numpy(),
        "event_timestamp": none["event_timestamp"].to_numpy(),
        "reward_id": "", "treated": False,
        "propensity": none["no_offer_probability"].astype("float64").to_numpy(),
        "source": "service", "policy": meta["policy"].reindex(none["decision_id"]).to_numpy(),
        "slot": 0,
        "arm": meta["arm"].reindex(none["decision_id"]).to_numpy(),
        "model_versions": meta["model_versions"].reindex(none["decision_id"]).to_numpy(),
    })
    out = pd.concat([offered, control], ignore_index=True) if len(control) else offered
    return _typed(out[OFFER_COLUMNS])


def assignments_from_log(decisions: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Challenge decisions of the service's log: template, target, and the probabilities the
    slot and the target were drawn with (experiments' arms included, as for rewards)."""
    meta = _served(decisions, "difficulty_model")
    rows = items[(items["item_type"] == "challenge") & items["decision_id"].isin(meta.index)
                 & items["target"].notna()]
    target_p = (rows["target_probability"] if "target_probability" in rows
                else pd.Series(np.nan, index=rows.index))
    out = pd.DataFrame({
        "decision_id": rows["decision_id"].to_numpy(),
        "member_id": rows["member_id"].astype(str).to_numpy(),
        "event_timestamp": rows["event_timestamp"].to_numpy(),
        "challenge_id": rows["item_id"].astype(str).to_numpy(),
        "target": rows["target"].astype("float64").to_numpy(),
        "propensity": rows["shown_probability"].astype("float64").to_numpy(),
        "target_probability": target_p.astype("float64").to_numpy(),
        "source": "service",
        "policy": meta["policy"].reindex(rows["decision_id"]).to_numpy(),
        "slot": rows["item_rank"].astype("int64").to_numpy(),
        "arm": meta["arm"].reindex(rows["decision_id"]).to_numpy(),
    })
    return _typed(out[ASSIGNMENT_COLUMNS])


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype(TS_DTYPE)
    frame["member_id"] = frame["member_id"].astype(str)
    if "treated" in frame:
        frame["treated"] = frame["treated"].astype(bool)
    frame["policy"] = frame["policy"].fillna("").astype(str)
    frame["arm"] = frame["arm"].fillna("").astype(str)
    if "model_versions" in frame:
        frame["model_versions"] = frame["model_versions"].fillna("").astype(str)
    return frame


def combine(imported: pd.DataFrame, logged: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Imported and logged decisions, one row per (decision, item): where a CRM also posted an
    impression for a decision the service logged, the log wins (it knows the probability).
    Returns the rows and how many imported rows were such duplicates."""
    if logged.empty:
        return imported, 0
    dup = imported["decision_id"].isin(set(logged["decision_id"]))
    frames = [f for f in (imported[~dup], logged) if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else imported
    return out, int(dup.sum())


def attribute_by_item(events: pd.DataFrame, offers: pd.DataFrame, assignments: pd.DataFrame,
                      window_days: int, durations: pd.Series) -> pd.DataFrame:
    """``events`` with a ``matched_by`` column ("decision_id" | "member_item" | None) and, for
    redemptions and completions that carried no decision id, or one no logged decision has
    (another system's, a typo), the id of the member's latest decision offering the same item
    whose window (attribution window, or the challenge's duration) was open at the event. An
    unknown id that finds no such decision is kept as it came (the join report counts it)."""
    out = events.copy()
    known = pd.Index(pd.concat([offers["decision_id"], assignments["decision_id"]]).unique()
                     if len(offers) or len(assignments) else [])
    outcome = out["event_type"].isin(OUTCOME_TYPES)
    has_id = out["decision_id"].notna() & outcome
    matched = pd.Series([None] * len(out), index=out.index, dtype=object)
    matched[has_id] = "decision_id"
    # the decision id is the first key; an id that names no decision is no key at all
    orphan = outcome & (out["decision_id"].isna() | ~out["decision_id"].isin(known))
    matched[orphan & out["decision_id"].notna()] = None
    windows = pd.Timedelta(days=window_days)
    treated = offers[offers["treated"].astype(bool)] if len(offers) else offers
    if len(treated):
        ends = treated["event_timestamp"] + windows
        found = _latest_open(out, orphan, "redemption", "reward_id", treated, ends)
        out.loc[found.index, "decision_id"] = found.to_numpy()
        matched[found.index] = "member_item"
    if len(assignments):
        days = assignments["challenge_id"].map(durations).fillna(0).astype("int64")
        ends = assignments["event_timestamp"] + pd.to_timedelta(days.to_numpy(), unit="D")
        found = _latest_open(out, orphan, "challenge_completed", "challenge_id", assignments,
                             ends)
        out.loc[found.index, "decision_id"] = found.to_numpy()
        matched[found.index] = "member_item"
    out["matched_by"] = matched
    return out


def _latest_open(events: pd.DataFrame, orphans: pd.Series, kind: str, item: str,
                 decisions: pd.DataFrame, ends: pd.Series) -> pd.Series:
    """decision_id per ``kind`` event among the ``orphans`` (index: the event's), by member
    and item."""
    orphan = events[orphans & (events["event_type"] == kind) & events[item].notna()]
    if orphan.empty:
        return pd.Series(dtype=object)
    left = pd.DataFrame({"row": orphan.index, "member_id": orphan["member_id"].astype(str),
                         item: orphan[item].astype(str),
                         "t": orphan["event_timestamp"].astype(TS_DTYPE)}).sort_values("t")
    right = pd.DataFrame({"member_id": decisions["member_id"].astype(str),
                          item: decisions[item].astype(str),
                          "t": decisions["event_timestamp"].astype(TS_DTYPE),
                          "decision_id": decisions["decision_id"],
                          "end": ends.astype(TS_DTYPE)}).reset_index(drop=True).sort_values("t")
    m = pd.merge_asof(left, right, on="t", by=["member_id", item], direction="backward")
    ok = m["decision_id"].notna() & (m["t"] < m["end"])
    return pd.Series(m.loc[ok, "decision_id"].to_numpy(), index=m.loc[ok, "row"].to_numpy())


@dataclass
class JoinReport:
    """What `rewards data join-report` prints: how the decision log and the outcomes met."""

    as_of: str
    attribution_window_days: int
    decisions: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def text(self) -> str:
        lines = [f"join report as of {self.as_of} (attribution window "
                 f"{self.attribution_window_days} days)"]
        for title, part in (("decisions", self.decisions), ("outcomes", self.outcomes),
                            ("duplicates", self.duplicates)):
            lines.append(f"{title}:")
            lines += [f"  {k.replace('_', ' '):<34} {v:>10,}" for k, v in part.items()]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def _windows(offers: pd.DataFrame, assignments: pd.DataFrame) -> pd.Series:
    """The end of the window of what an outcome can label, by (decision id, item): item ""
    for a purchase (the decision's reward rows, control included), a reward id for a
    redemption, a challenge id for a completion."""
    parts = []
    if len(offers):
        end = closes_at(offers).to_numpy()
        parts += [pd.DataFrame({"decision_id": offers["decision_id"], "item": "", "end": end}),
                  pd.DataFrame({"decision_id": offers["decision_id"],
                                "item": offers["reward_id"].fillna(""), "end": end})]
    if len(assignments):
        parts.append(pd.DataFrame({"decision_id": assignments["decision_id"],
                                   "item": assignments["challenge_id"],
                                   "end": closes_at(assignments).to_numpy()}))
    if not parts:
        return pd.Series(dtype=TS_DTYPE, index=pd.MultiIndex.from_arrays(
            [[], []], names=["decision_id", "item"]))
    frame = pd.concat(parts, ignore_index=True).astype({"decision_id": str, "item": str})
    return frame.groupby(["decision_id", "item"])["end"].max()


def closes_at(decisions: pd.DataFrame) -> pd.Series:
    """When each decision's label became final: the end of its window (``window_end``).

    Not the outcome's time: a challenge completed early is known at once, but its decision is
    not closed before the period ends, else the latest decisions would enter training with
    their completions and without their failures (a sample biased toward success). Frames
    without ``window_end`` (written before it existed) fall back on ``outcome_timestamp``.
    """
    return decisions["window_end" if "window_end" in decisions else "outcome_timestamp"]


def join_report(events: pd.DataFrame, offers: pd.DataFrame, assignments: pd.DataFrame,
                as_of: pd.Timestamp, window_days: int, *, imported_duplicates: int = 0,
                labelled_at: pd.Series | None = None) -> JoinReport:
    """Counts of decisions (by source, open windows, labelled), outcome events (matched by id,
    by member and item, unmatched, outside the window, late) and duplicates.

    ``events`` come from :func:`attribute_by_item` (with ``matched_by``) and carry
    ``received_at``; ``offers``/``assignments`` carry ``window_end`` (else
    ``outcome_timestamp``). ``labelled_at``: per decision id, when its label was frozen (the
    ledger), so outcomes received later count as late (kept in the store, never relabelling).
    """
    report = JoinReport(as_of=str(as_of), attribution_window_days=window_days)
    frames = [f for f in (offers, assignments) if len(f)]
    cols = ["decision_id", "source", "event_timestamp"]
    rows = pd.concat([f[cols].assign(end=closes_at(f)) for f in frames], ignore_index=True
                     ) if frames else pd.DataFrame(columns=[*cols, "end"])
    per = rows.groupby("decision_id").agg(source=("source", "first"))
    service = per["source"] == "service"
    # windows, not decisions: a decision's reward window may close a week before its
    # challenge's, and the snapshot trains on the closed one meanwhile
    open_ = rows["end"] > as_of
    report.decisions = {
        "service_logged": int(service.sum()),
        "imported": int((~service).sum()),
        "reward_slots": int((offers["treated"].astype(bool)).sum()) if len(offers) else 0,
        "no_offer": int((~offers["treated"].astype(bool)).sum()) if len(offers) else 0,
        "challenge_slots": len(assignments),
        "open_windows": int(open_.sum()),
        "labelled": int((~open_).sum()),
    }
    out = events[events["event_type"].isin(OUTCOME_TYPES)]
    known = out["decision_id"].isin(per.index)
    # the rows an event can label: its decision's reward rows (a purchase, or a redemption of
    # a reward it offered) or the challenge it assigned; the window is those rows'
    item = np.where(out["event_type"] == "challenge_completed", out["challenge_id"],
                    np.where(out["event_type"] == "redemption", out["reward_id"], ""))
    key = pd.MultiIndex.from_arrays([out["decision_id"].astype(str),
                                     pd.Series(item, index=out.index).fillna("").astype(str)])
    end = pd.Series(_windows(offers, assignments).reindex(key).to_numpy(), index=out.index)
    in_decision = known & end.notna()
    by_id = in_decision & (out["matched_by"] == "decision_id")
    by_item = in_decision & (out["matched_by"] == "member_item")
    carried = out["decision_id"].notna()
    start = out["decision_id"].map(rows.groupby("decision_id")["event_timestamp"].min())
    outside = in_decision & ((out["event_timestamp"] < start) | (out["event_timestamp"] >= end))
    late = pd.Series(False, index=out.index)
    if labelled_at is not None and len(labelled_at) and "received_at" in out:
        frozen = out["decision_id"].map(labelled_at)
        late = known & frozen.notna() & (out["received_at"] > frozen)
    item_named = out["event_type"].isin(("redemption", "challenge_completed"))
    report.outcomes = {
        "events": len(out),
        "matched_by_decision_id": int(by_id.sum()),
        "matched_by_member_and_item": int(by_item.sum()),
        "unmatched_unknown_decision_id": int((carried & ~known).sum()),
        # a known id, but nothing of that decision for it to label: a redemption of a reward
        # it did not offer, a completion of a challenge it did not assign, a purchase naming
        # a decision that offered no reward row
        "unmatched_item_not_in_decision": int((known & ~in_decision).sum()),
        "unmatched_no_decision_in_window": int((~carried & item_named).sum()),
        "purchases_without_decision_id": int((~carried & (out["event_type"] == "purchase")).sum()),
        "outside_window": int(outside.sum()),
        "late_after_labelling": int(late.sum()),
    }
    keyed = out[in_decision]
    item = keyed["reward_id"].fillna(keyed["challenge_id"]).fillna("")
    repeat = keyed.assign(item=item)[keyed["event_type"] != "purchase"].duplicated(
        ["decision_id", "event_type", "item"])
    report.duplicates = {
        "decision_ids_logged_and_imported": imported_duplicates,
        "repeated_redemptions_or_completions": int(repeat.sum()),
    }
    return report
