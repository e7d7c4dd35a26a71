"""One writer at a time in a data folder: a second `rewards retrain` (an overlapping cron run)
or `rewards features build` stops at once, names the job that holds the folder, exits 75 and
changes nothing; the lock dies with its holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli.app import app
from training.data.job_lock import BUSY_EXIT, LOCK_FILE, DataFolderBusy, exclusive, holder

HOLD = """
import sys, time
from pathlib import Path
from training.data.job_lock import exclusive
with exclusive(Path(sys.argv[1]), "rewards features build"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding tmp_path/data (as a running job would)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "data")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_job_is_refused_and_told_who_holds_the_folder(
        tmp_path: Path, held: subprocess.Popen[str]) -> None:
    with pytest.raises(DataFolderBusy) as busy, exclusive(tmp_path / "data", "rewards retrain"):
        pytest.fail("entered a folder another process holds")
    text = str(busy.value)
    assert "rewards features build" in text and f"pid {held.pid}" in text
    assert str(tmp_path / "data") in text
    assert busy.value.holder["job"] == "rewards features build"


def test_the_lock_dies_with_its_holder(tmp_path: Path, held: subprocess.Popen[str]) -> None:
    """A job killed mid-way (OOM, SIGKILL) leaves no stale lock: the kernel drops flock's."""
    held.send_signal(signal.SIGKILL)
    held.wait()
    with exclusive(tmp_path / "data", "rewards retrain"):
        stamp = holder(tmp_path / "data" / LOCK_FILE)
        assert stamp["job"] == "rewards retrain" and stamp["pid"] == os.getpid()


def test_nested_use_in_one_process_reenters(tmp_path: Path) -> None:
    """retrain holds the folder and builds features inside: that must not lock itself out;
    once the outer job ends another process can take the folder."""
    data = tmp_path / "data"
    with exclusive(data, "rewards retrain"), exclusive(data, "rewards features build"):
        assert holder(data / LOCK_FILE)["job"] == "rewards retrain"
    probe = ("import sys; from pathlib import Path; from training.data.job_lock import "
             "exclusive\nwith exclusive(Path(sys.argv[1]), 'probe'): print('ok')")
    out = subprocess.run([sys.executable, "-c", probe, str(data)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_retrain_during_another_job_exits_75_and_changes_nothing(
        tmp_path: Path, held: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.stores.events import open_event_store

    data = tmp_path / "data"
    open_event_store(f"sqlite:///{data / 'events.db'}").close()  # an (empty) event store
    before = sorted(p.name for p in data.iterdir())
    monkeypatch.delenv("REWARDS_EVENTS_URL", raising=False)
    result = CliRunner().invoke(app, ["retrain", "--data-dir", str(data)])
    assert result.exit_code == BUSY_EXIT, result.output  # at once, not after the holder
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("busy: another job is writing to")
    assert "rewards features build" in lines[0] and "Traceback" not in result.output
    assert sorted(p.name for p in data.iterdir()) == before
    assert json.loads((data / LOCK_FILE).read_text())["pid"] == held.pid


def test_materialize_during_another_job_exits_75(
        tmp_path: Path, held: subprocess.Popen[str]) -> None:
    """During a back-dated retrain the feature folder holds last week's features:
    materialize would load them into the online store, so it waits its turn too."""
    from training.cli.common import FEATURE_FILES

    features = tmp_path / "data" / "features"
    features.mkdir(parents=True)
    for name in FEATURE_FILES:
        (features / name).write_bytes(b"")
    result = CliRunner().invoke(app, ["features", "materialize",
                                      "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == BUSY_EXIT, result.output
    assert "rewards features build" in result.output and "Traceback" not in result.output
