"""ONNX export of LightGBM classifiers: parity, metadata contract and failure detection."""

from __future__ import annotations

import math

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import helper

from serving.contract.model_meta import ModelMetadata, read_onnx_metadata
from training.models.export import (
    CARD_FILE,
    INPUT_NAME,
    METADATA_FILE,
    ParityError,
    check_parity,
    export_onnx,
)

N_FEATURES = 6
PARITY_ROWS = 10_000


@dataclass(frozen=True)
class Trained:
    model: lightgbm.LGBMClassifier
    metadata: ModelMetadata


def _metadata(n_classes: int, **overrides: object) -> ModelMetadata:
    fields: dict[str, object] = {
        "name": "reward",
        "version": "",
        "feature_service": "propensity_v1",
        "service_features": [f"member_f{i}" for i in range(N_FEATURES - 2)],
        "derived_features": ["treated", "tier_gap"],
        "classes": [f"class_{k}" for k in range(n_classes)],
        "trained_at": "2026-11-20T10:00:00+00:00",
        "data_window": {"train_start": "2026-01-01", "train_end": "2026-09-30"},
        "data_fingerprint": "sha256:abc123",
        "metrics": {"propensity.auc": 0.71, "propensity.ece": 0.012},
    }
    return ModelMetadata.model_validate({**fields, **overrides})


def _features(rng: np.random.Generator, n: int) -> np.ndarray:
    """Continuous columns plus a sentinel-coded one (-1 = no history), like real features."""
    X = rng.normal(size=(n, N_FEATURES))
    X[:, 3] = np.where(rng.random(n) < 0.3, -1.0, rng.integers(0, 20, n))
    return X


def _fit(kind: str, seed: int = 0) -> Trained:
    rng = np.random.default_rng(seed)
    X = _features(rng, 3_000)
    signal = X[:, 0] - 0.8 * X[:, 1] + 0.1 * X[:, 3] + rng.normal(scale=0.7, size=len(X))
    params: dict[str, Any] = {"n_estimators": 60, "num_leaves": 15, "learning_rate": 0.1,
                              "verbose": -1, "num_threads": 1}
    if kind == "multiclass":
        y = np.digitize(signal, [-0.7, 0.7])
        return Trained(lightgbm.LGBMClassifier(**params).fit(X, y), _metadata(3))
    y = (signal > 0).astype(int)
    if kind == "monotone":
        params["monotone_constraints"] = [1, -1, 0, 0, 0, 0]
    return Trained(lightgbm.LGBMClassifier(**params).fit(X, y), _metadata(2))


@pytest.fixture(scope="module", params=["binary", "multiclass", "monotone"])
def trained(request: pytest.FixtureRequest) -> Trained:
    return _fit(request.param)


@pytest.fixture(scope="module")
def parity_rows() -> np.ndarray:
    return _features(np.random.default_rng(99), PARITY_ROWS)


@pytest.fixture
def exported(trained: Trained, tmp_path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the export must be warning-free
        return export_onnx(trained.model, trained.metadata, tmp_path)


# --- graph shape and metadata --------------------------------------------------------------------


def test_graph_has_one_float_input_and_one_probability_output(
    trained: Trained, exported: Path
) -> None:
    graph = onnx.load(str(exported)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == [trained.metadata.output]
    for value, width in ((graph.input[0], N_FEATURES), (graph.output[0], trained.model.n_classes_)):
        tensor = value.type.tensor_type
        assert tensor.elem_type == onnx.TensorProto.FLOAT
        batch, columns = tensor.shape.dim
        assert not batch.HasField("dim_value")  # any batch size
        assert columns.dim_value == width
    assert "ZipMap" not in {node.op_type for node in graph.node}


def test_output_name_follows_metadata(tmp_path: Path) -> None:
    model = _fit("binary").model
    path = export_onnx(model, _metadata(2, output="p"), tmp_path)
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["p"]
    assert check_parity(model, path, _features(np.random.default_rng(1), 100)) <= 1e-5


def test_metadata_round_trip(trained: Trained, exported: Path) -> None:
    assert read_onnx_metadata(exported) == trained.metadata
    sidecar = json.loads((exported.parent / METADATA_FILE).read_text())
    assert ModelMetadata.model_validate(sidecar) == trained.metadata


def test_model_card_lists_identity_metrics_and_features(exported: Path) -> None:
    card = (exported.parent / CARD_FILE).read_text()
    assert card.startswith("# reward (unregistered)")
    for expected in ("`propensity_v1`", "train_start: 2026-01-01", "| propensity.auc | 0.71 |",
                     "1. `member_f0`", "6. `tier_gap` (derived)"):
        assert expected in card


# --- parity ----------------------------------------------------------------------------------


def test_parity_on_10k_rows(trained: Trained, exported: Path, parity_rows: np.ndarray) -> None:
    assert check_parity(trained.model, exported, parity_rows) <= 1e-5


def test_parity_runs_without_onnxruntime_warnings(
    trained: Trained, exported: Path, parity_rows: np.ndarray, capfd: pytest.CaptureFixture[str]
) -> None:
    check_parity(trained.model, exported, parity_rows[:50])
    assert capfd.readouterr().err == ""  # e.g. no shape-mismatch warning from a label output


def test_inputs_on_rounded_thresholds_take_lightgbm_branch(tmp_path: Path) -> None:
    """Rows sitting exactly on a threshold rounded *up* to float32 flip branches if exported with
    round-to-nearest thresholds; the export rounds down, so they must match LightGBM exactly."""
    trained = _fit("binary", seed=3)
    path = export_onnx(trained.model, trained.metadata, tmp_path)
    splits = trained.model.booster_.trees_to_dataframe().dropna(subset=["threshold"])
    rng = np.random.default_rng(5)
    rows = []
    for feature, threshold in zip(splits["split_feature"], splits["threshold"], strict=True):
        on_threshold = np.float32(threshold)
        if float(on_threshold) > threshold:
            row = _features(rng, 1)[0].astype(np.float32)
            row[int(feature.removeprefix("Column_"))] = on_threshold
            rows.append(row)
    assert len(rows) > 50
    assert check_parity(trained.model, path, np.array(rows)) <= 1e-5


def test_monotone_export_is_monotone(tmp_path: Path) -> None:
    trained = _fit("monotone")
    path = export_onnx(trained.model, trained.metadata, tmp_path)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    base = _features(np.random.default_rng(7), 200).astype(np.float32)
    grid = np.linspace(-3, 3, 25, dtype=np.float32)
    for column, sign in ((0, 1), (1, -1)):
        curves = []
        for value in grid:
            rows = base.copy()
            rows[:, column] = value
            curves.append(session.run(None, {INPUT_NAME: rows})[0][:, 1])
        steps = np.diff(np.stack(curves, axis=1), axis=1) * sign
        assert (steps >= -1e-6).all()


def test_nan_inputs_score_like_lightgbm(tmp_path: Path) -> None:
    """Serving sends sentinels, never NaN, but a NaN must still follow LightGBM's default branch,
    for a model trained without missing values and for one trained with them."""
    rng = np.random.default_rng(11)
    clean = _fit("binary")
    X = _features(rng, 3_000)
    X[rng.random(X.shape) < 0.2] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.isnan(X[:, 1]) > 0.3).astype(int)
    with_nan = lightgbm.LGBMClassifier(n_estimators=40, verbose=-1, num_threads=1).fit(X, y)
    rows = _features(rng, 2_000)
    rows[rng.random(rows.shape) < 0.2] = np.nan
    for i, model in enumerate((clean.model, with_nan)):
        path = export_onnx(model, _metadata(2), tmp_path / str(i))
        assert check_parity(model, path, rows) <= 1e-5


def test_dataframe_models_check_feature_names(tmp_path: Path) -> None:
    metadata = _metadata(2)
    rng = np.random.default_rng(2)
    X = pd.DataFrame(_features(rng, 500), columns=metadata.input_names)
    y = (X.iloc[:, 0] > 0).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "X does not have valid feature names" warning
        path = export_onnx(model, metadata, tmp_path)
        assert check_parity(model, path, X.to_numpy()[:100]) <= 1e-5
    renamed = metadata.model_copy(update={"derived_features": ["tier_gap", "treated"]})
    with pytest.raises(ValueError, match="differ from metadata inputs"):
        export_onnx(model, renamed, tmp_path / "renamed")


# --- failures are caught ---------------------------------------------------------------------


def _tamper(path: Path, edit: str) -> Path:
    """Rewrite the leaf weights of an exported model: scale one of them, or poison it with NaN."""
    model = onnx.load(str(path))
    ensemble = next(n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier")
    attribute = next(a for a in ensemble.attribute if a.name == "class_weights")
    weights = list(attribute.floats)
    if edit == "scale":
        weights = [w * 1.01 for w in weights]
    else:
        weights[0] = float("nan")
    ensemble.attribute.remove(attribute)
    ensemble.attribute.append(helper.make_attribute("class_weights", weights))
    tampered = path.with_name("tampered.onnx")
    onnx.save_model(model, str(tampered))
    return tampered


@pytest.mark.parametrize("edit", ["scale", "nan"])
def test_perturbed_model_fails_parity(
    trained: Trained, exported: Path, parity_rows: np.ndarray, edit: str
) -> None:
    with pytest.raises(ParityError, match="max abs difference"):
        check_parity(trained.model, _tamper(exported, edit), parity_rows)


def test_parity_against_another_model_fails(exported: Path, parity_rows: np.ndarray) -> None:
    other = _fit("binary", seed=1).model
    with pytest.raises(ParityError):
        check_parity(other, exported, parity_rows)


def test_export_refuses_mismatched_metadata(tmp_path: Path) -> None:
    model = _fit("binary").model
    too_few = _metadata(2, derived_features=["treated"])
    with pytest.raises(ValueError, match="features"):
        export_onnx(model, too_few, tmp_path)
    with pytest.raises(ValueError, match="classes"):
        export_onnx(model, _metadata(3), tmp_path)


def test_nan_metrics_survive_the_metadata_round_trip(tmp_path: Path) -> None:
    nan_metric = _metadata(2, metrics={"uplift.qini": float("nan")})  # e.g. a one-class period
    path = export_onnx(_fit("binary").model, nan_metric, tmp_path)
    assert math.isnan(read_onnx_metadata(path).metrics["uplift.qini"])


def test_export_refuses_zero_as_missing(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    X = _features(rng, 1_000)
    y = (X[:, 0] > 0).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=5, zero_as_missing=True, verbose=-1).fit(X, y)
    with pytest.raises(ValueError, match="zero as missing"):
        export_onnx(model, _metadata(2), tmp_path)


def test_check_parity_validates_rows(trained: Trained, exported: Path) -> None:
    with pytest.raises(ValueError, match="expected a non-empty"):
        check_parity(trained.model, exported, np.zeros((10, N_FEATURES + 1)))
    with pytest.raises(ValueError, match="expected a non-empty"):
        check_parity(trained.model, exported, np.zeros((0, N_FEATURES)))
