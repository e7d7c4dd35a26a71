"""Benchmark the training pipeline on an existing data folder (world + features + Feast).

Times every step of `train_reward` and `train_difficulty` (training-set retrieval through Feast,
LightGBM, evaluation against the truth, plots, ONNX export + parity, MLflow + registry) and
reports peak RSS. Target on the default world (100,000 members x 90 days): <= 5 minutes.

    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/bench_pipeline.py
"""

from __future__ import annotations

import json
import resource
import sys
import time

from machine_memory import MachineMemory

from serving.config import get_store_settings
from training.config import get_train_settings
from training.pipeline import train_difficulty, train_reward


def main() -> None:
    store, settings = get_store_settings(), get_train_settings()
    machine = MachineMemory()
    t0 = time.perf_counter()
    out = {}
    for fn in (train_reward, train_difficulty):
        result = fn(store, settings, progress=lambda m: print(m, file=sys.stderr))
        out[result.name] = {"version": result.version, "seconds": result.timings,
                            "metrics": result.metrics}
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["machine_peak_used_gib"] = machine.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
