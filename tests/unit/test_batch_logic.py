"""Pure logic of batch scoring (serving.batch.scoring, serving.batch.compiled) on synthetic data: the chunk
matrices, the flow-zone choice and the parity arithmetic, each against the reference code it
replaces or the rule it implements."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.simulate.generate.catalog import CATEGORIES, CHALLENGE_KINDS, REWARD_TYPES
from training.simulate.generate.catalog import VOCABULARY as VOCAB  # the simulated program's


def _member_names() -> list[str]:
    return ["tier_rank", *(f"redeem_rate_{t}" for t in REWARD_TYPES),
            *(f"offers_{t}" for t in REWARD_TYPES), *(f"share_{c}_90d" for c in CATEGORIES),
            *(f"completion_rate_{k}" for k in CHALLENGE_KINDS), "visits_30d"]


def test_stacked_member_rows_equal_each_members_matrix() -> None:
    """MemberRows.stack (batch scoring) is member i's ``matrix`` at rows i*R..i*R+R-1, NaN
    included, and holds the same values in float64 (for the compiled runtime)."""
    from serving.decisioning.candidates import CHALLENGE_ITEM_COLUMNS, MemberRows
    from serving.decisioning.candidates import difficulty_inputs, reward_inputs

    rng = np.random.default_rng(3)
    names = _member_names()
    rewards = {"reward_type_code": rng.integers(-1, len(REWARD_TYPES), 12).astype(np.float32),
               "reward_category_code": rng.integers(-1, len(CATEGORIES), 12).astype(np.float32),
               "reward_cost": rng.uniform(1, 20, 12).astype(np.float32),
               "reward_min_tier_rank": rng.integers(0, 4, 12).astype(np.float32)}
    # item columns interleaved with member ones: the broadcast columns come in several runs
    r_names = [*names[:5], "reward_cost", *names[5:], "reward_type_code",
               "reward_category_code", "reward_min_tier_rank"]
    lo = rng.integers(1, 4, 20).astype(np.float32)
    grid = {"challenge_kind_code": rng.integers(-1, len(CHALLENGE_KINDS), 20).astype(np.float32),
            "challenge_duration_days": np.full(20, 7, np.float32), "challenge_min_target": lo,
            "challenge_max_target": lo + rng.integers(0, 5, 20),
            "challenge_target_step": np.ones(20, np.float32),
            "challenge_points": np.full(20, 50, np.float32), "target": lo + 1}
    d_names = [*names, *CHALLENGE_ITEM_COLUMNS]
    for rows in (MemberRows(lambda m: reward_inputs(m, rewards, r_names, VOCAB), names),
                 MemberRows(lambda m: difficulty_inputs(m, grid, d_names, VOCAB), names)):
        values = rng.normal(0, 5, (9, len(names))).astype(np.float32)
        values[:, 0] = rng.integers(0, 4, 9)
        values[rng.random(values.shape) < 0.05] = np.nan
        expected = np.vstack([rows.matrix(dict(zip(names, v.tolist(), strict=True)))
                              for v in values])
        got32 = rows.stack(values)
        assert got32.dtype == np.float32
        assert np.array_equal(got32, expected, equal_nan=True)
        got64 = rows.stack(values, np.float64)
        assert got64.dtype == np.float64
        assert np.array_equal(got64, expected.astype(np.float64), equal_nan=True)
        assert rows.stack(values[:0]).shape == (0, expected.shape[1])
        with pytest.raises(ValueError, match="members must be"):
            rows.stack(values[:, 1:])


def test_flow_zone_targets_choose_like_flow_zone_choice() -> None:
    """The batch choice (one argmin per member and template over a padded layout) picks the
    same grid rows as ranking.flow_zone_choice: nearest the flow zone, ties (up to 1e-9) to the
    lower target, NaN last, whatever order the grid lists targets in."""
    from serving.decisioning.ranking import flow_zone_choice, flow_zone_targets, target_layout

    rng = np.random.default_rng(5)
    for _ in range(30):
        templates = int(rng.integers(1, 6))
        sizes = rng.integers(1, 7, templates)
        template = rng.permutation(np.repeat(np.arange(templates), sizes))  # interleaved
        target = rng.choice([1.0, 2.0, 3.0, 5.0, 8.0, 13.0], len(template))
        n, g = int(rng.integers(1, 20)), len(template)
        # probabilities on a coarse grid make exact and float-noise ties common
        p = rng.choice([0.5, 0.6, 0.7, 0.8, 0.9, 0.6 + 1e-12, np.nan], (n, g))
        flow = float(rng.choice([0.7, 0.65]))
        got = flow_zone_targets(p, target_layout(template, target), flow)
        group = np.repeat(np.arange(n), g) * 1000 + np.tile(template, n)
        expected = flow_zone_choice(group, np.tile(target, n), p.ravel(), flow)
        assert np.array_equal(np.arange(n)[:, None] * g + got, expected.reshape(n, templates))
    with pytest.raises(ValueError, match="flow_zone"):
        flow_zone_targets(np.zeros((1, 1)), np.zeros((1, 1), np.int64), 1.5)


def test_max_disagreement_and_parity_sample() -> None:
    from serving.batch.compiled import max_disagreement, parity_sample

    a = np.array([[0.2, 0.8], [0.5, 0.5], [0.1, 0.9]], dtype=np.float32)
    b = a.copy()
    b[2, 0] += 3e-5
    worst = max_disagreement(a, b)
    assert (worst.row, worst.column) == (2, 0) and worst.max_abs_diff == pytest.approx(3e-5, 1e-3)
    b[1, 1] = np.nan  # a NaN never passes a parity check
    assert max_disagreement(a, b).max_abs_diff == np.inf
    assert max_disagreement(a, a[:, :1]).max_abs_diff == np.inf
    sample = parity_sample(1_000_000)
    assert len(sample) == 20_000 and sample[0] == 0 and sample[-1] == 999_999
    assert np.array_equal(parity_sample(7), np.arange(7))


def test_native_contract_refuses_other_features_or_classes() -> None:
    from serving.batch.compiled import check_native_contract
    from serving.contract.model_meta import ModelMetadata
    from serving.stores.models import ModelRefused

    meta = ModelMetadata(name="reward", version="4", feature_service="propensity_v1",
                         service_features=["a", "b"], derived_features=["c"],
                         classes=["no", "converted", "redeemed"])
    check_native_contract(["a", "b", "c"], 3, meta)
    with pytest.raises(ModelRefused, match=r"reward v4: .*features.*position 0: 'b' vs 'a'"):
        check_native_contract(["b", "a", "c"], 3, meta)
    with pytest.raises(ModelRefused, match="2 classes, the ONNX model 3"):
        check_native_contract(["a", "b", "c"], 1, meta)
    binary = meta.model_copy(update={"classes": ["no", "yes"]})
    check_native_contract(["a", "b", "c"], 1, binary)  # binary: one tree per iteration


def test_compare_scores_tells_ties_from_differences() -> None:
    """A runtime A/B: rounding noise and swaps of near-tied choices are equivalent; a reward or
    target chosen with a clearly different value is not."""
    from serving.batch.scoring import compare_scores

    a = pd.DataFrame({"member_id": [1, 2], "reward_1": ["R1", "R2"],
                      "reward_1_value": np.array([10.0, np.nan], np.float32),
                      "C01_target": [3.0, 4.0], "C01_completion_probability": [0.71, 0.5]})
    same = compare_scores(a, a.copy())
    assert same.equivalent and same.reward_mismatches == same.target_mismatches == 0
    tied = a.copy()
    tied["reward_1"] = ["R3", "R2"]
    tied["reward_1_value"] = np.array([10.00002, np.nan], np.float32)
    tied["C01_target"] = [4.0, 4.0]
    tied["C01_completion_probability"] = [0.69 - 2e-6, 0.5]  # as close to 0.7 as 0.71
    result = compare_scores(a, tied, scale=np.array([100.0, 100.0]))
    assert result.equivalent and result.reward_mismatches == 1 and result.target_mismatches == 1
    apart = tied.copy()
    apart["reward_1_value"] = np.array([9.0, np.nan], np.float32)
    apart["C01_completion_probability"] = [0.6, 0.5]
    result = compare_scores(a, apart, scale=np.array([100.0, 100.0]))
    assert not result.equivalent
    assert result.reward_mismatches_untied == 1 and result.target_mismatches_untied == 1
    with pytest.raises(ValueError, match="different columns or members"):
        compare_scores(a, a.iloc[::-1].reset_index(drop=True))
