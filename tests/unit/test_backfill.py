"""A back-dated retrain builds and trains in a scratch feature root of its own; serving's
feature folder is never moved or rewritten (training/data/backfill.py, training/retrain.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from serving.config import StoreSettings
from training.data.backfill import BACKFILLS, backfill_store, has_live_features

AS_OF = datetime(2026, 3, 1, tzinfo=UTC)


def _store(tmp_path: Path) -> StoreSettings:
    return StoreSettings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")


def test_the_scratch_root_holds_features_and_registry_and_nothing_else(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with backfill_store(store, AS_OF) as scratch:
        # features and Feast's files move; events, ledger, MLflow and models stay the program's
        assert scratch.features_dir.parent.parent == store.data / BACKFILLS
        assert scratch.feast_root != store.feast_root
        assert (scratch.data, scratch.tracking_uri, scratch.models) == (
            store.data, store.tracking_uri, store.models)
        scratch.features_dir.mkdir()
        (scratch.features_dir / "member_features.parquet").write_bytes(b"last week")
    assert not any((store.data / BACKFILLS).iterdir())  # removed after the run


def test_the_scratch_root_goes_when_the_run_fails_and_a_killed_runs_with_the_next(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(RuntimeError, match="training failed"), \
            backfill_store(store, AS_OF) as scratch:
        scratch.features_dir.mkdir()
        raise RuntimeError("training failed")
    assert not any((store.data / BACKFILLS).iterdir())
    killed = store.data / BACKFILLS / "20260201T000000-123" / "features"
    killed.mkdir(parents=True)  # what a SIGKILLed run leaves behind
    with backfill_store(store, AS_OF):
        assert not killed.exists()


def test_a_program_without_features_gets_this_runs_and_one_with_keeps_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first retrain after importing a history, --as-of its end: serving has nothing yet,
    so the run's features become serving's (else a champion would serve from no features)."""
    import training.retrain
    from training.config import TrainSettings
    from training.retrain import RetrainSettings, retrain

    store = _store(tmp_path)
    runs: list[tuple[Path, bool]] = []

    def fake(used: StoreSettings, *args: Any, present: bool, **_: Any) -> dict[str, Any]:
        runs.append((used.features_dir, present))
        return {"status": "unchanged"}

    monkeypatch.setattr(training.retrain, "_retrain", fake)
    assert not has_live_features(store)
    retrain(store, TrainSettings(), RetrainSettings(), as_of=AS_OF)
    assert runs[-1] == (store.features_dir, True)
    # serving's registry exists (the first materialize applied it); a killed build took the
    # folder's history.json with it: serving's features are still serving's
    (store.data / "feast").mkdir(parents=True)
    (store.data / "feast" / "registry.db").write_bytes(b"")
    store.features_dir.mkdir(parents=True)
    assert has_live_features(store)
    retrain(store, TrainSettings(), RetrainSettings(), as_of=AS_OF)
    assert runs[-1][1] is False and runs[-1][0] != store.features_dir
    retrain(store, TrainSettings(), RetrainSettings(), as_of=AS_OF, as_present=True)
    assert runs[-1] == (store.features_dir, True)
