"""Arm assignment: stable, reproducible without storage, shares as configured."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from serving.experiments.assignment import assign, assign_many, bucket
from serving.experiments.definition import Experiment, ExperimentCreate

ARMS = [("model", 0.8), ("random", 0.1), ("holdout", 0.1)]
IDS = np.arange(1, 100_001)


def test_same_member_same_arm_every_time_and_everywhere() -> None:
    first = assign_many(IDS[:5000], "spring", ARMS)
    assert list(first) == [assign(int(m), "spring", ARMS) for m in IDS[:5000]]
    assert list(assign_many(IDS[:5000], "spring", ARMS)) == list(first)
    # a fresh process would compute the same bucket: it is a pure function of (salt, id)
    assert bucket(42, "spring") == bucket(42, "spring") and 0 <= bucket(42, "spring") < 1


def test_shares_match_configuration() -> None:
    arms = assign_many(IDS, "shares-check", ARMS)
    observed = np.array([(arms == name).sum() for name, _ in ARMS])
    expected = np.array([share for _, share in ARMS]) * IDS.size
    assert stats.chisquare(observed, expected).pvalue > 0.001
    assert np.allclose(observed / IDS.size, [0.8, 0.1, 0.1], atol=0.005)


def test_buckets_are_uniform() -> None:
    u = np.array([bucket(int(m), "uniform") for m in IDS[:20_000]])
    assert stats.kstest(u, "uniform").pvalue > 0.001


def test_different_salts_give_independent_assignments() -> None:
    """Successive experiments must not hold out the same members again."""
    a = assign_many(IDS[:40_000], "exp-a", ARMS) == "holdout"
    b = assign_many(IDS[:40_000], "exp-b", ARMS) == "holdout"
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    assert stats.chi2_contingency(table).pvalue > 0.001
    assert abs((a & b).mean() - 0.01) < 0.003  # 10% x 10%


def _body(**over: object) -> dict:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    body = {"name": "Spring 2030", "arms": [{"name": "model", "share": 0.9},
                                            {"name": "holdout", "share": 0.1}],
            "start": now.isoformat(), "end": (now + timedelta(days=14)).isoformat()}
    return {**body, **over}


@pytest.mark.parametrize(("over", "field"), [
    ({"arms": [{"name": "model", "share": 0.8}, {"name": "holdout", "share": 0.1}]}, "arms"),
    ({"arms": [{"name": "model", "share": 0.5}, {"name": "model", "share": 0.5}]}, "arms"),
    ({"arms": [{"name": "random", "share": 0.5}, {"name": "holdout", "share": 0.5}]}, "arms"),
    ({"arms": [{"name": "model", "share": 0.5}, {"name": "control", "share": 0.5}]}, "arms"),
    ({"end": "2029-12-31T00:00:00+00:00"}, "end"),
    ({"start": "2030-01-01T00:00:00"}, "start"),  # naive time: ambiguous
    ({"primary_metric": "clicks"}, "primary_metric"),
    ({"attribution_window_days": 0}, "attribution_window_days"),
    ({"name": ""}, "name"),
    ({"colour": "red"}, "colour"),
])
def test_definition_errors_name_the_field(over: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ExperimentCreate.model_validate(_body(**over))
    assert field in [str(e["loc"][0]) for e in info.value.errors()]


def test_experiment_assignment_uses_its_salt() -> None:
    exp = Experiment.new(ExperimentCreate.model_validate(_body()), datetime.now(UTC))
    assert exp.salt == exp.id
    assert exp.arm_of(7) == assign(7, exp.id, [("model", 0.9), ("holdout", 0.1)])
    assert exp.is_active(exp.start) and not exp.is_active(exp.end)
