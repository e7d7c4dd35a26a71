"""Where the reward policy loses value against the oracle (simulated worlds only: reads the truth).

Two measurements on an existing data folder with a trained reward champion:

- `swap`: the champion's value estimate (margin x basket x uplift - P(redeem) x cost) with one
  component at a time replaced by its true value, so the loss can be pinned on one of them;
- `refit VARIANT...`: the reward model refitted with the champion's parameters on the same
  training set plus extra columns, then its test AUC and policy value. Variants: `base` (no
  extra column), `true_pref` / `true_type` / `true_traits` (the hidden category preferences,
  player type, or every hidden trait: a ceiling for what better features could recover),
  `reward_type_onehot`, `pref_summaries` (category count of the reward's category, 1/8 for
  rewards valid in any category, streak lift, max share and entropy of the purchase shares);
  `a+b` appends both.

    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/policy_gap.py swap
    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/policy_gap.py refit base true_pref

Prints one JSON line per measurement. Each refit is a full LightGBM fit (about 2-4 min at 100k).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import lightgbm as lgb
import numpy as np
import pandas as pd

from serving.candidates import REWARD_ITEM_COLUMNS, cross, no_offer_items, reward_matrix
from serving.config import get_store_settings
from serving.contract import CATEGORIES, REWARD_TYPES
from serving.feature_store import open_store, service_feature_names
from serving.ranking import reward_scores
from training.config import get_train_settings
from training.datasets import Dataset, reward_dataset
from training.evaluate import (
    WorldTruth,
    _basket,
    fit_value_params,
    policy_members,
    policy_value,
)
from training.lgbm import lgbm_params, predict_proba
from training.metrics import auc
from training.scoring import _columns, score_rewards
from training.simulate.catalog import PLAYER_TYPES, codes_of

#: Extra columns from (model inputs by name, member ids) -> {column name: values}.
Extra = Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]


def _traits(store) -> pd.DataFrame:  # noqa: ANN001
    traits = pd.read_parquet(store.world_dir / "truth" / "member_traits.parquet")
    traits["player_type_code"] = codes_of(traits["player_type"], PLAYER_TYPES, "player_type")
    return traits.set_index("member_id")


def variants(traits: pd.DataFrame) -> dict[str, Extra]:
    prefs = [c for c in traits.columns if c.startswith("pref_")]

    def true_type(col: dict, ids: np.ndarray) -> dict:
        code = traits.loc[ids, "player_type_code"].to_numpy()
        return {f"true_type_{k}": (code == k).astype(np.float32) for k in range(len(PLAYER_TYPES))}

    def true_pref(col: dict, ids: np.ndarray) -> dict:
        return {f"true_{c}": traits.loc[ids, c].to_numpy(np.float32) for c in prefs}

    def true_traits(col: dict, ids: np.ndarray) -> dict:
        rest = {f"true_{c}": traits.loc[ids, c].to_numpy(np.float32)
                for c in ("price_sensitivity", "activity", "skill")}
        return {**true_type(col, ids), **true_pref(col, ids), **rest}

    def reward_type_onehot(col: dict, ids: np.ndarray) -> dict:
        return {f"is_{t}": (col["reward_type_code"] == k).astype(np.float32)
                for k, t in enumerate(REWARD_TYPES)}

    def pref_summaries(col: dict, ids: np.ndarray) -> dict:
        offered, any_category = col["treated"] == 1, col["reward_category_code"] < 0
        purchases = col["purchases_per_day_90d"] * col["observed_days"]
        shares = np.column_stack([col[f"share_{c}_90d"] for c in CATEGORIES])
        logs = np.log(np.maximum(shares, 1e-9))
        return {
            "category_share_neutral": np.where(offered & any_category, 1 / len(CATEGORIES),
                                               col["category_share"]),
            "category_count": np.where(offered, np.where(any_category, -2.0,
                                                         col["category_share"] * purchases), -1.0),
            "streak_lift": col["repeat_active_share_90d"] - col["active_day_share_90d"],
            "max_share": shares.max(axis=1),
            "share_entropy": -(np.where(shares > 0, shares * logs, 0.0)).sum(axis=1),
        }

    return {"base": lambda col, ids: {}, "true_pref": true_pref, "true_type": true_type,
            "true_traits": true_traits, "reward_type_onehot": reward_type_onehot,
            "pref_summaries": pref_summaries}


def _with(extra: Extra, X: np.ndarray, names: list[str], ids: np.ndarray) -> np.ndarray:
    cols = extra({n: X[:, i] for i, n in enumerate(names)}, ids)
    return np.column_stack([X, *cols.values()]).astype(np.float32) if cols else X


class PolicyBench:
    """The evaluation's policy-value setup (same members, same rule), every reward."""

    def __init__(self, data: Dataset, store, seed: int) -> None:  # noqa: ANN001
        self.world = WorldTruth.load(store.world_dir)
        self.value_params = fit_value_params(data, self.world.margin)
        self.snap = policy_members(store.features_dir, data.split.test_from,
                                   get_train_settings().policy_eval_members,
                                   np.random.default_rng(seed))
        self.ids = self.snap["member_id"].to_numpy()
        self.items = pd.read_parquet(store.features_dir / "reward_features.parquet")
        self.truth = self.world.reward_response(self.ids)
        self.cost = self.items["reward_cost"].to_numpy(np.float64)
        self.basket = _basket(self.snap, self.value_params)[:, None]
        self.oracle = self.value(self.truth["incremental_value"])

    def value(self, estimate: np.ndarray) -> float:
        return policy_value(estimate, self.truth["incremental_value"], self.truth["eligible"])

    def estimate(self, uplift: np.ndarray, p_redeem: np.ndarray,
                 basket: np.ndarray | None = None) -> np.ndarray:
        basket = self.basket if basket is None else basket
        return self.world.margin * basket * uplift - p_redeem * self.cost[None, :]


def swap(model: lgb.Booster, data: Dataset, bench: PolicyBench) -> None:
    s = score_rewards(model, bench.snap, bench.items, data.service_features)
    t = bench.truth
    true_uplift = t["p_convert_offer"] - t["p_convert_control"]
    for name, (uplift, p_redeem, basket) in {
        "model": (s.uplift, s.propensity, None),
        "true basket": (s.uplift, s.propensity, t["basket_value"]),
        "true uplift": (true_uplift, s.propensity, None),
        "true p_redeem": (s.uplift, t["p_redeem"], None),
        "true uplift and p_redeem": (true_uplift, t["p_redeem"], None),
    }.items():
        v = bench.value(bench.estimate(uplift, p_redeem, basket))
        print(json.dumps({"swap": name, "policy": round(v, 3),
                          "share_of_oracle": round(v / bench.oracle, 4)}), flush=True)


def refit(variant: str, extra: Extra, data: Dataset, bench: PolicyBench, settings) -> None:  # noqa: ANN001
    names, ids = data.input_names, data.rows["member_id"].to_numpy()
    X = _with(extra, data.X, names, ids)
    train, valid, test = (data.part == p for p in ("train", "valid", "test"))
    t0 = time.perf_counter()
    model = lgb.LGBMClassifier(**lgbm_params(data, settings, "multiclass"))
    model.fit(X[train], data.y[train], eval_X=(X[valid],), eval_y=(data.y[valid],),
              callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)])
    fit_s = time.perf_counter() - t0
    rows = data.rows[test]
    treated = rows["treated"].to_numpy(bool)
    proba = predict_proba(model, X[test])
    member_names = [n for n in data.service_features if n not in REWARD_ITEM_COLUMNS]
    member_cols = _columns(bench.snap, member_names)
    item_cols = _columns(bench.items, list(REWARD_ITEM_COLUMNS))
    n, m = len(bench.ids), len(bench.items)
    offer = _with(extra, reward_matrix(cross(member_cols, item_cols), np.ones(n * m),
                                       data.service_features), names, np.repeat(bench.ids, m))
    control = _with(extra, reward_matrix({**member_cols, **no_offer_items(n)}, np.zeros(n),
                                         data.service_features), names, bench.ids)
    s = reward_scores(predict_proba(model, offer),
                      np.repeat(predict_proba(model, control), m, axis=0))
    v = bench.value(bench.estimate(s["uplift"].reshape(n, m), s["propensity"].reshape(n, m)))
    print(json.dumps({"refit": variant, "fit_s": round(fit_s), "best_round": model.best_iteration_,
                      "propensity_auc": round(auc(rows["redeemed"].to_numpy()[treated],
                                                  proba[treated, 2]), 4),
                      "policy": round(v, 3), "share_of_oracle": round(v / bench.oracle, 4)}),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["swap", "refit"])
    parser.add_argument("variants", nargs="*", default=["base"])
    args = parser.parse_args()
    store, settings = get_store_settings(), get_train_settings()
    service = settings.reward_service
    data = reward_dataset(store, store.world_dir, (settings.valid_share, settings.test_share),
                          service, service_feature_names(open_store(store), service))
    bench = PolicyBench(data, store, settings.seed)
    print(json.dumps({"oracle": round(bench.oracle, 3)}), flush=True)
    if args.what == "swap":
        import mlflow.lightgbm
        from mlflow import MlflowClient

        from training import tracking

        tracking.configure_mlflow(store.tracking_uri, store.artifact_root, settings.experiment)
        version = tracking.alias_version(settings.reward_model_name, "champion")
        run_id = MlflowClient().get_model_version(settings.reward_model_name, version).run_id
        swap(mlflow.lightgbm.load_model(f"runs:/{run_id}/{tracking.NATIVE_ARTIFACT}"), data, bench)
        return
    table = variants(_traits(store))
    for variant in args.variants:  # "a+b" appends the columns of both
        parts = [table[v] for v in variant.split("+")]
        refit(variant, lambda col, ids, parts=parts: {k: v for f in parts
                                                      for k, v in f(col, ids).items()},
              data, bench, settings)


if __name__ == "__main__":
    main()
