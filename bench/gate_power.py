"""How many decisions the off-policy gate needs to certify a candidate's gain, when the logging
policy is as exploratory as it can be (uniform): the learning loop's statistical ceiling
(issue 21). Simulated worlds only: reads the truth.

On a learning-loop data folder (``bench/learning_loop.py --data-dir``), the gate's paired DR
difference (``training.evaluation.gate.evaluate_gate``) between two registered reward models
is computed on the cold-start round's decisions, which were logged uniformly at random over the
eligible rewards: the most informative logs a service can have, with importance weights of
about 20 instead of about 475 under the served policy's 5 % exploration. Random subsets of
growing size show the interval's 1/sqrt(n) shrinkage, and the truth gives the pair's true
difference; together they give the number of uniformly logged decisions at which the gate's
paired lower bound would clear zero (half-width equal to the true gain).

Both models were trained on part of these decisions, so their reward model's residuals are
partly in-sample: if anything the interval is narrower than on fresh logs, and the decisions
needed are a lower bound.

    REWARDS_DATA_DIR=/tmp/loopdata .venv/bin/python bench/gate_power.py \\
        --candidate 2 --champion 1 --sizes 5000 10000 20000 0 --json /tmp/gate_power.json

Size 0 means every cold-start decision.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidate", default="2")
    ap.add_argument("--champion", default="1")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 0])
    ap.add_argument("--repeats", type=int, default=3, help="random subsets per size")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from serving.config import get_store_settings
    from training.config import TrainSettings
    from training.data.datasets import reward_dataset
    from serving.stores.features import open_store, service_feature_names
    from training.data.history import read_history_meta
    from training.evaluation.gate import evaluate_gate, logged_rows
    from training.models.tracking import configure_mlflow
    from training.retrain import exploration_settings, registered_policy
    from training.simulate.loop import Truth

    store, settings = get_store_settings(), TrainSettings()
    configure_mlflow(store.tracking_uri, store.artifact_root, settings.experiment)
    service = settings.reward_service
    data = reward_dataset(store, store.features_dir, (settings.valid_share, settings.test_share),
                          service, service_feature_names(open_store(store), service))
    margin = read_history_meta(store.features_dir).margin
    items = pd.read_parquet(store.features_dir / "reward_features.parquet")
    name = settings.reward_model_name
    cand = registered_policy(store, name, args.candidate, data, margin)
    champ = registered_policy(store, name, args.champion, data, margin)
    uniform = data.rows[data.rows["policy"] == "cold_start"]
    decisions = logged_rows(uniform)["decision_id"].to_numpy()
    truth = Truth(store.world_dir)
    exploration = exploration_settings(store)
    rng = np.random.default_rng(args.seed)
    out: dict[str, Any] = {"candidate": cand.name, "champion": champ.name,
                           "uniform_decisions": int(len(decisions)), "sizes": []}
    for size in args.sizes:
        n = len(decisions) if size <= 0 or size >= len(decisions) else size
        for rep in range(1 if n == len(decisions) else args.repeats):
            pick = rng.choice(decisions, n, replace=False)
            rows = uniform[uniform["decision_id"].isin(pick)]
            gate = evaluate_gate(rows, items, cand, champ, exploration, min_decisions=1,
                                 n_bootstrap=args.bootstrap, seed=args.seed + rep)
            d = gate.difference
            true = (truth.policy_value(gate.policies, "p_candidate")
                    - truth.policy_value(gate.policies, "p_champion"))
            half = (d.ci_high - d.ci_low) / 2
            row = {"n": d.n, "repeat": rep, "dr": d.dr, "ci_low": d.ci_low, "ci_high": d.ci_high,
                   "half_width": half, "true_difference": true,
                   # the n at which the half-width (~1/sqrt(n)) would equal the true gain
                   "n_to_certify": d.n * (half / true) ** 2 if true > 0 else None}
            out["sizes"].append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
