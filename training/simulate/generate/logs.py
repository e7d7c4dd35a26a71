"""Randomized logging policies and their outcomes: reward offers and challenge assignments.

Both policies are uniform at random (with a no-offer holdout for rewards), so the logged
propensities are known exactly and off-policy estimates on these logs are unbiased.
Outcomes are drawn from `truth`, and written back into the event stream (purchases,
redemptions, challenge completions) so events and logs tell one consistent story.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from training.simulate.generate.catalog import CHALLENGE_KINDS, TIERS, codes_of
from training.simulate.generate.config import DAY_US, WorldConfig
from training.simulate.generate.engagement import (
    CHALLENGE_COMPLETED,
    REDEMPTION,
    SECOND_US,
    purchase_events,
)
from training.simulate.generate.tables import (
    ASSIGNMENTS_SCHEMA,
    OFFERS_SCHEMA,
    TRUTH_ASSIGNMENTS_SCHEMA,
    TRUTH_OFFERS_SCHEMA,
    EventColumns,
    labels,
    timestamps,
)
from training.simulate.truth import (
    MemberArrays,
    RewardArrays,
    completion_arrays,
    extra_purchases,
    standardized_target,
)

REDEMPTION_POINTS_PER_COST = 10  # points spent per currency unit of reward cost
COMPLETION_EARLIEST = 0.25  # completions happen in the last 3/4 of a challenge


@dataclass(frozen=True)
class DecisionGrid:
    """Decision times of one chunk: decision k of a member is at start + phase + k * interval.

    The phase is member-specific and uniform over one interval (so decisions spread over days
    and hours). With a fixed phase, windows of length <= interval never overlap, which lets
    every purchase belong to at most one decision. Only decisions whose outcome period ends by
    the world's end are `valid`, so no outcome is censored and no template is favoured.
    """

    start_us: int
    phase_us: np.ndarray  # (n,)
    interval_us: int
    valid: np.ndarray  # (n, K) bool

    @classmethod
    def draw(
        cls, rng: np.random.Generator, n: int, days: int, interval_days: int, period_days: int,
        start_us: int,
    ) -> DecisionGrid:
        interval_us = interval_days * DAY_US
        phase_us = rng.integers(0, interval_days * 86_400, n) * SECOND_US
        n_slots = days // interval_days + 1
        ts = phase_us[:, None] + interval_us * np.arange(n_slots)[None, :]
        valid = ts + period_days * DAY_US <= days * DAY_US
        return cls(start_us=start_us, phase_us=phase_us, interval_us=interval_us, valid=valid)

    def decisions(self) -> tuple[np.ndarray, np.ndarray]:
        """(member rows, timestamps) of valid decisions, ordered by member then time."""
        rows, slot = np.nonzero(self.valid)
        return rows, self.start_us + self.phase_us[rows] + slot * self.interval_us

    def covers(self, rows: np.ndarray, ts: np.ndarray, window_us: int) -> np.ndarray:
        """Whether each (row, ts) falls in [decision, decision + window) of a valid decision."""
        offset = ts - self.start_us - self.phase_us[rows]
        slot = np.floor_divide(offset, self.interval_us)
        usable = (slot >= 0) & (slot < self.valid.shape[1])
        slot = np.clip(slot, 0, self.valid.shape[1] - 1)
        return usable & self.valid[rows, slot] & (offset - slot * self.interval_us < window_us)


@dataclass
class OfferLog:
    """One chunk of offers.parquet and truth/offers.parquet, as arrays."""

    member_id: np.ndarray
    ts: np.ndarray
    reward: np.ndarray  # catalog position, -1 for holdout
    treated: np.ndarray
    propensity: np.ndarray
    redeemed: np.ndarray
    converted: np.ndarray
    spend: np.ndarray
    outcome_ts: np.ndarray
    truth: dict[str, np.ndarray]

    def tables(self, first_id: int, reward_ids: list[str]) -> tuple[pa.Table, pa.Table]:
        offer_id = pa.array(np.arange(first_id, first_id + self.ts.size, dtype=np.int64))
        offers = pa.Table.from_arrays(
            [
                offer_id,
                pa.array(self.member_id),
                timestamps(self.ts),
                labels(self.reward, reward_ids),
                pa.array(self.treated),
                pa.array(self.propensity),
                pa.array(self.redeemed.astype(np.int8)),
                pa.array(self.converted.astype(np.int8)),
                pa.array(self.spend),
                timestamps(self.outcome_ts),
            ],
            schema=OFFERS_SCHEMA,
        )
        truth = pa.Table.from_arrays(
            [offer_id] + [pa.array(self.truth[name]) for name in TRUTH_OFFERS_SCHEMA.names[1:]],
            schema=TRUTH_OFFERS_SCHEMA,
        )
        return offers, truth


def simulate_offers(
    rng: np.random.Generator,
    m: MemberArrays,
    rewards: RewardArrays,
    response: dict[str, np.ndarray],
    grid: DecisionGrid,
    config: WorldConfig,
) -> tuple[OfferLog, list[EventColumns]]:
    """Log one uniform-random offer decision per grid slot and draw its outcome.

    Returns the log and the events it causes: the purchases of converted windows (the first
    one carries the redeemed reward's category) and redemptions.
    """
    rows, ts = grid.decisions()
    n = rows.size
    treated = rng.random(n) >= config.holdout_share
    table, n_eligible = eligible_rewards_by_tier(rewards)
    tier = m.tier[rows]
    pick = np.floor(rng.random(n) * n_eligible[tier]).astype(np.int64)
    reward = np.where(treated, table[tier, pick], -1)
    propensity = np.where(
        treated, (1.0 - config.holdout_share) / n_eligible[tier], config.holdout_share
    )

    safe_reward = np.maximum(reward, 0)
    p_control = response["p_convert_control"][rows, 0]
    p_offer = np.where(treated, response["p_convert_offer"][rows, safe_reward], p_control)
    p_redeem = np.where(treated, response["p_redeem"][rows, safe_reward], 0.0)
    converted = rng.random(n) < p_offer
    # P(redeem | converted) = p_redeem / p_offer, so redeemed implies converted.
    redeemed = converted & (rng.random(n) * p_offer < p_redeem)

    window_us = config.attribution_window_days * DAY_US
    purchases, spend = _window_purchases(
        rng, m, rows, ts, converted, redeemed, reward, rewards, window_us, config
    )
    redemptions = _redemption_events(m, rows, reward, rewards, redeemed, purchases)

    basket = response["basket_value"][rows, 0]
    uplift = np.where(treated, p_offer - p_control, 0.0)
    cost = np.where(treated, rewards.cost[safe_reward], 0.0)
    log = OfferLog(
        member_id=m.member_id[rows],
        ts=ts,
        reward=reward,
        treated=treated,
        propensity=propensity,
        redeemed=redeemed,
        converted=converted,
        spend=spend,
        outcome_ts=ts + window_us,
        truth={
            "p_redeem": p_redeem,
            "p_convert_offer": p_offer,
            "p_convert_control": p_control,
            "basket_value": basket,
            "true_uplift": uplift,
            "true_incremental_value": config.margin * basket * uplift - p_redeem * cost,
        },
    )
    return log, [purchases.events, redemptions]


def eligible_rewards_by_tier(rewards: RewardArrays) -> tuple[np.ndarray, np.ndarray]:
    """(table, n_eligible): table[t, j] is the catalog position of the j-th reward a tier-t
    member may be offered (min_tier <= t), n_eligible[t] how many there are."""
    table = np.zeros((len(TIERS), rewards.min_tier.size), dtype=np.int64)
    n_eligible = np.zeros(len(TIERS), dtype=np.int64)
    for tier in range(len(TIERS)):
        eligible = np.flatnonzero(rewards.min_tier <= tier)
        table[tier, : eligible.size] = eligible
        n_eligible[tier] = eligible.size
    if np.any(n_eligible == 0):
        raise ValueError("every tier needs at least one eligible reward (a Bronze reward)")
    return table, n_eligible


@dataclass
class _WindowPurchases:
    events: EventColumns
    first_of_offer: np.ndarray  # index into events of each converted offer's first purchase
    offer_of_first: np.ndarray  # offer position of each of those first purchases


def _window_purchases(
    rng: np.random.Generator,
    m: MemberArrays,
    rows: np.ndarray,
    ts: np.ndarray,
    converted: np.ndarray,
    redeemed: np.ndarray,
    reward: np.ndarray,
    rewards: RewardArrays,
    window_us: int,
    config: WorldConfig,
) -> tuple[_WindowPurchases, np.ndarray]:
    """Purchases of converted windows: 1 + Poisson(extra) at uniform times in the window."""
    offer = np.flatnonzero(converted)
    count = 1 + rng.poisson(extra_purchases(m, config.attribution_window_days)[rows[offer]])
    owner = np.repeat(offer, count)
    is_first = np.zeros(owner.size, dtype=bool)
    is_first[np.cumsum(count) - count] = True
    window_s = window_us // SECOND_US
    when = ts[owner] + rng.integers(0, window_s, owner.size) * SECOND_US
    # The redeemed purchase is in the reward's category (when it has one).
    category = np.where(
        is_first & redeemed[owner], rewards.category[np.maximum(reward[owner], 0)], -1
    )
    events = purchase_events(rng, m, rows[owner], when, category)
    spend = np.bincount(owner, weights=events.amount, minlength=rows.size)
    first = np.flatnonzero(is_first)
    return _WindowPurchases(events, first, owner[first]), np.round(spend, 2)


def _redemption_events(
    m: MemberArrays,
    rows: np.ndarray,
    reward: np.ndarray,
    rewards: RewardArrays,
    redeemed: np.ndarray,
    purchases: _WindowPurchases,
) -> EventColumns:
    """A redemption at the time of the first purchase of each redeemed window."""
    keep = redeemed[purchases.offer_of_first]
    offer = purchases.offer_of_first[keep]
    cost = rewards.cost[reward[offer]]
    return EventColumns.build(
        m.member_id[rows[offer]],
        purchases.events.ts[purchases.first_of_offer[keep]],
        REDEMPTION,
        points=-np.round(REDEMPTION_POINTS_PER_COST * cost).astype(np.int64),
        reward=reward[offer],
    )


@dataclass(frozen=True)
class ChallengeArrays:
    """Template columns as arrays in catalog order."""

    kind: np.ndarray
    duration_days: np.ndarray
    min_target: np.ndarray
    max_target: np.ndarray
    step: np.ndarray
    points: np.ndarray

    @property
    def n_targets(self) -> np.ndarray:
        return np.floor((self.max_target - self.min_target) / self.step + 0.5).astype(int) + 1

    @classmethod
    def from_frame(cls, challenges: pd.DataFrame) -> ChallengeArrays:
        return cls(
            kind=codes_of(challenges["kind"], CHALLENGE_KINDS, "kind"),
            duration_days=challenges["duration_days"].to_numpy(dtype=np.int64),
            min_target=challenges["min_target"].to_numpy(dtype=np.float64),
            max_target=challenges["max_target"].to_numpy(dtype=np.float64),
            step=challenges["target_step"].to_numpy(dtype=np.float64),
            points=challenges["points"].to_numpy(dtype=np.int64),
        )


@dataclass
class AssignmentLog:
    """One chunk of assignments.parquet and truth/assignments.parquet, as arrays."""

    member_id: np.ndarray
    ts: np.ndarray
    template: np.ndarray
    target: np.ndarray
    propensity: np.ndarray
    completed: np.ndarray
    outcome_ts: np.ndarray
    p_complete: np.ndarray

    def tables(self, first_id: int, challenge_ids: list[str]) -> tuple[pa.Table, pa.Table]:
        assignment_id = pa.array(np.arange(first_id, first_id + self.ts.size, dtype=np.int64))
        assignments = pa.Table.from_arrays(
            [
                assignment_id,
                pa.array(self.member_id),
                timestamps(self.ts),
                labels(self.template, challenge_ids),
                pa.array(self.target),
                pa.array(self.propensity),
                pa.array(self.completed.astype(np.int8)),
                timestamps(self.outcome_ts),
            ],
            schema=ASSIGNMENTS_SCHEMA,
        )
        truth = pa.Table.from_arrays(
            [assignment_id, pa.array(self.p_complete)], schema=TRUTH_ASSIGNMENTS_SCHEMA
        )
        return assignments, truth


def simulate_assignments(
    rng: np.random.Generator,
    m: MemberArrays,
    templates: ChallengeArrays,
    grid: DecisionGrid,
) -> tuple[AssignmentLog, EventColumns]:
    """One uniformly random (template, target) per grid slot, its outcome and completion events."""
    rows, ts = grid.decisions()
    n = rows.size
    n_templates = templates.kind.size
    template = rng.integers(0, n_templates, n)
    n_targets = templates.n_targets[template]
    target = templates.min_target[template] + rng.integers(0, n_targets) * templates.step[template]
    z = standardized_target(target, templates.min_target[template], templates.max_target[template])
    p_complete = completion_arrays(m, rows, templates.kind[template], z)
    completed = rng.random(n) < p_complete

    duration_us = templates.duration_days[template] * DAY_US
    share = COMPLETION_EARLIEST + (1.0 - COMPLETION_EARLIEST) * rng.random(n)
    done_at = ts + (share * (duration_us // SECOND_US)).astype(np.int64) * SECOND_US
    log = AssignmentLog(
        member_id=m.member_id[rows],
        ts=ts,
        template=template,
        target=target,
        propensity=1.0 / (n_templates * n_targets),
        completed=completed,
        outcome_ts=np.where(completed, done_at, ts + duration_us),
        p_complete=p_complete,
    )
    events = EventColumns.build(
        m.member_id[rows[completed]],
        done_at[completed],
        CHALLENGE_COMPLETED,
        points=templates.points[template[completed]],
    )
    return log, events
