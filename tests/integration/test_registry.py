"""MLflow tracking and the registry's promotion gate, on a throwaway SQLite MLflow.

One database serves the module (creating MLflow's schema takes seconds); every test registers
its own model name, so tests stay independent.
"""

from __future__ import annotations

import getpass
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import lightgbm
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from serving.contract.model_meta import ModelMetadata, read_onnx_metadata
from training.models import tracking
from training.models.export import check_parity, export_onnx

pytestmark = pytest.mark.integration

GATE: dict[str, tracking.MetricRule] = {
    "propensity.auc": ("higher", 0.002),
    "ope.dr": "higher",
    "propensity.ece": ("lower", 0.005),
}
_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh tracking database and artifact root; the previous MLflow URIs are restored after."""
    root = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    tracking.configure_mlflow(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")
    yield root
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.fixture
def name(store: Path) -> str:
    return f"reward_{next(_names)}"


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    return X, (X[:, 0] + rng.normal(scale=0.5, size=400) > 0).astype(int)


def _train_and_register(
    name: str, workdir: Path, data: tuple[np.ndarray, np.ndarray], **metrics: float
) -> tuple[str, lightgbm.LGBMClassifier]:
    """Train a tiny model, export it, log a run with ``metrics`` and register it."""
    X, y = data
    model = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=7, verbose=-1).fit(X, y)
    metadata = ModelMetadata(
        name=name, version="", feature_service="propensity_v1",
        service_features=["a", "b", "c"], derived_features=["treated"], classes=["no", "yes"],
    )
    out = workdir / f"export_{next(_names)}"
    onnx_path = export_onnx(model, metadata, out)
    plot = out / "plot.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")  # content is irrelevant to the registry
    plots = {"calibration": plot, "importance.png": plot}  # keys with or without an extension
    run_id = tracking.log_training_run(
        name, {"n_estimators": 5}, {k.replace("_", "."): v for k, v in metrics.items()},
        "propensity_v1", "sha256:feed", plots, model, onnx_path,
        tags={"git_sha": "abc1234"},
    )
    return tracking.register_model(name, run_id), model


def _metrics(auc: float, dr: float = 0.10, ece: float = 0.02) -> dict[str, float]:
    return {"propensity_auc": auc, "ope_dr": dr, "propensity_ece": ece}


# --- tracking ----------------------------------------------------------------------------------


def test_run_holds_params_metrics_lineage_and_models(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    version, _ = _train_and_register(name, tmp_path, data, **_metrics(0.7))
    client = MlflowClient()
    run = client.get_run(str(client.get_model_version(name, version).run_id))
    assert run.data.params == {"n_estimators": "5"}
    assert run.data.metrics["propensity.auc"] == pytest.approx(0.7)
    assert run.data.tags["feature_service"] == "propensity_v1"
    assert run.data.tags["data_fingerprint"] == "sha256:feed"
    assert run.data.tags["git_sha"] == "abc1234"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"MODEL_CARD.md", "metadata.json", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/calibration.png", "plots/importance.png"
    ]
    logged = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    assert {m.name for m in logged} == {tracking.NATIVE_ARTIFACT, tracking.ONNX_ARTIFACT}


def test_log_training_run_refuses_a_model_exported_for_another_service(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = data
    model = lightgbm.LGBMClassifier(n_estimators=2, verbose=-1).fit(X, y)
    metadata = ModelMetadata(
        name=name, version="", feature_service="difficulty_v1",
        service_features=["a", "b", "c", "d"], derived_features=[], classes=["no", "yes"],
    )
    onnx_path = export_onnx(model, metadata, tmp_path)
    with pytest.raises(ValueError, match="difficulty_v1"):
        tracking.log_training_run(name, {}, {}, "propensity_v1", "", {}, model, onnx_path)


def test_configure_is_idempotent_and_guards_artifact_location(store: Path) -> None:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    experiment_id = tracking.configure_mlflow(uri, store / "artifacts")
    assert tracking.configure_mlflow(uri, store / "artifacts") == experiment_id
    with pytest.raises(ValueError, match="stores artifacts in"):
        tracking.configure_mlflow(uri, store / "elsewhere")
    tracking.configure_mlflow(uri, store / "artifacts")  # leave the module's experiment active


# --- registry ----------------------------------------------------------------------------------


def test_first_model_becomes_champion(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    assert tracking.champion_version(name) is None
    version, _ = _train_and_register(name, tmp_path, data, **_metrics(0.7))
    assert version == "1"
    assert tracking.champion_version(name) == "1"
    aliases = MlflowClient().get_registered_model(name).aliases
    assert {alias: str(v) for alias, v in aliases.items()} == {"champion": "1", "challenger": "1"}
    events = tracking.history(name)
    assert [(e["action"], e["version"], e["reason"]) for e in events] == [
        ("register", "1", f"run {MlflowClient().get_model_version(name, '1').run_id}"),
        ("promote", "1", "first model"),
    ]
    with pytest.raises(tracking.RegistryError, match="already champion"):
        tracking.promote(name, GATE)


def test_worse_challenger_is_refused(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    _train_and_register(name, tmp_path, data, **_metrics(0.70, ece=0.020))
    _train_and_register(name, tmp_path, data, **_metrics(0.65, ece=0.040))
    result = tracking.promote(name, GATE)
    assert not result.promoted
    assert (result.version, result.from_version) == ("2", "1")
    assert len(result.failures) == 2
    auc, ece = sorted(result.failures)
    assert auc.startswith("propensity.auc: 0.65 vs champion 0.7, worse by 0.05")
    assert ece.startswith("propensity.ece: 0.04 vs champion 0.02, worse by 0.02")
    assert tracking.champion_version(name) == "1"
    assert [e["action"] for e in tracking.history(name)] == ["register", "promote", "register"]


def test_better_challenger_is_promoted_within_tolerance(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    _train_and_register(name, tmp_path, data, **_metrics(0.700, dr=0.10))
    # Better on AUC and DR; ECE worse by 0.004, inside its 0.005 tolerance.
    _train_and_register(name, tmp_path, data, **_metrics(0.705, dr=0.12, ece=0.024))
    result = tracking.promote(name, GATE, actor="ci-bot")
    assert result.promoted and not result.forced and result.failures == ()
    assert tracking.champion_version(name) == "2"
    last = tracking.history(name)[-1]
    assert (last["action"], last["version"], last["from_version"], last["actor"]) == (
        "promote", "2", "1", "ci-bot"
    )


def test_force_needs_a_reason_and_is_recorded(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    _train_and_register(name, tmp_path, data, **_metrics(0.70))
    _train_and_register(name, tmp_path, data, **_metrics(0.60))
    with pytest.raises(ValueError, match="needs a reason"):
        tracking.promote(name, GATE, force=True, reason="  ")
    assert tracking.champion_version(name) == "1"

    result = tracking.promote(name, GATE, force=True, reason="fixes consent bug", actor="alice")
    assert result.promoted and result.forced
    assert tracking.champion_version(name) == "2"
    last = tracking.history(name)[-1]
    assert last["forced"] and last["reason"] == "fixes consent bug" and last["actor"] == "alice"
    assert last["overridden"] == list(result.failures) != []


def test_rollback_walks_back_through_champions(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    for auc in (0.70, 0.71, 0.72):
        _train_and_register(name, tmp_path, data, **_metrics(auc))
        if auc > 0.70:
            assert tracking.promote(name, GATE).promoted
    assert tracking.champion_version(name) == "3"

    event = tracking.rollback(name, reason="conversion dropped", actor="bob")
    assert (event["version"], event["from_version"]) == ("2", "3")
    assert tracking.champion_version(name) == "2"
    # The rolled-back challenger does not slip back in through a routine promote.
    refused = tracking.promote(name, GATE)
    assert not refused.promoted
    assert any("rolled back" in failure and "conversion dropped" in failure
               for failure in refused.failures)

    assert tracking.rollback(name)["version"] == "1"
    with pytest.raises(tracking.RegistryError, match="no earlier champion"):
        tracking.rollback(name)
    assert tracking.champion_version(name) == "1"


def test_history_says_who_when_and_why(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    _train_and_register(name, tmp_path, data, **_metrics(0.70))
    _train_and_register(name, tmp_path, data, **_metrics(0.75))
    tracking.promote(name, GATE, reason="weekly retrain")
    tracking.rollback(name, reason="latency regression", actor="oncall")

    events = tracking.history(name)
    assert [(e["action"], e["version"], e["from_version"]) for e in events] == [
        ("register", "1", None), ("promote", "1", None), ("register", "2", "1"),
        ("promote", "2", "1"), ("rollback", "1", "2"),
    ]
    assert events[3]["actor"] == getpass.getuser()
    assert events[3]["reason"] == "weekly retrain" and not events[3]["forced"]
    assert events[4]["actor"] == "oncall" and events[4]["reason"] == "latency regression"
    for event in events:
        at = datetime.fromisoformat(event["at"])
        assert at.tzinfo is not None and before <= at <= datetime.now(UTC)
    # Stored in MLflow itself: visible as registered-model tags, readable by a new client.
    tags = MlflowClient().get_registered_model(name).tags
    assert sum(key.startswith(tracking.HISTORY_TAG_PREFIX) for key in tags) == len(events)


def test_unknown_model(store: Path) -> None:
    assert tracking.champion_version("no_such_model") is None
    with pytest.raises(tracking.RegistryError, match="no registered model"):
        tracking.history("no_such_model")
    with pytest.raises(tracking.RegistryError, match="no champion"):
        tracking.download_champion("no_such_model", store / "models")


def test_download_champion_writes_a_stamped_copy(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    _, model = _train_and_register(name, tmp_path, data, **_metrics(0.70))
    cache = tmp_path / "models"
    path = tracking.download_champion(name, cache)
    assert path == cache / name / "1" / "model.onnx"
    metadata = read_onnx_metadata(path)
    run_id = MlflowClient().get_model_version(name, "1").run_id
    assert (metadata.version, metadata.mlflow_run_id) == ("1", run_id)
    sidecar = (path.parent / "metadata.json").read_text()
    assert ModelMetadata.model_validate_json(sidecar) == metadata
    assert (path.parent / "MODEL_CARD.md").read_text().startswith(f"# {name} v1")
    assert check_parity(model, path, data[0]) <= 1e-5  # the weights went through untouched
    assert tracking.download_champion(name, cache) == path  # refreshing in place works too
    assert sorted(p.name for p in (cache / name).iterdir()) == ["1"]  # no staging left behind


def test_two_workers_fetching_one_version_both_end_with_it(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every worker refreshes at once after a reload: the other worker's copy may land between
    this one's check and its move. Both must end with the complete version folder."""
    import mlflow.artifacts

    from serving.stores.registry import download_version

    _, model = _train_and_register(name, tmp_path, data, **_metrics(0.70))
    cache, uri = tmp_path / "models", mlflow.get_tracking_uri()
    real = mlflow.artifacts.download_artifacts

    stale: set[Path] = set()

    def other_worker_first(**kwargs: object) -> str:
        out = real(**kwargs)
        monkeypatch.setattr(mlflow.artifacts, "download_artifacts", real)
        download_version(uri, name, "1", cache)  # lands while this one is downloading
        stale.add(cache / name / "1")  # and this one's check for the folder comes too early
        return out

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", other_worker_first)
    is_dir = Path.is_dir
    monkeypatch.setattr(Path, "is_dir", lambda self: False if self in stale and not stale.discard(
        self) else is_dir(self))
    path = download_version(uri, name, "1", cache)
    assert path == cache / name / "1" / "model.onnx"
    assert read_onnx_metadata(path).version == "1"
    assert check_parity(model, path, data[0]) <= 1e-5
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "MODEL_CARD.md", "metadata.json", "model.onnx"]  # no partial file left beside
    assert sorted(p.name for p in (cache / name).iterdir()) == ["1"]


def test_champion_source_downloads_with_its_own_uri_only(
    name: str, store: Path, tmp_path: Path, data: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A serving process never sets MLflow's process-wide URIs. The download must go through the
    URI it was given: resolving ``models:/`` through the process-wide registry once created an
    empty ``mlflow.db`` in the working directory and then failed with "not found"."""
    from serving.stores.registry import ChampionSource

    _train_and_register(name, tmp_path, data, **_metrics(0.70))
    real = mlflow.get_tracking_uri()
    scratch = tmp_path / "cwd"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    decoy = tmp_path / "decoy.db"
    mlflow.set_tracking_uri(f"sqlite:///{decoy}")
    mlflow.set_registry_uri(f"sqlite:///{decoy}")
    try:
        version, path = ChampionSource(real, tmp_path / "cache").champion(name)
    finally:
        mlflow.set_tracking_uri(real)
        mlflow.set_registry_uri(real)
    assert (version, path) == ("1", tmp_path / "cache" / name / "1" / "model.onnx")
    assert read_onnx_metadata(path).version == "1"  # stamped with the registry version
    assert not decoy.exists() and list(scratch.iterdir()) == []


def test_a_trial_is_set_loaded_beside_the_champion_and_ended_by_its_promotion(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray],
) -> None:
    """The trial alias: set with a recorded reason, refused for the champion or a missing
    version, loaded and verified by serving's ModelManager beside the champion, and ended
    (in the registry and in serving) when the version it names is promoted."""
    from serving.stores.models import ModelManager
    from serving.stores.registry import ChampionSource

    for auc in (0.70, 0.71, 0.72):
        _train_and_register(name, tmp_path, data, **_metrics(auc))
    assert tracking.trial_version(name) is None
    event = tracking.set_trial(name, "2", reason="kept by the gate", actor="cron")
    assert event is not None and (event["action"], event["version"]) == ("trial", "2")
    assert tracking.trial_version(name) == "2"
    assert tracking.set_trial(name, "2") is None  # nothing changed, nothing recorded
    with pytest.raises(tracking.RegistryError, match="is the champion"):
        tracking.set_trial(name, "1")
    with pytest.raises(tracking.RegistryError, match="no version 9"):
        tracking.set_trial(name, "9")

    manager = ModelManager(ChampionSource(mlflow.get_tracking_uri(), tmp_path / "cache"),
                           lambda service: ["a", "b", "c"])
    manager.add(name, "propensity_v1", ["treated"], trials=True)
    assert manager.refresh() == {name: "loaded v1; trial v2 loaded"}
    trial = manager.trial(name)
    assert trial is not None and trial.meta.version == "2"
    assert trial.predict(np.zeros((1, 4), dtype=np.float32)).shape == (1, 2)
    assert manager.refresh() == {name: "unchanged v1"}

    assert tracking.promote(name, GATE, version="2", reason="trial shown better").promoted
    assert tracking.champion_version(name) == "2" and tracking.trial_version(name) is None
    actions = [(e["action"], e["version"]) for e in tracking.history(name)]
    assert actions[-3:] == [("trial", "2"), ("promote", "2"), ("end trial", "2")]
    assert manager.refresh() == {name: "loaded v2; trial of v2 ended"}
    served = manager.get(name)
    assert manager.trial(name) is None and served is not None and served.meta.version == "2"
    # a family without trials never asks for one
    tracking.set_trial(name, "3")
    plain = ModelManager(ChampionSource(mlflow.get_tracking_uri(), tmp_path / "cache"),
                         lambda service: ["a", "b", "c"])
    plain.add(name, "propensity_v1", ["treated"])
    assert plain.refresh() == {name: "loaded v2"} and plain.trial(name) is None
    tracking.set_trial(name, None, reason="done")
    assert tracking.trial_version(name) is None
    assert tracking.history(name)[-1]["action"] == "end trial"


def test_a_rollback_onto_the_version_on_trial_ends_the_trial(
    name: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray],
) -> None:
    """The champion never runs on trial beside itself: a rollback that makes the version on
    trial champion again ends its trial, as a promotion does."""
    for auc in (0.70, 0.71):
        _train_and_register(name, tmp_path, data, **_metrics(auc))
    assert tracking.promote(name, GATE, version="2", reason="better").promoted
    tracking.set_trial(name, "1", reason="its gain was not shown")
    tracking.rollback(name, reason="v2 misbehaves")
    assert tracking.champion_version(name) == "1" and tracking.trial_version(name) is None
    assert [e["action"] for e in tracking.history(name)][-2:] == ["rollback", "end trial"]


# --- the gate on its own ----------------------------------------------------------------------


def test_metric_gate_rules() -> None:
    gate = tracking.metric_gate({"auc": ("higher", 0.01), "ece": "lower", "new": "higher"})
    champion = {"auc": 0.70, "ece": 0.02}
    assert gate({"auc": 0.695, "ece": 0.02, "new": 1.0}, champion) == []
    assert gate({"auc": 0.68, "ece": 0.02}, champion)[0].startswith("auc: 0.68 vs champion 0.7")
    assert gate({"auc": 0.70, "ece": 0.021}, champion)[0].startswith("ece: 0.021")
    assert gate({"auc": 0.70}, champion) == [
        "ece: missing on the challenger (champion 0.02; its run's evaluation.skipped tag says why)"]
    with pytest.raises(ValueError, match="tolerance >= 0"):
        tracking.metric_gate({"auc": ("higher", -0.1)})
    with pytest.raises(ValueError, match="'higher'/'lower'"):
        tracking.metric_gate({"auc": "up"})  # type: ignore[dict-item]
