"""Business rules: pure functions over scores, plus their configuration file.

Nothing here does I/O except `load_rules`; the service passes in what the event store says
(recent offers, today's spend and redemptions), so every rule is tested on plain arrays.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Eligibility(_Section):
    respect_min_tier: bool = True
    respect_consent: bool = True


class Frequency(_Section):
    reward_cooldown_days: float = Field(7, ge=0)
    challenge_cooldown_days: float = Field(14, ge=0)


class Novelty(_Section):
    window_days: float = Field(30, ge=0)
    decay: float = Field(0.3, ge=0, le=1)


class Diversity(_Section):
    max_per_category: int = Field(1, ge=1)


class Budget(_Section):
    daily_budget: float = Field(50_000, gt=0)
    lambda_gain: float = Field(4.0, ge=0)
    lambda_max: float = Field(10.0, ge=1)
    reward_daily_caps: dict[str, int] = Field(default_factory=dict)


class Exploration(_Section):
    epsilon: float = Field(0.05, ge=0, le=1)


class Challenges(_Section):
    flow_zone: float = Field(0.7, gt=0, lt=1)


class Rules(_Section):
    """The whole rules file; unknown keys are errors so a typo never silently disables a rule."""

    eligibility: Eligibility = Eligibility()
    frequency: Frequency = Frequency()
    novelty: Novelty = Novelty()
    diversity: Diversity = Diversity()
    budget: Budget = Budget()
    exploration: Exploration = Exploration()
    challenges: Challenges = Challenges()


def load_rules(path: Path) -> Rules:
    """Parse and validate the rules file (ValueError names the bad key)."""
    with path.open("rb") as fh:
        return Rules.model_validate(tomllib.load(fh))


def cost_multiplier(spent_today: float, daily_budget: float, day_fraction: float,
                    gain: float, lambda_max: float) -> float:
    """Lambda for ``uplift x value - lambda x cost``: 1 on pace, higher when spend runs ahead.

    Pace = the share of the budget that should be spent by this time of day; a member arriving
    when spend is 50 % ahead of pace faces a cost weighted 1 + gain x 0.5.
    """
    pace = daily_budget * min(max(day_fraction, 1e-3), 1.0)
    overshoot = spent_today / pace - 1.0
    # min/max, not np.clip: this runs on every request, and np.clip on a scalar costs ~15 us
    return float(min(max(1.0 + gain * overshoot, 1.0), lambda_max))


def day_fraction(now: datetime) -> float:
    """Elapsed share of the UTC day."""
    return (now.hour * 3600 + now.minute * 60 + now.second) / 86_400


def novelty_factor(days_since_shown: np.ndarray, window_days: float, decay: float) -> np.ndarray:
    """Score multiplier: (1 - decay) for items shown within the window, else 1 (NaN = never)."""
    shown = np.nan_to_num(days_since_shown, nan=np.inf) <= window_days
    return np.where(shown, 1.0 - decay, 1.0)


@dataclass(frozen=True)
class Slate:
    """Chosen item indices in rank order and the probability each was shown with."""

    index: np.ndarray
    probability: np.ndarray


def slot_epsilon(epsilon: float, n_candidates: int, floor: float) -> float:
    """A slot's exploration weight: ``epsilon``, raised to ``n_candidates x floor`` (at most 1)
    so that each of the slot's candidates is shown with probability at least ``floor``
    (e / n of the uniform draw): no eligible item is ever out of off-policy evaluation's
    support, however the model ranks it."""
    return min(1.0, max(epsilon, n_candidates * floor))


def select_slate(value: np.ndarray, category: np.ndarray, k: int, max_per_category: int,
                 epsilon: float, rng: np.random.Generator, floor: float = 0.0) -> Slate:
    """Greedy top-k under a per-category cap, with epsilon-greedy exploration per slot.

    In each slot the best remaining item is taken with probability 1 - e, otherwise a
    uniformly drawn remaining item; the logged probability of the shown item is
    (1 - e) x [it is the best] + e / n_remaining, which is what off-policy evaluation needs.
    e is ``epsilon``, raised where needed so that every candidate keeps ``floor``
    (:func:`slot_epsilon`); with ``floor`` 0 it is ``epsilon``, draws included.
    """
    # Plain Python over a pre-sorted order: slates are a few items out of a few dozen, where
    # numpy's per-call overhead (the earlier vectorized loop) cost more than the work itself.
    # The random draws are the same as before: one rng.random() per slot, and rng.choice over
    # the slot's candidates (in index order) when exploring.
    category = np.asarray(category)
    if category.dtype.kind not in "iu":  # labels: integer codes (any integers will do)
        category = np.unique(category, return_inverse=True)[1]
    cat_code = category.tolist()
    # best first; equal values by index (argmax's first maximum); NaN scores rank last
    order = np.argsort(-np.asarray(value, dtype=np.float64), kind="stable").tolist()
    left_in: dict[int, int] = {}  # remaining items per category
    for c in cat_code:
        left_in[c] = left_in.get(c, 0) + 1
    per_cat: dict[int, int] = {}
    remaining = [True] * len(cat_code)
    chosen: list[int] = []
    probs: list[float] = []
    # items still allowed in the slate: kept as a count rather than summed over the categories
    # at every slot (the same numbers, so the same probabilities)
    n_candidates = len(cat_code) if max_per_category > 0 else 0
    while len(chosen) < k:
        if n_candidates == 0:
            break
        best = next(i for i in order
                    if remaining[i] and per_cat.get(cat_code[i], 0) < max_per_category)
        e = slot_epsilon(epsilon, n_candidates, floor)
        if rng.random() >= e:
            pick = best
        else:
            candidates = [i for i, r in enumerate(remaining)
                          if r and per_cat.get(cat_code[i], 0) < max_per_category]
            pick = int(rng.choice(np.array(candidates, dtype=np.int64)))
        probs.append((1.0 - e) * (pick == best) + e / n_candidates)
        chosen.append(pick)
        remaining[pick] = False
        c = cat_code[pick]
        per_cat[c] = per_cat.get(c, 0) + 1
        left_in[c] -= 1
        # the pick leaves the candidates; a category reaching its cap takes its rest with it
        n_candidates -= 1 + (left_in[c] if per_cat[c] == max_per_category else 0)
    return Slate(np.array(chosen, dtype=np.int64), np.array(probs, dtype=np.float64))
