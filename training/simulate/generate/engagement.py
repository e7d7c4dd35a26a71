"""Daily engagement: visits, reviews, referrals and background purchases.

Everything is vectorized over a (members x days) grid of one chunk; events are then expanded
with `np.repeat`. The point of this module is to make hidden traits visible:

- activity          -> how many days a member is active and how many visits per active day;
- player type       -> streakiness of active days (competitors), reviews and referrals
                       (socializers), category breadth (explorers, via preferences);
- price sensitivity -> small purchase amounts, more weeks with a purchase;
- category prefs    -> the category of every purchase.

Purchases inside an offer's attribution window are not drawn here: `logs.py` draws them from the
offer outcome and drops the background purchases that fall inside those windows.
"""

from __future__ import annotations

import numpy as np

from training.simulate.generate.catalog import EVENT_TYPES, TIERS
from training.simulate.generate.config import DAY_US
from training.simulate.generate.tables import EventColumns
from training.simulate.truth import (
    PURCHASE_AMOUNT_SIGMA,
    MemberArrays,
    baseline_conversion,
    extra_purchases,
    unit_spend,
)

SECOND_US = 1_000_000
VISIT, PURCHASE, REVIEW, REFERRAL, REDEMPTION, CHALLENGE_COMPLETED = range(len(EVENT_TYPES))

# Per player type (achiever, explorer, socializer, competitor). Active-day share is
# min(1 - exp(-scale * activity), activity): achievers come steadily (many days, one visit each),
# explorers in bursts (fewer days, several visits). Persistence is the lag-1 autocorrelation of
# the daily active state: competitors keep long streaks.
ACTIVE_SHARE_SCALE = np.array([3.0, 0.6, 1.0, 1.0])
ACTIVE_PERSISTENCE = np.array([0.0, 0.15, 0.25, 0.75])
MAX_ACTIVE_SHARE = 0.97
REVIEW_PER_VISIT = np.array([0.03, 0.04, 0.20, 0.02])
REFERRAL_PER_VISIT = np.array([0.003, 0.004, 0.03, 0.002])
REVIEW_POINTS = 10
REFERRAL_POINTS = 50
TIER_POINTS_PER_CURRENCY = np.array([1.0, 1.25, 1.5, 2.0])
assert TIER_POINTS_PER_CURRENCY.size == len(TIERS)


def daily_visits(rng: np.random.Generator, m: MemberArrays, days: int) -> np.ndarray:
    """Visit counts per (member, day), shape (n, days).

    A two-state Markov chain decides active days (stationary share from activity and player
    type, with a player-type persistence); an active day has 1 + Poisson(extra) visits so that
    the mean visits/day equals `activity`.
    """
    share = np.minimum(
        np.minimum(1.0 - np.exp(-ACTIVE_SHARE_SCALE[m.player_type] * m.activity), m.activity),
        MAX_ACTIVE_SHARE,
    )
    rho = ACTIVE_PERSISTENCE[m.player_type]
    stay_active = share + rho * (1.0 - share)
    become_active = share * (1.0 - rho)
    uniforms = rng.random((len(m), days))
    active = np.empty((len(m), days), dtype=bool)
    state = uniforms[:, 0] < share
    active[:, 0] = state
    for day in range(1, days):
        state = uniforms[:, day] < np.where(state, stay_active, become_active)
        active[:, day] = state
    extra = np.maximum(m.activity / share - 1.0, 0.0)
    visits = 1 + rng.poisson(np.broadcast_to(extra[:, None], active.shape))
    return np.where(active, visits, 0)


def random_times_in_days(
    rng: np.random.Generator, day: np.ndarray, start_us: int
) -> np.ndarray:
    """A uniformly random second within each given day."""
    return start_us + day.astype(np.int64) * DAY_US + rng.integers(0, 86_400, day.size) * SECOND_US


def later_same_day(rng: np.random.Generator, ts: np.ndarray, start_us: int) -> np.ndarray:
    """A random time between `ts` and the end of its day (a review after a visit, say)."""
    day_end = start_us + ((ts - start_us) // DAY_US + 1) * DAY_US
    seconds_left = np.maximum((day_end - ts) // SECOND_US, 1)
    return ts + np.floor(rng.random(ts.size) * seconds_left).astype(np.int64) * SECOND_US


def visit_and_social_events(
    rng: np.random.Generator, m: MemberArrays, visits: np.ndarray, start_us: int
) -> list[EventColumns]:
    """Visit events, plus reviews and referrals written after some of those visits."""
    n_days = visits.shape[1]
    cell = np.repeat(np.arange(visits.size), visits.ravel())
    rows, day = np.divmod(cell, n_days)
    ts = random_times_in_days(rng, day, start_us)
    out = [EventColumns.build(m.member_id[rows], ts, VISIT)]
    for kind, rate, points in (
        (REVIEW, REVIEW_PER_VISIT, REVIEW_POINTS),
        (REFERRAL, REFERRAL_PER_VISIT, REFERRAL_POINTS),
    ):
        hit = rng.random(rows.size) < rate[m.player_type[rows]]
        out.append(
            EventColumns.build(
                m.member_id[rows[hit]],
                later_same_day(rng, ts[hit], start_us),
                kind,
                points=points,
            )
        )
    return out


def purchase_events(
    rng: np.random.Generator,
    m: MemberArrays,
    rows: np.ndarray,
    ts: np.ndarray,
    category: np.ndarray | None = None,
) -> EventColumns:
    """Purchases of members `rows` at `ts`: lognormal amounts around the member's unit spend,
    categories from preferences unless given (-1 entries are also drawn from preferences)."""
    sigma = PURCHASE_AMOUNT_SIGMA
    noise = np.exp(sigma * rng.standard_normal(rows.size) - 0.5 * sigma**2)
    amount = np.round(unit_spend(m)[rows] * noise, 2)
    drawn = sample_categories(rng, m.pref[rows])
    if category is not None:
        drawn = np.where(category >= 0, category, drawn)
    points = np.round(amount * TIER_POINTS_PER_CURRENCY[m.tier[rows]]).astype(np.int64)
    return EventColumns.build(
        m.member_id[rows], ts, PURCHASE, amount=amount, category=drawn, points=points
    )


def sample_categories(rng: np.random.Generator, pref: np.ndarray) -> np.ndarray:
    """One category per row of `pref` (rows are probability vectors)."""
    cumulative: np.ndarray = np.cumsum(pref, axis=1)
    u = rng.random((pref.shape[0], 1)) * cumulative[:, -1:]
    return np.minimum((u > cumulative).sum(axis=1), pref.shape[1] - 1)


def background_purchases(
    rng: np.random.Generator, m: MemberArrays, days: int, start_us: int, window_days: int
) -> EventColumns:
    """Purchases outside offer windows, at the member's no-offer rate.

    A day starts a purchase episode with the one-day baseline probability; an episode has
    1 + Poisson(mu) purchases, mu chosen so purchases per window match an untreated window.
    """
    p_day = baseline_conversion(m, 1)
    p_window = baseline_conversion(m, window_days)
    per_window = p_window * (1.0 + extra_purchases(m, window_days))
    mu = np.maximum(per_window / (window_days * p_day) - 1.0, 0.0)
    episode = rng.random((len(m), days)) < p_day[:, None]
    rows, day = np.nonzero(episode)
    count = 1 + rng.poisson(mu[rows])
    rows, day = np.repeat(rows, count), np.repeat(day, count)
    return purchase_events(rng, m, rows, random_times_in_days(rng, day, start_us))
