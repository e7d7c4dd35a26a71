"""A back-dated run's scratch feature folder never outlives it (training/data/backfill.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.backfill import aside_path, live_features_kept
from training.data.job_lock import exclusive


def _live(data: Path) -> Path:
    features = data / "features"
    features.mkdir(parents=True)
    (features / "member_features.parquet").write_bytes(b"today")
    (features / "watermark.json").write_text("{}")
    return features


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_the_live_folder_comes_back_after_the_run(tmp_path: Path) -> None:
    features = _live(tmp_path)
    before = _files(features)
    with live_features_kept(features):
        assert not features.exists()  # the run builds its own
        features.mkdir()
        (features / "member_features.parquet").write_bytes(b"last week")
    assert _files(features) == before
    assert not aside_path(features).exists()


def test_the_live_folder_comes_back_when_the_run_fails(tmp_path: Path) -> None:
    features = _live(tmp_path)
    before = _files(features)
    with pytest.raises(RuntimeError, match="training failed"), live_features_kept(features):
        features.mkdir()
        (features / "member_features.parquet").write_bytes(b"last week")
        raise RuntimeError("training failed")
    assert _files(features) == before


def test_a_program_without_features_yet_keeps_none(tmp_path: Path) -> None:
    features = tmp_path / "features"
    with live_features_kept(features):
        features.mkdir()
        (features / "member_features.parquet").write_bytes(b"last week")
    assert not features.exists() and not aside_path(features).exists()


def test_the_next_job_puts_back_what_a_killed_run_left_aside(tmp_path: Path) -> None:
    """A run killed between the two renames (no `finally`) leaves the live folder aside and
    its own back-dated one in place: the next holder of the data folder's lock repairs it."""
    features = _live(tmp_path)
    before = _files(features)
    features.rename(aside_path(features))  # what the killed run had done ...
    features.mkdir()
    (features / "member_features.parquet").write_bytes(b"last week")  # ... and built
    with exclusive(tmp_path, "rewards features build"):
        assert _files(features) == before
    assert not aside_path(features).exists()


def test_a_nested_lock_does_not_undo_a_running_backfill(tmp_path: Path) -> None:
    """The retrain's own feature build re-enters its lock: that must not put the live folder
    back in the middle of the run."""
    features = _live(tmp_path)
    with exclusive(tmp_path, "rewards retrain"), live_features_kept(features):
        features.mkdir()
        (features / "member_features.parquet").write_bytes(b"last week")
        with exclusive(tmp_path, "rewards features build"):
            assert (features / "member_features.parquet").read_bytes() == b"last week"
    assert (features / "member_features.parquet").read_bytes() == b"today"


def test_campaign_scoring_reads_the_live_folder_while_a_backfill_runs(tmp_path: Path) -> None:
    from training.data.backfill import live_features

    features = _live(tmp_path)
    assert live_features(features) == features
    with live_features_kept(features):
        features.mkdir()
        (features / "member_features.parquet").write_bytes(b"last week")
        assert (live_features(features) / "member_features.parquet").read_bytes() == b"today"
    assert live_features(features) == features

