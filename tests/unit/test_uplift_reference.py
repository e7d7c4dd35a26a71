"""Uplift metrics checked against the reference implementation, scikit-uplift (sklift.metrics),
on the same scores; and `rewards uplift evaluate` end to end on a randomized CSV."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.experiments import stats

sklift = pytest.importorskip("sklift.metrics")
TOL = 1e-6


def _reference(y: np.ndarray, t: np.ndarray, s: np.ndarray) -> dict[str, float]:
    with warnings.catch_warnings():  # sklift calls a deprecated sklearn helper
        warnings.simplefilter("ignore")
        return {
            "qini_auc": sklift.qini_auc_score(y, s, t),
            "qini_auc_no_negative": sklift.qini_auc_score(y, s, t, negative_effect=False),
            "uplift_auc": sklift.uplift_auc_score(y, s, t),
            "uplift_at_10": sklift.uplift_at_k(y, s, t, strategy="overall", k=0.1),
            "uplift_at_30": sklift.uplift_at_k(y, s, t, strategy="overall", k=0.3),
            "uplift_at_30_by_group": sklift.uplift_at_k(y, s, t, strategy="by_group", k=0.3),
        }


def _ours(y: np.ndarray, t: np.ndarray, s: np.ndarray) -> dict[str, float]:
    return {
        "qini_auc": stats.qini_auc_score(y, t, s),
        "qini_auc_no_negative": stats.qini_auc_score(y, t, s, negative_effect=False),
        "uplift_auc": stats.uplift_auc_score(y, t, s),
        "uplift_at_10": stats.uplift_at_k(y, t, s, k=0.1),
        "uplift_at_30": stats.uplift_at_k(y, t, s, k=0.3),
        "uplift_at_30_by_group": stats.uplift_at_k(y, t, s, k=0.3, strategy="by_group"),
    }


def _dataset(seed: int, n: int, informative: bool, ties: bool) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.integers(0, 2, n).astype(float)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-1 + 0.4 * x + t * (0.8 * x))))).astype(float)
    s = 0.8 * x + rng.normal(scale=0.5, size=n) if informative else rng.normal(size=n)
    if ties:
        s = np.round(s, 1)  # many tied scores: curves must treat tie blocks alike
    return y, t, s


@pytest.mark.parametrize(("seed", "n", "informative", "ties"), [
    (0, 500, True, False), (1, 3000, True, True), (2, 2000, False, False), (3, 997, False, True),
])
def test_metrics_match_scikit_uplift(seed: int, n: int, informative: bool, ties: bool) -> None:
    y, t, s = _dataset(seed, n, informative, ties)
    ref, ours = _reference(y, t, s), _ours(y, t, s)
    diffs = {k: abs(ref[k] - ours[k]) for k in ref}
    assert max(diffs.values()) <= TOL, diffs


def test_qini_curve_points_match_scikit_uplift() -> None:
    y, t, s = _dataset(4, 1500, True, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_x, ref_q = sklift.qini_curve(y, s, t)
    x, q = stats.qini_curve(y, t, s)
    # both start at (0, 0); sklift's x counts rows where ours is the fraction of rows
    np.testing.assert_allclose(x * y.size, ref_x, atol=TOL)
    np.testing.assert_allclose(q, ref_q, atol=TOL)


@pytest.fixture(scope="module")
def ab_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomized test whose effect grows with x2 (so a model can rank members), with a
    post-treatment column (``spend``: only buyers spend) and a third group left out."""
    rng = np.random.default_rng(0)
    n = 3000
    x1, x2 = rng.normal(size=n), rng.uniform(size=n)
    group = rng.choice(["offer", "none", "other"], n, p=[0.45, 0.45, 0.1])
    t = group == "offer"
    p = 1 / (1 + np.exp(-(-1 + 0.5 * x1 + t * (2.0 * x2 - 0.5))))
    converted = (rng.random(n) < p).astype(int)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "city": rng.choice(["a", "b", "c"], n),
                          "grp": group, "converted": converted,
                          "spend": converted * rng.lognormal(3, 0.5, n)})
    path = tmp_path_factory.mktemp("ab") / "ab.csv"
    frame.to_csv(path, index=False)
    return path


FAST = ["--folds", "3", "--inner-folds", "2", "--bootstrap", "50"]


def _run(args: list[str]) -> tuple[int, str, str]:
    from training.cli.app import app

    result = CliRunner().invoke(app, ["uplift", "evaluate", *args])
    return result.exit_code, result.stdout, result.output


def test_uplift_evaluate_cli_agrees_with_reference_on_its_own_scores(ab_csv: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    code, stdout, output = _run([
        "--data", str(ab_csv), "--treatment-col", "grp", "--treated", "offer", "--control",
        "none", "--outcome", "converted", "--features", "x1,x2", "--features", "city",
        "--predictions-out", str(out), "--json", *FAST])
    assert code == 0, output
    printed = json.loads(stdout)
    scores = pd.read_parquet(out)
    data = pd.read_csv(ab_csv)
    arm = printed["arms"][0]
    kept = (data["grp"] != "other").sum()
    assert arm["n_treated"] + arm["n_control"] == len(scores) == kept
    assert printed["data"]["rows_dropped"] == (data["grp"] == "other").sum()
    assert set(scores["fold"]) == set(range(3))  # every row scored out-of-fold
    # the rows written are the input rows, in order
    np.testing.assert_array_equal(data.loc[scores["row"], "converted"], scores["outcome"])
    y = scores["outcome"].to_numpy(dtype=float)
    t = (scores["arm"] == "offer").to_numpy(dtype=float)
    s = scores["uplift_offer"].to_numpy(dtype=float)
    ref = _reference(y, t, s)
    for key in ("qini_auc", "uplift_auc", "uplift_at_10", "uplift_at_30"):
        assert abs(arm["nested"][key] - ref[key]) <= TOL, key
    lo, hi = arm["nested"]["qini_ci"]
    assert lo < arm["nested"]["qini_auc"] < hi
    treated, control = y[t == 1], y[t == 0]
    assert arm["ate"] == pytest.approx(treated.mean() - control.mean(), abs=1e-12)
    assert arm["ate_ci"][0] < arm["ate"] < arm["ate_ci"][1]
    # the effect really varies with x2, and cross-fitted scores find it
    assert arm["nested"]["qini_auc"] > 0.05
    assert np.corrcoef(s, data.loc[scores["row"], "x2"])[0, 1] > 0.3
    assert {r["learner"] for r in arm["learners"]} == {"t", "s", "x", "dr", "linear", "ensemble",
                                                      "t_plain", "linear_plain"}
    assert sum(r["chosen"] for r in arm["learners"]) == 1


def test_default_features_leave_out_outcome_like_columns(ab_csv: Path, tmp_path: Path) -> None:
    code, stdout, output = _run([
        "--data", str(ab_csv), "--treatment-col", "grp", "--treated", "offer", "--control",
        "none", "--outcome", "converted", "--report", str(tmp_path / "report"), *FAST])
    assert code == 0, output
    assert "FLAGGED spend" in stdout
    assert "spend (flagged by the balance check)" in stdout
    assert "features used (3): x1, x2, city" in stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["balance"]["flagged"] == ["spend"]
    assert report["features"]["used"] == ["x1", "x2", "city"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "spend" in html and "data:image/png;base64," in html
    assert (tmp_path / "report" / "qini_curves.png").stat().st_size > 1000


def test_named_features_are_kept_with_a_warning(ab_csv: Path) -> None:
    code, stdout, output = _run([
        "--data", str(ab_csv), "--treatment-col", "grp", "--treated", "offer", "--control",
        "none", "--outcome", "converted", "--features", "x1,x2,spend", "--json", *FAST])
    assert code == 0, output
    report = json.loads(stdout)
    assert "spend" in report["features"]["used"]
    assert any("spend" in w and "--features" in w for w in report["warnings"])


def test_several_treated_arms_get_an_arm_each_and_a_policy(ab_csv: Path) -> None:
    code, stdout, output = _run([
        "--data", str(ab_csv), "--treatment-col", "grp", "--treated", "offer", "--treated",
        "other", "--control", "none", "--outcome", "converted", "--exclude", "spend",
        "--learners", "t,linear", "--json", *FAST])
    assert code == 0, output
    report = json.loads(stdout)
    assert [a["arm"] for a in report["arms"]] == ["offer", "other"]
    assert report["data"]["rows_dropped"] == 0
    assert {"column": "spend", "reason": "--exclude"} in report["features"]["excluded"]
    policy = report["policy"]
    assert set(policy["share_assigned"]) == {"none", "offer", "other"}
    assert policy["ci"][0] <= policy["value"] <= policy["ci"][1]


@pytest.mark.parametrize(("args", "message"), [
    (["--outcome", "nope"], "--outcome"),
    (["--treated", "missing"], "--treated"),
    (["--treated", "none"], "--treated and --control must differ"),
    (["--outcome", "x1"], "binary"),
    (["--predictions-out", "scores.txt"], "--predictions-out"),
    (["--exclude", "nope"], "--exclude"),
    (["--learners", "forest"], "--learners"),
    (["--features", "x1,grp"], "--features"),
])
def test_uplift_evaluate_bad_input_is_one_line(ab_csv: Path, args: list[str],
                                               message: str) -> None:
    base = {"--data": str(ab_csv), "--treatment-col": "grp", "--treated": "offer",
            "--control": "none", "--outcome": "converted"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    code, _, output = _run([*sum(map(list, base.items()), []), *FAST])
    assert code == 2
    assert message in output
