"""Batch scoring on Dask (`rewards score-batch --engine dask`): the same models, candidate
builder and ranking as :mod:`serving.batch.scoring`, one task per partition of members.

Scores are bit-identical to the single-process engine when both use one onnxruntime thread per
session (the default): onnxruntime's multi-threaded tree ensemble sums trees in an order that
depends on the batch size. Workers may run on other machines, so models travel as bytes with their contract
(:class:`ShippedModel`, broadcast once) and each worker process verifies and caches its own
onnxruntime session. With ``--runtime compiled`` the native LightGBM model travels the same way
(:class:`ShippedCompiled`, with its ONNX reference): each worker process compiles it once (or
loads the machine code from its cache) and checks it against the ONNX session on its first
chunk before using it. The client reads the members' latest features, scatters the partitions and
writes results in member order with the single-process writer, so both engines produce the same
file; the tests assert identical scores.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from serving.batch.scoring import (
    BatchModel, BatchPlan, latest_member_features, score_members, verify_compiled, write_scores,
)
from serving.batch.compiled import CompiledModel, compile_native
from serving.stores.models import LoadedModel, load_onnx
from serving.decisioning.catalog import Catalog

if TYPE_CHECKING:
    from distributed import Client

#: Verified sessions per worker process, keyed by (model digest, threads).
_SESSIONS: dict[tuple[str, int], LoadedModel] = {}
_SESSIONS_LOCK = threading.Lock()
#: Compiled models per worker process, keyed by (native digest, ONNX digest, threads); each is
#: verified against its ONNX session on the first chunk it scores.
_COMPILED: dict[tuple[str, str, int], CompiledModel] = {}
_COMPILED_LOCK = threading.Lock()


def _model_folder() -> Path:
    folder = Path(tempfile.gettempdir()) / "rewards-reco-models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_once(path: Path, data: bytes) -> Path:
    """``data`` at ``path``, written under a temporary name and renamed (readers never see a
    partial file; processes writing the same content at once are harmless)."""
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


@dataclass(frozen=True)
class ShippedModel:
    """An ONNX model as bytes plus the contract it must match: all a remote worker needs."""

    onnx: bytes
    service_features: tuple[str, ...]
    derived_features: tuple[str, ...]
    threads: int = 1

    @classmethod
    def of(cls, model: LoadedModel, threads: int = 1) -> ShippedModel:
        return cls(model.path.read_bytes(), tuple(model.meta.service_features),
                   tuple(model.meta.derived_features), threads)

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()

    def load(self) -> LoadedModel:
        """This process's verified session for the model (created once, then reused)."""
        key = (self.digest, self.threads)
        with _SESSIONS_LOCK:
            if key not in _SESSIONS:
                path = _write_once(_model_folder() / f"{self.digest}.onnx", self.onnx)
                _SESSIONS[key] = load_onnx(path, self.service_features, self.derived_features,
                                           threads=self.threads)
            return _SESSIONS[key]


@dataclass(frozen=True)
class ShippedCompiled:
    """A native LightGBM model as text plus the ONNX model it must agree with.

    ``cache_hint``: the folder where the client keeps its compiled code (next to the exported
    model); a worker that can write there (same machine or shared disk) reuses it instead of
    compiling again. The cache key includes the CPU, so a different machine never loads code
    compiled for another.
    """

    native: bytes
    reference: ShippedModel
    threads: int = 1
    cache_hint: str | None = None

    @classmethod
    def of(cls, model: CompiledModel, threads: int = 1) -> ShippedCompiled:
        return cls(model.native_path.read_bytes(), ShippedModel.of(model.reference, 1), threads,
                   str(model.path.parent))

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.native).hexdigest()

    def load(self) -> CompiledModel:
        """This process's compiled model (compiled or loaded from cache once, then reused)."""
        key = (self.digest, self.reference.digest, self.threads)
        with _COMPILED_LOCK:
            if key not in _COMPILED:
                folder = _model_folder()
                native = _write_once(folder / f"{self.digest}.lgb", self.native)
                hint = Path(self.cache_hint) if self.cache_hint else None
                cache = hint if hint and hint.is_dir() and os.access(hint, os.W_OK) else folder
                _COMPILED[key] = compile_native(native, self.reference.load(), cache,
                                                threads=self.threads)
            return _COMPILED[key]


def ship(model: BatchModel, threads: int = 1) -> ShippedModel | ShippedCompiled:
    """What a worker needs to rebuild ``model``: ONNX bytes, or native text plus ONNX bytes."""
    if isinstance(model, CompiledModel):
        return ShippedCompiled.of(model, threads)
    return ShippedModel.of(model, threads)


def score_partition(members: pd.DataFrame, catalog: Catalog,
                    reward: ShippedModel | ShippedCompiled,
                    difficulty: ShippedModel | ShippedCompiled, k_rewards: int, flow_zone: float,
                    chunk_size: int) -> pd.DataFrame:
    """One Dask task: a partition of members scored chunk by chunk (bounded memory).

    Compiled models are checked against their ONNX sessions before this process first uses
    them (once per process: the verified model is cached with its result)."""
    reward_model, difficulty_model = reward.load(), difficulty.load()
    plan = BatchPlan.of(catalog, reward_model.meta, difficulty_model.meta)
    verify_compiled(members, plan, reward_model, difficulty_model, chunk_size)
    parts = [score_members(members.iloc[lo:lo + chunk_size], catalog, reward_model,
                           difficulty_model, k_rewards, flow_zone, plan)
             for lo in range(0, len(members), chunk_size)]
    return pd.concat(parts, ignore_index=True)


def score_batch_dask(features_path: Path, catalog: Catalog, reward_model: BatchModel,
                     difficulty_model: BatchModel, out: Path, client: Client,
                     k_rewards: int = 3, flow_zone: float = 0.7, chunk_size: int = 2_000,
                     partition_size: int = 50_000, threads: int = 1,
                     progress: Callable[[int], None] | None = None,
                     members: pd.DataFrame | None = None) -> int:
    """Score every member on the cluster into ``out``; returns the number of members.

    ``members``: the latest features if already read (as in :func:`serving.batch.scoring.score_batch`).

    ``threads``: onnxruntime threads per session. With 1 (the default, as in ``rewards
    score-batch``) every row's score is bit-identical whatever the chunking and the engine;
    more threads let onnxruntime split the tree sums, which reorders float additions (~1e-7).
    Compiled models (serving.batch.compiled) are checked against their ONNX sessions here on the
    first chunk before anything is sent, then again by each worker process before its first
    use; ``threads`` is then lleaves' threads per call (rows split, scores unchanged).
    At most ``2 x workers`` partitions are in flight, so the client never holds more than a
    few partitions of results however many members there are.
    """
    from distributed import wait

    if members is None:
        members = latest_member_features(features_path)
    plan = BatchPlan.of(catalog, reward_model.meta, difficulty_model.meta)
    verify_compiled(members, plan, reward_model, difficulty_model, chunk_size)
    reward, difficulty = ship(reward_model, threads), ship(difficulty_model, threads)
    [catalog_f, reward_f, difficulty_f] = client.scatter([catalog, reward, difficulty],
                                                         broadcast=True)
    bounds = range(0, len(members), partition_size)
    window = 2 * max(1, len(client.nthreads()))

    def submit(lo: int):  # noqa: ANN202 - a distributed Future
        [part] = client.scatter([members.iloc[lo:lo + partition_size]])
        return client.submit(score_partition, part, catalog_f, reward_f, difficulty_f,
                             k_rewards, flow_zone, chunk_size, pure=False)

    def results():  # noqa: ANN202 - partitions in member order
        pending = [submit(lo) for lo in bounds[:window]]
        for lo in bounds[window:]:
            yield pending.pop(0).result()
            pending.append(submit(lo))
        wait(pending)
        for future in pending:
            yield future.result()

    write_scores(results(), out, progress)
    return len(members)
