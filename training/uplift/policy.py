"""Who should get which arm: the best-arm policy and what it is worth, from the RCT itself.

The policy treats each member with the arm of largest predicted uplift when that uplift is
positive, and with nothing (control) otherwise. Its value is estimated on the randomized rows
whose actual arm matches the policy's choice, weighted by the inverse of the arm's share
(self-normalized IPW): unbiased under randomization, because the scores are out-of-fold. The
comparisons that matter to a marketer come with paired bootstrap intervals: against sending
nothing, and against sending the single best arm to everyone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from training.uplift.data import RctData


def best_arm(uplift: np.ndarray) -> np.ndarray:
    """0 (control) or k, the treated arm with the largest positive predicted uplift."""
    k = np.argmax(uplift, axis=1)
    return np.where(uplift[np.arange(len(k)), k] > 0, k + 1, 0)


def _value(y: np.ndarray, arm: np.ndarray, choice: np.ndarray, share: np.ndarray) -> float:
    match = arm == choice
    w = match / share[arm]
    return float((w * y).sum() / w.sum()) if w.sum() > 0 else float("nan")


@dataclass(frozen=True)
class PolicyValue:
    value: float  # expected outcome rate under the best-arm policy
    ci: tuple[float, float]
    arm_rates: dict[str, float]  # outcome rate of each arm given to everyone (control included)
    best_single_arm: str
    lift_vs_control: float
    lift_vs_control_ci: tuple[float, float]
    lift_vs_best_arm: float
    lift_vs_best_arm_ci: tuple[float, float]
    share_assigned: dict[str, float]  # share of members the policy gives each arm

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def policy_value(data: RctData, uplift: np.ndarray, bootstrap: int = 200, seed: int = 0,
                 alpha: float = 0.05) -> PolicyValue:
    """Value of the best-arm policy on out-of-fold ``uplift`` (n, K), with bootstrap CIs."""
    y, arm = data.outcome, data.arm
    arms = len(data.arm_names)
    choice = best_arm(uplift)
    share = np.bincount(arm, minlength=arms) / len(arm)
    rates = np.array([y[arm == a].mean() for a in range(arms)])
    best = 1 + int(np.argmax(rates[1:]))
    value = _value(y, arm, choice, share)
    rng = np.random.default_rng(seed)
    draws = np.empty((bootstrap, 3))
    for b in range(bootstrap):
        i = rng.integers(0, len(y), len(y))
        v = _value(y[i], arm[i], choice[i], share)
        r = np.array([y[i][arm[i] == a].mean() if (arm[i] == a).any() else np.nan
                      for a in (0, best)])
        draws[b] = v, v - r[0], v - r[1]
    lo, hi = np.nanquantile(draws, [alpha / 2, 1 - alpha / 2], axis=0)
    assigned = np.bincount(choice, minlength=arms) / len(choice)
    return PolicyValue(
        value, (float(lo[0]), float(hi[0])),
        {data.arm_names[a]: float(rates[a]) for a in range(arms)}, data.arm_names[best],
        value - float(rates[0]), (float(lo[1]), float(hi[1])),
        value - float(rates[best]), (float(lo[2]), float(hi[2])),
        {data.arm_names[a]: float(assigned[a]) for a in range(arms)})
