"""Which version runs on trial after a retrain (training.retrain._next_trial): the rules an
operator reads in the README, on the gate's figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training.evaluation.logged_ope import PairedDifference
from training.retrain import _next_trial, promising


@dataclass
class Gate:
    difference: PairedDifference | None
    decisions: int


def gate(dr: float, low: float, high: float, n: int = 20_000) -> Gate:
    return Gate(PairedDifference(n, dr, low, high, differing=n // 2), n)


def trial(version: str = "2") -> dict[str, Any]:
    return {"version": version, "promoted": False, "reason": "on trial: ..."}


def test_a_promising_trial_stays_and_says_why() -> None:
    # +0.58 [-0.06, +1.24] on 20,000: shown at about 25,100 decisions, within twice 20,000
    close = gate(0.58, -0.06, 1.24)
    assert promising(close, 2.0)
    kept = trial()
    assert _next_trial(close, kept, "2", "3", True, 2.0) == "2"
    assert "kept on trial" in kept["reason"] and "25,119 decisions" in kept["reason"]
    # patience 0: always the newest candidate
    assert not promising(close, 0.0)
    assert _next_trial(close, trial(), "2", "3", True, 0.0) == "3"


def test_a_trial_far_from_settled_or_negative_makes_way_for_the_candidate() -> None:
    far = gate(0.28, -0.41, 0.94)  # about 120,000 decisions needed
    negative = gate(-0.2, -0.9, 0.5)
    for t in (far, negative):
        assert not promising(t, 2.0)
        assert _next_trial(t, trial(), "2", "3", True, 2.0) == "3"


def test_the_candidates_own_interval_does_not_veto_its_trial() -> None:
    """On champion-logged decisions the candidate's interval is unreliable both ways: the
    candidate goes on trial whatever it says (the trial measures it reliably)."""
    assert _next_trial(None, None, None, "3", True, 2.0) == "3"
    # a trial shown worse on its own traffic, not promising, makes way for the candidate
    assert _next_trial(gate(-2.0, -3.0, -0.5), trial(), "2", "3", True, 2.0) == "3"


def test_no_trial_without_a_champion_to_run_beside() -> None:
    assert _next_trial(None, None, None, "1", False, 2.0) is None
    # with no champion (rolled back by hand), a trial shown worse ends, another one stays
    assert _next_trial(gate(-2.0, -3.0, -0.5), trial(), "2", "3", False, 2.0) is None
    assert _next_trial(gate(0.1, -0.6, 0.8), trial(), "2", "3", False, 2.0) == "2"
