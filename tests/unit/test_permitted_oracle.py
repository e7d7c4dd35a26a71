"""The learning-loop bench's permitted oracle: a member without personalization consent can
only be served as a history-less member of the tier, so the best the program may do for them
is one reward per tier."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.simulate.loop import Truth


def _truth(tiers: list[int], consent: list[bool]) -> Truth:
    truth = Truth.__new__(Truth)  # the rule alone: no world on disk
    ids = pd.Index(np.arange(len(tiers)), name="member_id")
    truth.tier_rank = pd.Series(tiers, index=ids)
    truth.consent = pd.Series(consent, index=ids)
    return truth


def test_non_consenting_members_get_their_tiers_best_single_reward() -> None:
    truth = _truth([0, 0, 0, 1, 1], [True, False, False, False, True])
    inc = np.array([[5.0, 1.0, 9.0],    # consents: own best, 9
                    [4.0, 2.0, 0.0],    # tier 0 without consent: column means 3.0, 2.5, 5.0
                    [2.0, 3.0, 10.0],   # ... but column 2 is not eligible in tier 0
                    [1.0, 7.0, 2.0],    # tier 1, alone: its own best eligible, 7
                    [0.0, 0.0, 3.0]])
    ok = np.array([[True, True, False]] * 3 + [[True, True, True]] * 2)
    oracle = np.where(ok, inc, -np.inf).max(axis=1)
    got = truth._permitted(np.arange(5), inc, ok, oracle, truth.consent.to_numpy())
    # consenting members keep their own best; tier 0's two share column 0 (mean 3.0 > 2.5)
    np.testing.assert_allclose(got, [5.0, 4.0, 2.0, 7.0, 3.0])
    assert (got <= oracle).all() and got[1:3].sum() < oracle[1:3].sum()


def test_everyone_consenting_leaves_the_oracle_as_is() -> None:
    truth = _truth([0, 1], [True, True])
    inc = np.array([[1.0, 2.0], [3.0, 0.5]])
    ok = np.ones_like(inc, dtype=bool)
    oracle = inc.max(axis=1)
    np.testing.assert_allclose(
        truth._permitted(np.arange(2), inc, ok, oracle, truth.consent.to_numpy()), oracle)
