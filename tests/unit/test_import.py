"""`rewards import members|events`: the hand-made foreign program in tests/data/foreign (string
and UUID ids, 1990s dates in ISO and YYYYMMDD, missing optional columns, bad rows), idempotent
re-imports, the rejects file, exit codes, CSV and Parquet alike, the API's rules, and whole
chunks only after a crash. Real SQLite stores under tmp_path, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from serving.contract.events import parse_event
from serving.stores.events import EventStore, open_event_store
from training.cli.program import import_app
from training.data.imports import (
    check_events,
    check_members,
    import_events_file,
    import_members_file,
    rejects_path,
)

REPO = Path(__file__).resolve().parents[2]
FOREIGN = REPO / "tests" / "data" / "foreign"
UUID = "6f1c2b9e-8a2d-4a47-9d4e-1b2c3d4e5f60"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def store(url: str) -> Iterator[EventStore]:
    s = open_event_store(url)
    yield s
    s.close()


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """A copy of the foreign program's files (rejects files are written beside them)."""
    folder = tmp_path / "foreign"
    folder.mkdir()
    for name in ("members.csv", "events.csv"):
        (folder / name).write_bytes((FOREIGN / name).read_bytes())
    return folder


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


# --- the foreign program ---------------------------------------------------------------------------


def test_foreign_program_imports_with_its_ids_dates_and_attributes(
        store: EventStore, foreign: Path) -> None:
    members = import_members_file(foreign / "members.csv", store)
    assert (members.read, members.imported, members.duplicates, members.rejected) == (9, 6, 0, 3)
    profiles = store.members_frame().set_index("member_id")
    assert sorted(profiles.index) == sorted(
        ["M-000172", "M-000173", "M-000201", UUID, "0b7e4d2a-1c3f-4e5a-9b8c-7d6e5f4a3b21", "42"])
    assert profiles.loc["M-000173", "joined_at"] == ts("1996-05-15T00:00:00Z")  # YYYYMMDD
    assert profiles.loc["M-000201", "joined_at"] == ts("1997-01-20T08:30:00Z")  # naive = UTC
    assert profiles.loc["M-000201", "region"] is None
    assert pd.isna(profiles.loc["M-000201", "consent"])
    assert [bool(profiles.loc[m, "consent"]) for m in (UUID, "42", "M-000173")] == [
        True, False, False]  # TRUE, no, false
    assert profiles.loc["M-000172", "attributes"] == {"home_store": "S-12", "birth_year": "1961"}
    assert profiles.loc["42", "attributes"] is None

    events = import_events_file(foreign / "events.csv", store)
    assert (events.read, events.imported, events.duplicates, events.rejected,
            events.generated_ids, events.ignored) == (27, 21, 1, 5, 2, {"points": 1})
    frame = store.events_frame().set_index("event_id")
    assert frame.loc["e-0005", "event_timestamp"] == ts("1997-04-02T08:00:00Z")  # +02:00
    assert frame.loc["e-0009", "event_timestamp"] == ts("1997-04-03T16:00:00Z")  # -05:00
    assert frame.loc["e-0003", "event_timestamp"] == ts("1997-03-10T00:00:00Z")  # YYYYMMDD
    assert frame.loc["e-0004", "event_timestamp"] == ts("1997-03-28T18:05:00Z")  # naive
    assert (frame.loc["e-0017", "reward_id"], frame.loc["e-0017", "decision_id"],
            frame.loc["e-0017", "points"]) == ("R07", "d-0001", -100)
    assert pd.isna(frame.loc["e-0012", "points"])  # a visit has no points: ignored
    generated = frame[frame.index.str.startswith("h-")]
    assert sorted(zip(generated["member_id"], generated["amount"], strict=True)) == [
        ("M-000172", 42.1), ("M-000173", 5.0)]
    purchases = frame[frame["event_type"] == "purchase"]
    assert purchases.groupby("member_id")["amount"].sum().round(2).to_dict() == {
        "M-000172": 93.35, "M-000173": 104.99, "M-000201": 17.25, UUID: 250.0,
        "0b7e4d2a-1c3f-4e5a-9b8c-7d6e5f4a3b21": 0.0, "42": 60.0}


def test_importing_again_adds_nothing_and_members_update_in_place(
        store: EventStore, foreign: Path, tmp_path: Path) -> None:
    import_members_file(foreign / "members.csv", store)
    import_events_file(foreign / "events.csv", store)
    before = store.events_frame().drop(columns="received_at")
    again = import_events_file(foreign / "events.csv", store)
    assert (again.imported, again.duplicates, again.rejected) == (0, 22, 5)
    pd.testing.assert_frame_equal(store.events_frame().drop(columns="received_at"), before)
    assert import_members_file(foreign / "members.csv", store).imported == 0
    changed = tmp_path / "members_v2.csv"
    changed.write_text("member_id,joined_at,tier\nM-000172,1996-04-02,Platinum\n")
    summary = import_members_file(changed, store)
    assert (summary.imported, summary.duplicates) == (1, 0)
    profile = store.members_frame(["M-000172"]).iloc[0]
    assert (profile["tier"], profile["region"], profile["attributes"]) == (
        "Platinum", None, None)  # a profile is replaced as a whole
    assert len(store.members_frame()) == 6


def test_rejects_file_lists_row_field_reason_and_the_original_values(
        store: EventStore, foreign: Path) -> None:
    summary = import_events_file(foreign / "events.csv", store)
    path = rejects_path(foreign / "events.csv")
    assert summary.rejects_file == str(path) and path.name == "events.rejects.csv"
    rejects = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(rejects.columns) == ["row", "field", "reason", "event_id", "event_type",
                                     "member_id", "timestamp", "amount", "category", "points",
                                     "reward_id", "challenge_id", "decision_id"]
    assert rejects[["row", "field", "reason", "event_id"]].values.tolist() == [
        ["22", "event_type", ("unknown event type; expected one of visit, purchase, review, "
                              "referral, points_earned, points_spent, tier_change, impression, "
                              "holdout, click, redemption, challenge_progress, "
                              "challenge_completed, consent_granted, consent_withdrawn"),
         "e-0022"],
        ["23", "amount", "required for purchase events", "e-0023"],
        ["24", "member_id", "must be an id: letters, digits and _ . : - (not '.' nor '..')",
         "e-0024"],
        ["25", "timestamp", "must be an ISO-8601 or YYYYMMDD date or time in 1970-2099",
         "e-0025"],
        ["26", "amount", "must be at least 0", "e-0026"],
    ]
    assert rejects.loc[2, "member_id"] == "M 000172" and rejects.loc[3, "timestamp"] == (
        "1997-02-30")
    members = import_members_file(foreign / "members.csv", store)
    rejected = pd.read_csv(members.rejects_file, dtype=str, keep_default_na=False)
    assert rejected[["row", "field", "reason", "member_id"]].values.tolist() == [
        ["7", "member_id", "must be an id: letters, digits and _ . : - (not '.' nor '..')",
         "bad id!"],
        ["8", "joined_at", "must be an ISO-8601 or YYYYMMDD date or time in 1970-2099",
         "M-000999"],
        ["9", "tier", "required", "M-000998"],
    ]
    assert "signup_date" in rejected.columns  # the file's own column names
    # a clean run replaces a previous run's rejects file instead of leaving it behind
    good = foreign / "good.csv"
    pd.read_csv(foreign / "events.csv", dtype=str).iloc[:21].to_csv(good, index=False)
    rejects_path(good).write_text("stale\n")
    assert import_events_file(good, store).rejects_file is None
    assert not rejects_path(good).exists()


def test_cli_exits_2_on_rejects_unless_allowed(foreign: Path, url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"REWARDS_EVENTS_URL": url}
    result = runner.invoke(import_app, ["events", str(foreign / "events.csv"), "--no-progress",
                                        "--rejects", str(tmp_path / "bad.csv")], env=env)
    assert result.exit_code == 2
    assert '"imported": 21' in result.stdout and '"rejected": 5' in result.stdout
    assert "5 of 27 rows rejected" in result.stderr and str(tmp_path / "bad.csv") in result.stderr
    result = runner.invoke(import_app, ["events", str(foreign / "events.csv"), "--no-progress",
                                        "--allow-rejects", "--chunk-rows", "4"], env=env)
    assert result.exit_code == 0, result.output
    assert '"imported": 0' in result.stdout and '"duplicates": 22' in result.stdout
    result = runner.invoke(import_app, ["members", str(foreign / "members.csv"),
                                        "--allow-rejects", "--no-progress"], env=env)
    assert result.exit_code == 0 and '"imported": 6' in result.stdout
    store = open_event_store(url)
    assert store.count_events() == 21 and len(store.members_frame()) == 6
    store.close()


@pytest.mark.parametrize(("args", "message"), [
    (["events", "missing.csv"], "no such file"),
    (["events", "{dir}/events.csv", "--format", "xlsx"], "--format csv or --format parquet"),
    (["events", "{dir}/members.csv"], "missing column 'event_type'"),
    (["members", "{dir}/events.csv"], "missing column 'joined_at'"),
    (["events", "{dir}/events.csv", "--chunk-rows", "0"], "chunk-rows"),
    (["events", "{dir}/twice.csv"], "column 'timestamp' given twice"),
])
def test_cli_refuses_bad_input_in_one_line(foreign: Path, url: str, args: list[str],
                                           message: str) -> None:
    (foreign / "twice.csv").write_text("event_type,member_id,timestamp,event_timestamp\n")
    args = [a.format(dir=foreign) for a in args]
    result = CliRunner().invoke(import_app, args, env={"REWARDS_EVENTS_URL": url})
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) <= 6


# --- formats, ids and dates --------------------------------------------------------------------


def test_parquet_with_native_types_gives_the_same_events_and_ids(
        store: EventStore, foreign: Path, tmp_path: Path) -> None:
    """A Parquet file of the same events (timestamps, floats and integers as such, the two
    rows without an id again without one, the alias event_timestamp) stores exactly what the
    CSV stored: the content ids do not depend on the format."""
    import_events_file(foreign / "events.csv", store)
    expected = store.events_frame().drop(columns="received_at")
    columns = ["event_id", "event_type", "member_id", "event_timestamp", "amount", "category",
               "points", "reward_id", "challenge_id", "decision_id"]
    typed = expected[columns].copy()
    typed["event_id"] = typed["event_id"].where(~typed["event_id"].str.startswith("h-"), None)
    typed = typed.iloc[::-1]  # any order
    typed.to_parquet(tmp_path / "events.parquet", index=False)
    other = open_event_store(f"sqlite:///{tmp_path / 'other.db'}")
    summary = import_events_file(tmp_path / "events.parquet", other, chunk_rows=7)
    assert (summary.imported, summary.rejected, summary.generated_ids) == (21, 0, 2)
    pd.testing.assert_frame_equal(other.events_frame().drop(columns="received_at"), expected)
    other.close()


def test_ids_read_as_numbers_become_text_without_a_decimal_point(
        store: EventStore, tmp_path: Path) -> None:
    table = pa.table({
        "member_id": pa.array([172.0, 173.0, None]),
        "event_id": pa.array([1, 2, 3], pa.int64()),
        "event_type": ["visit", "visit", "visit"],
        "timestamp": pa.array([datetime(1997, 3, 1, tzinfo=UTC)] * 3, pa.timestamp("us", "UTC")),
    })
    pq.write_table(table, tmp_path / "numeric.parquet")
    summary = import_events_file(tmp_path / "numeric.parquet", store)
    assert (summary.imported, summary.rejected) == (2, 1)
    frame = store.events_frame()
    assert frame[["event_id", "member_id"]].values.tolist() == [["1", "172"], ["2", "173"]]


def one_row(**cells: Any) -> pa.Table:
    """A one-row table of text cells, as a CSV gives them (None: an empty cell)."""
    return pa.table({k: pa.array([v], pa.string()) for k, v in cells.items()})


@pytest.mark.parametrize(("text", "expected"), [
    ("1997-06-30T23:59:59Z", "1997-06-30T23:59:59Z"),
    ("1997-06-30", "1997-06-30T00:00:00Z"),
    ("19970630", "1997-06-30T00:00:00Z"),
    ("1997-06-30T10:00:00", "1997-06-30T10:00:00Z"),  # naive: UTC
    ("1997-06-30 10:00:00+02:00", "1997-06-30T08:00:00Z"),
    ("2099-12-31T23:59:59.999999-05:00", "2100-01-01T04:59:59.999999Z"),  # the year as written
    ("1970-01-01T00:30:00+01:00", "1969-12-31T23:30:00Z"),
    ("1969-12-31T23:59:59Z", None), ("2100-01-01", None), ("19971301", None),
    ("1997-02-29", None), ("yesterday", None), ("06/30/1997", None),
])
def test_dates(text: str, expected: str | None) -> None:
    checked = check_events(one_row(event_type="visit", member_id="M-1", timestamp=text))
    if expected is None:
        assert checked.rejects["field"].tolist() == ["timestamp"]
    else:
        assert checked.good["event_timestamp"].tolist() == [ts(expected)]


def test_content_ids_are_stable_whatever_carries_the_row() -> None:
    """Pinned: a change to how ids are derived would make every id-less file import again as
    new events. Absent columns, empty cells, spacing and number or time spelling do not count;
    the ids sort by time, so a file in time order writes them in key order."""
    first = check_events(one_row(event_type="purchase", member_id="M-000172",
                                 timestamp="1997-03-01T09:20:00Z", amount="12.50",
                                 category="grocery")).good
    same = check_events(one_row(event_type="purchase", member_id=" M-000172", points=None,
                                timestamp="1997-03-01T10:20:00+01:00", amount="12.5",
                                category="grocery ", reward_id=None, properties=None)).good
    assert first["event_id"].tolist() == same["event_id"].tolist() == [
        "h-I1u09Kf--TjQ3nVMeJEqwPzf-"]
    later = check_events(one_row(event_type="purchase", member_id="M-000172",
                                 timestamp="1997-03-01T09:20:00.000001Z", amount="12.50",
                                 category="grocery")).good["event_id"].iloc[0]
    other = check_events(one_row(event_type="purchase", member_id="M-000172",
                                 timestamp="1997-03-01T09:20:00Z", amount="12.51",
                                 category="grocery")).good["event_id"].iloc[0]
    assert later > first["event_id"].iloc[0] and other != first["event_id"].iloc[0]


# --- the API's rules ---------------------------------------------------------------------------


CASES: list[dict[str, Any]] = [
    {"event_type": "visit"}, {"event_type": "purchase", "amount": "12.5"},
    {"event_type": "purchase"}, {"event_type": "purchase", "amount": "-1"},
    {"event_type": "purchase", "amount": "2e7"}, {"event_type": "purchase", "amount": "abc"},
    {"event_type": "purchase", "amount": "5", "quantity": "0"},
    {"event_type": "purchase", "amount": "5", "quantity": "2.0"},
    {"event_type": "purchase", "amount": "5", "quantity": "2.5"},
    {"event_type": "purchase", "amount": "5", "category": "c" * 33},
    {"event_type": "purchase", "amount": "5", "category": "tab\there"},
    {"event_type": "points_earned", "points": "0"}, {"event_type": "points_earned"},
    {"event_type": "points_spent", "points": "5"}, {"event_type": "points_spent", "points": "-5"},
    {"event_type": "tier_change", "tier": "T" * 17}, {"event_type": "tier_change", "tier": "Gold"},
    {"event_type": "impression"}, {"event_type": "impression", "reward_id": "R1"},
    {"event_type": "impression", "reward_id": "R1", "challenge_id": "C1"},
    {"event_type": "impression", "reward_id": "R1", "target": "12"},
    {"event_type": "impression", "challenge_id": "C1", "target": "12", "propensity": "0.25"},
    {"event_type": "impression", "reward_id": "R1", "propensity": "0"},
    {"event_type": "impression", "reward_id": "R1", "propensity": "1"},
    {"event_type": "click", "challenge_id": "C1"},
    {"event_type": "click", "reward_id": "R1", "challenge_id": "C1"},
    {"event_type": "redemption"}, {"event_type": "redemption", "challenge_id": "C1", "cost": "3"},
    {"event_type": "redemption", "reward_id": "R1", "challenge_id": "C1"},
    {"event_type": "holdout", "reward_id": "R1", "propensity": "0.5"},
    {"event_type": "challenge_progress", "challenge_id": "C1"},
    {"event_type": "challenge_progress", "challenge_id": "C1", "value": "inf"},
    {"event_type": "challenge_progress", "challenge_id": "C1", "value": "3.5"},
    {"event_type": "challenge_completed"}, {"event_type": "nope"},
    {"event_type": "visit", "member_id": "."}, {"event_type": "visit", "member_id": "a:b.c_d-e"},
    {"event_type": "visit", "member_id": "m" * 65}, {"event_type": "visit", "member_id": "é"},
    {"event_type": "visit", "decision_id": "d" * 65},
    {"event_type": "visit", "properties": '{"store": "north", "items": 3, "vip": true}'},
    {"event_type": "visit", "properties": '{"nested": {"a": 1}}'},
    {"event_type": "visit", "properties": '{"n": 9007199254740992}'},
    {"event_type": "visit", "properties": "[1, 2]"},
]


def api_form(case: dict[str, Any]) -> dict[str, Any]:
    """The same event as JSON for the API: numbers as numbers (JSON has no inf; Python's
    float('inf') stands for it and is refused there too)."""
    import json

    numeric = {"amount", "quantity", "points", "target", "value", "propensity", "cost"}
    body: dict[str, Any] = {"event_id": "e-1", "member_id": "M-1",
                            "timestamp": "1997-03-01T00:00:00Z"}
    for key, value in case.items():
        if key in numeric:
            number = float(value) if value not in ("abc",) else value
            body[key] = int(number) if key in ("quantity", "points") and float(
                number).is_integer() else number
        elif key == "properties":
            body[key] = json.loads(value)
        else:
            body[key] = value
    return body


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={str(v)[:8]}"
                                                              for k, v in c.items()))
def test_import_accepts_exactly_what_the_api_accepts(case: dict[str, Any]) -> None:
    row = {"event_id": "e-1", "member_id": "M-1", "timestamp": "1997-03-01T00:00:00Z", **case}
    imported = check_events(one_row(**row)).rejects.empty
    try:
        parse_event(api_form(case))
        accepted = True
    except (ValidationError, ValueError):
        accepted = False
    assert imported is accepted


def test_members_rules(tmp_path: Path, store: EventStore) -> None:
    checked = check_members(pa.table({
        "member_id": ["a", "b", "c", "d", "e"],
        "joined_at": ["1997-01-01", "19970101", "1997-01-01T10:00:00+01:00", "", "1997-01-01"],
        "tier": ["Gold", "Gold", "G" * 17, "Gold", "Gold"],
        "consent": ["Y", "n", "", "1", "maybe"],
        "vip": pa.array([True, None, False, True, True]),
        "visits": pa.array([3, None, 5, 1, 2], pa.int64()),
        "score": pa.array([0.5, 1e300, np.nan, 1.0, 2.0]),
    }))
    assert checked.rejects[["row", "field"]].values.tolist() == [
        [2, "score"], [3, "tier"], [4, "joined_at"], [5, "consent"]]
    good = checked.good.set_index("member_id")
    assert bool(good.loc["a", "consent"]) is True
    assert good.loc["a", "attributes"] == '{"score":0.5,"vip":true,"visits":3}'
    wide = pa.table({"member_id": ["a"], "joined_at": ["1997-01-01"], "tier": ["Gold"],
                     **{f"x{i}": [i] for i in range(51)}})
    pq.write_table(wide, tmp_path / "wide.parquet")
    with pytest.raises(ValueError, match="51 attribute columns; at most 50"):
        import_members_file(tmp_path / "wide.parquet", store)


# --- whole chunks after a crash ----------------------------------------------------------------


IMPORTER = """
import sys
from pathlib import Path
from serving.stores.events import open_event_store
from training.data.imports import import_events_file

store = open_event_store(sys.argv[1])
import_events_file(Path(sys.argv[2]), store, chunk_rows=int(sys.argv[3]))
"""


def test_a_killed_import_leaves_whole_chunks_and_resumes(tmp_path: Path, url: str) -> None:
    rows, chunk = 120_000, 4_000
    source = tmp_path / "big.csv"
    source.write_text("event_id,event_type,member_id,timestamp\n" + "".join(
        f"e{k},visit,M-{k % 5000},1997-03-01T00:00:00Z\n" for k in range(rows)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", IMPORTER, url, str(source), str(chunk)],
                            env=env)
    db = url.removeprefix("sqlite:///")
    try:
        deadline = time.monotonic() + 60
        count = 0
        while count == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
            if os.path.exists(db):
                import sqlite3

                with sqlite3.connect(db, timeout=30) as conn:
                    try:
                        count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                    except sqlite3.OperationalError:  # the schema is being created
                        count = 0
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    store = open_event_store(url)  # reopening rebuilds the indexes the import had deferred
    try:
        stored = store.count_events()
        assert 0 < stored < rows and stored % chunk == 0
        summary = import_events_file(source, store, chunk_rows=chunk)
        assert (summary.imported, summary.duplicates) == (rows - stored, stored)
        assert store.count_events() == rows
    finally:
        store.close()
