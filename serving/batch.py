"""Offline batch scoring of every member with the champion ONNX models (`rewards score-batch`).

Same contract and candidate builder as the API, but vectorized over member chunks: one
onnxruntime call per model per chunk. It applies eligibility, consent and diversity; frequency
caps, budgets and exploration are request-time rules, so campaigns that need them should use
POST /v1/recommendations/batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from serving.candidates import (
    CHALLENGE_ITEM_COLUMNS, REWARD_ITEM_COLUMNS, cross, difficulty_matrix, no_offer_items,
    reward_matrix,
)
from serving.models import LoadedModel
from serving.ranking import basket_estimate, expected_value, flow_zone_choice, reward_scores
from serving.recommend import DEFAULT_MARGIN, Catalog


@dataclass(frozen=True)
class BatchResult:
    members: int
    rows: int
    seconds: float


def latest_member_features(features_path: Path) -> pd.DataFrame:
    """Each member's newest feature row from the offline table (what materialize serves)."""
    ds = pads.dataset(features_path)
    last = pa.compute.max(ds.to_table(columns=["event_timestamp"])["event_timestamp"])
    table = ds.to_table(filter=pads.field("event_timestamp") == last)
    return table.to_pandas().sort_values("member_id").reset_index(drop=True)


def _top_rewards(value: np.ndarray, eligible: np.ndarray, category: np.ndarray,
                 k: int) -> np.ndarray:
    """Per row, the indices of the k best eligible rewards with at most one per category."""
    v = np.where(eligible, value, -np.inf)
    cats = np.unique(category)
    # best reward of each category, then the k best categories
    per_cat = [np.where(category == c, v, -np.inf) for c in cats]
    best_in_cat = np.stack([mv.argmax(axis=1) for mv in per_cat], axis=1)
    best_val = np.stack([mv.max(axis=1) for mv in per_cat], axis=1)
    order = np.argsort(-best_val, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(best_in_cat, order, axis=1)
    return np.where(np.take_along_axis(best_val, order, axis=1) > -np.inf, picked, -1)


def score_members(members: pd.DataFrame, catalog: Catalog, reward_model: LoadedModel,
                  difficulty_model: LoadedModel, k_rewards: int, flow_zone: float
                  ) -> pd.DataFrame:
    """Top-k rewards and every template's flow-zone target for a chunk of members."""
    n = len(members)
    rw = catalog.rewards
    m = len(rw)
    r_names = reward_model.meta.service_features
    member_cols = {c: members[c].to_numpy(np.float32) for c in r_names
                   if c not in REWARD_ITEM_COLUMNS}
    items = {c: rw[c].to_numpy(np.float32) for c in REWARD_ITEM_COLUMNS}
    X = np.vstack([reward_matrix(cross(member_cols, items), np.ones(n * m), r_names),
                   reward_matrix({**member_cols, **no_offer_items(n)}, np.zeros(n), r_names)])
    proba = reward_model.predict(X)
    offer, control = proba[: n * m], proba[n * m:]
    s = reward_scores(offer, np.repeat(control, m, axis=0))
    params = reward_model.meta.value_params
    basket = basket_estimate(members["avg_basket_90d"].to_numpy(),
                             params.get("basket_multiplier", 1.0),
                             params.get("basket_fallback", 50.0))
    value = expected_value(s["uplift"].reshape(n, m), s["propensity"].reshape(n, m),
                           basket[:, None], rw["cost"].to_numpy()[None, :],
                           params.get("margin", DEFAULT_MARGIN))
    eligible = rw["min_tier_rank"].to_numpy()[None, :] <= members["tier_rank"].to_numpy()[:, None]
    top = _top_rewards(value, eligible, rw["category"].to_numpy(), k_rewards)

    grid = catalog.targets
    g = len(grid)
    d_names = difficulty_model.meta.service_features
    d_member = {c: members[c].to_numpy(np.float32) for c in d_names
                if c not in CHALLENGE_ITEM_COLUMNS}
    d_items = {c: grid[c].to_numpy(np.float32) for c in CHALLENGE_ITEM_COLUMNS}
    Xd = difficulty_matrix(cross(d_member, d_items), np.tile(grid["target"].to_numpy(), n),
                           d_names)
    p = difficulty_model.predict(Xd)[:, 1]
    template = np.tile(pd.factorize(grid["challenge_id"])[0], n)
    group = np.repeat(np.arange(n), g) * 1000 + template
    chosen = flow_zone_choice(group, np.tile(grid["target"].to_numpy(), n), p, flow_zone)

    out = pd.DataFrame({"member_id": members["member_id"].to_numpy()})
    ids = rw["reward_id"].to_numpy()
    for j in range(k_rewards):
        idx = top[:, j]
        out[f"reward_{j + 1}"] = np.where(idx >= 0, ids[np.maximum(idx, 0)], "")
        out[f"reward_{j + 1}_value"] = np.where(
            idx >= 0, value[np.arange(n), np.maximum(idx, 0)], np.nan).astype(np.float32)
    targets = pd.DataFrame({"member_id": np.repeat(members["member_id"].to_numpy(), g)[chosen],
                            "challenge_id": grid["challenge_id"].to_numpy()[chosen % g],
                            "target": np.tile(grid["target"].to_numpy(), n)[chosen],
                            "p": p[chosen].astype(np.float32)})
    wide = targets.pivot(index="member_id", columns="challenge_id", values=["target", "p"])
    wide.columns = [f"{cid}_{'target' if kind == 'target' else 'completion_probability'}"
                    for kind, cid in wide.columns]
    return out.merge(wide.reset_index(), on="member_id", how="left")


def score_batch(features_path: Path, catalog: Catalog, reward_model: LoadedModel,
                difficulty_model: LoadedModel, out: Path, k_rewards: int = 3,
                flow_zone: float = 0.7, chunk_size: int = 2_000,
                progress: Callable[[int], None] | None = None) -> int:
    """Score every member into ``out`` (.parquet or .csv); returns the number of members."""
    members = latest_member_features(features_path)
    chunks = (score_members(members.iloc[lo:lo + chunk_size], catalog, reward_model,
                            difficulty_model, k_rewards, flow_zone)
              for lo in range(0, len(members), chunk_size))
    write_scores(chunks, out, progress)
    return len(members)


def write_scores(chunks: Iterable[pd.DataFrame], out: Path,
                 progress: Callable[[int], None] | None = None) -> None:
    """Write scored chunks in order to ``out`` (.parquet streamed, .csv at the end), through a
    temporary file renamed at the end so readers never see a partial file. Shared by the
    single-process and the Dask engines, so both write byte-identical tables."""
    tmp = out.with_name(out.name + ".tmp")
    writer: pq.ParquetWriter | None = None
    frames = []
    for chunk in chunks:
        if out.suffix == ".csv":
            frames.append(chunk)
        else:
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if progress:
            progress(len(chunk))
    if out.suffix == ".csv":
        pd.concat(frames).to_csv(tmp, index=False)
    elif writer is not None:
        writer.close()
    tmp.replace(out)
