"""Single process vs Dask on an existing data folder (world, features, Feast registry, champions).

- `score`: `rewards score-batch` of every member, single process (onnxruntime 1 and 2 threads)
  vs a Dask LocalCluster of `--workers` worker processes x 1 thread, and whether the Dask file
  equals the single-process one (1 thread, exact comparison);
- `train`: LightGBM fit of both models on the same training sets, local engine vs `lightgbm.dask`
  (the early stopping replay included), with each model's held-out AUC;
- `runtime`: `rewards score-batch` of every member with `--runtime onnx` vs `--runtime compiled`
  (lleaves), one process and on the Dask cluster, the variants interleaved in `--rounds` rounds
  (order reversed every other round) with the load average around each run; the cold compile
  time of each model; and whether the outputs agree (compiled vs onnx within 1e-5 but for
  near ties, compiled engines and thread counts exactly).
Cluster start-up is timed apart from the work. Wall times on a shared machine: run twice.

    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/bench_dask.py --what score,train
    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/bench_dask.py --what runtime
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from machine_memory import MachineMemory


def _log(step: str, t0: float) -> None:
    """One progress line on stderr: wall clock, seconds since t0, current and peak RSS, load."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith(("VmRSS", "VmHWM")))
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} +{time.perf_counter() - t0:7.1f}s {step}: "
          f"rss {status['VmRSS'].strip()}, peak {status['VmHWM'].strip()}, "
          f"load {Path('/proc/loadavg').read_text().split()[0]}", file=sys.stderr, flush=True)


def _release_memory() -> None:
    """Return freed memory to the OS (Python, Arrow's pool, glibc's heap) before the next step,
    so that the retrieval's transient gigabytes are not still held while the models fit."""
    import ctypes

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def worker_peak_rss_mib(client: object) -> dict[str, int]:
    """Each worker process's peak RSS (the LightGBM fit and its copies of the data)."""
    return client.run(lambda: round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def champions(threads: int) -> dict[str, object]:
    from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
    from serving.config import get_store_settings
    from serving.stores.features import open_store, service_feature_names
    from serving.stores.models import ChampionSource, load_onnx

    store = get_store_settings()
    feast_store = open_store(store)
    source = ChampionSource(store.tracking_uri, store.models)
    return {name: load_onnx(source.champion(name)[1], service_feature_names(feast_store, service),
                            derived, threads=threads)
            for name, service, derived in (("reward", "propensity_v1", REWARD_DERIVED),
                                           ("difficulty", "difficulty_v1", DIFFICULTY_DERIVED))}


def bench_score(client: object, workers: int) -> dict[str, object]:
    from serving.batch.scoring import score_batch
    from serving.batch.partitioned import score_batch_dask
    from serving.config import get_serve_settings, get_store_settings
    from serving.stores.catalog import load_store_catalog

    store = get_store_settings()
    features = store.features_dir / "member_features.parquet"
    catalog = load_store_catalog(get_serve_settings().events(store))
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for threads in (1, 2):
            models = champions(threads)
            files[threads] = Path(tmp) / f"local{threads}.parquet"
            t0 = time.perf_counter()
            n = score_batch(features, catalog, models["reward"], models["difficulty"],
                            files[threads])
            out[f"single_process_{threads}_threads_s"] = round(time.perf_counter() - t0, 1)
        models = champions(1)
        dask_file = Path(tmp) / "dask.parquet"
        t0 = time.perf_counter()
        score_batch_dask(features, catalog, models["reward"], models["difficulty"], dask_file,
                         client, partition_size=10_000)
        out[f"dask_{workers}_workers_s"] = round(time.perf_counter() - t0, 1)
        out["members"] = n
        out["dask_equals_single_process_1_thread"] = bool(
            pd.read_parquet(files[1]).equals(pd.read_parquet(dask_file)))
    return out


def _load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


RUNTIME_VARIANTS = ("onnx", "compiled", "compiled-2-threads", "compiled-dask", "onnx-dask")


def bench_runtime(client: object, workers: int, rounds: int = 2,
                  variants: tuple[str, ...] = RUNTIME_VARIANTS) -> dict[str, object]:
    """Members/s of score-batch per runtime and engine, interleaved, and the outputs' agreement.

    Each run is the whole `score_batch`/`score_batch_dask` call (reading the latest features,
    the parity check, scoring, writing parquet), as `rewards score-batch` times it; reading the
    features is timed apart once per round since every variant pays it. Compiling is timed
    cold, into a fresh cache folder, which the runs then use (Dask workers too: same machine).
    """
    from serving.batch.scoring import compare_scores, latest_member_features, score_batch, value_scale
    from serving.batch.partitioned import score_batch_dask
    from serving.batch.compiled import compile_native
    from serving.config import get_serve_settings, get_store_settings
    from serving.stores.models import ChampionSource
    from serving.stores.catalog import load_store_catalog
    from serving.decisioning.rules import load_rules

    store, serve = get_store_settings(), get_serve_settings()
    features = store.features_dir / "member_features.parquet"
    catalog = load_store_catalog(get_serve_settings().events(store))
    flow = load_rules(serve.rules(store)).challenges.flow_zone
    source = ChampionSource(store.tracking_uri, store.models)
    onnx = champions(1)
    out: dict[str, object] = {"load_avg_start": Path("/proc/loadavg").read_text().split()[:3]}
    with tempfile.TemporaryDirectory() as tmp:
        compiled, two = {}, {}
        for name, model in onnx.items():
            native = source.native(name, source.champion(name)[0])
            compiled[name] = compile_native(native, model, Path(tmp) / "cache", threads=1)
            two[name] = compile_native(native, model, Path(tmp) / "cache", threads=2)
            out[f"compile_{name}_s"] = round(compiled[name].compile_seconds, 1)
            out[f"{name}_native"] = f"{native} ({model.meta.name} v{model.meta.version})"
        runs = {
            "onnx": lambda f: score_batch(features, catalog, onnx["reward"], onnx["difficulty"],
                                          f, flow_zone=flow),
            "compiled": lambda f: score_batch(features, catalog, compiled["reward"],
                                              compiled["difficulty"], f, flow_zone=flow),
            "compiled-2-threads": lambda f: score_batch(features, catalog, two["reward"],
                                                        two["difficulty"], f, flow_zone=flow),
            "compiled-dask": lambda f: score_batch_dask(
                features, catalog, compiled["reward"], compiled["difficulty"], f, client,
                flow_zone=flow, partition_size=10_000),
            "onnx-dask": lambda f: score_batch_dask(
                features, catalog, onnx["reward"], onnx["difficulty"], f, client,
                flow_zone=flow, partition_size=10_000),
        }
        files = {v: Path(tmp) / f"{v}.parquet" for v in variants}
        seconds: dict[str, list[float]] = {v: [] for v in variants}
        loads: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        read_s = []
        n = 0
        for r in range(rounds):
            t0 = time.perf_counter()
            members = latest_member_features(features)
            read_s.append(round(time.perf_counter() - t0, 2))
            for variant in (variants if r % 2 == 0 else variants[::-1]):
                gc.collect()
                before = _load1()
                t0 = time.perf_counter()
                n = runs[variant](files[variant])
                seconds[variant].append(round(time.perf_counter() - t0, 2))
                loads[variant].append((before, _load1()))
                _log(f"round {r} {variant}: {seconds[variant][-1]} s", t0)
        out["members"] = n
        out["read_latest_features_s"] = read_s
        out["runs"] = {v: {"seconds": seconds[v],
                           "members_per_s": [round(n / s) for s in seconds[v]],
                           "best_members_per_s": round(n / min(seconds[v])),
                           "load_1min_before_after": loads[v]} for v in variants}
        out["parity_max_abs_diff"] = {name: m.parity_max_abs_diff for name, m in compiled.items()}
        frames = {v: pd.read_parquet(f) for v, f in files.items()}
        if {"onnx", "compiled"} <= frames.keys():
            agreement = compare_scores(frames["onnx"], frames["compiled"], flow_zone=flow,
                                       scale=value_scale(members, catalog, onnx["reward"].meta))
            out["compiled_vs_onnx"] = {**asdict(agreement), "equivalent": agreement.equivalent}
        for a, b in (("compiled", "compiled-2-threads"), ("compiled", "compiled-dask"),
                     ("onnx", "onnx-dask")):
            if {a, b} <= frames.keys():
                out[f"{b}_equals_{a}"] = bool(frames[a].equals(frames[b]))
    out["load_avg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return out


def _build_dataset(name: str, spill: str | None) -> object:
    """One model's training set; with ``spill`` (a folder), its arrays go to .npy files there
    and come back without them, so that a child process can build it and exit."""
    from serving.config import get_store_settings
    from serving.stores.features import open_store, service_feature_names
    from training.config import get_train_settings
    from training.data.datasets import difficulty_dataset, reward_dataset

    store, settings = get_store_settings(), get_train_settings()
    build, service = {"reward": (reward_dataset, settings.reward_service),
                      "difficulty": (difficulty_dataset, settings.difficulty_service)}[name]
    data = build(store, store.world_dir, (settings.valid_share, settings.test_share), service,
                 service_feature_names(open_store(store), service))
    # The fit reads X, y and part only: drop the joined Feast frame (every feature column
    # again, plus the logged columns) so that it does not sit beside the models.
    data.rows = data.rows.iloc[:0]
    if spill is None:
        return data
    for field in ("X", "y", "part"):
        np.save(Path(spill) / f"{name}_{field}.npy", getattr(data, field))
        setattr(data, field, None)
    return data


def _load_dataset(name: str, in_child: bool) -> object:
    """Build in this process, or in a child process whose heap (the retrieval's Python strings
    and frames, ~8 GiB still held after the build at 1M members) is returned when it exits."""
    if not in_child:
        return _build_dataset(name, None)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from serving.config import get_store_settings

    spill = Path(tempfile.mkdtemp(dir=get_store_settings().data, prefix="bench_dataset_"))
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            data = pool.submit(_build_dataset, name, str(spill)).result()
        for field in ("X", "y", "part"):
            setattr(data, field, np.load(spill / f"{name}_{field}.npy"))
    finally:
        for f in spill.glob("*.npy"):
            f.unlink()
        spill.rmdir()
    return data


def bench_train(client: object, models: tuple[str, ...] = ("reward", "difficulty"),
                engines: tuple[str, ...] = ("local", "dask"),
                build_in_child: bool = False) -> dict[str, object]:
    from serving.decisioning.candidates import DIFFICULTY_DECREASING
    from training.config import get_train_settings
    from training.models.lgbm import fit_classifier, predict_proba
    from training.evaluation.metrics import auc

    settings = get_train_settings()
    out: dict[str, object] = {}
    for name, objective, positive, decreasing in (
        ("reward", "multiclass", [2], ()),
        ("difficulty", "binary", [1], DIFFICULTY_DECREASING),
    ):
        if name not in models:
            continue
        start = time.perf_counter()
        _log(f"{name}: building the training set", start)
        data = _load_dataset(name, build_in_child)
        _release_memory()
        X_test, y_test = data.subset("test")
        row: dict[str, object] = {"train_rows": int((data.part == "train").sum()),
                                  "dataset_s": round(time.perf_counter() - start, 1)}
        _log(f"{name}: training set built ({row['train_rows']} train rows, "
             f"X {data.X.shape} {data.X.dtype})", start)
        for engine in engines:
            t0 = time.perf_counter()
            model = fit_classifier(data, settings.model_copy(update={"engine": engine}),
                                   objective, decreasing, client=client)
            row[f"{engine}_fit_s"] = round(time.perf_counter() - t0, 1)
            row[f"{engine}_best_iteration"] = int(model.best_iteration_)
            proba = predict_proba(model, X_test)[:, positive].sum(axis=1)
            row[f"{engine}_test_auc"] = round(auc(np.isin(y_test, positive), proba), 4)
            del model, proba
            _release_memory()
            _log(f"{name}: {engine} fit done {row}", start)
        out[name] = row
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
        del data, X_test, y_test  # free this model's training set before building the next
        _release_memory()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", default="score,train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scheduler", default=None, help="default: a LocalCluster")
    parser.add_argument("--models", default="reward,difficulty", help="train: models to fit")
    parser.add_argument("--engines", default="local,dask", help="train: engines to compare")
    parser.add_argument("--build-in-child", action="store_true",
                        help="train: build each training set in a child process (less memory)")
    parser.add_argument("--worker-memory", default="auto",
                        help="LocalCluster memory limit per worker (default: an equal share)")
    parser.add_argument("--rounds", type=int, default=2, help="runtime: interleaved rounds")
    parser.add_argument("--variants", default=",".join(RUNTIME_VARIANTS),
                        help="runtime: variants to run, in this order")
    args = parser.parse_args()
    from serving.batch.cluster import dask_client

    report: dict[str, object] = {}
    machine = MachineMemory()
    t0 = time.perf_counter()
    with dask_client(args.scheduler, n_workers=args.workers, threads_per_worker=1,
                     memory_limit=args.worker_memory) as client:
        report["cluster_start_s"] = round(time.perf_counter() - t0, 1)
        if "score" in args.what:
            report["score_batch"] = bench_score(client, args.workers)
            print(json.dumps(report, indent=2), file=sys.stderr)
        if "runtime" in args.what:
            report["runtime"] = bench_runtime(client, args.workers, args.rounds,
                                              tuple(args.variants.split(",")))
            print(json.dumps(report, indent=2), file=sys.stderr)
        if "train" in args.what:
            report["train"] = bench_train(client, tuple(args.models.split(",")),
                                          tuple(args.engines.split(",")), args.build_in_child)
        report["worker_peak_rss_mib"] = worker_peak_rss_mib(client)
    report["machine_peak_used_gib"] = machine.stop()
    report["client_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.build_in_child:
        report["dataset_child_peak_rss_mib"] = round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
