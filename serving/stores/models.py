"""Loading champion models for serving: resolve, cache, verify the contract, swap atomically.

A model is only ever swapped in after it loaded, its metadata matched the FeatureService it
names (same features, same order) and the derived columns this code builds, and it scored a
probe row. Anything else is refused and the current model keeps serving; the refusal is kept
for /readyz and the metrics.

A slot opened with ``trials=True`` (the reward family) also keeps the version on trial (the
registry's ``trial`` alias), verified the same way: serving runs it beside the champion on a
share of decisions. A trial that cannot load is left out (the champion serves alone); it never
makes the service unready.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from serving.contract.model_meta import ModelMetadata, ModelRefused, read_onnx_metadata
from serving.stores.registry import TRIAL, ChampionSource

log = logging.getLogger("rewards.models")


@dataclass
class LoadedModel:
    """An onnxruntime session and the contract it was verified against."""

    meta: ModelMetadata
    path: Path
    session: object
    input_name: str
    #: What ``predict`` reads without a converted copy (batch scoring builds its matrices so).
    input_dtype: ClassVar[type[np.floating]] = np.float32

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities for a float32 batch, one onnxruntime call."""
        (proba,) = self.session.run([self.meta.output], {self.input_name: X})  # type: ignore[attr-defined]
        return proba


def load_onnx(path: Path, expected_service_features: Sequence[str],
              expected_derived: Sequence[str], threads: int = 1) -> LoadedModel:
    """Open and verify one ONNX file; ModelRefused says exactly what is wrong."""
    import onnxruntime as ort

    try:
        meta = read_onnx_metadata(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "refuse"
        raise ModelRefused(f"{path}: unreadable model metadata ({exc})") from exc
    if list(meta.service_features) != list(expected_service_features):
        raise ModelRefused(
            f"{meta.name} v{meta.version}: inputs do not match FeatureService "
            f"{meta.feature_service!r} (model has {len(meta.service_features)} features, "
            f"service has {len(expected_service_features)}; first difference: "
            f"{_first_difference(meta.service_features, expected_service_features)})")
    if list(meta.derived_features) != list(expected_derived):
        raise ModelRefused(f"{meta.name} v{meta.version}: derived features "
                           f"{meta.derived_features} != {list(expected_derived)}")
    options = ort.SessionOptions()
    # Serving: one thread per session (two cores; oversubscription costs more than it gains).
    # Batch scoring passes more.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        model = LoadedModel(meta, path, session, input_name)
        probe = model.predict(np.zeros((1, len(meta.input_names)), dtype=np.float32))
    except Exception as exc:  # noqa: BLE001
        raise ModelRefused(f"{path}: onnxruntime cannot run the model ({exc})") from exc
    if probe.shape != (1, len(meta.classes)) or not np.all(np.isfinite(probe)):
        raise ModelRefused(f"{path}: probe output {probe.shape} is not {len(meta.classes)} "
                           "finite probabilities")
    return model


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {i}: {x!r} vs {y!r}"
    return f"lengths {len(a)} vs {len(b)}"


@dataclass
class ModelSlot:
    """The current model of one name, plus the last refusal (for /readyz and metrics)."""

    name: str
    service: str
    derived: Sequence[str]
    current: LoadedModel | None = None
    last_error: str | None = None
    refusals: int = 0
    #: what the registry last said: True a champion exists (loaded or not), False none was
    #: ever promoted, None not known (not asked yet, or the registry was unreachable)
    champion_registered: bool | None = None
    #: whether this family runs versions on trial beside its champion
    trials: bool = False
    #: the version on trial, loaded and verified (None: no trial, or it failed to load)
    trial: LoadedModel | None = None
    trial_error: str | None = None


@dataclass
class ModelManager:
    """Keeps one verified model per name and swaps in new champions without downtime."""

    source: ChampionSource
    service_features: Callable[[str], list[str]]
    slots: dict[str, ModelSlot] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, service: str, derived: Sequence[str], trials: bool = False) -> None:
        self.slots[name] = ModelSlot(name, service, derived, trials=trials)

    def get(self, name: str) -> LoadedModel | None:
        return self.slots[name].current

    def trial(self, name: str) -> LoadedModel | None:
        """The version of ``name`` on trial, when one is loaded beside a loaded champion."""
        slot, trial = self.slots[name], self.slots[name].trial
        if slot.current is None or trial is None or \
                trial.meta.version == slot.current.meta.version:
            return None
        return trial

    def never_promoted(self, name: str) -> bool:
        """True while the registry has no champion of ``name`` and none is loaded: the
        family's cold start (rules with uniform exploration, not degraded), as opposed to a
        champion that failed to load or to predict (the degraded fallback). Read from what
        the last refresh learnt, so the request path never asks the registry."""
        slot = self.slots[name]
        return slot.current is None and slot.champion_registered is False

    def versions(self) -> dict[str, str]:
        return {n: s.current.meta.version for n, s in self.slots.items() if s.current}

    def refresh(self) -> dict[str, str]:
        """Load any champion that changed; returns {name: outcome} for logs and the API."""
        outcomes = {}
        with self._lock:  # one refresh at a time; readers never wait (they read the slot)
            for name, slot in self.slots.items():
                outcomes[name] = self._refresh_one(slot)
        return outcomes

    def _refresh_one(self, slot: ModelSlot) -> str:
        outcome = self._refresh_champion(slot)
        if slot.trials and outcome != "registry unavailable":
            outcome += self._refresh_trial(slot)
        return outcome

    def _refresh_trial(self, slot: ModelSlot) -> str:
        """Follow the registry's trial alias; '' when nothing changed."""
        before = slot.trial.meta.version if slot.trial is not None else None
        try:
            found = self.source.alias(slot.name, TRIAL) if slot.champion_registered else None
        except Exception as exc:  # noqa: BLE001 - registry down: keep what we have
            slot.trial_error = f"registry unavailable: {exc}"
            return ""
        if found is None:
            slot.trial, slot.trial_error = None, None
            return f"; trial of v{before} ended" if before else ""
        version, path = found
        if before == version:
            return ""
        try:
            model = load_onnx(path, self.service_features(slot.service), slot.derived)
        except ModelRefused as exc:
            slot.trial, slot.trial_error = None, str(exc)
            log.error("trial model refused", extra={"model": slot.name, "reason": str(exc)})
            return f"; trial v{version} refused"
        if model.meta.version != version:
            model.meta = model.meta.model_copy(update={"version": version})
        slot.trial, slot.trial_error = model, None
        log.info("trial model loaded", extra={"model": slot.name, "version": version})
        return f"; trial v{version} loaded"

    def _refresh_champion(self, slot: ModelSlot) -> str:
        try:
            found = self.source.champion(slot.name)
        except Exception as exc:  # noqa: BLE001 - registry down: keep serving what we have
            slot.last_error = f"registry unavailable: {exc}"
            return "registry unavailable"
        if found is None:
            slot.champion_registered = False
            return "no champion"
        slot.champion_registered = True
        version, path = found
        if slot.current is not None and slot.current.meta.version == version:
            return f"unchanged v{version}"
        try:
            model = load_onnx(path, self.service_features(slot.service), slot.derived)
        except ModelRefused as exc:
            slot.last_error, slot.refusals = str(exc), slot.refusals + 1
            log.error("model refused", extra={"model": slot.name, "reason": str(exc)})
            return f"refused v{version}"
        if model.meta.version != version:  # exported before registration: trust the registry
            model.meta = model.meta.model_copy(update={"version": version})
        slot.current, slot.last_error = model, None  # atomic reference swap
        log.info("model loaded", extra={"model": slot.name, "version": version})
        return f"loaded v{version}"
