"""Feature freshness: how long after a posted event the online store serves features that count it.

Runs the real server (`rewards serve --refresh-seconds N`) on a data folder whose features were
built from the event store, then posts one purchase every `--interval` seconds for a different
member each time (`/v1/events`, acknowledged once committed). For each, it polls the online store
the server reads (the SQLite online store, through serving's own reader) until the member's row
is stamped after the post and counts the purchase (`purchases_7d` one higher than before): the
lag is the time from the acknowledgement to that moment.

Load: one poster thread and one poller in this process, on the same 2 cores as the server and its
refresher (a few requests a second: negligible next to the refresh's own work).

    .venv/bin/python bench/bench_freshness.py --members 20000 --days 90 --refresh-seconds 10
    .venv/bin/python bench/bench_freshness.py --data-dir data --refresh-seconds 10   # a demo's
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))



def prepare(data: Path, members: int, days: int) -> None:
    """A world imported into the event store, features built from it, Feast materialized."""
    from serving.config import ServeSettings, StoreSettings
    from training.cli.data import build_store_features
    from training.data.feast_ops import apply_repo, materialize_world
    from training.data.history import read_history_meta
    from training.simulate import WorldConfig, simulate_world
    from training.simulate.onboard import onboard

    settings = StoreSettings(data_dir=data)
    simulate_world(WorldConfig(members=members, days=days, seed=3), settings.world_dir,
                   progress=False)
    onboard(settings.world_dir, ServeSettings().events(settings), progress=False)
    build_store_features(settings, progress=False)
    meta = read_history_meta(settings.features_dir)
    apply_repo(settings)
    materialize_world(settings, meta.start_ts.to_pydatetime(), meta.days)
    settle(settings)


def settle(settings) -> None:  # noqa: ANN001
    """One refresh round before the clock starts: members imported within the watermark's
    safety margin of the build are recomputed now, not in the first measured round."""
    from training.cli.data import refresh_loop

    for _ in refresh_loop(settings, 0):
        pass


def wait_up(port: int, timeout: float = 240.0) -> None:
    """Until /healthz answers: the server runs without models (features are what is measured;
    /readyz would wait for models)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def post(port: int, key: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="copy this data folder (default: build one)")
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--refresh-seconds", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=30, help="purchases to post")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between posts")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_freshness_"))
    data = tmp / "data"
    t0 = time.perf_counter()
    if args.data_dir:
        shutil.copytree(args.data_dir, data)
        from serving.config import StoreSettings as Settings

        settle(Settings(data_dir=data))
    else:
        prepare(data, args.members, args.days)
    setup_s = time.perf_counter() - t0
    os.environ["REWARDS_DATA_DIR"] = str(data)

    from serving.config import ServeSettings, StoreSettings
    from serving.services import MEMBER_VIEW
    from serving.stores.features import OnlineFeatureReader, open_store
    from serving.stores.keys import open_key_store

    settings = StoreSettings(data_dir=data)
    keys = open_key_store(ServeSettings().keys(settings))
    key = keys.create("bench-freshness", ("events",), None)[1]
    keys.close()
    server = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "rewards"), "serve", "--port", str(args.port),
         "--refresh-seconds", str(args.refresh_seconds)],
        env={**os.environ, "REWARDS_DATA_DIR": str(data)}, stdout=subprocess.DEVNULL,
        stderr=open(tmp / "server.log", "w"))
    lags: list[float] = []
    missed: list[str] = []
    try:
        wait_up(args.port)
        reader = OnlineFeatureReader(open_store(settings), MEMBER_VIEW)
        pending: dict[str, tuple[float, datetime, float]] = {}
        lock = threading.Lock()
        done = threading.Event()

        def poster() -> None:
            for i in range(args.events):
                member = str(1 + (i * 7919) % 1000)
                before = reader.read(member)
                count = before.values["purchases_7d"] if before else 0.0
                now = datetime.now(UTC)
                post(args.port, key, {"events": [{
                    "event_id": f"fresh-{os.getpid()}-{i}", "event_type": "purchase",
                    "member_id": member, "timestamp": now.isoformat(), "amount": 25.0,
                    "category": "grocery"}]})
                with lock:
                    pending[member] = (time.monotonic(), now, count)
                time.sleep(args.interval)
            done.set()

        thread = threading.Thread(target=poster)
        thread.start()
        deadline = None
        while True:
            with lock:
                items = list(pending.items())
            for member, (acked, posted_at, count) in items:
                row = reader.read(member)
                if (row is not None and row.event_timestamp is not None
                        and row.event_timestamp >= posted_at.replace(microsecond=0)
                        and row.values["purchases_7d"] >= count + 1):
                    lags.append(time.monotonic() - acked)
                    with lock:
                        pending.pop(member, None)
            if done.is_set():
                deadline = deadline or time.monotonic() + 3 * args.refresh_seconds + 30
                if not pending or time.monotonic() > deadline:
                    missed = list(pending)
                    break
            time.sleep(0.2)
        thread.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {
        "setup_seconds": round(setup_s, 1), "refresh_seconds": args.refresh_seconds,
        "events": args.events, "fresh": len(lags), "missed": len(missed),
        "lag_p50_s": round(statistics.median(lags), 2) if lags else None,
        "lag_max_s": round(max(lags), 2) if lags else None,
        "lag_mean_s": round(statistics.fmean(lags), 2) if lags else None,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
