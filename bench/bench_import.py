"""Import benchmark: the demo world's members and events into a fresh SQLite event store through
`rewards import` (training.data.imports), as a program's history would arrive.

    .venv/bin/python bench/bench_import.py [--world DIR] [--ids content|rows] [--chunk-rows N]

The world's files are first turned into import files (not timed): the simulator's
``events.parquet`` has integer member ids, empty strings for missing text, zeros for fields a
type does not have, and challenge completions without their challenge (joined here from
``assignments.parquet``). ``--ids content`` (default) leaves out event_id, so the importer
derives each id from the row's content (rows identical in every column become one event: the
demo world has 10 such visit pairs); ``--ids rows`` gives each row the id ``e<row>``. Prints one
JSON object: rows, seconds and rows/s per file, and the database size.
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

from serving.stores.events import open_event_store  # noqa: E402
from training.data.imports import import_events_file, import_members_file  # noqa: E402


def prepare(world: Path, out: Path, ids: str) -> dict[str, Path]:
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
    if ids == "rows":
        events.insert(0, "event_id", "e" + pd.Series(range(len(events))).astype(str))
    paths = {"members": out / "members.parquet", "events": out / "events.parquet"}
    events.to_parquet(paths["events"], index=False)
    pd.read_parquet(world / "members.parquet").to_parquet(paths["members"], index=False)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=Path("/tmp/base/data/world"),
                        help="a simulated world folder (default: /tmp/base/data/world)")
    parser.add_argument("--ids", choices=("content", "rows"), default="content")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_import_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        files = prepare(args.world, folder, args.ids)
        prepare_s = time.perf_counter() - t0
        store = open_event_store(f"sqlite:///{folder / 'events.db'}")
        result: dict[str, object] = {"world": str(args.world), "ids": args.ids,
                                     "chunk_rows": args.chunk_rows,
                                     "prepare_seconds": round(prepare_s, 1)}
        for kind, run in (("members", import_members_file), ("events", import_events_file)):
            t0 = time.perf_counter()
            summary = run(files[kind], store, chunk_rows=args.chunk_rows)
            seconds = time.perf_counter() - t0
            result[kind] = {**{k: v for k, v in summary.as_dict().items()
                               if k not in ("file", "kind", "seconds")},
                            "seconds": round(seconds, 1),
                            "rows_per_s": round(summary.read / seconds)}
        result["stored_events"] = store.count_events()
        store.close()
        size = sum(p.stat().st_size for p in folder.glob("events.db*"))
        result["database_mib"] = round(size / 2**20)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
