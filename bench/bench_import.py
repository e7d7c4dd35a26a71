"""Import benchmark: the demo world's members and events into a fresh SQLite event store through
`rewards import` (training.data.imports), as a program's history would arrive.

    .venv/bin/python bench/bench_import.py [--world DIR] [--ids rows|content] [--order member|time]
                                           [--chunk-rows N]

The world's files are first turned into import files (not timed): the simulator's
``events.parquet`` has integer member ids, empty strings for missing text, zeros for fields a
type does not have, and challenge completions without their challenge (joined here from
``assignments.parquet``). ``--ids rows`` (default) gives each row the id ``e<row>``, as the
simulator's own import files do; ``--ids content`` leaves out event_id, so the importer derives
each id from the row's content (time first, then a hash: rows identical in every column become
one event, and the demo world has 10 such visit pairs). ``--order`` sorts the file by member (as
simulated) or by time (as an event log usually is). Prints one JSON object: rows, seconds, rows/s
and CPU seconds per file, and the database size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.stores.events import open_event_store
from training.data.imports import import_events_file, import_members_file


def prepare(world: Path, out: Path, ids: str, order: str) -> dict[str, Path]:
    """Import files from a simulated world folder (see the module docstring)."""
    events = pd.read_parquet(world / "events.parquet")
    done = pd.read_parquet(world / "assignments.parquet",
                           columns=["member_id", "challenge_id", "completed",
                                    "outcome_timestamp"])
    done = done[done["completed"] == 1].drop(columns="completed").rename(
        columns={"outcome_timestamp": "event_timestamp"})
    done["event_type"] = "challenge_completed"
    done = done.drop_duplicates(["member_id", "event_timestamp", "event_type"])
    events = events.merge(done, on=["member_id", "event_timestamp", "event_type"], how="left")
    if order == "time":
        events = events.sort_values("event_timestamp", kind="stable", ignore_index=True)
    if ids == "rows":
        events.insert(0, "event_id", "e" + pd.Series(range(len(events))).astype(str))
    paths = {"members": out / "members.parquet", "events": out / "events.parquet"}
    events.to_parquet(paths["events"], index=False)
    pd.read_parquet(world / "members.parquet").to_parquet(paths["members"], index=False)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=None,
                        help="a simulated world folder (default: <data>/world, e.g. after "
                             "`rewards demo --no-serve`)")
    parser.add_argument("--ids", choices=("rows", "content"), default="rows")
    parser.add_argument("--order", choices=("member", "time"), default="member")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    args = parser.parse_args()
    if args.world is None:
        from serving.config import get_store_settings

        args.world = get_store_settings().world_dir
    with tempfile.TemporaryDirectory(prefix="bench_import_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        files = prepare(args.world, folder, args.ids, args.order)
        prepare_s = time.perf_counter() - t0
        store = open_event_store(f"sqlite:///{folder / 'events.db'}")
        result: dict[str, object] = {"world": str(args.world), "ids": args.ids,
                                     "order": args.order, "chunk_rows": args.chunk_rows,
                                     "prepare_seconds": round(prepare_s, 1)}
        for kind, run in (("members", import_members_file), ("events", import_events_file)):
            t0, cpu0 = time.perf_counter(), time.process_time()
            summary = run(files[kind], store, chunk_rows=args.chunk_rows)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            result[kind] = {**{k: v for k, v in summary.as_dict().items()
                               if k not in ("file", "kind", "seconds")},
                            "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                            "rows_per_s": round(summary.read / seconds)}
        result["stored_events"] = store.count_events()
        store.close()
        size = sum(p.stat().st_size for p in folder.glob("events.db*"))
        result["database_mib"] = round(size / 2**20)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
