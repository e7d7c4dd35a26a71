"""The `rewards` command: bad input, and commands run before their inputs exist, fail with one
clear line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from serving.config import get_store_settings
from training.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize(("args", "needle"), [
    (["simulate", "--members", "-5"], "--members"),
    (["simulate", "--days", "0"], "--days"),
    (["simulate", "--bogus"], "No such option"),
    (["simulate", "--start", "2026-13-45", "--members", "10", "--days", "2"], "--start"),
    (["features", "build", "--start", "1997-02-30"], "--start"),
    (["features", "show", "M-1", "--as-of", "yesterday-ish"], "--as-of"),
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


def _one_clear_line(result: Result) -> str:
    """Exit 2 and a single `error: ...` line: no traceback, no library log lines."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


FIRST_RUN = [
    (["serve"], "no features", "rewards features build"),
    (["train", "rewards"], "no features", "rewards features build"),
    (["train", "difficulty"], "no features", "rewards features build"),
    (["train", "all"], "no features", "rewards features build"),
    (["evaluate"], "no features", "rewards features build"),
    (["score-batch", "--out", "{tmp}/scores.parquet"], "no features", "rewards features build"),
    (["models", "list"], "no model registry", "rewards train all"),
    (["models", "promote", "reward"], "no model registry", "rewards train all"),
    (["models", "rollback", "reward"], "no model registry", "rewards train all"),
    (["features", "build"], "no event store", "rewards import"),
    (["retrain"], "no event store", "rewards import"),
    (["features", "refresh"], "no features", "rewards features build"),
    (["features", "show", "M-1"], "no features", "rewards features build"),
    (["features", "apply"], "no features", "rewards features build"),
    (["features", "materialize"], "no features", "rewards features build"),
    (["keys", "list"], "no API keys", "rewards keys create"),
    (["keys", "revoke", "abc"], "no API keys", "rewards keys create"),
]


@pytest.mark.parametrize(("args", "what", "run_first"), FIRST_RUN,
                         ids=[" ".join(a[:2]) for a, _, _ in FIRST_RUN])
def test_first_run_says_what_to_run_first(args: list[str], what: str, run_first: str,
                                          tmp_path: Path) -> None:
    """On a fresh data folder every command that needs earlier steps stops before doing
    anything: one line naming what is missing and the command that makes it, and the folder
    is left as it was (no empty registry or database created on the way)."""
    data = tmp_path / "data"
    data.mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    line = _one_clear_line(runner.invoke(app, [*args, "--data-dir", str(data)]))
    assert what in line and f"`{run_first}" in line and str(data) in line
    assert list(data.iterdir()) == []


def test_serve_reads_the_data_folder_from_the_environment(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDS_DATA_DIR", str(tmp_path))
    get_store_settings.cache_clear()  # settings are read once per process
    try:
        line = _one_clear_line(runner.invoke(app, ["serve"]))
    finally:
        get_store_settings.cache_clear()
    assert f"no features in {tmp_path / 'features'}" in line
    assert "`rewards features build`" in line


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_each_step_names_the_next(tmp_path: Path) -> None:
    """As the pipeline's outputs appear, the message moves on to the next missing step (the
    checks look at files only, so empty stand-ins are enough here)."""
    def first_line(*args: str) -> str:
        return _one_clear_line(runner.invoke(app, [*args, "--data-dir", str(tmp_path)]))

    assert "`rewards import members FILE`" in first_line("features", "build")
    for args in (("serve",), ("train", "all"), ("features", "apply")):
        assert "`rewards features build` first" in first_line(*args)
    _touch(tmp_path / "features", "member_features.parquet")
    assert "`rewards features build` again" in first_line("train", "all")
    _touch(tmp_path / "features", "reward_features.parquet", "challenge_features.parquet",
           "offers.parquet", "assignments.parquet", "history.json")
    for args in (("train", "all"), ("evaluate",), ("features", "materialize", "--no-apply")):
        assert "`rewards features apply`" in first_line(*args)
    _touch(tmp_path / "feast", "registry.db")
    assert "`rewards train all`" in first_line("evaluate")
    assert "`rewards train all`" in first_line("score-batch", "--out", str(tmp_path / "s.csv"))


def test_help_imports_no_heavy_library() -> None:
    """`rewards --help` stays instant: the command modules import their libraries inside the
    commands."""
    code = ("import sys, training.cli; heavy = {'mlflow', 'feast', 'lightgbm', 'pandas', "
            "'onnxruntime', 'fastapi', 'dask'} & set(sys.modules); assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_simulate_and_build_from_the_command_line(tmp_path: Path) -> None:
    """The real console entry point, in a subprocess: what a user types."""
    exe = Path(sys.executable).with_name("rewards")
    data = tmp_path / "data"

    def rewards(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120,
                              check=False)

    fresh = rewards("serve", "--data-dir", str(data))  # a fresh clone's first command
    assert fresh.returncode == 2 and "Traceback" not in fresh.stderr
    assert fresh.stderr.startswith("error: no features") and "`rewards features build`" in (
        fresh.stderr)
    sim = rewards("simulate", "--members", "300", "--days", "14", "--data-dir", str(data))
    assert sim.returncode == 0, sim.stderr
    assert (data / "world" / "program" / "events.parquet").is_file()
    assert (data / "events.db").is_file()  # imported, as a program would be
    feats = rewards("features", "build", "--data-dir", str(data))
    assert feats.returncode == 0, feats.stderr
    assert '"member_features": 4500' in feats.stdout  # 300 members x (14 + 1) days
    train = rewards("train", "all", "--data-dir", str(data))
    assert train.returncode == 2 and "`rewards features apply`" in train.stderr
    bad = rewards("simulate", "--members", "-1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_retrain_json_is_the_only_thing_on_stdout_and_is_strict_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cron and pipes parse `rewards retrain --json`: libraries that print progress on stdout
    (Feast's materialize does) go to stderr, and a NaN metric is null, not bare NaN."""
    import json

    import training.retrain

    data = tmp_path / "data"
    data.mkdir()
    (data / "events.db").touch()  # an event store to read (the retrain itself is faked)

    def fake(store, settings, loop, *, as_of, force,  # noqa: ANN001, ANN202, ARG001
             as_present, progress):  # noqa: ANN001, ARG001
        print("Materializing 1 feature views to 2026-03-01 00:00:00+00:00")  # as Feast does
        progress("- reward model ...")
        return {"status": "trained", "snapshot": "abc", "families": [],
                "metrics": {"auc": float("nan"), "ok": 0.5, "worst": float("-inf")}}

    monkeypatch.setattr(training.retrain, "retrain", fake)
    result = runner.invoke(app, ["retrain", "--as-of", "2026-03-01T00:00:00Z", "--json",
                                 "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["metrics"] == {"auc": None, "ok": 0.5, "worst": None}
    assert "Materializing" in result.stderr and "reward model" in result.stderr


@pytest.mark.parametrize(("args", "present"), [
    ([], True),  # a cron run: now is the present
    (["--as-of", "2026-03-01T00:00:00Z"], False),  # a backfill leaves serving's features
    (["--as-of", "2026-03-01T00:00:00Z", "--as-present"], True),  # a simulation's clock
])
def test_only_a_run_as_of_the_present_refreshes_serving_features(
        args: list[str], present: bool, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import training.retrain

    data = tmp_path / "data"
    data.mkdir()
    (data / "events.db").touch()
    seen: dict[str, object] = {}

    def fake(store, settings, loop, *, as_of, force,  # noqa: ANN001, ANN202, ARG001
             as_present, progress):  # noqa: ANN001, ARG001
        seen["as_present"] = as_present
        return {"status": "unchanged", "snapshot": "abc"}

    monkeypatch.setattr(training.retrain, "retrain", fake)
    result = runner.invoke(app, ["retrain", *args, "--json", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert seen == {"as_present": present}


def test_retrain_refuses_an_as_of_in_the_future(tmp_path: Path) -> None:
    """Windows still open at a future instant would count as closed, and their partial labels
    would be frozen for good: refused before anything is read."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.db").touch()
    line = _one_clear_line(runner.invoke(app, ["retrain", "--as-of", "2099-01-01T00:00:00Z",
                                               "--data-dir", str(data)]))
    assert "--as-of" in line and "future" in line


@pytest.mark.parametrize("version", ["abc", "v", "1.5", "v-2"])
def test_a_trial_version_that_is_no_number_is_one_clear_error(version: str,
                                                              tmp_path: Path) -> None:
    line = _one_clear_line(runner.invoke(app, ["models", "trial", "reward", version,
                                               "--data-dir", str(tmp_path)]))
    assert "VERSION" in line


def test_a_watching_refresher_outlives_a_failed_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """`rewards features refresh --watch N` runs for weeks: a round that fails (a retrain
    rewriting the feature folder under it) is reported and the next one runs."""
    import threading

    import training.cli.data as data

    calls: list[str] = []

    def flaky(settings, every, stop=None):  # noqa: ANN001, ANN202, ARG001
        calls.append("round")
        if len(calls) == 1:
            raise FileNotFoundError("history.json missing: a build is rewriting the folder")
        yield {"members": 3}
        stop.set()

    monkeypatch.setattr(data, "refresh_loop", flaky)
    errors: list[Exception] = []
    stop = threading.Event()
    out = list(data.refresh_forever(None, 0.01, stop, on_error=errors.append))  # type: ignore[arg-type]
    assert out == [{"members": 3}] and calls == ["round", "round"]
    assert len(errors) == 1 and "history.json" in str(errors[0])


def test_the_servers_refresher_thread_logs_a_failed_round_and_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import threading

    import training.cli.data as data
    import training.cli.serve as serve

    done = threading.Event()

    def flaky(settings, every, stop=None):  # noqa: ANN001, ANN202, ARG001
        if not getattr(flaky, "failed", False):
            flaky.failed = True  # type: ignore[attr-defined]
            raise OSError("event store unreachable")
        yield {"members": 2}
        done.set()
        stop.wait()

    monkeypatch.setattr(data, "refresh_loop", flaky)
    monkeypatch.setattr(serve, "require_pipeline", lambda store, through: None)
    with caplog.at_level(logging.INFO, logger="rewards.refresh"):
        stop = serve._start_refresher(None, 0.01)  # type: ignore[arg-type]
        try:
            assert done.wait(5)
        finally:
            stop.set()
    messages = [r.getMessage() for r in caplog.records]
    assert any("feature refresh failed" in m for m in messages)
    assert "features refreshed" in messages
