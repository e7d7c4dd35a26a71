"""`rewards experiments create|list` against a real (temporary) SQLite event store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli.app import app


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_create_then_list(tmp_path: Path) -> None:
    code, out = run("experiments", "create", "--name", "Winter", "--start", "2030-01-01",
                    "--end", "2030-01-15", "--arms", "model=80,random=10,holdout=10",
                    "--primary-metric", "incremental_spend", "--data-dir", str(tmp_path))
    assert code == 0, out
    created = json.loads(out)
    assert [(a["name"], a["share"]) for a in created["arms"]] == [
        ("model", 0.8), ("random", 0.1), ("holdout", 0.1)]  # percentages accepted
    assert created["start"].startswith("2030-01-01T00:00:00") and created["salt"] == created["id"]
    code, out = run("experiments", "list", "--data-dir", str(tmp_path))
    assert code == 0 and [e["id"] for e in json.loads(out)] == [created["id"]]
    # the store is durable: a second process sees it and refuses an overlapping period
    code, out = run("experiments", "create", "--name", "Overlap", "--start", "2030-01-10",
                    "--end", "2030-02-01", "--data-dir", str(tmp_path))
    assert code == 2 and "--start" in out and created["id"] in out


@pytest.mark.parametrize(("args", "option"), [
    (["--arms", "model=0.7,holdout=0.2"], "--arms"),
    (["--arms", "model=x"], "--arms"),
    (["--end", "2029-01-01"], "--end"),
    (["--start", "soon"], "--start"),
    (["--primary-metric", "clicks"], "--primary-metric"),
])
def test_bad_input_names_the_option(tmp_path: Path, args: list[str], option: str) -> None:
    base = {"--name": "Bad", "--start": "2030-01-01", "--end": "2030-01-15"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    code, out = run("experiments", "create", *sum(map(list, base.items()), []),
                    "--data-dir", str(tmp_path))
    assert code == 2 and out.startswith(f"error: {option}")


# --- commands run before their inputs exist --------------------------------------------------

CREATE = ["experiments", "create", "--name", "X", "--start", "2030-01-01", "--end", "2030-01-15"]


def _one_line_error(code: int, out: str, hint: str) -> None:
    """Exit code 2 and one line that says what to run first: never a traceback."""
    assert code == 2, out
    assert out.startswith("error: ") and len(out.strip().splitlines()) == 1, out
    assert hint in out, out


@pytest.mark.parametrize("args", [
    ["experiments", "list"],
    ["experiments", "report", "exp-1", "--out", "report-out"],
    ["experiments", "simulate-live", "exp-1"],
    CREATE,
])
def test_no_data_folder_says_what_to_run(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "not-there"
    _one_line_error(*run(*args, "--data-dir", str(data)), "run `rewards ")
    assert not data.exists()  # a mistyped --data-dir is not created on the way


@pytest.mark.parametrize("args", [
    ["experiments", "list"],
    ["experiments", "report", "exp-1", "--out", "report-out"],
])
def test_no_event_store_says_what_to_run(tmp_path: Path, args: list[str]) -> None:
    _one_line_error(*run(*args, "--data-dir", str(tmp_path)), "`rewards experiments create`")
    assert list(tmp_path.iterdir()) == []  # no empty database left behind


def test_uplift_evaluate_without_its_file(tmp_path: Path) -> None:
    code, out = run("uplift", "evaluate", "--data", str(tmp_path / "ab.csv"), "--treatment-col",
                    "group", "--treated", "t", "--control", "c", "--outcome", "bought")
    _one_line_error(code, out, "--data")


def test_simulate_live_says_what_each_missing_input_needs(tiny_world_dir: Path,
                                                          tmp_path: Path) -> None:
    """A world without its hidden truth (a real program's import), then no features, then no
    experiment: each stops with its own one line, before any service starts."""
    import shutil

    from serving.config import ServeSettings, StoreSettings
    from training.cli.data import build_store_features
    from training.simulate.onboard import onboard

    data = tmp_path / "data"
    shutil.copytree(tiny_world_dir, data / "world", ignore=shutil.ignore_patterns("truth"))
    live = ("experiments", "simulate-live", "exp-1", "--members", "20", "--data-dir", str(data))
    _one_line_error(*run(*live), "no hidden truth")
    shutil.copytree(tiny_world_dir / "truth", data / "world" / "truth")
    _one_line_error(*run(*live), "`rewards features build`")
    settings = StoreSettings(data_dir=data)
    onboard(settings.world_dir, ServeSettings().events(settings), progress=False)
    build_store_features(settings, progress=False)
    _one_line_error(*run(*live), "`rewards experiments create`")
    assert run(*CREATE, "--data-dir", str(data))[0] == 0  # (an experiment, but not exp-1)
    _one_line_error(*run(*live), "ID: no experiment 'exp-1'")
