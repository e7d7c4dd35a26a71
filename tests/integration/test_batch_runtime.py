"""`rewards score-batch` on the small trained world, single process: the faster chunk scoring
gives exactly the output of the code it replaced, and the compiled runtime (lleaves on the
champions' native LightGBM models) scores like the ONNX models or refuses to run.

The Dask engine with the compiled runtime is in test_dask_engine.py (it needs the cluster).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
from serving.config import StoreSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def reference_score_members(members: pd.DataFrame, catalog, reward_model,  # noqa: ANN001
                            difficulty_model, k_rewards: int,  # noqa: ANN001
                            flow_zone: float) -> pd.DataFrame:
    """serving.batch.scoring.score_members before the chunk-overhead work, kept verbatim as the
    reference: every member crossed with every item column by column, the no-offer rows
    stacked after the offers, flow_zone_choice over all rows, a pivot and a merge."""
    from serving.batch.scoring import _top_rewards
    from serving.decisioning.candidates import (
        CHALLENGE_ITEM_COLUMNS, REWARD_ITEM_COLUMNS, cross, difficulty_matrix, no_offer_items,
        reward_matrix,
    )
    from serving.decisioning.ranking import basket_estimate, expected_value, flow_zone_choice
    from serving.decisioning.recommend import DEFAULT_MARGIN

    n = len(members)
    rw = catalog.rewards
    m = len(rw)
    r_names = reward_model.meta.service_features
    member_cols = {c: members[c].to_numpy(np.float32) for c in r_names
                   if c not in REWARD_ITEM_COLUMNS}
    items = {c: rw[c].to_numpy(np.float32) for c in REWARD_ITEM_COLUMNS}
    X = np.vstack([reward_matrix(cross(member_cols, items), np.ones(n * m), r_names,
                                 catalog.vocabulary),
                   reward_matrix({**member_cols, **no_offer_items(n)}, np.zeros(n), r_names,
                                 catalog.vocabulary)])
    proba = reward_model.predict(X)
    offer, control = proba[: n * m], proba[n * m:]
    control = np.repeat(control, m, axis=0)  # the old ranking.reward_scores, inlined:
    p_convert, p_control = offer[:, 1] + offer[:, 2], control[:, 1] + control[:, 2]
    s = {"propensity": offer[:, 2], "uplift": p_convert - p_control}
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
                           d_names, catalog.vocabulary)
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


@pytest.fixture(scope="module")
def world(trained_store):  # noqa: ANN001, ANN201
    """The trained small store's catalog, members, champion ONNX models and native paths."""
    from serving.batch.scoring import latest_member_features
    from serving.stores.features import open_store, service_feature_names
    from serving.stores.models import ChampionSource, load_onnx
    from serving.config import ServeSettings
    from serving.stores.catalog import load_store_catalog

    store: StoreSettings = trained_store[0]
    feast_store = open_store(store)
    source = ChampionSource(store.tracking_uri, store.models)
    onnx, native = {}, {}
    for name, service, derived in (("reward", "propensity_v1", REWARD_DERIVED),
                                   ("difficulty", "difficulty_v1", DIFFICULTY_DERIVED)):
        version, path = source.champion(name)
        onnx[name] = load_onnx(path, service_feature_names(feast_store, service), derived)
        native[name] = source.native(name, version)
    features = store.features_dir / "member_features.parquet"
    return {"store": store, "features": features, "members": latest_member_features(features),
            "catalog": load_store_catalog(ServeSettings().events(store)),
            "onnx": onnx, "native": native}


@pytest.fixture(scope="module")
def compiled(world, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    from serving.batch.compiled import compile_native

    cache = tmp_path_factory.mktemp("compiled")
    return {name: compile_native(world["native"][name], world["onnx"][name], cache)
            for name in ("reward", "difficulty")}


def test_native_model_is_the_champion_versions_own(world) -> None:  # noqa: ANN001
    """The registry version's training run logged the native booster next to the ONNX export:
    it is copied beside the ONNX file, and its features are the ONNX inputs in order."""
    import lightgbm

    for name in ("reward", "difficulty"):
        path, onnx = world["native"][name], world["onnx"][name]
        assert path == onnx.path.parent / "model.lgb"
        assert lightgbm.Booster(model_file=str(path)).feature_name() == onnx.meta.input_names


def test_chunk_scoring_output_is_unchanged(world, tmp_path: Path) -> None:  # noqa: ANN001
    """score_members (stacked member rows, one argmin per template, no pivot) gives the old
    code's table exactly: every column, dtype and value, for any chunking; and score_batch's
    file is the reference chunks written in order."""
    from serving.batch.scoring import score_batch, score_members

    members, catalog, onnx = world["members"], world["catalog"], world["onnx"]
    for lo, hi, k in ((0, 2_000, 3), (17, 420, 5), (1_999, 2_000, 1)):
        chunk = members.iloc[lo:hi]
        expected = reference_score_members(chunk, catalog, onnx["reward"], onnx["difficulty"],
                                           k, 0.7)
        got = score_members(chunk, catalog, onnx["reward"], onnx["difficulty"], k, 0.7)
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
    out = tmp_path / "scores.parquet"
    assert score_batch(world["features"], catalog, onnx["reward"], onnx["difficulty"], out,
                       flow_zone=0.6, chunk_size=333) == 2_000
    expected = pd.concat([reference_score_members(members.iloc[lo:lo + 333], catalog,
                                                  onnx["reward"], onnx["difficulty"], 3, 0.6)
                          for lo in range(0, 2_000, 333)], ignore_index=True)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected, check_exact=True)


def test_compiled_runtime_scores_like_onnx(world, compiled, tmp_path: Path) -> None:  # noqa: ANN001
    """Same files but for float rounding: probabilities within 1e-5 on real rows, every reward
    and target identical unless the two runtimes' values are within 1e-5 of a tie; the check
    ran on at least 10,000 rows of each model; lleaves threads split rows, never sums."""
    from serving.batch.scoring import compare_scores, score_batch, value_scale
    from serving.batch.compiled import MIN_PARITY_ROWS

    catalog, onnx = world["catalog"], world["onnx"]
    files = {}
    for label, reward, difficulty in (("onnx", onnx["reward"], onnx["difficulty"]),
                                      ("compiled", compiled["reward"], compiled["difficulty"])):
        files[label] = tmp_path / f"{label}.parquet"
        score_batch(world["features"], catalog, reward, difficulty, files[label], chunk_size=500)
    for model in compiled.values():
        assert model.verified and model.parity_rows >= MIN_PARITY_ROWS
        assert model.parity_max_abs_diff <= 1e-5
        X = np.random.default_rng(0).normal(0, 3, (50, len(model.meta.input_names)))
        proba = model.predict(X)
        assert proba.shape == (50, len(model.meta.classes)) and proba.dtype == np.float32
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(proba, model.reference.predict(X.astype(np.float32)),
                                   atol=1e-5, rtol=0)
    a, b = pd.read_parquet(files["onnx"]), pd.read_parquet(files["compiled"])
    comparison = compare_scores(a, b, scale=value_scale(world["members"], catalog,
                                                        onnx["reward"].meta))
    assert comparison.equivalent, comparison
    assert comparison.max_probability_diff <= 1e-5
    assert a["reward_1"].ne("").all()

    two = tmp_path / "compiled_2_threads.parquet"
    compiled["reward"].threads = compiled["difficulty"].threads = 2
    try:
        score_batch(world["features"], catalog, compiled["reward"], compiled["difficulty"], two)
    finally:
        compiled["reward"].threads = compiled["difficulty"].threads = 1
    pd.testing.assert_frame_equal(pd.read_parquet(two), b, check_exact=True)


def test_compiled_code_is_cached_by_model_bytes(world, compiled, tmp_path: Path) -> None:  # noqa: ANN001
    """A second compile of the same bytes loads the cached code (no compile time); other bytes
    are another cache entry."""
    from serving.batch.compiled import compile_native

    first = compiled["difficulty"]
    again = compile_native(first.native_path, first.reference, first.path.parent)
    assert again.path == first.path and again.compile_seconds == 0.0
    edited = tmp_path / "model.lgb"
    edited.write_bytes(first.native_path.read_bytes() + b"\n")
    other = compile_native(edited, first.reference, tmp_path)
    assert other.path != first.path and other.compile_seconds > 0
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed


def test_a_leftover_temporary_file_is_not_taken_for_compiled_code(world, compiled,  # noqa: ANN001
                                                                 tmp_path: Path) -> None:
    """lleaves loads whatever sits at its cache path: a file left at the temporary name by a
    killed run with the same pid (containers) must be replaced by a real compile."""
    import os

    from serving.batch.compiled import cache_key, compile_native

    first = compiled["difficulty"]
    native = tmp_path / "model.lgb"
    native.write_bytes(first.native_path.read_bytes())
    final = f"compiled-{cache_key(native.read_bytes())}.so"
    (tmp_path / f".{final}.{os.getpid()}.tmp").write_bytes(b"half a shared object")
    fresh = compile_native(native, first.reference, tmp_path)
    assert fresh.compile_seconds > 0 and fresh.path.name == final
    X = np.random.default_rng(0).normal(size=(64, len(first.meta.input_names)))
    np.testing.assert_allclose(fresh.predict(X), first.predict(X), atol=1e-6)


def _tamper_leaves(text: str) -> str:
    """The model with its first tree's leaf values altered in place (one digit each, so the
    header's tree byte sizes still hold): same features, other scores."""

    def altered(value: str) -> str:
        i = next(i for i, c in enumerate(value) if c.isdigit())
        return value[:i] + ("9" if value[i] != "9" else "1") + value[i + 1:]

    head, sep, rest = text.partition("\nleaf_value=")
    line, newline, tail = rest.partition("\n")
    return head + sep + " ".join(altered(v) for v in line.split(" ")) + newline + tail


def test_compiled_runtime_refuses_a_model_that_disagrees(world, tmp_path: Path) -> None:  # noqa: ANN001
    """A native model with its features in another order is refused before compiling; one
    whose trees were altered compiles but fails the parity check on the first chunk, naming the
    model and the difference, and nothing is written."""
    from serving.batch.scoring import score_batch
    from serving.batch.compiled import ParityRefused, compile_native
    from serving.stores.models import ModelRefused

    onnx = world["onnx"]
    text = world["native"]["difficulty"].read_text()
    header = next(line for line in text.split("\n") if line.startswith("feature_names="))
    names = header.removeprefix("feature_names=").split()
    swapped = tmp_path / "swapped.lgb"
    swapped.write_text(text.replace(header, "feature_names=" + " ".join(
        [names[1], names[0], *names[2:]])))
    with pytest.raises(ModelRefused, match=r"difficulty v1: the native model's features are "
                                           r"not the ONNX model's inputs .*position 0"):
        compile_native(swapped, onnx["difficulty"], tmp_path)

    tampered = tmp_path / "tampered.lgb"
    tampered.write_text(_tamper_leaves(text))
    model = compile_native(tampered, onnx["difficulty"], tmp_path)
    out = tmp_path / "scores.parquet"
    with pytest.raises(ParityRefused, match=r"difficulty v1: the compiled native model "
                                            r"\(tampered.lgb\) disagrees with the ONNX model on "
                                            r"20000 rows of the first chunk: max abs difference"):
        score_batch(world["features"], world["catalog"], onnx["reward"], model, out)
    assert not model.verified and not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_cli_runtime_compiled_and_its_refusal(copy_store, tmp_path: Path,  # noqa: ANN001
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`rewards score-batch --runtime compiled` end to end on a copy of the store: it compiles
    the champions' native models beside them and reports the parity; with a tampered native
    model it exits with one clear line naming the model and the difference."""
    import json

    from typer.testing import CliRunner

    from serving.config import get_store_settings
    from training.cli.app import app

    store: StoreSettings = copy_store(tmp_path)
    monkeypatch.setenv("REWARDS_MODELS_DIR", str(store.models))
    get_store_settings.cache_clear()
    out = tmp_path / "scores.parquet"
    args = ["score-batch", "--out", str(out), "--runtime", "compiled", "--data-dir",
            str(store.data)]
    try:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.rindex('{"members"'):])  # after tqdm
        assert report["runtime"] == "compiled" and report["members"] == 2_000
        assert all(d <= 1e-5 for d in report["parity_max_abs_diff"].values())
        assert list((store.models / "reward" / "1").glob("compiled-*.so"))
        native = store.models / "difficulty" / "1" / "model.lgb"
        native.write_text(_tamper_leaves(native.read_text()))
        out.unlink()
        refused = CliRunner().invoke(app, args)
        bad = CliRunner().invoke(app, [*args[:3], "--runtime", "llvm"])
    finally:
        get_store_settings.cache_clear()
    assert refused.exit_code == 2, refused.output
    assert "difficulty v1" in refused.output and "max abs difference" in refused.output
    assert "Traceback" not in refused.output and not out.exists()
    assert bad.exit_code == 2 and "--runtime" in bad.output
