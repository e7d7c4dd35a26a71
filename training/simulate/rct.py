"""Synthetic randomized campaigns (RCTs) whose true uplift is known, for proving the uplift tools.

Real campaign files hold small effects (1-5 points on a 10-20 % purchase rate), columns that say
nothing, and columns recorded *during* the campaign. ``rewards uplift evaluate`` must find the
effect, ignore the noise and flag the in-campaign column; only a generator that knows each row's
true effect can tell whether it did. Each generator returns the file a user would hand over
(``SyntheticRct.frame``) plus the truth the file hides: ``base`` = P(purchase | x, control) and
``tau[:, k-1]`` = P(purchase | x, arm k) - base, per row.

Generators (``GENERATORS``, each ``f(n, seed)``; pure and seeded):

- ``small_effects``: e-mail vs holdout (2/3 treated); effect 1-5 points built from thresholds and
  an interaction (what trees find);
- ``linear_effects``: coupon vs control (1/2 treated); base and effect linear on the logit scale
  in three numeric columns and the channel (what a logistic model with treatment interactions
  finds: it is exactly that model);
- ``four_arms``: four offers plus control (1/5 each); each offer helps a different segment, the
  reminder does almost nothing and the discount slightly hurts VIPs.

All three share the customer columns, ten pure-noise columns (drawn independently of everything,
some with NaN) and one post-treatment decoy, ``visits_during_campaign`` ~ Poisson(lam) with

    lam = 0.5 * (1 + min(frequency_12m, 30) / 6) * lift[arm] * (1 + 2 * purchased)

(lift 1 for control, 1.3-1.5 for an offer): raised by the treatment and tripled by a purchase,
like site visits or e-mail clicks logged while the campaign ran. Categorical columns hold strings.
Reads nothing and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

BASE_RANGE = (0.05, 0.35)  # every row's control purchase probability lies here
TAU_RANGE = (-0.05, 0.06)  # and every true effect here
OUTCOME = "purchased"
DECOY = "visits_during_campaign"
CHANNELS = ("web", "app", "store")
NOISE_NUMERIC = ("age", "household_size", "distance_to_store_km", "avg_session_minutes",
                 "days_since_signup_survey")
NOISE_CATEGORICAL = ("signup_weekday", "region", "device_os", "payment_method", "newsletter_topic")


@dataclass(frozen=True, eq=False)
class SyntheticRct:
    """A campaign file and the truth it hides (only benchmarks and tests read the truth)."""

    frame: pd.DataFrame  # features, noise, decoy, treatment column, outcome: what a user has
    treatment_col: str
    control: str
    treated: list[str]
    outcome: str
    features: list[str]  # true pre-treatment columns (informative + noise)
    noise: list[str]  # pre-treatment columns independent of everything else
    decoy: str  # post-treatment column (formula in the module docstring)
    tau: np.ndarray  # (n, K): P(y=1 | x, arm k) - P(y=1 | x, control)
    base: np.ndarray  # (n,): P(y=1 | x, control)

    @property
    def arm(self) -> np.ndarray:
        """Arm index of each row: 0 control, k the k-th treated value."""
        code = {v: k for k, v in enumerate([self.control, *self.treated])}
        return self.frame[self.treatment_col].map(code).to_numpy(dtype=int)


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _customers(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Pre-treatment customer columns, correlated the way a CRM export's are."""
    activity = rng.gamma(2.0, 0.5, n)  # latent purchase intensity, mean 1
    frequency = np.minimum(rng.poisson(3.0 * activity), 30)
    recency = np.clip(np.round(rng.exponential(365.0 / (frequency + 1.5))), 1, 365).astype(int)
    basket = rng.lognormal(np.log(45.0), 0.5, n)
    spend = np.round(frequency * basket * rng.uniform(0.8, 1.2, n), 2)
    tenure = rng.integers(1, 121, n)
    open_rate = np.round(rng.beta(2.0, 5.0, n), 3)
    discount_share = np.round(rng.beta(2.0, 3.0, n), 3)
    channel = rng.choice(np.array(CHANNELS, dtype=object), n, p=[0.45, 0.30, 0.25])
    segment = np.select([tenure <= 6, recency > 150, spend >= 400],
                        ["new", "lapsed", "vip"], "regular").astype(object)
    return pd.DataFrame({
        "recency_days": recency, "frequency_12m": frequency, "spend_12m": spend,
        "tenure_months": tenure, "email_open_rate": open_rate, "discount_share": discount_share,
        "channel": channel, "segment": segment,
    })


def _with_nan(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    values = values.astype(object if values.dtype.kind in "OU" else float)
    values[rng.random(values.size) < share] = None if values.dtype == object else np.nan
    return values


def _noise(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Ten columns drawn independently of everything: plausible names, no signal."""
    def pick(levels: list[str]) -> np.ndarray:
        return rng.choice(np.array(levels, dtype=object), n)

    return pd.DataFrame({
        "age": _with_nan(rng, rng.integers(18, 81, n), 0.08),
        "household_size": rng.integers(1, 7, n),
        "distance_to_store_km": _with_nan(rng, np.round(rng.lognormal(1.5, 0.8, n), 1), 0.05),
        "avg_session_minutes": np.round(rng.gamma(2.0, 3.0, n), 1),
        "days_since_signup_survey": rng.integers(0, 1000, n),
        "signup_weekday": pick(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
        "region": pick(["north", "south", "east", "west", "central"]),
        "device_os": _with_nan(rng, pick(["ios", "android", "windows", "macos"]), 0.04),
        "payment_method": pick(["card", "paypal", "invoice", "gift_card"]),
        "newsletter_topic": _with_nan(rng, pick(["fashion", "home", "sports", "kids", "deals"]),
                                      0.10),
    })


def _clip_base(logit: np.ndarray) -> np.ndarray:
    return _sigmoid(np.clip(logit, _logit(BASE_RANGE[0]), _logit(BASE_RANGE[1])))


def _threshold_base(c: pd.DataFrame) -> np.ndarray:
    """Control purchase probability: frequent, recent, app buyers buy more; mean ~0.13."""
    z = (-2.05 + 0.10 * np.minimum(c["frequency_12m"], 10)
         - 0.004 * np.minimum(c["recency_days"], 180)
         + 0.35 * (c["channel"] == "app") - 0.25 * (c["channel"] == "store")
         + 0.30 * (c["spend_12m"] > 300))
    return _clip_base(z.to_numpy(dtype=float))


def _small_effects_truth(c: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Effect 1-5.5 points: +2.5 for the 30-120 day lapsing non-store buyers (threshold x
    interaction), +1.5 for frequent buyers, -1 for big spenders who buy anyway."""
    recency, freq = c["recency_days"].to_numpy(), c["frequency_12m"].to_numpy()
    lapsing_online = (recency >= 30) & (recency <= 120) & (c["channel"] != "store").to_numpy()
    tau = (0.015 + 0.025 * lapsing_online + 0.015 * (freq >= 4)
           - 0.01 * (c["spend_12m"].to_numpy() > 600))
    return _threshold_base(c), tau[:, None]


def _linear_effects_truth(c: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Control and coupon logits both linear in email_open_rate, tenure_months, discount_share
    and channel: bargain hunters (high discount share) buy less at full price and answer a coupon
    more (logit shift 0.06 + 0.1 open rate + 0.45 discount share - 0.001 tenure + 0.05 app).
    The probabilities are clipped to BASE_RANGE and tau to [-0.05, 0.06], which binds on about
    0.1 % of rows; elsewhere a logistic model with treatment interactions is exactly right."""
    open_rate, tenure = c["email_open_rate"].to_numpy(), c["tenure_months"].to_numpy()
    discount, app = c["discount_share"].to_numpy(), (c["channel"] == "app").to_numpy()
    z0 = -1.9 + 0.45 * open_rate + 0.005 * tenure - 1.1 * discount + 0.25 * app
    shift = 0.06 + 0.10 * open_rate + 0.45 * discount - 0.001 * tenure + 0.05 * app
    base = _clip_base(z0)
    return base, np.clip(_sigmoid(z0 + shift) - base, *TAU_RANGE)[:, None]


FOUR_ARMS = ("discount_10", "free_shipping", "double_points", "reminder")


def _four_arms_truth(c: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """discount_10 wins back lapsed members (+4.5) and slightly hurts VIPs (-1.5);
    free_shipping helps small-basket web buyers (+3.5); double_points helps frequent buyers (+4);
    reminder is nearly inert (+0.4 for e-mail openers, else 0)."""
    seg, channel = c["segment"].to_numpy(), c["channel"].to_numpy()
    freq, spend = c["frequency_12m"].to_numpy(), c["spend_12m"].to_numpy()
    discount = np.select([seg == "lapsed", seg == "vip", seg == "new"], [0.045, -0.015, 0.02],
                         0.01)
    shipping = np.where(channel == "web", np.where(spend < 150, 0.035, 0.01),
                        np.where(channel == "app", 0.008, 0.0))
    points = np.where(freq >= 6, 0.04, 0.005)
    reminder = np.where(c["email_open_rate"].to_numpy() > 0.3, 0.004, 0.0)
    return _threshold_base(c), np.column_stack([discount, shipping, points, reminder])


@dataclass(frozen=True)
class _Design:
    truth: Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]]
    informative: tuple[str, ...]
    treatment_col: str
    control: str
    treated: tuple[str, ...]
    shares: tuple[float, ...]  # control first
    decoy_lift: tuple[float, ...]  # per treated arm


DESIGNS: dict[str, _Design] = {
    "small_effects": _Design(_small_effects_truth,
                             ("recency_days", "frequency_12m", "spend_12m", "channel"),
                             "group", "holdout", ("email",), (1 / 3, 2 / 3), (1.3,)),
    "linear_effects": _Design(_linear_effects_truth,
                              ("email_open_rate", "tenure_months", "discount_share", "channel"),
                              "variant", "control", ("coupon",), (0.5, 0.5), (1.3,)),
    "four_arms": _Design(_four_arms_truth,
                         ("recency_days", "frequency_12m", "spend_12m", "tenure_months",
                          "email_open_rate", "channel", "segment"),
                         "arm", "control", FOUR_ARMS, (0.2,) * 5, (1.4, 1.3, 1.5, 1.35)),
}


def _generate(design: _Design, n: int, seed: int) -> SyntheticRct:
    if n < 1:
        raise ValueError(f"n: expected at least 1 row, got {n}")
    rng = np.random.default_rng(seed)
    customers = _customers(rng, n)
    noise = _noise(rng, n)
    base, tau = design.truth(customers)
    arm = rng.choice(len(design.shares), n, p=np.asarray(design.shares))
    p = base + np.where(arm > 0, tau[np.arange(n), np.maximum(arm - 1, 0)], 0.0)
    y = (rng.random(n) < p).astype(int)
    lift = np.r_[1.0, design.decoy_lift][arm]
    lam = 0.5 * (1 + np.minimum(customers["frequency_12m"].to_numpy(), 30) / 6) * lift * (1 + 2 * y)
    labels = np.array([design.control, *design.treated], dtype=object)
    informative = customers[list(design.informative)]
    frame = pd.concat([informative, noise], axis=1)
    frame[DECOY] = rng.poisson(lam)
    frame[design.treatment_col] = labels[arm]
    frame[OUTCOME] = y
    features = [*design.informative, *noise.columns]
    return SyntheticRct(frame, design.treatment_col, design.control, list(design.treated), OUTCOME,
                        features, list(noise.columns), DECOY, tau, base)


def _generator(name: str) -> Callable[[int, int], SyntheticRct]:
    def make(n: int, seed: int) -> SyntheticRct:
        return _generate(DESIGNS[name], n, seed)

    make.__name__ = name
    make.__doc__ = DESIGNS[name].truth.__doc__
    return make


GENERATORS: dict[str, Callable[[int, int], SyntheticRct]] = {name: _generator(name)
                                                             for name in DESIGNS}


def make_rct(name: str, n: int, seed: int) -> SyntheticRct:
    """``n`` rows of the named campaign; the same (name, n, seed) always gives the same rows."""
    if name not in GENERATORS:
        raise ValueError(f"name: expected one of {sorted(GENERATORS)}, got {name!r}")
    return GENERATORS[name](n, seed)
