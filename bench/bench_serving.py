"""Serving benchmark on loopback: paced load, max-rate search, and the floor ratio.

Starts `rewards serve` on 127.0.0.1 against an existing data folder (world, features, Feast,
trained champions), drives it with wrk (Debian package, installed if missing), and measures:
- paced load: `--rate` recommendations/s for `--seconds` (wrk connections with a fixed delay
  between requests), p50/p99 and errors;
- the highest concurrency whose p99 stays <= 50 ms and the throughput it gives;
- the floor: one direct online-store read + one onnxruntime call on the same candidate matrix,
  in-process, against the service's p50 at concurrency 1.
Every load is bounded in time and sent only to 127.0.0.1.

`--profile production` serves the same data folder from the production stores: member features
from Redis (materialize into it first), events and decisions in a fresh PostgreSQL database, on
the servers of scripts/redis.sh and scripts/postgres.sh (started if needed). The champions come
from the same MLflow registry in both runs (it is not on the request path).

    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/bench_serving.py --rate 500 --seconds 60
    scripts/redis.sh start && scripts/postgres.sh start && eval "$(scripts/redis.sh env)"
    REWARDS_PROFILE=production REWARDS_MLFLOW_TRACKING_URI=sqlite:////path/to/data/mlflow.db \
        REWARDS_DATA_DIR=/path/to/data rewards features materialize
    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/bench_serving.py --profile production
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LUA = """
math.randomseed(%(seed)d)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
request = function()
  local id = math.random(1, %(members)d)
  return wrk.format(nil, "/v1/recommendations", nil,
    '{"member_id": "' .. id .. '", "k_rewards": 3, "k_challenges": 3}')
end
%(delay)s
"""

# Constant-rate (open-loop) pacing for wrk, which has none of its own: the wrk thread keeps a
# schedule of send slots every 1000/rate ms and each connection, before each request, waits for
# the next free slot (wrk's delay() hook; LuaJIT's FFI reads the monotonic clock). Closed-loop
# pacing (a fixed delay after each answer) sends fewer requests than asked whenever latency is
# not zero, which is what the earlier `paced` figures did. A request whose slot has already
# passed (every connection was busy) goes out at once and is counted as late with its lateness:
# wrk times requests from their sending, so lateness is what the latency figures would miss.
PACED = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } rr_timespec;
int clock_gettime(int clk_id, rr_timespec *tp);
]]
local ts = ffi.new("rr_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local period, next_slot = %(period_ms).6f, nil
late, max_late = 0, 0
delay = function()
  local t = now_ms()
  if next_slot == nil then next_slot = t end
  local slot = next_slot
  next_slot = next_slot + period
  local wait = slot - t
  if wait < -1 then
    late = late + 1
    if -wait > max_late then max_late = -wait end
  end
  if wait < 0 then return 0 end
  return wait
end
"""
PACED_REPORT = """
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  for _, thread in ipairs(threads) do
    io.write(string.format("late_sends %d max_late_ms %.1f\\n", thread:get("late"),
                           thread:get("max_late")))
  end
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                   stdout=subprocess.DEVNULL)
    return shutil.which("wrk") or "wrk"


def wait_ready(port: int, workers: int = 1, timeout: float = 240.0) -> dict:
    """The /readyz answer once ``workers`` different worker processes have answered it ready.

    Each worker starts listening only when its stores and models are loaded, so connections
    opened before every worker is up would all land on the first ones and stay there."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                body = json.loads(r.read())
            seen.add(body.get("worker_pid", 0))
            if len(seen) >= workers:
                return body
            time.sleep(0.2)
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(1)
    raise RuntimeError(f"{workers - len(seen)} of {workers} workers did not become ready")


def parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str) -> float:
        num, unit = re.match(r"([\d.]+)(\w+)", value).groups()
        return float(num) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    pct = dict(re.findall(r"^\s+(50|75|90|99)(?:\.\d+)?%\s+(\S+)", text, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": rps, "requests": total, "p50_ms": ms(pct["50"]), "p90_ms": ms(pct["90"]),
            "p99_ms": ms(pct["99"]),
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


API_KEY = ""  # created in main(): the benchmark authenticates like any client


def run_wrk(wrk: str, port: int, connections: int, seconds: int, members: int,
            rate: float | None) -> dict[str, float]:
    """Closed loop (each connection sends as soon as it has its answer), or ``rate``
    requests/s in total on a constant schedule (PACED)."""
    delay = PACED % {"period_ms": 1000.0 / rate} + PACED_REPORT if rate else ""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA % {"seed": 7, "members": members, "delay": delay, "key": API_KEY})
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", fh.name,
         f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=seconds + 60)
    os.unlink(fh.name)
    result = parse_wrk(out.stdout)
    result.update(connections=connections, seconds=seconds)
    late = re.search(r"late_sends (\d+) max_late_ms ([\d.]+)", out.stdout)
    if rate:
        result.update(target_rps=rate, late_sends=int(late.group(1)),
                      max_late_ms=float(late.group(2)))
    return result


REPO = Path(__file__).resolve().parent.parent


def copy_catalog(source_url: str, target_url: str) -> dict[str, int]:
    """The data folder's catalog (vocabulary in code order, rewards, challenges, retired ones
    included) into the bench's fresh event store, through the catalog's own import."""
    from serving.stores.catalog import import_rows, open_catalog_store

    source, target = open_catalog_store(source_url), open_catalog_store(target_url)
    try:
        if source.is_empty():
            raise SystemExit(f"the catalog at {source_url} is empty: nothing would be scored")
        copied = {"vocabulary": [{"kind": kind, "value": value} for kind, values
                                 in source.vocabulary().as_dict().items() for value in values]}
        for kind in ("rewards", "challenges"):  # stored rows, minus the store's own stamps
            copied[kind] = [{k: v for k, v in row.items() if k not in ("created_us", "updated_us")}
                            for row in source.rows(kind, include_retired=True)]  # type: ignore[arg-type]
        for kind, rows in copied.items():  # the vocabulary first: items are checked against it
            result = import_rows(target, kind, rows)  # type: ignore[arg-type]
            if result.errors:
                raise SystemExit(f"copying the catalog's {kind}: {result.errors[:3]}")
        return {kind: len(rows) for kind, rows in copied.items()}
    finally:
        source.close()
        target.close()


def check_answers(port: int, members: int, n: int = 20) -> None:
    """Refuse to measure a server whose answers score nothing: of ``n`` answers, at least one
    offers rewards and one challenges (a single answer may be a no-offer draw)."""
    import random

    rng = random.Random(7)
    offered = {"rewards": 0, "challenges": 0}
    for _ in range(n):
        body = json.dumps({"member_id": str(rng.randint(1, members)), "k_rewards": 3,
                           "k_challenges": 3}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/recommendations", data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = json.loads(resp.read())
        for kind in offered:
            offered[kind] += bool(answer[kind])
    if not all(offered.values()):
        raise SystemExit(f"of {n} answers, {offered} offered rewards / challenges: the server "
                         "scores nothing (an empty catalog?)")


def production_env(data_dir: Path) -> dict[str, str]:
    """Variables of the production profile on the scripts' servers; a new events database."""
    import uuid

    import psycopg

    env: dict[str, str] = {}
    for script in ("redis.sh", "postgres.sh"):
        subprocess.run([str(REPO / "scripts" / script), "start"], check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
        out = subprocess.run([str(REPO / "scripts" / script), "env"], check=True,
                             capture_output=True, text=True).stdout
        env.update(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    base = env["REWARDS_EVENTS_URL"].rsplit("/", 1)[0]
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(env["REWARDS_EVENTS_URL"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return {"REWARDS_PROFILE": "production", "REWARDS_REDIS_URL": env["REWARDS_REDIS_URL"],
            "REWARDS_EVENTS_URL": f"{base}/{name}",
            "REWARDS_MLFLOW_TRACKING_URI": os.environ.get(
                "REWARDS_MLFLOW_TRACKING_URI", f"sqlite:///{data_dir / 'mlflow.db'}")}


def warm_page_cache(path: Path) -> float:
    """Read a file once so the OS page cache holds it; returns seconds taken.

    The SQLite online store of the default world is ~1.5 GB and requests hit random members:
    without this the first phases (concurrency 1 comes first) pay for disk reads that a server
    running for a while no longer does, while the floor, measured last, finds the cache warm."""
    t0 = time.perf_counter()
    with path.open("rb") as fh:
        while fh.read(16 << 20):
            pass
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["local", "production"], default="local")
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64,
                        help="connections of the paced run (enough to keep the schedule)")
    args = parser.parse_args()
    wrk = ensure_wrk()
    if args.profile == "production":
        from serving.config import get_store_settings

        os.environ.update(production_env(get_store_settings().data))
        get_store_settings.cache_clear()  # the floor below reads Redis too
    env = {**os.environ, "REWARDS_MODEL_POLL_SECONDS": "0"}
    warmed = None
    if args.profile == "local":
        from serving.config import get_store_settings

        online_db = get_store_settings().data / "feast" / "online_store.db"
        if online_db.is_file():
            warmed = warm_page_cache(online_db)
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("REWARDS_EVENTS_URL", f"sqlite:///{Path(tmp) / 'events.db'}")
        from serving.config import get_serve_settings, get_store_settings
        from serving.stores.keys import open_key_store

        # the decisions go to a fresh store, but the catalog lives in the event store: without
        # it every answer is empty and nothing is scored
        report_catalog = copy_catalog(get_serve_settings().events(get_store_settings()),
                                      env["REWARDS_EVENTS_URL"])

        global API_KEY
        keys = open_key_store(env["REWARDS_EVENTS_URL"])
        API_KEY = keys.create("bench_serving", ["recommend"], rate_limit=1e6)[1]
        keys.close()
        server = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "serve", "--port", str(args.port),
             "--workers", str(args.workers)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = wait_ready(args.port, args.workers)
            report: dict[str, object] = {"ready": ready["ready"], "workers": args.workers,
                                         "profile": args.profile, "page_cache_warm_s": warmed,
                                         "catalog": report_catalog}
            check_answers(args.port, args.members)
            run_wrk(wrk, args.port, 4, 5, args.members, None)  # warm-up
            c1 = run_wrk(wrk, args.port, 1, 10, args.members, None)
            report["concurrency_1"] = c1
            report["paced"] = run_wrk(wrk, args.port, args.connections, args.seconds,
                                      args.members, rate=args.rate)
            sweep = []
            for c in (2, 4, 8, 16, 32):
                r = run_wrk(wrk, args.port, c, 15, args.members, None)
                sweep.append(r)
                if r["p99_ms"] > 50:
                    break
            report["sweep"] = sweep
            ok = [r for r in sweep if r["p99_ms"] <= 50 and r["errors"] == 0]
            report["max_rps_p99_le_50ms"] = max((r["rps"] for r in ok), default=0.0)
        finally:
            server.terminate()
            server.wait(timeout=30)
    floor = measure_floor()
    report["floor"] = floor
    report["p50_over_floor"] = round(report["concurrency_1"]["p50_ms"] / floor["p50_ms"], 2)
    print(json.dumps(report, indent=2))


def measure_floor(iterations: int = 2000) -> dict[str, float]:
    """One direct online-store read + one onnxruntime call per model on the candidate matrices
    a request scores: the rewards the member's tier allows + the no-offer row, every
    template x target (a request drops only those in a cooldown), assembled the way the
    request path assembles them (the Recommender's compiled MemberRows, ~30 us). Cooldowns
    and exclusions, which shrink a request's matrices further, are not applied."""
    import numpy as np

    from serving.decisioning.candidates import DIFFICULTY_DERIVED, REWARD_DERIVED
    from serving.config import get_serve_settings, get_store_settings
    from serving.stores.features import OnlineFeatureReader, open_store, service_feature_names
    from serving.stores.models import ChampionSource, load_onnx
    from serving.decisioning.recommend import Recommender
    from serving.stores.catalog import load_store_catalog
    from serving.decisioning.rules import load_rules
    from serving.services import MEMBER_VIEW

    store, settings = get_store_settings(), get_serve_settings()
    fs = open_store(store)
    reader = OnlineFeatureReader(fs, MEMBER_VIEW)
    source = ChampionSource(store.tracking_uri, store.models)
    r_names = service_feature_names(fs, "propensity_v1")
    d_names = service_feature_names(fs, "difficulty_v1")
    reward = load_onnx(source.champion("reward")[1], r_names, REWARD_DERIVED)
    difficulty = load_onnx(source.champion("difficulty")[1], d_names, DIFFICULTY_DERIVED)
    catalog = load_store_catalog(get_serve_settings().events(store))
    recommender = Recommender(catalog, load_rules(settings.rules(store)))
    reward_rows = recommender.member_rows("reward", r_names)
    difficulty_rows = recommender.member_rows("difficulty", d_names)
    min_tier = catalog.reward_cols["min_tier_rank"]
    respect_tier = recommender.rules.eligibility.respect_min_tier
    rng = np.random.default_rng(0)
    times, scored = [], []
    for _ in range(iterations):
        member_id = str(int(rng.integers(1, 100_000)))
        t0 = time.perf_counter()
        row = reader.read(member_id)
        values = row.values if row else {}
        allowed = (np.flatnonzero(min_tier <= values.get("tier_rank", 0.0)) if respect_tier
                   else np.arange(len(min_tier)))
        rows = np.append(allowed, len(min_tier))  # + the no-offer row, as served
        reward.predict(reward_rows.matrix(values, rows))
        difficulty.predict(difficulty_rows.matrix(values))
        times.append((time.perf_counter() - t0) * 1000)
        scored.append(len(rows))
    return {"p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3),
            "reward_rows": reward_rows.base.shape[0],
            "reward_rows_scored_mean": round(float(np.mean(scored)), 1),
            "difficulty_rows": difficulty_rows.base.shape[0]}


if __name__ == "__main__":
    main()
