"""Training on the service's own decisions: weighted by 1 / logged probability, or not?
(issue 21; simulated worlds only: reads the truth).

On a learning-loop data folder (``bench/learning_loop.py --data-dir``), optionally rebuilt as
of an earlier round's end (``rewards features build --end DAY``), the reward and difficulty
models are fitted as `rewards retrain` fits them (``training.models.lgbm.fit_classifier`` on the
retrain's training set and time split), once with the logging weights
(``training.data.datasets.logging_weights``) and once without, for several seeds, and valued
by the truth:

- reward: the greedy policy's true incremental value on the evaluation members, as a share of
  the oracle's (what ``training.simulate.oracle`` reports for a simulated world);
- difficulty: the true completion probability of the target each held-out member would be
  given, against the flow zone (mean absolute error and the gap of the mean).

    REWARDS_DATA_DIR=/tmp/loopdata .venv/bin/python bench/loop_weighting.py --seeds 7 1 2 \\
        --json /tmp/weighting.json

Prints one JSON line per fit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 1, 2])
    ap.add_argument("--families", nargs="+", default=["reward", "difficulty"],
                    choices=["reward", "difficulty"])
    ap.add_argument("--weightings", nargs="+", default=["none", "sqrt", "inverse"],
                    choices=["none", "sqrt", "inverse"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from serving.config import get_store_settings
    from serving.decisioning.candidates import DIFFICULTY_DECREASING
    from serving.stores.features import open_store, service_feature_names
    from training.config import get_train_settings
    from training.data.datasets import difficulty_dataset, reward_dataset, reweighted
    from training.data.history import read_history_meta
    from training.evaluation.difficulty import evaluate_difficulty
    from training.evaluation.evaluate import fit_value_params
    from training.evaluation.reward import evaluate_reward
    from training.models.lgbm import fit_classifier
    from training.simulate.oracle import WorldTruth, policy_values

    store, base = get_store_settings(), get_train_settings()
    world = WorldTruth.load(store.world_dir)
    shares = (base.valid_share, base.test_share)
    feast = open_store(store)
    out: dict[str, Any] = {"data_dir": str(store.data), "fits": []}

    def report(row: dict[str, Any]) -> None:
        out["fits"].append(row)
        print(json.dumps(row), flush=True)

    if "reward" in args.families:
        service = base.reward_service
        data = reward_dataset(store, store.features_dir, shares, service,
                              service_feature_names(feast, service))
        margin = read_history_meta(store.features_dir).margin
        chosen = int((data.rows["policy"] == "model").sum())
        for seed in args.seeds:
            settings = base.model_copy(update={"seed": seed})
            for weighting in args.weightings:
                fit_data = reweighted(data, weighting, "propensity")
                model = fit_classifier(fit_data, settings, objective="multiclass")
                params = fit_value_params(data, margin)
                ev = evaluate_reward(model, data, data.split, store.features_dir,
                                     settings.policy_eval_members, params, seed)
                policy_values(ev, model, data.service_features, world, ev.holdout, params)
                v = ev.metrics["policy.value_model"]
                report({"family": "reward", "weighting": weighting, "seed": seed,
                        "train_rows": int((data.part == "train").sum()),
                        "model_policy_rows": chosen, "rounds": int(model.best_iteration_ or 0),
                        "policy_value": round(v, 4),
                        "share_of_oracle": round(v / ev.metrics["policy.value_oracle"], 4),
                        "auc": round(float(ev.metrics.get("propensity.auc", np.nan)), 4)})
    if "difficulty" in args.families:
        service = base.difficulty_service
        data = difficulty_dataset(store, store.features_dir, shares, service,
                                  service_feature_names(feast, service))
        for seed in args.seeds:
            settings = base.model_copy(update={"seed": seed})
            for weighting in args.weightings:
                fit_data = reweighted(data, weighting, "target_probability")
                model = fit_classifier(fit_data, settings, objective="binary",
                                       monotone_decreasing=DIFFICULTY_DECREASING)
                ev = evaluate_difficulty(model, data, data.split, store.features_dir,
                                         settings.flow_zone, seed)
                c = ev.holdout.chosen
                true_p = world.completion(c["member_id"].to_numpy(),
                                          c["challenge_id"].to_numpy(), c["target"].to_numpy())
                report({"family": "difficulty", "weighting": weighting, "seed": seed,
                        "train_rows": int((data.part == "train").sum()),
                        "target_true_mean": round(float(true_p.mean()), 4),
                        "target_mean_abs_error": round(
                            float(np.abs(true_p - settings.flow_zone).mean()), 4),
                        "auc": round(float(ev.metrics.get("difficulty.auc", np.nan)), 4)})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
