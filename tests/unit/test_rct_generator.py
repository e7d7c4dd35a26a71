"""Synthetic RCT generators (training/simulate/rct.py): the file looks like a campaign export and
the truth it carries is the truth its outcomes were drawn from.

Statistical checks use 3 standard errors on fixed seeds, so they are deterministic; a generator
whose outcomes ignored ``tau`` would miss by 10+ standard errors at these sizes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from scipy import stats

from training.simulate.rct import GENERATORS, SyntheticRct, make_rct

LARGE = 150_000
Z = 3.0


@pytest.fixture(scope="module", params=sorted(GENERATORS))
def large(request: pytest.FixtureRequest) -> SyntheticRct:
    return make_rct(request.param, LARGE, 3)


def test_every_generator_is_registered() -> None:
    assert set(GENERATORS) == {"small_effects", "linear_effects", "four_arms"}
    assert make_rct("four_arms", 50, 0).tau.shape == (50, 4)
    with pytest.raises(ValueError, match="name"):
        make_rct("nope", 10, 0)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_shapes_columns_and_dtypes(name: str) -> None:
    rct = make_rct(name, 2_000, 0)
    frame, k = rct.frame, len(rct.treated)
    assert len(frame) == 2_000
    assert rct.tau.shape == (2_000, k) and rct.base.shape == (2_000,)
    assert set(rct.noise) <= set(rct.features)
    assert len(rct.noise) >= 10
    assert set(frame.columns) == {*rct.features, rct.decoy, rct.treatment_col, rct.outcome}
    assert rct.decoy not in rct.features
    assert set(frame[rct.treatment_col]) == {rct.control, *rct.treated}
    assert set(frame[rct.outcome].unique()) == {0, 1}
    assert pd.api.types.is_integer_dtype(frame[rct.decoy]) and (frame[rct.decoy] >= 0).all()
    categorical = [c for c in rct.features if not pd.api.types.is_numeric_dtype(frame[c])]
    numeric = [c for c in rct.features if pd.api.types.is_numeric_dtype(frame[c])]
    assert len(categorical) >= 4 and len(numeric) >= 5
    for c in categorical:
        assert all(isinstance(v, str) for v in frame[c].dropna())
    noisy_nan = [c for c in rct.noise if frame[c].isna().any()]
    assert {pd.api.types.is_numeric_dtype(frame[c]) for c in noisy_nan} == {True, False}
    informative = [c for c in rct.features if c not in rct.noise]
    assert not frame[informative].isna().any().any()


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_rows_other_seed_other_rows(name: str) -> None:
    a, b, c = make_rct(name, 3_000, 5), make_rct(name, 3_000, 5), make_rct(name, 3_000, 6)
    pdt.assert_frame_equal(a.frame, b.frame)
    np.testing.assert_array_equal(a.tau, b.tau)
    np.testing.assert_array_equal(a.base, b.base)
    assert not a.frame[a.outcome].equals(c.frame[c.outcome])
    assert not np.array_equal(a.tau, c.tau)


def test_empirical_effect_matches_tau_per_arm(large: SyntheticRct) -> None:
    y, arm = large.frame[large.outcome].to_numpy(float), large.arm
    control = y[arm == 0]
    assert abs(control.mean() - large.base[arm == 0].mean()) < Z * control.std() / np.sqrt(
        control.size)
    for k in range(1, len(large.treated) + 1):
        treated = y[arm == k]
        diff = treated.mean() - control.mean()
        se = np.sqrt(treated.var() / treated.size + control.var() / control.size)
        assert abs(diff - large.tau[:, k - 1].mean()) < Z * se, large.treated[k - 1]


def test_effects_and_base_rates_in_the_issue_range(large: SyntheticRct) -> None:
    assert large.tau.min() >= -0.05 and large.tau.max() <= 0.06
    assert large.base.min() >= 0.05 and large.base.max() <= 0.35
    assert 0.10 <= large.base.mean() <= 0.20
    strongest = large.tau.mean(axis=0).max()
    assert 0.01 <= strongest <= 0.05
    # heterogeneous: the best arm's effect spreads over at least 2 points between deciles
    best = large.tau[:, large.tau.mean(axis=0).argmax()]
    q10, q90 = np.quantile(best, [0.1, 0.9])
    assert q90 - q10 >= 0.02


def test_four_arms_help_different_segments() -> None:
    rct = make_rct("four_arms", 50_000, 1)
    means = rct.tau.mean(axis=0)
    assert means.min() < 0.005  # one arm with almost no effect
    assert rct.tau.min() < 0  # one arm slightly harmful for some members
    winners = np.bincount(rct.tau.argmax(axis=1), minlength=4) / len(rct.tau)
    assert (winners > 0.1).sum() >= 3  # no single arm is best for everyone
    assert rct.arm.min() == 0 and np.allclose(np.bincount(rct.arm) / len(rct.arm), 0.2, atol=0.01)


def test_noise_columns_say_nothing_about_the_outcome(large: SyntheticRct) -> None:
    y = large.frame[large.outcome].to_numpy(float)
    limit = Z / np.sqrt(len(y))  # 3 standard errors of a zero correlation
    for c in large.noise:
        col = large.frame[c]
        if pd.api.types.is_numeric_dtype(col):
            ok = col.notna().to_numpy()
            corr = np.corrcoef(col.to_numpy(float)[ok], y[ok])[0, 1]
            assert abs(corr) < Z / np.sqrt(ok.sum()), c
        else:
            table = pd.crosstab(col.fillna("<missing>"), y)
            assert stats.chi2_contingency(table).pvalue > 0.003, c
    # informative columns do (the checks above do not pass for lack of power)
    informative = [c for c in large.features if c not in large.noise
                   and pd.api.types.is_numeric_dtype(large.frame[c])]
    strongest = max(abs(np.corrcoef(large.frame[c].to_numpy(float), y)[0, 1])
                    for c in informative)
    assert strongest > 5 * limit


def test_decoy_differs_between_arms_and_tracks_the_outcome(large: SyntheticRct) -> None:
    decoy, arm = large.frame[large.decoy].to_numpy(float), large.arm
    y = large.frame[large.outcome].to_numpy(float)
    for k in range(1, len(large.treated) + 1):
        d_t, d_c = decoy[arm == k], decoy[arm == 0]
        assert d_t.mean() - d_c.mean() > 5 * np.sqrt(d_t.var() / d_t.size + d_c.var() / d_c.size)
    assert 0.3 < np.corrcoef(decoy, y)[0, 1] < 0.8
