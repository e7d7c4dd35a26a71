"""The `rewards` command: bad input fails with one clear line and a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize(("args", "needle"), [
    (["simulate", "--members", "-5"], "--members"),
    (["simulate", "--days", "0"], "--days"),
    (["simulate", "--bogus"], "No such option"),
    (["simulate", "--start", "2026-13-45", "--members", "10", "--days", "2"], "--start"),
    (["features", "build", "--world", "/nonexistent/world"], "does not exist"),
    (["models", "promote", "nonsense"], "unknown model"),
    (["score-batch", "--out", "/tmp/x.txt"], "--out"),
    (["evaluate", "--alias", "staging"], "--alias"),
])
def test_bad_input_is_one_clear_error(args: list[str], needle: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDS_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output


def test_missing_world_for_materialize(tmp_path: Path) -> None:
    result = runner.invoke(app, ["features", "materialize", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "rewards simulate" in result.output


def test_simulate_and_build_from_the_command_line(tmp_path: Path) -> None:
    """The real console entry point, in a subprocess: what a user types."""
    exe = Path(sys.executable).with_name("rewards")
    data = tmp_path / "data"
    sim = subprocess.run([str(exe), "simulate", "--members", "300", "--days", "14",
                          "--data-dir", str(data)], capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr
    assert (data / "world" / "offers.parquet").is_file()
    feats = subprocess.run([str(exe), "features", "build", "--data-dir", str(data)],
                           capture_output=True, text=True, timeout=120)
    assert feats.returncode == 0, feats.stderr
    assert '"member_features": 4500' in feats.stdout  # 300 members x (14 + 1) days
    bad = subprocess.run([str(exe), "simulate", "--members", "-1"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
