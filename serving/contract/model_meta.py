"""What an exported model says about itself: the contract serving checks before loading it.

The metadata travels inside the ONNX file (``metadata_props['rewards_reco']``, JSON) and beside
it as ``metadata.json``; the ONNX copy is authoritative because it cannot be separated from the
weights it describes.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

METADATA_KEY = "rewards_reco"


class ModelRefused(RuntimeError):
    """A candidate model that must not serve (broken file or contract mismatch)."""


class ModelMetadata(BaseModel):
    """Identity and input contract of one exported model version."""

    # NaN metrics (e.g. an AUC on a one-class test period) must survive the JSON round trip.
    model_config = ConfigDict(extra="ignore", frozen=True, ser_json_inf_nan="constants")

    name: str = Field(description="registered model name, e.g. 'reward' or 'difficulty'")
    version: str = Field(description="MLflow registered-model version")
    feature_service: str = Field(description="Feast FeatureService the inputs come from")
    service_features: list[str] = Field(description="the service's features, in its order")
    derived_features: list[str] = Field(description="pair features appended after them")
    output: str = Field("probabilities", description="ONNX output holding class probabilities")
    classes: list[str] = Field(description="meaning of each probability column")
    mlflow_run_id: str = ""
    trained_at: str = ""
    data_window: dict[str, str] = Field(default_factory=dict)
    data_fingerprint: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    value_params: dict[str, float] = Field(
        default_factory=dict,
        description="how serving turns probabilities into value (basket estimate, margin)")

    @property
    def input_names(self) -> list[str]:
        return [*self.service_features, *self.derived_features]

    def to_json(self) -> str:
        return self.model_dump_json()


def read_onnx_metadata(path: Path) -> ModelMetadata:
    """Metadata embedded in an ONNX file; ValueError when absent or malformed."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path}: no '{METADATA_KEY}' metadata; not a rewards-reco model")
    return ModelMetadata.model_validate(json.loads(props[METADATA_KEY]))
