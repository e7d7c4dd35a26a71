"""Benchmark the point-in-time feature build: wall time, peak RSS and rows, as JSON.

Target (2-core machine): 100,000 members x 90 days in <= 120 s.

    .venv/bin/python bench/bench_features.py --members 100000 --days 90
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from training.data.features import build_features
from training.simulate import WorldConfig, simulate_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        simulate_world(WorldConfig(members=args.members, days=args.days, seed=args.seed), world,
                       progress=False)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        rows = build_features(world, Path(tmp) / "features", progress=False)
        seconds = time.perf_counter() - t0
    print(json.dumps({
        "members": args.members, "days": args.days, "seconds": round(seconds, 1),
        "peak_rss_mib_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_mib_before_features": round(rss_before / 1024), "rows": rows}))


if __name__ == "__main__":
    main()
