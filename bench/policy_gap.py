"""Where the reward policy loses value against the oracle (simulated worlds only: reads the truth).

Three measurements on an existing data folder with a trained reward champion:

- `swap`: the champion's value estimate (margin x basket x uplift - P(redeem) x cost) with one
  component at a time replaced by its true value, so the loss can be pinned on one of them;
- `readout`: how much of the hidden traits the policy members' features reveal: the share of
  members whose most-bought category is their true favourite, and the 4-fold accuracy of a
  player-type classifier trained on the hidden types;
- `refit VARIANT...`: the reward model refitted with the champion's parameters on the same
  training set plus extra columns, then its test AUC and policy value. Variants: `base` (no
  extra column), `true_pref` / `true_type` / `true_traits` (the hidden category preferences,
  player type, or every hidden trait: a ceiling for what better features could recover),
  `reward_type_onehot`, `pref_summaries` (category count of the reward's category, 1/8 for
  rewards valid in any category, streak lift, max share and entropy of the purchase shares);
  `arm_stack` (cross-fitted per-arm models: each member's predicted conversion under each
  reward type and under no offer, learned from the logged outcomes of that arm only);
  `type_posterior` (a player-type classifier trained on the hidden types, cross-fitted by
  member: how much a near-perfect reading of the type from the same history would be worth; no
  real program has these labels). Learner variants keep the columns and change the fit:
  `hierarchical` (binary P(convert) and P(redeem | converted) models instead of three classes),
  `forced_type_splits` (every tree first splits the rows by reward type),
  `refit_train_valid` (refit on train + validation with the early-stopped number of rounds,
  scaled by the row count), `weighted` / `weighted_sqrt` (the training's logging weights,
  full or their square root; the other variants fit unweighted). `a+b` combines any of them;
- `curve N...`: the learning curve of the base refit: the same fit on a random N of the
  training offers (and the same share of the validation ones), the policy value of each; with
  `--param name=value` (TrainSettings fields) to try other LightGBM settings. How much a policy
  learnt from N uniformly randomized offers can reach: the learning loop's information ceiling.

    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/policy_gap.py swap
    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/policy_gap.py readout
    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/policy_gap.py refit base true_pref
    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/policy_gap.py refit hierarchical \
        forced_type_splits arm_stack refit_train_valid type_posterior
    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/policy_gap.py curve 14000 50000 \
        --param min_child_samples=50

Prints one JSON line per measurement. Each refit is a full LightGBM fit (about 2-4 min at 100k).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from serving.config import get_store_settings
from training.simulate.generate.catalog import CATEGORIES, REWARD_TYPES, VOCABULARY
from serving.decisioning.candidates import (
    NO_OFFER,
    REWARD_ITEM_COLUMNS,
    cross,
    no_offer_items,
    reward_matrix,
)
from serving.decisioning.scoring import scores_from_proba
from serving.stores.features import open_store, service_feature_names
from training.config import get_train_settings
from training.data.datasets import Dataset, reward_dataset
from training.evaluation.evaluate import fit_value_params, member_baskets, policy_members
from training.evaluation.metrics import auc
from training.evaluation.scoring import score_rewards
from training.models.lgbm import predict_proba
from training.models.params import lgbm_params
from training.simulate.generate.catalog import PLAYER_TYPES, codes_of
from training.simulate.oracle import WorldTruth, policy_value


def _columns(frame: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
    return {n: frame[n].to_numpy(dtype=np.float32) for n in names if n in frame.columns}


#: Extra columns from (model inputs by name, member ids) -> {column name: values}.
Extra = Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]


def _traits(store) -> pd.DataFrame:  # noqa: ANN001
    traits = pd.read_parquet(store.world_dir / "truth" / "member_traits.parquet")
    traits["player_type_code"] = codes_of(traits["player_type"], PLAYER_TYPES, "player_type")
    return traits.set_index("member_id")


def _member_inputs(data: Dataset) -> list[str]:
    return [n for n in data.service_features if n not in REWARD_ITEM_COLUMNS]


def _cross_fitted(data: Dataset, label: np.ndarray, rows: np.ndarray,
                  params: dict[str, object]) -> list[lgb.Booster]:
    """Two boosters on the member inputs of ``rows``; booster f never saw members with
    id % 2 == f."""
    names = _member_inputs(data)
    X = data.X[:, [data.input_names.index(n) for n in names]]
    ids = data.rows["member_id"].to_numpy()
    params = dict(params)
    rounds = int(params.pop("rounds", 150))
    models = []
    for f in (0, 1):
        fit = rows & (ids % 2 != f)
        models.append(lgb.train({"verbose": -1, "num_threads": get_train_settings().num_threads,
                                 "min_child_samples": 200,
                                 "subsample": 0.8, "subsample_freq": 1,
                                 "colsample_bytree": 0.8, **params},
                                lgb.Dataset(X[fit], label[fit]), rounds))
    return models


def _predict_cross_fitted(models: list[lgb.Booster], data: Dataset, col: dict,
                          ids: np.ndarray, raw: bool = False) -> np.ndarray:
    X = np.column_stack([col[n] for n in _member_inputs(data)])
    out = None
    for f, model in enumerate(models):
        sel = ids % 2 == f
        pred = model.predict(X[sel], raw_score=raw)
        if out is None:
            out = np.zeros((len(ids), *pred.shape[1:]), dtype=np.float32)
        out[sel] = pred
    return out


def variants(traits: pd.DataFrame, data: Dataset) -> dict[str, Extra]:
    prefs = [c for c in traits.columns if c.startswith("pref_")]
    fitted: dict[str, object] = {}  # lazily fitted side models, by variant

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

    def type_posterior(col: dict, ids: np.ndarray) -> dict:
        if "type" not in fitted:
            member = data.rows["member_id"].to_numpy()
            label = traits.loc[member, "player_type_code"].to_numpy()
            fitted["type"] = _cross_fitted(data, label, np.ones(len(label), bool), {
                "objective": "multiclass", "num_class": len(PLAYER_TYPES), "num_leaves": 31,
                "learning_rate": 0.1})
        post = _predict_cross_fitted(fitted["type"], data, col, ids)
        return {f"type_posterior_{k}": post[:, k] for k in range(len(PLAYER_TYPES))}

    def arm_stack(col: dict, ids: np.ndarray) -> dict:
        if "arms" not in fitted:  # outcomes of the train and validation periods only
            code = data.X[:, data.input_names.index("reward_type_code")]
            seen = data.part != "test"
            converted = (data.y >= 1).astype(int)
            fitted["arms"] = [_cross_fitted(data, converted, seen & (code == k), {
                "objective": "binary", "num_leaves": 15, "learning_rate": 0.05, "rounds": 300})
                for k in [NO_OFFER, *range(len(REWARD_TYPES))]]
        logit = [_predict_cross_fitted(m, data, col, ids, raw=True) for m in fitted["arms"]]
        return {**{f"arm_logit_{k}": v for k, v in enumerate(logit)},
                **{f"arm_lift_{k}": v - logit[0] for k, v in enumerate(logit[1:], 1)}}

    return {"base": lambda col, ids: {}, "true_pref": true_pref, "true_type": true_type,
            "true_traits": true_traits, "reward_type_onehot": reward_type_onehot,
            "pref_summaries": pref_summaries, "type_posterior": type_posterior,
            "arm_stack": arm_stack}


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
        self.basket = member_baskets(self.snap, self.value_params)[:, None]
        self.oracle = self.value(self.truth["incremental_value"])

    def value(self, estimate: np.ndarray) -> float:
        return policy_value(estimate, self.truth["incremental_value"], self.truth["eligible"])

    def estimate(self, uplift: np.ndarray, p_redeem: np.ndarray,
                 basket: np.ndarray | None = None) -> np.ndarray:
        basket = self.basket if basket is None else basket
        return self.world.margin * basket * uplift - p_redeem * self.cost[None, :]


def swap(model: lgb.Booster, data: Dataset, bench: PolicyBench) -> None:
    s = score_rewards(model, bench.snap, bench.items, data.service_features, data.vocabulary)
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


LEARNERS = ("hierarchical", "forced_type_splits", "refit_train_valid", "weighted",
            "weighted_sqrt")
#: Three-class probabilities (REWARD_CLASSES) of model rows.
Predict = Callable[[np.ndarray], np.ndarray]


def _forced_type_splits(data: Dataset, folder: Path) -> str:
    """A LightGBM forced-splits file in ``folder``: a balanced binary partition of the reward
    type codes."""
    feature = data.input_names.index("reward_type_code")
    codes = [NO_OFFER, *range(len(REWARD_TYPES))]

    def node(group: list[float]) -> dict | None:
        if len(group) < 2:
            return None
        half = len(group) // 2
        out = {"feature": feature, "threshold": (group[half - 1] + group[half]) / 2}
        for side, part in (("left", group[:half]), ("right", group[half:])):
            if (child := node(part)) is not None:
                out[side] = child
        return out

    path = folder / "forced_splits.json"
    path.write_text(json.dumps(node(codes)))
    return str(path)


def _fit(X: np.ndarray, data: Dataset, settings,  # noqa: ANN001
         learners: set[str]) -> tuple[Predict, object]:
    """Fit the reward model the way ``learners`` say; returns its predictor and best round(s)."""
    with tempfile.TemporaryDirectory(prefix="policy-gap-") as tmp:  # LightGBM reads it at fit
        extra_params = ({"forcedsplits_filename": _forced_type_splits(data, Path(tmp))}
                        if "forced_type_splits" in learners else {})
        return _fit_with(X, data, settings, learners, extra_params)


def _fit_with(X: np.ndarray, data: Dataset, settings, learners: set[str],  # noqa: ANN001
              extra_params: dict[str, object]) -> tuple[Predict, object]:
    train, valid = data.part == "train", data.part == "valid"

    def fit(objective: str, label: np.ndarray, rows: np.ndarray) -> lgb.LGBMClassifier:
        params = {**lgbm_params(data, settings, objective), **extra_params}
        model = lgb.LGBMClassifier(**params)
        w = data.weight if "weighted" in learners and data.weight is not None else None
        if "weighted_sqrt" in learners and data.weight is not None:
            w = np.sqrt(data.weight)
        model.fit(X[train & rows], label[train & rows], eval_X=(X[valid & rows],),
                  eval_y=(label[valid & rows],),
                  sample_weight=None if w is None else w[train & rows],
                  eval_sample_weight=None if w is None else [w[valid & rows]],
                  callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)])
        if "refit_train_valid" not in learners:
            return model
        seen = (train | valid) & rows
        rounds = round(model.best_iteration_ * seen.sum() / (train & rows).sum())
        model = lgb.LGBMClassifier(**{**params, "n_estimators": rounds})
        return model.fit(X[seen], label[seen])

    everything = np.ones(len(data.y), dtype=bool)
    if "hierarchical" not in learners:
        model = fit("multiclass", data.y, everything)
        return (lambda rows: predict_proba(model, rows)), _rounds(model)
    converted = (data.y >= 1).astype(int)
    conversion = fit("binary", converted, everything)
    offered_and_converted = (X[:, data.input_names.index("treated")] == 1) & (converted == 1)
    redemption = fit("binary", (data.y == 2).astype(int), offered_and_converted)

    def predict(rows: np.ndarray) -> np.ndarray:
        p_convert = predict_proba(conversion, rows)[:, 1]
        p_redeem = p_convert * predict_proba(redemption, rows)[:, 1]
        return np.column_stack([1.0 - p_convert, p_convert - p_redeem, p_redeem])

    return predict, [_rounds(conversion), _rounds(redemption)]


def _rounds(model: lgb.LGBMClassifier) -> int:
    """Trees per class the model predicts with: the early-stopped round, else all of them."""
    return int(model.best_iteration_ or model.n_estimators_)


def readout(traits: pd.DataFrame, data: Dataset, bench: PolicyBench) -> None:
    """What the policy members' history says about their hidden type and favourite category."""
    from sklearn.model_selection import cross_val_predict

    truth = traits.loc[bench.ids]
    prefs = truth[[f"pref_{c}" for c in CATEGORIES]].to_numpy()
    shares = bench.snap[[f"share_{c}_90d" for c in CATEGORIES]].to_numpy()
    found = pd.Series(prefs.argmax(axis=1) == shares.argmax(axis=1))
    X = bench.snap[_member_inputs(data)].to_numpy(np.float32)
    label = truth["player_type_code"].to_numpy()
    guess = cross_val_predict(lgb.LGBMClassifier(n_estimators=200, verbose=-1,
                                                 num_threads=get_train_settings().num_threads),
                              X, label, cv=4).astype(int)
    print(json.dumps({
        "members": len(bench.ids),
        "median_purchases_90d": float(bench.snap["purchases_90d"].median()),
        "favourite_found": round(float(found.mean()), 4),
        "favourite_found_by_type": {t: round(float(v), 4) for t, v in
                                    found.groupby(truth["player_type"].to_numpy()).mean().items()},
        "type_accuracy_4fold": round(float((guess == label).mean()), 4),
    }), flush=True)


def refit(variant: str, extra: Extra, learners: set[str], data: Dataset, bench: PolicyBench,
          settings) -> None:  # noqa: ANN001
    names, ids = data.input_names, data.rows["member_id"].to_numpy()
    X = _with(extra, data.X, names, ids)
    test = data.part == "test"
    t0 = time.perf_counter()
    predict, rounds = _fit(X, data, settings, learners)
    fit_s = time.perf_counter() - t0
    rows = data.rows[test]
    treated = rows["treated"].to_numpy(bool)
    test_proba = predict(X[test])
    member_names = [n for n in data.service_features if n not in REWARD_ITEM_COLUMNS]
    member_cols = _columns(bench.snap, member_names)
    item_cols = _columns(bench.items, list(REWARD_ITEM_COLUMNS))
    n, m = len(bench.ids), len(bench.items)
    offer = _with(extra, reward_matrix(cross(member_cols, item_cols), np.ones(n * m),
                                       data.service_features, VOCABULARY), names,
                  np.repeat(bench.ids, m))
    control = _with(extra, reward_matrix({**member_cols, **no_offer_items(n)}, np.zeros(n),
                                         data.service_features, VOCABULARY), names, bench.ids)
    proba = np.concatenate([predict(offer).reshape(n, m, -1), predict(control).reshape(n, 1, -1)],
                           axis=1).reshape(n * (m + 1), -1)
    s = scores_from_proba(proba, n)
    v = bench.value(bench.estimate(s.uplift, s.propensity))
    print(json.dumps({"refit": variant, "fit_s": round(fit_s), "rounds": rounds,
                      "propensity_auc": round(auc(rows["redeemed"].to_numpy()[treated],
                                                  test_proba[treated, 2]), 4),
                      "policy": round(v, 3), "share_of_oracle": round(v / bench.oracle, 4)}),
          flush=True)


def curve(sizes: list[int], data: Dataset, bench: PolicyBench, settings) -> None:  # noqa: ANN001
    """The base refit on N random training offers (validation sampled at the same share)."""
    import dataclasses

    rng = np.random.default_rng(settings.seed)
    n_train = int((data.part == "train").sum())
    draw = rng.random(len(data.part))
    for n in sizes:
        keep = (draw < n / n_train) | (data.part == "test")
        part = np.where(keep, data.part, "unused")
        sub = dataclasses.replace(data, part=part)
        print(json.dumps({"curve_n_train": int((part == "train").sum()),
                          "n_valid": int((part == "valid").sum()),
                          "params": {k: getattr(settings, k) for k in
                                     ("learning_rate", "num_leaves", "min_child_samples")}}),
              flush=True)
        refit(f"curve-{n}", lambda col, ids: {}, set(), sub, bench, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["swap", "readout", "refit", "curve"])
    parser.add_argument("variants", nargs="*", default=["base"])
    parser.add_argument("--param", action="append", default=[],
                        help="name=value: a TrainSettings field for the curve's fits")
    args = parser.parse_args()
    store, settings = get_store_settings(), get_train_settings()
    if args.param:
        settings = settings.model_copy(update={k: type(getattr(settings, k))(v) for k, v in
                                               (p.split("=", 1) for p in args.param)})
    service = settings.reward_service
    data = reward_dataset(store, store.features_dir, (settings.valid_share, settings.test_share),
                          service, service_feature_names(open_store(store), service))
    bench = PolicyBench(data, store, settings.seed)
    print(json.dumps({"oracle": round(bench.oracle, 3)}), flush=True)
    if args.what == "swap":
        import mlflow.lightgbm
        from mlflow import MlflowClient

        from training.models import tracking

        tracking.configure_mlflow(store.tracking_uri, store.artifact_root, settings.experiment)
        version = tracking.alias_version(settings.reward_model_name, "champion")
        run_id = MlflowClient().get_model_version(settings.reward_model_name, version).run_id
        swap(mlflow.lightgbm.load_model(f"runs:/{run_id}/{tracking.NATIVE_ARTIFACT}"), data, bench)
        return
    if args.what == "curve":
        curve([int(v) for v in args.variants if v != "base"], data, bench, settings)
        return
    traits = _traits(store)
    if args.what == "readout":
        readout(traits, data, bench)
        return
    table = variants(traits, data)
    for variant in args.variants:  # "a+b" appends the columns of both / combines learners
        names = variant.split("+")
        unknown = [v for v in names if v not in table and v not in LEARNERS]
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; known: {[*table, *LEARNERS]}")
        parts = [table[v] for v in names if v in table]
        refit(variant, lambda col, ids, parts=parts: {k: v for f in parts
                                                      for k, v in f(col, ids).items()},
              {v for v in names if v in LEARNERS}, data, bench, settings)


if __name__ == "__main__":
    main()
