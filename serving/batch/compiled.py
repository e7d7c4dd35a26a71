"""Compiled LightGBM for batch scoring (`rewards score-batch --runtime compiled`).

Batch scoring is bound by tree evaluation: onnxruntime's TreeEnsemble walks the trees as data,
while lleaves compiles a LightGBM model to machine code with LLVM, about 3x faster per row on one
thread (BENCHMARKS.md). The model compiled is the champion's *native* LightGBM model, which the
training run logged beside the ONNX export of the same registered version. The ONNX file stays
the contract and the serving runtime: a compiled model is only used after

- its feature names, in order, equal the ONNX metadata's inputs and its class count matches;
- it agreed with the ONNX session on real rows of the run's first chunk: every class probability
  within ``PARITY_TOLERANCE`` (about 5e-7 is typical: float64 leaf sums against float32).

Decisions are LightGBM's own: lleaves compares float64 inputs with the native float64 thresholds
and our inputs are float32 values, which is what the ONNX export's rounded-down float32
thresholds reproduce (training/models/export.py). Compiling takes seconds to tens of seconds per model,
so the machine code is cached on disk under a key of the model bytes, the lleaves and llvmlite
versions, the compile options and the host CPU (the code is specialized to it).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from serving.contract.model_meta import ModelMetadata
from serving.stores.models import LoadedModel, ModelRefused, _first_difference

#: Largest accepted difference of any class probability between the compiled and ONNX models.
PARITY_TOLERANCE = 1e-5
#: Parity is checked on at least this many rows (all of them if the run has fewer) ...
MIN_PARITY_ROWS = 10_000
#: ... and at most this many, spread evenly over the first chunk's rows.
MAX_PARITY_ROWS = 20_000
#: lleaves' defaults, spelled out because they are part of the cache key.
COMPILE_OPTIONS: dict[str, Any] = {"fblocksize": 34, "fcodemodel": "large", "finline": True,
                                   "use_fp64": True}


class ParityRefused(ModelRefused):
    """The compiled model does not score like the ONNX model it stands in for."""


@dataclass(frozen=True)
class Disagreement:
    """Where two probability matrices differ most (pure result of :func:`max_disagreement`)."""

    max_abs_diff: float
    row: int
    column: int


def max_disagreement(expected: np.ndarray, actual: np.ndarray) -> Disagreement:
    """The largest absolute difference of two (rows, classes) matrices and where it is.

    Shapes that differ, or a non-finite value on either side, count as an infinite difference:
    a parity check must never pass because a comparison with NaN was false.
    """
    if expected.shape != actual.shape or expected.size == 0:
        return Disagreement(float("inf"), -1, -1)
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    diff[~(np.isfinite(expected) & np.isfinite(actual))] = np.inf
    row, column = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return Disagreement(float(diff[row, column]), int(row), int(column))


def parity_sample(rows: int, size: int = MAX_PARITY_ROWS) -> np.ndarray:
    """Indices of at most ``size`` rows spread evenly from the first to the last: a chunk's rows
    are member-major, so every candidate position (the no-offer row too) is in the sample."""
    return np.unique(np.linspace(0, rows - 1, min(rows, size)).round().astype(np.int64))


def check_native_contract(feature_names: list[str], models_per_iteration: int,
                          meta: ModelMetadata) -> None:
    """Refuse a native model whose inputs or outputs are not the ONNX model's.

    Rows are built in the order of the ONNX metadata's inputs, and the compiled model reads
    columns by position, so the native feature names must be those inputs in the same order.
    LightGBM keeps one tree per class per iteration, except for binary models (one tree,
    P(class 1)), which :meth:`CompiledModel.predict` widens to the ONNX model's two columns.
    """
    expected = meta.input_names
    if feature_names != expected:
        raise ModelRefused(
            f"{meta.name} v{meta.version}: the native model's features are not the ONNX "
            f"model's inputs ({len(feature_names)} vs {len(expected)}; first difference: "
            f"{_first_difference(feature_names, expected)})")
    classes = 2 if models_per_iteration == 1 else models_per_iteration
    if classes != len(meta.classes):
        raise ModelRefused(f"{meta.name} v{meta.version}: the native model has {classes} "
                           f"classes, the ONNX model {len(meta.classes)}")


def cache_key(native: bytes) -> str:
    """Key of the compiled code: what it was compiled from, with what, and for which CPU."""
    from importlib.metadata import version

    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot always detect them; lleaves then compiles without
        features = ""
    digest = hashlib.sha256(native)
    for part in (version("lleaves"), version("llvmlite"), sorted(COMPILE_OPTIONS.items()),
                 llvm.get_process_triple(), llvm.get_host_cpu_name(), features):
        digest.update(b"\0" + repr(part).encode())
    return digest.hexdigest()[:32]


@dataclass
class CompiledModel:
    """A native LightGBM model compiled by lleaves, standing in for a verified ONNX session.

    Same interface as :class:`serving.stores.models.LoadedModel` (``meta``, ``predict`` returning
    float32 class probabilities), plus the ONNX ``reference`` it must agree with and the result
    of that check. ``threads`` split the rows, never a row's sum: scores do not depend on it.
    """

    meta: ModelMetadata
    reference: LoadedModel
    native_path: Path
    path: Path  # the cached machine code
    threads: int
    compile_seconds: float  # 0.0 when the code came from the cache
    model: Any  # lleaves.Model
    parity_max_abs_diff: float | None = None  # set by verify
    parity_rows: int = 0
    #: lleaves reads float64; float32 input costs a converted copy (~25% of its time).
    input_dtype: ClassVar[type[np.floating]] = np.float64

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (rows, classes) as float32, like the ONNX session's output."""
        proba = self.model.predict(X, n_jobs=self.threads)
        if proba.ndim == 1:  # binary: LightGBM returns P(class 1) only
            proba = np.stack([1.0 - proba, proba], axis=1)
        return proba.astype(np.float32)

    @property
    def verified(self) -> bool:
        return self.parity_max_abs_diff is not None

    def verify(self, X: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> float:
        """Score a sample of ``X`` (real rows) with both runtimes; ParityRefused if any class
        probability differs by more than ``tolerance``. Returns the largest difference."""
        sample = X[parity_sample(len(X))]
        expected = self.reference.predict(np.ascontiguousarray(sample, dtype=np.float32))
        worst = max_disagreement(expected, self.predict(sample))
        if not worst.max_abs_diff <= tolerance:
            where = ("shapes or values not comparable" if worst.row < 0 else
                     f"row {worst.row}, class {self.meta.classes[worst.column]!r}")
            raise ParityRefused(
                f"{self.meta.name} v{self.meta.version}: the compiled native model "
                f"({self.native_path.name}) disagrees with the ONNX model on {len(sample)} rows "
                f"of the first chunk: max abs difference {worst.max_abs_diff:.3g} > "
                f"{tolerance:g} ({where}); not scoring with it (use --runtime onnx)")
        self.parity_max_abs_diff, self.parity_rows = worst.max_abs_diff, len(sample)
        return worst.max_abs_diff


def compile_native(native_path: Path, reference: LoadedModel, cache_dir: Path,
                   threads: int = 1) -> CompiledModel:
    """Compile (or load from ``cache_dir``) the native model standing in for ``reference``.

    The contract is checked before compiling. The code is written to a temporary name and moved
    into place, so processes compiling the same model at once never load a partial file. Parity
    is not checked here (it needs real rows): callers run :meth:`CompiledModel.verify` first.
    """
    import lightgbm
    import lleaves

    native = native_path.read_bytes()
    try:
        booster = lightgbm.Booster(model_str=native.decode())
    except Exception as exc:  # noqa: BLE001 - any parse failure means "refuse"
        raise ModelRefused(f"{native_path}: not a LightGBM model ({exc})") from exc
    check_native_contract(booster.feature_name(), booster.num_model_per_iteration(),
                          reference.meta)
    del booster
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"compiled-{cache_key(native)}.so"
    seconds = 0.0
    try:
        model = lleaves.Model(model_file=str(native_path))
        if path.is_file():
            model.compile(cache=str(path), **COMPILE_OPTIONS)
        else:
            tmp = cache_dir / f".{path.name}.{os.getpid()}.tmp"
            # lleaves loads any file at its cache path instead of compiling: one left by a
            # killed run (same pid, as in containers) must not pass for compiled code
            tmp.unlink(missing_ok=True)
            start = time.perf_counter()
            try:
                model.compile(cache=str(tmp), **COMPILE_OPTIONS)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            seconds = time.perf_counter() - start
    except (ValueError, RuntimeError) as exc:  # lleaves' parser and LLVM's errors
        raise ModelRefused(f"{native_path}: lleaves cannot compile the model ({exc})") from exc
    return CompiledModel(reference.meta, reference, native_path, path, threads, seconds, model)
