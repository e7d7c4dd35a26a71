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

``--replay-challenger V --share S`` measures what challenger traffic would buy instead (issue
21's next step, not built): the uniform decisions are thinned by rejection sampling (Li et al.,
2011, "unbiased offline evaluation of contextual-bandit-based news article recommendation") so
that the kept ones are distributed as if logged by a given policy, with their real outcomes:

- ``greedy``: the champion as serving runs it (its first choice, 5 % exploration);
- ``mixture``: the champion on 1 - S of the decisions and version V (the challenger) on S.

The gate's paired difference (candidate - champion) is computed on each, with the logging
policy's probabilities, several draws each; both sets are about the same size, so their
half-widths compare directly (and scale as 1/sqrt(n)).

    REWARDS_DATA_DIR=/tmp/loop7s .venv/bin/python bench/gate_power.py --candidate 3 \
        --champion 1 --replay-challenger 2 --share 0.3 --repeats 5
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
    ap.add_argument("--replay-challenger", default=None,
                    help="version serving --share of the decisions in the replayed mixture")
    ap.add_argument("--share", type=float, default=0.3)
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
    if args.replay_challenger is not None:
        challenger = registered_policy(store, name, args.replay_challenger, data, margin)
        out["replay"] = replay(uniform, items, cand, champ, challenger, exploration, truth,
                               args, rng)
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
        return
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
            row = {"n": d.n, "repeat": rep, "dr": d.dr, "ci_low": d.ci_low, "ci_high": d.ci_high,
                   "half_width": d.half_width, "true_difference": true,
                   # the n at which the half-width (~1/sqrt(n)) would equal the true gain
                   "n_to_certify": d.decisions_to_show(true)}
            out["sizes"].append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


def replay(uniform: pd.DataFrame, items: pd.DataFrame, cand: Any, champ: Any,
           challenger: Any, exploration: Any, truth: Any, args: argparse.Namespace,
           rng: np.random.Generator) -> list[dict[str, Any]]:
    """The gate's paired difference on uniform decisions thinned to look logged by the
    champion alone (``greedy``) or by the champion and the challenger (``mixture``)."""
    from training.evaluation.gate import evaluate_gate, logged_rows

    own = logged_rows(uniform)
    # every policy's probability of each decision's logged action (the gate's audit frame)
    probe = evaluate_gate(own, items, challenger, champ, exploration, min_decisions=1,
                          n_bootstrap=10, seed=args.seed)
    assert probe.policies is not None
    at = probe.policies[probe.policies["logged"]].set_index("decision_id")
    ids = own["decision_id"].to_numpy()
    uniform_p = at.loc[ids, "p_logging"].to_numpy()
    p_champ, p_chall = at.loc[ids, "p_champion"].to_numpy(), at.loc[ids, "p_candidate"].to_numpy()
    loggers = {"greedy": p_champ,
               "mixture": (1 - args.share) * p_champ + args.share * p_chall}
    rows_out = []
    for logger, mu in loggers.items():
        ratio = mu / uniform_p
        bound = float(ratio.max())
        for rep in range(args.repeats):
            keep = rng.random(len(ids)) < ratio / bound  # accepted ~ the logger's distribution
            rows = uniform[uniform["decision_id"].isin(ids[keep])].copy()
            rows["propensity"] = rows["decision_id"].map(dict(zip(ids, mu, strict=True)))
            gate = evaluate_gate(rows, items, cand, champ, exploration, min_decisions=1,
                                 n_bootstrap=args.bootstrap, seed=args.seed + rep)
            d = gate.difference
            assert d is not None and gate.policies is not None
            true = (truth.policy_value(gate.policies, "p_candidate")
                    - truth.policy_value(gate.policies, "p_champion"))
            row = {"logger": logger, "share": args.share if logger == "mixture" else 0.0,
                   "repeat": rep, "n": d.n, "dr": d.dr, "ci_low": d.ci_low,
                   "ci_high": d.ci_high, "half_width": d.half_width,
                   "half_width_at_20000": d.half_width * np.sqrt(d.n / 20_000),
                   "true_difference": true}
            rows_out.append(row)
            print(json.dumps(row), flush=True)
    return rows_out


if __name__ == "__main__":
    main()
