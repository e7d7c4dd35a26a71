"""Export LightGBM classifiers to ONNX for serving, and prove the export scores like the original.

Serving runs onnxruntime on float32 rows, so the exported graph has one float32 input named
``input`` ``[None, n_features]`` and one output (``metadata.output``) holding the class
probabilities ``[None, n_classes]``; the converter's label output is pruned because nothing reads
it. The model's :class:`~serving.contract.model_meta.ModelMetadata` travels inside the file
(``metadata_props``) and beside it as ``metadata.json``, with a human-readable ``MODEL_CARD.md``.

Exactness: LightGBM compares ``x <= threshold`` in double precision while ONNX tree ensembles
store float32 thresholds. The converter rounds each threshold to the *nearest* float32, so an
input equal to a threshold that was rounded up takes the other branch than in LightGBM (a
difference of up to the whole leaf value). The export rounds thresholds *down* instead, so every
float32 input takes LightGBM's path and the only remaining difference is float32 summation of leaf
values (about 1e-7).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.base import ClassifierMixin

from serving.contract.model_meta import METADATA_KEY, ModelMetadata
from serving.stores.registry import (  # noqa: F401 - the bundle layout, re-used by callers
    CARD_FILE, METADATA_FILE, MODEL_FILE, model_card, write_bundle,
)

INPUT_NAME = "input"
#: Opsets the LightGBM converter is known to produce exact, warning-free graphs for.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

# LightGBM's decision_type: bit 0 marks a categorical split, bits 2-3 the missing-value type.
_CATEGORICAL_SPLIT = 1
_MISSING_TYPE_SHIFT = 2
_MISSING_AS_ZERO = 1


class ParityError(RuntimeError):
    """The ONNX export does not reproduce the native model's probabilities."""


@dataclass(frozen=True)
class _Float32Forest(ClassifierMixin):  # type: ignore[misc]  # sklearn ships no stubs
    """The three attributes the LightGBM converter reads, around a threshold-adjusted booster.

    A separate type (registered with skl2onnx) lets the converter run on a modified booster
    without touching the caller's fitted classifier or LightGBM's private attributes. The
    ClassifierMixin base is how skl2onnx knows to declare label and probability outputs.
    """

    booster_: lightgbm.Booster
    classes_: np.ndarray
    boosting_type: str


@functools.cache
def _register_converter() -> None:
    """Teach skl2onnx to convert :class:`_Float32Forest` with onnxmltools' LightGBM converter."""
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    update_registered_converter(
        _Float32Forest,
        "RewardsRecoLightGbmClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )


def _float32_floor(value: str) -> str:
    """The largest float32 not above ``value`` (a LightGBM threshold), as exact decimal text."""
    threshold = float(value)
    with np.errstate(over="ignore"):  # thresholds beyond float32 range become +-inf, then clamp
        rounded = np.float32(threshold)
    if float(rounded) > threshold:  # compare as Python floats: float32 vs float compares in float32
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return repr(float(rounded))


def _with_float32_thresholds(booster: lightgbm.Booster) -> lightgbm.Booster:
    """A copy of ``booster`` whose numerical thresholds are float32 values rounded down.

    For a float32 ``x`` and a double ``t``, ``x <= t`` holds exactly when ``x <= floor32(t)``, so
    the copy decides every float32 input like the original. Categorical splits store category
    sets, not thresholds, and are left alone. Splits that treat zero as missing
    (``zero_as_missing=True``) are refused: ONNX tree ensembles cannot express them.
    """
    lines: list[str] = []
    thresholds_at = -1
    for line in booster.model_to_string().split("\n"):
        if line.startswith("tree_sizes="):
            continue  # byte lengths of the original trees; without them LightGBM scans the text
        if line.startswith("threshold="):
            thresholds_at = len(lines)
        elif line.startswith("decision_type="):
            kinds = [int(kind) for kind in line.removeprefix("decision_type=").split()]
            if any((kind >> _MISSING_TYPE_SHIFT) & 3 == _MISSING_AS_ZERO for kind in kinds):
                raise ValueError(
                    "the model treats zero as missing (zero_as_missing=True), which ONNX tree "
                    "ensembles cannot express; train with NaN or a sentinel for missing values"
                )
            values = lines[thresholds_at].removeprefix("threshold=").split()
            lines[thresholds_at] = "threshold=" + " ".join(
                value if kind & _CATEGORICAL_SPLIT else _float32_floor(value)
                for kind, value in zip(kinds, values, strict=True)
            )
        lines.append(line)
    return lightgbm.Booster(model_str="\n".join(lines))


def _check_compatible(model: lightgbm.LGBMClassifier, metadata: ModelMetadata) -> None:
    """Refuse to export a model that does not match the contract its metadata declares."""
    n_features = len(metadata.input_names)
    if model.n_features_in_ != n_features:
        raise ValueError(
            f"model has {model.n_features_in_} features, metadata declares {n_features}"
        )
    # Only a model fitted on a DataFrame knows its feature names; then they must match in order.
    if hasattr(model, "feature_names_in_") and list(model.feature_name_) != metadata.input_names:
        raise ValueError(
            f"model features {list(model.feature_name_)} differ from metadata inputs "
            f"{metadata.input_names}"
        )
    if model.n_classes_ != len(metadata.classes):
        raise ValueError(
            f"model has {model.n_classes_} classes, metadata names {len(metadata.classes)}"
        )
    if metadata.output == INPUT_NAME:
        raise ValueError(f"output name must differ from the input name {INPUT_NAME!r}")


def _keep_only_output(graph: onnx.GraphProto, source: str, name: str) -> None:
    """Make ``source`` the graph's single output, renamed ``name``.

    Outputs are produced by Identity nodes after the tree ensemble; dropping an output means
    dropping its Identity, while the ensemble's own (unused) label tensor stays internal.
    """
    dropped = {output.name for output in graph.output if output.name != source}
    kept_nodes = [node for node in graph.node if not set(node.output) & dropped]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept_outputs = [output for output in graph.output if output.name == source]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    for node in graph.node:
        node.output[:] = [name if output == source else output for output in node.output]
    graph.output[0].name = name


def to_onnx(model: lightgbm.LGBMClassifier, metadata: ModelMetadata) -> onnx.ModelProto:
    """Convert ``model`` to an in-memory ONNX graph carrying ``metadata``; see the module doc."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    _check_compatible(model, metadata)
    _register_converter()
    forest = _Float32Forest(
        _with_float32_thresholds(model.booster_), model.classes_, model.boosting_type
    )
    converted: onnx.ModelProto = convert_sklearn(
        forest,
        name=metadata.name,
        initial_types=[(INPUT_NAME, FloatTensorType([None, model.n_features_in_]))],
        target_opset=TARGET_OPSET,
        options={id(forest): {"zipmap": False}},
    )
    _keep_only_output(converted.graph, "probabilities", metadata.output)  # skl2onnx's name
    return converted


def export_onnx(
    model: lightgbm.LGBMClassifier, metadata: ModelMetadata, out_dir: Path
) -> Path:
    """Export ``model`` to ``out_dir/model.onnx`` (plus metadata.json and MODEL_CARD.md)."""
    return write_bundle(to_onnx(model, metadata), metadata, out_dir)


def _session(onnx_path: Path) -> ort.InferenceSession:
    """A CPU session with one thread per pool, as serving runs it (no oversubscription)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def check_parity(
    model: lightgbm.LGBMClassifier, onnx_path: Path, X: ArrayLike, tol: float = 1e-5
) -> float:
    """Max absolute difference between ONNX and ``model.predict_proba`` on ``X``.

    Both sides see the float32 values serving will send, so the check measures the translation,
    not input rounding. Non-finite outputs count as an infinite difference: a NaN must never
    pass a tolerance test by comparing false. Raises :class:`ParityError` above ``tol``.
    """
    rows: NDArray[np.float32] = np.asarray(X, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != model.n_features_in_:
        raise ValueError(
            f"X: expected a non-empty (n, {model.n_features_in_}) array, got shape {rows.shape}"
        )
    session = _session(onnx_path)
    embedded = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if embedded is None:
        raise ValueError(f"{onnx_path}: no '{METADATA_KEY}' metadata; not a rewards-reco model")
    output = ModelMetadata.model_validate_json(embedded).output
    actual = np.asarray(session.run([output], {INPUT_NAME: rows})[0], dtype=np.float64)

    if hasattr(model, "feature_names_in_"):  # keep sklearn quiet about unnamed columns
        native = model.predict_proba(pd.DataFrame(rows, columns=model.feature_names_in_))
    else:
        native = model.predict_proba(rows)
    expected = np.asarray(native, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ParityError(f"ONNX output shape {actual.shape} != native {expected.shape}")

    diff = np.abs(actual - expected)
    diff[~(np.isfinite(actual) & np.isfinite(expected))] = np.inf
    row, col = np.unravel_index(int(np.argmax(diff)), diff.shape)
    worst = float(diff[row, col])
    if worst > tol:
        raise ParityError(
            f"{onnx_path}: max abs difference {worst:.3g} > {tol:g} at row {row}, class {col} "
            f"(onnx {actual[row, col]:.6g}, lightgbm {expected[row, col]:.6g}); "
            f"{int((diff > tol).sum())} of {diff.size} values differ"
        )
    return worst
