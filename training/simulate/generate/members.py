"""Members: observable attributes and hidden traits.

Traits are drawn once for the whole population (a few arrays of `members` floats, ~100 MB at
1M members), so every later chunk sees the same member whatever the chunking.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from scipy.special import ndtri

from training.simulate.generate.catalog import CATEGORIES, PLAYER_TYPES, REGIONS, TIERS
from training.simulate.truth import PREF_COLUMNS

PLAYER_TYPE_SHARES = np.array([0.30, 0.25, 0.25, 0.20])  # achiever, explorer, socializer, comp.
TIER_SHARES = np.array([0.50, 0.30, 0.15, 0.05])
REGION_SHARES = np.array([0.22, 0.20, 0.20, 0.20, 0.18])
CONSENT_SHARE = 0.90
SIGNUP_DAYS_BEFORE = (30, 2000)  # inclusive range of days before start

ACTIVITY_MEDIAN = 0.3  # visits/day
ACTIVITY_LOG_SD = 0.7  # 5%-95% about 0.09-0.95 visits/day
ACTIVITY_CLIP = (0.03, 3.0)
TIER_ACTIVITY_LOADING = 0.7  # correlation of the tier latent with log activity

# Category taste: explorers spread purchases; others focus on one or two favourite categories.
CATEGORY_POPULARITY = np.array([0.18, 0.12, 0.20, 0.12, 0.12, 0.10, 0.08, 0.08])
EXPLORER_ALPHA = 3.0
FOCUSED_ALPHA = 0.15
FAVOURITE_BOOST = 5.0
SECOND_FAVOURITE_SHARE = 0.5


def sample_members(
    rng: np.random.Generator, n_members: int, start: dt.date
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw (members, traits) frames for member_id 1..n_members, both sorted by member_id."""
    member_id = np.arange(1, n_members + 1, dtype=np.int64)
    player_type = rng.choice(len(PLAYER_TYPES), size=n_members, p=PLAYER_TYPE_SHARES)
    log_activity_z = rng.standard_normal(n_members)
    activity = np.clip(
        ACTIVITY_MEDIAN * np.exp(ACTIVITY_LOG_SD * log_activity_z), *ACTIVITY_CLIP
    )
    traits = pd.DataFrame(
        {
            "member_id": member_id,
            "player_type": np.asarray(PLAYER_TYPES, dtype=object)[player_type],
            "price_sensitivity": rng.beta(2.0, 2.0, n_members),
            "activity": activity,
            "skill": rng.beta(2.5, 2.5, n_members),
        }
    )
    pref = _category_preferences(rng, player_type)
    for column, values in zip(PREF_COLUMNS, pref.T, strict=True):
        traits[column] = values

    members = pd.DataFrame(
        {
            "member_id": member_id,
            "signup_date": _signup_dates(rng, n_members, start),
            "tier": np.asarray(TIERS, dtype=object)[_tiers(rng, log_activity_z)],
            "region": np.asarray(REGIONS, dtype=object)[
                rng.choice(len(REGIONS), size=n_members, p=REGION_SHARES)
            ],
            "consent": rng.random(n_members) < CONSENT_SHARE,
        }
    )
    return members, traits


def _tiers(rng: np.random.Generator, log_activity_z: np.ndarray) -> np.ndarray:
    """Ordinal tier codes from a latent that loads on activity, cut at the target shares."""
    loading = TIER_ACTIVITY_LOADING
    latent = loading * log_activity_z + np.sqrt(1 - loading**2) * rng.standard_normal(
        log_activity_z.size
    )
    cuts = ndtri(np.cumsum(TIER_SHARES)[:-1])
    return np.searchsorted(cuts, latent)


def _signup_dates(rng: np.random.Generator, n_members: int, start: dt.date) -> pd.DatetimeIndex:
    """Signup at UTC midnight, 30-2000 days before the world starts."""
    days_before = rng.integers(SIGNUP_DAYS_BEFORE[0], SIGNUP_DAYS_BEFORE[1] + 1, n_members)
    start_ts = pd.Timestamp(start, tz="UTC").as_unit("us")
    return start_ts - pd.to_timedelta(days_before, unit="D").as_unit("us")


def _category_preferences(rng: np.random.Generator, player_type: np.ndarray) -> np.ndarray:
    """Dirichlet category preferences: flat for explorers, peaked on 1-2 favourites otherwise."""
    n_members, n_categories = player_type.size, len(CATEGORIES)
    # Favourites by popularity without replacement: Gumbel-top-2 trick, vectorized.
    keys = np.log(CATEGORY_POPULARITY)[None, :] + rng.gumbel(size=(n_members, n_categories))
    ranked = np.argsort(-keys, axis=1)
    alpha = np.full((n_members, n_categories), FOCUSED_ALPHA)
    rows = np.arange(n_members)
    alpha[rows, ranked[:, 0]] += FAVOURITE_BOOST
    second = rng.random(n_members) < SECOND_FAVOURITE_SHARE
    alpha[rows[second], ranked[second, 1]] += FAVOURITE_BOOST
    alpha[player_type == PLAYER_TYPES.index("explorer")] = EXPLORER_ALPHA
    draws = rng.gamma(alpha)
    return draws / draws.sum(axis=1, keepdims=True)

