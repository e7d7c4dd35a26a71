"""Model files and the registry's champions: one bundle layout, one atomic download.

A model bundle is a folder ``<models>/<name>/<version>/`` holding ``model.onnx`` (metadata
embedded), ``metadata.json`` and ``MODEL_CARD.md``. Training writes bundles when it exports a
model; serving, batch scoring and ``rewards evaluate`` fetch the champion's bundle from the
MLflow registry with :func:`download_version`, the only download there is: files are staged
beside the target and moved in with atomic renames, so a process watching the folder never
reads a half-written model, and the copy is stamped with the registry version and run id
(which did not exist yet when the model was exported).

Training may import this module; it imports nothing from training.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from serving.contract.model_meta import (
    METADATA_KEY, ModelMetadata, ModelRefused, read_onnx_metadata,
)

if TYPE_CHECKING:  # onnx is imported where a bundle is written: serving start-up skips it
    import onnx

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
CARD_FILE = "MODEL_CARD.md"
CHAMPION = "champion"
#: the version on trial beside the champion (training.models.tracking.TRIAL)
TRIAL = "trial"
#: Name under which a training run logs the native LightGBM booster beside the ONNX export
#: (training.models.tracking), and the file MLflow's LightGBM flavour stores it in (LightGBM text).
NATIVE_ARTIFACT = "native_model"
NATIVE_FILE = "model.lgb"


def model_card(metadata: ModelMetadata) -> str:
    """A short Markdown card: identity, data, held-out metrics and the input features in order."""
    version = metadata.version
    title = f"v{version}" if version.isdigit() else f"({version or 'unregistered'})"
    window = ", ".join(f"{key}: {value}" for key, value in metadata.data_window.items())
    metrics = [f"| {name} | {value:.4g} |" for name, value in sorted(metadata.metrics.items())]
    n_service = len(metadata.service_features)
    lines = [
        f"# {metadata.name} {title}",
        "",
        "| | |",
        "| --- | --- |",
        f"| feature service | `{metadata.feature_service}` |",
        f"| data window | {window or 'n/a'} |",
        f"| data fingerprint | `{metadata.data_fingerprint or 'n/a'}` |",
        f"| trained at | {metadata.trained_at or 'n/a'} |",
        f"| MLflow run | `{metadata.mlflow_run_id or 'n/a'}` |",
        f"| output | `{metadata.output}` = P({', '.join(metadata.classes)}) |",
        "",
        "## Held-out metrics",
        "",
        *(["| metric | value |", "| --- | ---: |", *metrics] if metrics else ["none recorded"]),
        "",
        f"## Features ({len(metadata.input_names)}, in input order)",
        "",
        *(f"{i}. `{name}`" for i, name in enumerate(metadata.service_features, start=1)),
        *(
            f"{i}. `{name}` (derived)"
            for i, name in enumerate(metadata.derived_features, start=n_service + 1)
        ),
        "",
    ]
    return "\n".join(lines)


def write_bundle(onnx_model: onnx.ModelProto, metadata: ModelMetadata, out_dir: Path) -> Path:
    """Write ``model.onnx`` with ``metadata`` embedded, ``metadata.json`` and the model card.

    Embedding replaces any previous metadata, so the registry can re-stamp a downloaded model
    with its version without touching the weights. Metadata that would not parse back is refused
    here rather than by serving. Returns the ONNX path.
    """
    import onnx

    try:
        ModelMetadata.model_validate_json(metadata.to_json())
    except ValidationError as exc:
        raise ValueError(f"metadata would not parse back from the model file: {exc}") from exc
    stamped = onnx.ModelProto()
    stamped.CopyFrom(onnx_model)
    kept = [prop for prop in stamped.metadata_props if prop.key != METADATA_KEY]
    del stamped.metadata_props[:]
    stamped.metadata_props.extend(kept)
    stamped.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())
    onnx.checker.check_model(stamped)

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    # each file written beside and moved in (the model last): a server polling this folder
    # (`rewards train` writes into the models folder it serves from) never reads half a file
    for name, text in ((METADATA_FILE, metadata.model_dump_json(indent=2) + "\n"),
                       (CARD_FILE, model_card(metadata))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / name)
    tmp = out_dir / f".{MODEL_FILE}.tmp"
    onnx.save_model(stamped, tmp)
    os.replace(tmp, path)
    return path


def _client(tracking_uri: str):  # noqa: ANN202 - mlflow is imported lazily
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(tracking_uri: str, name: str, alias: str = CHAMPION) -> str | None:
    """The version ``alias`` points at; None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def download_version(tracking_uri: str, name: str, version: str, dest_root: Path,
                     refresh: bool = False) -> Path:
    """``dest_root/<name>/<version>/model.onnx``, downloaded from the registry when missing
    (or always with ``refresh``), stamped with the version and its run id, moved in atomically.
    """
    import onnx
    from mlflow.artifacts import download_artifacts

    target = dest_root / name / str(version)
    if not refresh and (target / MODEL_FILE).is_file():
        return target / MODEL_FILE
    client = _client(tracking_uri)
    run_id = client.get_model_version(name, str(version)).run_id
    # Not a models:/ URI: MLflow resolves those through the process-wide registry URI, which in
    # a server that never set one is sqlite:///<cwd>/mlflow.db (created empty, then "not found").
    location = client.get_model_version_download_uri(name, str(version))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{version}-") as staging:
        downloaded = Path(download_artifacts(artifact_uri=location, dst_path=staging,
                                             tracking_uri=tracking_uri))
        found = next(downloaded.rglob("*.onnx"), None) if downloaded.is_dir() else downloaded
        if found is None:
            raise ModelRefused(f"{name} v{version}: no ONNX file in the registered model")
        try:
            metadata = read_onnx_metadata(found).model_copy(
                update={"version": str(version), "mlflow_run_id": run_id or ""})
        except Exception as exc:  # noqa: BLE001 - any parse failure means "refuse"
            raise ModelRefused(f"{name} v{version}: unreadable model metadata ({exc})") from exc
        bundle = Path(staging) / "bundle"
        write_bundle(onnx.load(str(found)), metadata, bundle)
        if not target.is_dir():
            try:
                bundle.rename(target)  # the version folder appears complete
                return target / MODEL_FILE
            except OSError:  # another worker moved its copy in first: replace file by file
                pass
        for file in (METADATA_FILE, CARD_FILE, MODEL_FILE):  # the model last
            os.replace(bundle / file, target / file)
    return target / MODEL_FILE


@dataclass
class ChampionSource:
    """Where champions come from: the MLflow registry alias, cached under models/."""

    tracking_uri: str
    cache_dir: Path

    def champion(self, name: str) -> tuple[str, Path] | None:
        """(version, local ONNX path) of the champion, downloading it once; None if none."""
        return self.alias(name, CHAMPION)

    def alias(self, name: str, alias: str) -> tuple[str, Path] | None:
        """(version, local ONNX path) of the version ``alias`` names (CHAMPION, TRIAL),
        downloading it once; None if the alias is not set."""
        version = alias_version(self.tracking_uri, name, alias)
        if version is None:
            return None
        return version, download_version(self.tracking_uri, name, version, self.cache_dir)

    def native(self, name: str, version: str) -> Path:
        """The native LightGBM model (text) of ``name`` v``version``, copied once to
        ``<name>/<version>/model.lgb`` beside its ONNX export.

        The registry holds the ONNX export; the training run that produced it logged the native
        booster too (``NATIVE_ARTIFACT``), so the registered version's run id finds the very model
        the ONNX was exported from. ``rewards score-batch --runtime compiled`` compiles it.
        """
        from mlflow.artifacts import download_artifacts

        target = self.cache_dir / name / str(version) / NATIVE_FILE
        if target.is_file():
            return target
        client = _client(self.tracking_uri)
        run_id = client.get_model_version(name, str(version)).run_id
        if not run_id:
            raise ModelRefused(f"{name} v{version}: the registered version names no training run")
        found = client.search_logged_models(
            experiment_ids=[client.get_run(run_id).info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{NATIVE_ARTIFACT}'")
        if not found:
            raise ModelRefused(f"{name} v{version}: run {run_id} logged no native model "
                               f"({NATIVE_ARTIFACT!r})")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".native-") as staging:
            downloaded = Path(download_artifacts(
                artifact_uri=f"{found[0].artifact_location.rstrip('/')}/{NATIVE_FILE}",
                dst_path=staging, tracking_uri=self.tracking_uri))
            os.replace(downloaded, target)  # readers never see a partial file
        return target
