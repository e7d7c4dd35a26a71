"""`rewards ope` end to end: files written as a foreign source would (CSV and Parquet), the
JSON on stdout, the readable table, and a bad file stopping with one line naming it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from training.cli.app import app

pytestmark = pytest.mark.integration

runner = CliRunner()
Breaker = Callable[[pd.DataFrame], pd.DataFrame]
KEYS = {"n", "ips", "ips_ci_low", "ips_ci_high", "snips", "snips_ci_low", "snips_ci_high", "dr",
        "dr_ci_low", "dr_ci_high", "ess", "max_weight", "clipped", "actions", "context_columns"}


def _frames(n: int = 1_500, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two slots per decision, non-uniform logging over 3 offers, a context that matters, and a
    candidate that is stochastic (0.8 on the offer it prefers, 0.1 on each other)."""
    rng = np.random.default_rng(seed)
    decisions = np.repeat(np.arange(n), 2)
    x = np.repeat(rng.normal(size=n), 2)
    tier = np.repeat(rng.choice(["gold", "silver"], n), 2)
    logging_p = np.array([0.5, 0.3, 0.2])
    action = rng.choice(3, size=2 * n, p=logging_p)
    reward = rng.binomial(1, 1 / (1 + np.exp(-(x * (action - 1) + (tier == "gold")))))
    log = pd.DataFrame({"decision_id": [f"D-{d:05d}" for d in decisions],
                        "slot": np.tile([0, 1], n), "action": [f"offer-{a}" for a in action],
                        "propensity": logging_p[action], "reward": reward.astype(float),
                        "x": x, "tier": tier})
    preferred = np.where(x > 0, 2, 0)
    rows = np.repeat(np.arange(2 * n), 3)
    candidate = np.tile(np.arange(3), 2 * n)
    target = pd.DataFrame({"decision_id": log["decision_id"].to_numpy()[rows],
                           "slot": log["slot"].to_numpy()[rows],
                           "action": [f"offer-{a}" for a in candidate],
                           "probability": np.where(candidate == preferred[rows], 0.8, 0.1)})
    return log, target


def _textbook_ips(log: pd.DataFrame, target: pd.DataFrame) -> float:
    merged = log.merge(target, on=["decision_id", "slot", "action"], how="left")
    pi = merged["probability"].fillna(0.0).to_numpy()
    return float(np.mean(pi / merged["propensity"].to_numpy() * merged["reward"].to_numpy()))


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize(("log_suffix", "target_suffix"),
                         [(".csv", ".csv"), (".parquet", ".parquet"), (".csv", ".parquet")])
def test_json_estimates_from_csv_and_parquet(log_suffix: str, target_suffix: str,
                                             tmp_path: Path) -> None:
    log, target = _frames()
    log_path = _write(log, tmp_path / f"log{log_suffix}")
    target_path = _write(target, tmp_path / f"target{target_suffix}")

    result = runner.invoke(app, ["ope", "--log", str(log_path), "--target", str(target_path),
                                 "--json", "--bootstrap", "200", "--folds", "3"])

    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # stdout is the JSON alone, progress goes to stderr
    assert set(out) == KEYS
    assert out["n"] == len(log) and out["actions"] == 3
    assert out["context_columns"] == ["x", "tier"]
    assert out["ips"] == pytest.approx(_textbook_ips(log, target), abs=1e-9)
    for name in ("ips", "snips", "dr"):
        assert out[f"{name}_ci_low"] < out[name] < out[f"{name}_ci_high"]


def test_table_without_context_has_no_dr(tmp_path: Path) -> None:
    log, target = _frames(400)
    log_path = _write(log.drop(columns=["x", "tier"]), tmp_path / "log.csv")
    target_path = _write(target, tmp_path / "target.parquet")

    result = runner.invoke(app, ["ope", "--log", str(log_path), "--target", str(target_path),
                                 "--clip", "2"])
    assert result.exit_code == 0, result.output
    assert "IPS" in result.stdout and "SNIPS" in result.stdout and "DR " not in result.stdout
    assert "clipped rows" in result.stdout

    as_json = runner.invoke(app, ["ope", "--log", str(log_path), "--target", str(target_path),
                                  "--clip", "2", "--json"])
    out = json.loads(as_json.stdout)
    assert out["dr"] is None and out["dr_ci_low"] is None and out["context_columns"] == []
    assert out["max_weight"] <= 2.0 and out["clipped"] > 0


def test_keys_written_from_float_columns_and_float32_probabilities_are_taken(
        tmp_path: Path) -> None:
    """A CSV written from a float column says 3.0 where the other file says 3 (pandas does
    that), and a float32 softmax may sum to 1 with a member at 1.0000004: both are the same
    estimate as the clean files, not an error."""
    log, target = _frames(400)
    log = log.assign(action=log["action"].str.removeprefix("offer-").astype(int),
                     decision_id=log["decision_id"].str.removeprefix("D-").astype(int))
    target = target.assign(action=target["action"].str.removeprefix("offer-").astype(int),
                           decision_id=target["decision_id"].str.removeprefix("D-").astype(int))
    clean = runner.invoke(app, ["ope", "--log", str(_write(log, tmp_path / "log.csv")),
                                "--target", str(_write(target, tmp_path / "target.csv")),
                                "--json", "--bootstrap", "50", "--folds", "2"])
    assert clean.exit_code == 0, clean.output
    floats = log.astype({"action": float, "slot": float, "decision_id": float})
    first = target.groupby(["decision_id", "slot"]).cumcount().to_numpy() == 0
    certain = target.assign(probability=np.where(first, 1.0000004, 0.0),
                            action=target["action"].astype(float))
    # a certain action (1.0000004 then zeros) where the logged one is: probability 1 there
    same = runner.invoke(app, ["ope", "--log", str(_write(floats, tmp_path / "logf.csv")),
                               "--target", str(_write(target, tmp_path / "t2.csv")),
                               "--json", "--bootstrap", "50", "--folds", "2"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["ips"] == pytest.approx(json.loads(clean.stdout)["ips"],
                                                          abs=1e-12)
    tiny_over = runner.invoke(app, ["ope", "--log", str(_write(floats, tmp_path / "logg.csv")),
                                    "--target", str(_write(certain, tmp_path / "t3.csv")),
                                    "--json", "--bootstrap", "50", "--folds", "2"])
    assert tiny_over.exit_code == 0, tiny_over.output
    expected = _textbook_ips(log, certain.assign(action=target["action"], probability=np.where(
        first, 1.0, 0.0)))
    assert json.loads(tiny_over.stdout)["ips"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("which", "break_it", "needle"), [
    ("log", lambda f: f.assign(propensity=f["propensity"].where(f.index != 6, 1.7)),
     "column 'propensity' has 1 values outside (0, 1] (first at row 7)"),
    ("log", lambda f: f.drop(columns="reward"), "missing column(s) 'reward'"),
    ("target", lambda f: f.assign(probability=f["probability"] * 0.9),
     "column 'probability' does not sum to 1"),
])
def test_bad_input_exits_2_naming_file_and_column(which: str, break_it: Breaker, needle: str,
                                                  tmp_path: Path) -> None:
    log, target = _frames(200)
    if which == "log":
        log = break_it(log)
    else:
        target = break_it(target)
    log_path = _write(log, tmp_path / "log.csv")
    target_path = _write(target, tmp_path / "target.csv")

    result = runner.invoke(app, ["ope", "--log", str(log_path), "--target", str(target_path),
                                 "--json"])

    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    path = log_path if which == "log" else target_path
    assert f"{which.upper()} {path}" in lines[0] and needle in lines[0]


@pytest.mark.parametrize(("args", "needle"), [
    (["--bootstrap", "1"], "--bootstrap"),
    (["--folds", "1"], "--folds"),
    (["--clip", "0"], "--clip"),
])
def test_bad_options_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    log, target = _frames(50)
    log_path = _write(log, tmp_path / "log.csv")
    target_path = _write(target, tmp_path / "target.csv")
    result = runner.invoke(app, ["ope", "--log", str(log_path), "--target", str(target_path),
                                 *args])
    assert result.exit_code == 2 and needle in result.output


def test_missing_or_unknown_files_are_named(tmp_path: Path) -> None:
    target_path = _write(_frames(50)[1], tmp_path / "target.csv")
    missing = runner.invoke(app, ["ope", "--log", str(tmp_path / "nope.csv"),
                                  "--target", str(target_path)])
    assert missing.exit_code == 2 and "LOG" in missing.output and "nope.csv" in missing.output
    (tmp_path / "log.txt").write_text("x")
    unknown = runner.invoke(app, ["ope", "--log", str(tmp_path / "log.txt"),
                                  "--target", str(target_path)])
    assert unknown.exit_code == 2 and ".csv or .parquet" in unknown.output
