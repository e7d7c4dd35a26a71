"""Held-out evaluation of the difficulty model, P(complete | member, template, target).

Definitions:
- difficulty.auc / difficulty.ece: ranking and calibration on the test assignments;
- difficulty.flow_zone_*: calibration where serving uses the model. Serving picks the target
  whose predicted completion is nearest the flow zone, so the predictions that matter are the
  ones near it: on test assignments predicted within +-FLOW_ZONE_BAND of the flow zone,
  ``flow_zone_calibration_gap`` = |observed completion rate - mean prediction|, over
  ``flow_zone_rows`` assignments (logged targets were drawn at random, so the band is populated
  without any policy bias);
- difficulty.target_predicted_mean: mean predicted completion of the targets serving would pick,
  for members at the start of the test period (their true completion needs an oracle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from serving.decisioning.ranking import flow_zone_choice
from training.data.datasets import Dataset, TimeSplit
from training.evaluation import metrics
from training.evaluation.evaluate import Evaluation, member_snapshot
from training.evaluation.scoring import score_targets
from training.models.lgbm import predict_proba

DIFFICULTY_EVAL_MEMBERS = 5_000
FLOW_ZONE_BAND = 0.1


@dataclass
class DifficultyHoldout:
    """What the difficulty evaluation scored, so an oracle can score the same with the truth."""

    rows: pd.DataFrame  # test assignments, in log order
    grid: pd.DataFrame  # member x template x allowed target, with p_complete, at the test start
    chosen: pd.DataFrame  # the grid rows serving would pick: one per (member, template)


def flow_zone_calibration(y: np.ndarray, p: np.ndarray, flow_zone: float,
                          band: float = FLOW_ZONE_BAND) -> dict[str, float]:
    """Observed vs predicted completion of the rows predicted within ``band`` of the flow zone."""
    near = np.abs(p - flow_zone) <= band
    out = {"difficulty.flow_zone_rows": float(near.sum())}
    if near.any():  # no rows, no figure: a gate then sees it missing rather than a made-up 0
        observed, predicted = float(y[near].mean()), float(p[near].mean())
        out.update({"difficulty.flow_zone_observed_rate": observed,
                    "difficulty.flow_zone_predicted_mean": predicted,
                    "difficulty.flow_zone_calibration_gap": abs(observed - predicted)})
    return out


def evaluate_difficulty(model: lgb.LGBMClassifier, data: Dataset, split: TimeSplit,
                        features_dir: Path, flow_zone: float, seed: int) -> Evaluation:
    """Calibration and ranking of P(complete), overall and around the flow zone."""
    ev = Evaluation()
    rng = np.random.default_rng(seed)
    mask = data.part == "test"
    rows = data.rows[mask].reset_index(drop=True)
    p = predict_proba(model, data.X[mask])[:, 1]
    y = rows["completed"].to_numpy()
    if len(np.unique(y)) == 2:
        ev.metrics["difficulty.auc"] = metrics.auc(y, p)
    else:
        ev.skipped["difficulty.auc"] = ("the test period's challenges were all completed or "
                                        "none was")
    ev.metrics["difficulty.ece"] = metrics.expected_calibration_error(y, p)
    ev.curves["difficulty_calibration"] = metrics.calibration_curve(y, p, 10, "quantile")
    ev.metrics.update(flow_zone_calibration(y, p, flow_zone))

    snapshot = member_snapshot(features_dir, split.test_from)
    if len(snapshot) > DIFFICULTY_EVAL_MEMBERS:
        snapshot = snapshot.iloc[np.sort(rng.choice(len(snapshot), DIFFICULTY_EVAL_MEMBERS,
                                                    replace=False))]
    templates = pd.read_parquet(features_dir / "challenge_features.parquet")
    grid = score_targets(model, snapshot, templates, data.service_features, data.vocabulary)
    tier_rank = snapshot.set_index("member_id")["tier_rank"]
    grid["tier"] = np.asarray(data.vocabulary.tiers, dtype=object)[
        tier_rank.loc[grid["member_id"]].to_numpy(dtype=int)]
    group = grid.groupby(["member_id", "challenge_id"], sort=False).ngroup().to_numpy()
    chosen = grid.iloc[flow_zone_choice(group, grid["target"].to_numpy(),
                                        grid["p_complete"].to_numpy(), flow_zone)]
    ev.metrics["difficulty.target_predicted_mean"] = float(chosen["p_complete"].mean())
    ev.curves["difficulty_grid"] = curve_examples(grid, "tier")
    ev.holdout = DifficultyHoldout(rows, grid, chosen)
    return ev


def curve_examples(grid: pd.DataFrame, by: str) -> pd.DataFrame:
    """Predicted completion over targets for the first member of each ``by`` group (one line
    per member in the curves plot); ``first_template`` names the template plotted."""
    picks = grid.drop_duplicates("member_id").groupby(by).head(1)["member_id"]
    sub = grid[grid["member_id"].isin(picks)].copy()
    return sub.assign(first_template=grid["challenge_id"].iloc[0])
