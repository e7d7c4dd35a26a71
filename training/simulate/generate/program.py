"""The simulated world as a loyalty program would hand it over: import files.

The simulator is a population of members, not a data source: the product learns about it only
through the files a real program imports (`rewards import members|events`, `rewards catalog
import`). This module turns one chunk of simulated arrays into those files' rows:

- every behavioural event with a stable ``event_id`` (``e<n>``);
- each logged offer as an ``impression`` (treated) or a ``holdout`` (control) event, and each
  challenge assignment as an ``impression`` of the template with its ``target``; their
  ``decision_id`` (``o<offer_id>``, ``a<assignment_id>``) is also their ``event_id``;
- the outcomes they caused (purchases and redemptions in an offer's attribution window, the
  completion of an assignment) carry that ``decision_id``, which is how a CRM reports outcomes.

Attribution is recovered from times: a member's offer windows never overlap, nor do a member's
challenge periods, so an outcome belongs to the member's latest decision before it when it falls
inside that decision's window.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from training.simulate.generate.engagement import (
    CHALLENGE_COMPLETED,
    PURCHASE,
    REDEMPTION,
)
from training.simulate.generate.tables import EventColumns, labels, timestamps

#: Columns of the events import file the simulator writes (README: "Importing a program's data").
IMPORT_EVENTS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("member_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("decision_id", pa.string()),
        ("reward_id", pa.string()),
        ("challenge_id", pa.string()),
        ("amount", pa.float64()),
        ("category", pa.string()),
        ("points", pa.int64()),
        ("target", pa.float64()),
        ("propensity", pa.float64()),
    ]
)


def attribute(member: np.ndarray, ts: np.ndarray, d_member: np.ndarray, d_ts: np.ndarray,
              d_end: np.ndarray) -> np.ndarray:
    """Position in the decisions of each event's attributed decision, or -1.

    Decisions must be sorted by (member, ts). An event is attributed to the member's latest
    decision at or before it when the event happens before that decision's window ends.
    """
    if d_member.size == 0 or member.size == 0:
        return np.full(member.size, -1, dtype=np.int64)
    lo = np.searchsorted(d_member, member, "left")
    hi = np.searchsorted(d_member, member, "right")
    # Within the member's block, the number of decisions at or before ts; blocks are small
    # (a decision every week or two), so a short loop over the block width is cheap.
    width = int((hi - lo).max())
    count = np.zeros(member.size, dtype=np.int64)
    for k in range(width):
        pos = lo + k
        inside = pos < hi
        safe = np.minimum(pos, d_member.size - 1)
        count += inside & (d_ts[safe] <= ts)
    pos = lo + count - 1
    found = (count > 0)
    safe = np.clip(pos, 0, d_member.size - 1)
    found &= ts < d_end[safe]
    return np.where(found, safe, -1)


def program_events(events: EventColumns, event_types: tuple[str, ...],
                   categories: tuple[str, ...], reward_ids: list[str],
                   challenge_ids: list[str], first_event: int,
                   offers: dict[str, np.ndarray], assignments: dict[str, np.ndarray]) -> pa.Table:
    """One chunk's rows of the events import file (behaviour, decisions and their outcomes).

    ``offers``/``assignments`` hold parallel arrays sorted by (member_id, ts): ``id``,
    ``member_id``, ``ts``, ``end`` (window end, microseconds) and, for offers, ``reward``
    (catalog position or -1), ``treated``, ``propensity``; for assignments ``template``,
    ``target``, ``propensity``.
    """
    n = events.member_id.size
    decision = np.full(n, "", dtype=object)
    challenge = np.full(n, -1, dtype=np.int64)
    is_offer_outcome = np.isin(events.event_type, (PURCHASE, REDEMPTION))
    idx = attribute(events.member_id[is_offer_outcome], events.ts[is_offer_outcome],
                    offers["member_id"], offers["ts"], offers["end"])
    rows = np.flatnonzero(is_offer_outcome)
    hit = idx >= 0
    decision[rows[hit]] = np.char.add("o", offers["id"][idx[hit]].astype(str)).astype(object)
    is_done = events.event_type == CHALLENGE_COMPLETED
    idx = attribute(events.member_id[is_done], events.ts[is_done], assignments["member_id"],
                    assignments["ts"], assignments["end"])
    rows = np.flatnonzero(is_done)
    hit = idx >= 0
    decision[rows[hit]] = np.char.add("a", assignments["id"][idx[hit]].astype(str)).astype(object)
    challenge[rows[hit]] = assignments["template"][idx[hit]]
    is_purchase = events.event_type == PURCHASE

    behaviour = pa.Table.from_arrays(
        [
            pa.array(np.char.add("e", np.arange(first_event, first_event + n).astype(str))),
            labels(events.event_type, event_types),
            pa.array(events.member_id.astype(str)),
            timestamps(events.ts),
            _optional(decision),
            _empty_to_null(labels(events.reward, reward_ids)),
            _empty_to_null(labels(challenge, challenge_ids)),
            pa.array(events.amount, mask=~is_purchase),
            _empty_to_null(labels(np.where(is_purchase, events.category, -1), categories)),
            pa.array(events.points, mask=events.points == 0),
            pa.nulls(n, pa.float64()),
            pa.nulls(n, pa.float64()),
        ],
        schema=IMPORT_EVENTS_SCHEMA,
    )
    return pa.concat_tables([behaviour, _offer_rows(offers, reward_ids),
                             _assignment_rows(assignments, challenge_ids)]).combine_chunks()


def _optional(values: np.ndarray) -> pa.Array:
    """A string column whose empty strings are nulls (the import files' "absent")."""
    return pa.array(values.astype(str), mask=values == "")


def _empty_to_null(array: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    return pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)


def _offer_rows(offers: dict[str, np.ndarray], reward_ids: list[str]) -> pa.Table:
    n = offers["id"].size
    ids = pa.array(np.char.add("o", offers["id"].astype(str)))
    return pa.Table.from_arrays(
        [
            ids,
            pa.array(np.where(offers["treated"], "impression", "holdout")),
            pa.array(offers["member_id"].astype(str)),
            timestamps(offers["ts"]),
            ids,
            _empty_to_null(labels(offers["reward"], reward_ids)),
            pa.nulls(n, pa.string()),
            pa.nulls(n, pa.float64()),
            pa.nulls(n, pa.string()),
            pa.nulls(n, pa.int64()),
            pa.nulls(n, pa.float64()),
            pa.array(offers["propensity"]),
        ],
        schema=IMPORT_EVENTS_SCHEMA,
    )


def _assignment_rows(assignments: dict[str, np.ndarray], challenge_ids: list[str]) -> pa.Table:
    n = assignments["id"].size
    ids = pa.array(np.char.add("a", assignments["id"].astype(str)))
    return pa.Table.from_arrays(
        [
            ids,
            pa.array(np.full(n, "impression")),
            pa.array(assignments["member_id"].astype(str)),
            timestamps(assignments["ts"]),
            ids,
            pa.nulls(n, pa.string()),
            labels(assignments["template"], challenge_ids),
            pa.nulls(n, pa.float64()),
            pa.nulls(n, pa.string()),
            pa.nulls(n, pa.int64()),
            pa.array(assignments["target"]),
            pa.array(np.broadcast_to(assignments["propensity"], (n,)).astype(np.float64)),
        ],
        schema=IMPORT_EVENTS_SCHEMA,
    )
