"""Offline batch scoring of every member with the champion models (`rewards score-batch`).

Same contract and candidate builder as the API, but vectorized over member chunks: one model
call per model per chunk, on the champion ONNX models (onnxruntime) or, with ``--runtime
compiled``, on the same versions' native LightGBM models compiled by lleaves and checked against
them first (serving.batch.compiled). It applies eligibility, consent and diversity; frequency caps,
budgets and exploration are request-time rules, so campaigns that need them should use
POST /v1/recommendations/batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from serving.decisioning.candidates import MemberRows, candidate_rows
from serving.batch.compiled import MIN_PARITY_ROWS, CompiledModel
from serving.contract.model_meta import ModelMetadata
from serving.stores.models import LoadedModel, ModelRefused
from serving.decisioning.ranking import flow_zone_targets, member_basket, target_layout
from serving.decisioning.scoring import member_matrix, score_member_rows
from serving.decisioning.catalog import Catalog
from serving.decisioning.recommend import DEFAULT_MARGIN


@dataclass(frozen=True)
class BatchResult:
    members: int
    rows: int
    seconds: float


def latest_member_features(features_path: Path) -> pd.DataFrame:
    """Each member's newest feature row from the offline table (what materialize serves).

    Read with DuckDB: it filters on the timestamp column first and decodes the other columns
    only for the rows that match. pyarrow's dataset filter decodes every row group in full, and
    each of them holds some of the last day: 2.4 s against 1.2 s at 100,000 members.
    """
    import duckdb

    source = str(features_path / "**" / "*.parquet") if features_path.is_dir() \
        else str(features_path)
    with duckdb.connect() as con:
        table = con.execute(
            "SELECT * FROM read_parquet($src) WHERE event_timestamp = "
            "(SELECT max(event_timestamp) FROM read_parquet($src)) ORDER BY member_id",
            {"src": source}).to_arrow_table()
    # DuckDB names UTC "Etc/UTC": back to the writer's "UTC", so the frame is the same as before
    i = table.schema.get_field_index("event_timestamp")
    unit = table.schema.field(i).type.unit
    table = table.set_column(i, "event_timestamp",
                             table.column(i).cast(pa.timestamp(unit, tz="UTC")))
    return table.to_pandas()


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


#: The models batch scoring runs: verified ONNX sessions, or compiled stand-ins for them.
BatchModel = LoadedModel | CompiledModel


@dataclass(frozen=True)
class BatchPlan:
    """Everything about the catalog and the two models' inputs that every chunk shares.

    Built once per run (or per Dask partition) so that a chunk only pays for its members: the
    candidate matrices are the request path's compiled :class:`MemberRows` (verified against
    the one row builder in serving.decisioning.candidates) stacked over the chunk's members.
    """

    reward_features: tuple[str, ...]  # the service features the rows were built for
    difficulty_features: tuple[str, ...]
    reward_rows: MemberRows
    difficulty_rows: MemberRows
    layout: np.ndarray  # (templates, max targets) grid rows, see target_layout
    template_ids: tuple[str, ...]  # challenge id of each layout row
    grid_target: np.ndarray
    target_dtype: np.dtype  # of the output's target and probability columns

    @classmethod
    def of(cls, catalog: Catalog, reward: ModelMetadata, difficulty: ModelMetadata) -> BatchPlan:
        r_names, d_names = list(reward.service_features), list(difficulty.service_features)
        reward_rows = candidate_rows(catalog, "reward", r_names)
        difficulty_rows = candidate_rows(catalog, "difficulty", d_names)
        codes, ids = pd.factorize(catalog.targets["challenge_id"])
        grid_target = catalog.targets["target"].to_numpy()
        return cls(tuple(r_names), tuple(d_names), reward_rows, difficulty_rows,
                   target_layout(codes, grid_target),
                   tuple(ids), grid_target, np.result_type(grid_target.dtype, np.float32))

    def matches(self, reward: ModelMetadata, difficulty: ModelMetadata) -> bool:
        return (self.reward_features == tuple(reward.service_features)
                and self.difficulty_features == tuple(difficulty.service_features))


def score_members(members: pd.DataFrame, catalog: Catalog, reward_model: BatchModel,
                  difficulty_model: BatchModel, k_rewards: int, flow_zone: float,
                  plan: BatchPlan | None = None) -> pd.DataFrame:
    """Top-k rewards and every template's flow-zone target for a chunk of members.

    ``plan``: the run's :class:`BatchPlan` (built here when not given). Each model's matrix is
    built in the dtype its runtime reads, with the same values either way.
    """
    for model in (reward_model, difficulty_model):
        if isinstance(model, CompiledModel) and not model.verified:  # callers verify first
            raise ModelRefused(f"{model.meta.name} v{model.meta.version}: compiled model used "
                               "before its parity check (verify_compiled)")
    if plan is None or not plan.matches(reward_model.meta, difficulty_model.meta):
        plan = BatchPlan.of(catalog, reward_model.meta, difficulty_model.meta)
    n = len(members)
    rw = catalog.rewards
    rows = plan.reward_rows
    scores = score_member_rows(reward_model.predict, member_matrix(members, rows.member_names),
                               rows, reward_model.input_dtype)  # each reward, then no offer
    params = reward_model.meta.value_params
    value = scores.values(member_basket(members["avg_basket_90d"].to_numpy(), params),
                          rw["cost"].to_numpy(), params.get("margin", DEFAULT_MARGIN))
    eligible = rw["min_tier_rank"].to_numpy()[None, :] <= members["tier_rank"].to_numpy()[:, None]
    top = _top_rewards(value, eligible, rw["category"].to_numpy(), k_rewards)

    rows = plan.difficulty_rows
    Xd = rows.stack(member_matrix(members, rows.member_names), difficulty_model.input_dtype)
    p = difficulty_model.predict(Xd)[:, 1].reshape(n, -1)
    chosen = flow_zone_targets(p, plan.layout, flow_zone)  # (members, templates) grid rows

    out: dict[str, np.ndarray] = {"member_id": members["member_id"].to_numpy()}
    ids = rw["reward_id"].to_numpy()
    for j in range(k_rewards):
        idx = top[:, j]
        out[f"reward_{j + 1}"] = np.where(idx >= 0, ids[np.maximum(idx, 0)], "")
        out[f"reward_{j + 1}_value"] = np.where(
            idx >= 0, value[np.arange(n), np.maximum(idx, 0)], np.nan).astype(np.float32)
    # one column per template and kind, templates in id order (the layout of the old pivot)
    columns = sorted(range(len(plan.template_ids)), key=lambda t: plan.template_ids[t])
    for t in columns:
        out[f"{plan.template_ids[t]}_target"] = (
            plan.grid_target[chosen[:, t]].astype(plan.target_dtype))
    for t in columns:
        out[f"{plan.template_ids[t]}_completion_probability"] = (
            p[np.arange(n), chosen[:, t]].astype(np.float32).astype(plan.target_dtype))
    return pd.DataFrame(out)


def verify_compiled(members: pd.DataFrame, plan: BatchPlan, reward_model: BatchModel,
                    difficulty_model: BatchModel, chunk_size: int) -> None:
    """Check every compiled model not yet verified against its ONNX session, before its first
    use, on real rows: the inputs of the first chunk of ``members`` (with more members if that
    chunk has fewer than MIN_PARITY_ROWS rows). ParityRefused says which model and by how much.
    """
    if members.empty:  # no rows to compare, and none will be scored
        return
    for model, rows in ((reward_model, plan.reward_rows), (difficulty_model, plan.difficulty_rows)):
        if isinstance(model, CompiledModel) and not model.verified:
            first = members.iloc[:max(chunk_size, -(-MIN_PARITY_ROWS // len(rows.base)))]
            model.verify(rows.stack(member_matrix(first, rows.member_names), model.input_dtype))


def score_batch(features_path: Path, catalog: Catalog, reward_model: BatchModel,
                difficulty_model: BatchModel, out: Path, k_rewards: int = 3,
                flow_zone: float = 0.7, chunk_size: int = 2_000,
                progress: Callable[[int], None] | None = None,
                members: pd.DataFrame | None = None) -> int:
    """Score every member into ``out`` (.parquet or .csv); returns the number of members.

    ``members``: the latest features when the caller has read them already (the CLI does, for
    its progress bar), else read here. Compiled models are checked against their ONNX sessions
    on the first chunk before anything is scored (:func:`verify_compiled`)."""
    if members is None:
        members = latest_member_features(features_path)
    plan = BatchPlan.of(catalog, reward_model.meta, difficulty_model.meta)
    verify_compiled(members, plan, reward_model, difficulty_model, chunk_size)
    chunks = (score_members(members.iloc[lo:lo + chunk_size], catalog, reward_model,
                            difficulty_model, k_rewards, flow_zone, plan)
              for lo in range(0, len(members), chunk_size))
    write_scores(chunks, out, progress)
    return len(members)


@dataclass(frozen=True)
class ScoreComparison:
    """How two score files of the same members and champions differ (runtime A/B checks).

    Model runtimes that differ by float rounding may rank two nearly tied rewards, or choose
    between two targets nearly as close to the flow zone, the other way round: such a choice is
    *tied* when the two runs' values (or distances to the flow zone) at that place are within
    the tolerance. Any untied difference means the runtimes do not score alike.
    """

    members: int
    max_value_diff: float  # reward values, absolute (money)
    max_value_scaled_diff: float  # |difference| / the member's value scale: what is bounded
    max_probability_diff: float  # completion probabilities where both chose the same target
    reward_mismatches: int  # (member, slot) with another reward id
    reward_mismatches_untied: int
    target_mismatches: int  # (member, template) with another target
    target_mismatches_untied: int
    tolerance: float

    @property
    def equivalent(self) -> bool:
        return (self.reward_mismatches_untied == 0 and self.target_mismatches_untied == 0
                and self.max_value_scaled_diff <= self.tolerance
                and self.max_probability_diff <= self.tolerance)


def value_scale(members: pd.DataFrame, catalog: Catalog, reward: ModelMetadata) -> np.ndarray:
    """Per member, how far a reward value can move per unit of probability error.

    value = margin x basket x uplift - P(redeem) x cost, and uplift is a difference of two sums
    of two class probabilities, so probabilities that are each off by at most d move a value by
    at most d x (4 x margin x basket + cost): comparing values in this unit compares them in the
    probability tolerance the runtimes are held to.
    """
    params = reward.value_params
    basket = member_basket(members["avg_basket_90d"].to_numpy(), params)
    return (4 * params.get("margin", DEFAULT_MARGIN) * basket
            + float(catalog.rewards["cost"].max()))


def compare_scores(a: pd.DataFrame, b: pd.DataFrame, tolerance: float = 1e-5,
                   flow_zone: float = 0.7, scale: np.ndarray | None = None) -> ScoreComparison:
    """Compare two outputs of :func:`score_members` (same members, same columns, same order).

    ``scale``: each member's :func:`value_scale` (default: max(1, |value|), a rougher unit).
    """
    if list(a.columns) != list(b.columns) or not a["member_id"].equals(b["member_id"]):
        raise ValueError("the two score tables have different columns or members")
    rewards = [c for c in a.columns if c.startswith("reward_") and not c.endswith("_value")]
    va = a[[f"{c}_value" for c in rewards]].to_numpy(np.float64)
    vb = b[[f"{c}_value" for c in rewards]].to_numpy(np.float64)
    unit = np.fmax(1.0, np.abs(va)) if scale is None else np.asarray(scale)[:, None]
    value_abs = np.where(np.isnan(va) & np.isnan(vb), 0.0, np.abs(va - vb))
    value_scaled = value_abs / unit
    other = a[rewards].to_numpy() != b[rewards].to_numpy()

    templates = [c.removesuffix("_target") for c in a.columns if c.endswith("_target")]
    ta, tb = (f[[f"{t}_target" for t in templates]].to_numpy() for f in (a, b))
    pa_, pb = (f[[f"{t}_completion_probability" for t in templates]].to_numpy(np.float64)
               for f in (a, b))
    moved = ta != tb
    prob_diff = np.where(moved, 0.0, np.abs(pa_ - pb))
    distance_diff = np.abs(np.abs(pa_ - flow_zone) - np.abs(pb - flow_zone))
    return ScoreComparison(
        members=len(a),
        max_value_diff=float(np.nan_to_num(value_abs, nan=np.inf).max(initial=0.0)),
        max_value_scaled_diff=float(np.nan_to_num(value_scaled, nan=np.inf).max(initial=0.0)),
        max_probability_diff=float(np.nan_to_num(prob_diff, nan=np.inf).max(initial=0.0)),
        reward_mismatches=int(other.sum()),
        reward_mismatches_untied=int((other & ~(value_scaled <= tolerance)).sum()),
        target_mismatches=int(moved.sum()),
        target_mismatches_untied=int((moved & ~(distance_diff <= tolerance)).sum()),
        tolerance=tolerance)


def write_scores(chunks: Iterable[pd.DataFrame], out: Path,
                 progress: Callable[[int], None] | None = None) -> None:
    """Write scored chunks in order to ``out`` (.parquet streamed, .csv at the end), through a
    temporary file renamed at the end so readers never see a partial file; a failure while
    scoring (say a Dask worker refusing a model) leaves no partial file behind either. Shared by
    the single-process and the Dask engines, so both write byte-identical tables."""
    tmp = out.with_name(out.name + ".tmp")
    writer: pq.ParquetWriter | None = None
    frames = []
    try:
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
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
