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
