"""Benchmark the simulator: wall time, peak RSS and row counts of one world, printed as JSON.

Target (2-core machine): 100,000 members x 90 days in <= 60 s and <= 4 GiB; 1,000,000 members
must also finish with a few GiB at most.

    .venv/bin/python bench/bench_simulate.py --members 100000 --days 90 --seed 0
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from training.simulate import WorldConfig, simulate_world


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the world here")
    parser.add_argument("--progress", action="store_true", help="show the progress bar")
    return parser.parse_args(argv)


def _disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run(args: argparse.Namespace) -> dict[str, object]:
    config = WorldConfig(members=args.members, days=args.days, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_simulate_") as tmp:
        out = args.out if args.out is not None else Path(tmp) / "world"
        began = time.perf_counter()
        rows = simulate_world(config, out, progress=args.progress)
        wall = time.perf_counter() - began
        disk = _disk_mib(out)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "benchmark": "simulate_world",
        "members": args.members,
        "days": args.days,
        "seed": args.seed,
        "wall_seconds": round(wall, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "disk_mib": round(disk, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(run(parse_args(argv)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
