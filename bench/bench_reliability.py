"""Reliability under load, on loopback: results go to RELIABILITY.md.

Runs the real server (`rewards serve`) on a private copy of a data folder made by `make demo`
(world, Feast stores, MLflow registry, champions), drives it with wrk, and counts every
response in wrk's Lua hooks: 2xx / 4xx / 5xx / socket errors, answers flagged `degraded`, and the
reward model version in each answer. Scenarios, each bounded in time:

1. load: `--rate` recommendations/s (a constant-rate wrk schedule) for `--seconds`;
2. the same at `--sustainable-rate`, a rate this machine holds;
3. online store killed mid-load: 3 phases (clean / SQLite online store file emptied, then
   restored / clean) — zero 5xx, degraded answers only while it is gone, recovery after;
4. champion promoted mid-load: a new registered version becomes champion and is reloaded via
   POST /v1/admin/reload during the run — zero failed requests, both versions in the answers;
5. auth overhead: the same closed-loop load against a server with auth disabled and enabled.

    REWARDS_DATA_DIR=/path/to/data .venv/bin/python bench/bench_reliability.py --rate 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import PACED, ensure_wrk, parse_wrk, wait_ready  # noqa: E402

LUA = r"""
math.randomseed(%(seed)d)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  ok = 0; client_err = 0; server_err = 0; degraded = 0; versions = {}
end
request = function()
  local id = math.random(1, %(members)d)
  return wrk.format(nil, "/v1/recommendations", nil,
    '{"member_id": "' .. id .. '", "k_rewards": 3, "k_challenges": 3}')
end
function response(status, headers, body)
  if status >= 500 then server_err = server_err + 1
  elseif status >= 400 then client_err = client_err + 1
  else
    ok = ok + 1
    if string.find(body, '"degraded":true', 1, true) then degraded = degraded + 1 end
    local v = string.match(body, '"reward":"(%%d+)"')
    if v then versions[v] = (versions[v] or 0) + 1 end
  end
end
%(delay)s
function done(summary, latency, requests)
  local t = {ok = 0, client_err = 0, server_err = 0, degraded = 0, versions = {}}
  for _, th in ipairs(threads) do
    for _, k in ipairs({"ok", "client_err", "server_err", "degraded"}) do
      t[k] = t[k] + th:get(k)
    end
    for v, n in pairs(th:get("versions")) do t.versions[v] = (t.versions[v] or 0) + n end
  end
  local vs = {}
  for v, n in pairs(t.versions) do table.insert(vs, '"' .. v .. '": ' .. n) end
  io.write(string.format(
    'COUNTS {"ok": %%d, "client_err": %%d, "server_err": %%d, "degraded": %%d, ' ..
    '"socket_errors": %%d, "versions": {%%s}}\n',
    t.ok, t.client_err, t.server_err, t.degraded,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(vs, ", ")))
end
"""


def wrk_run(wrk: str, port: int, key: str, connections: int, seconds: float, members: int,
            rate: float | None) -> dict[str, object]:
    """One wrk run; paced to ``rate`` requests/s in all when given, else closed loop."""
    delay = PACED % {"period_ms": 1000.0 / rate} if rate else ""  # a constant-rate schedule
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA % {"seed": int(time.time()), "members": members, "delay": delay,
                        "key": key})
    try:
        out = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", fh.name,
             f"http://127.0.0.1:{port}"], capture_output=True, text=True,
            timeout=seconds + 120)
    finally:
        os.unlink(fh.name)
    result: dict[str, object] = dict(parse_wrk(out.stdout))
    counts = next(line for line in out.stdout.splitlines() if line.startswith("COUNTS "))
    result.update(json.loads(counts.removeprefix("COUNTS ")))
    result.update(connections=connections, seconds=seconds, asked_rps=rate)
    return result


def get_json(port: int, path: str, key: str | None = None, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json",
                 **({"Authorization": f"Bearer {key}"} if key else {})})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class Server:
    """`rewards serve` on loopback against a data folder, with its own event store."""

    def __init__(self, data: Path, models: Path, events_url: str, port: int, workers: int,
                 auth_disabled: bool = False) -> None:
        env = {**os.environ, "REWARDS_DATA_DIR": str(data), "REWARDS_MODELS_DIR": str(models),
               "REWARDS_EVENTS_URL": events_url, "REWARDS_MODEL_POLL_SECONDS": "0",
               "REWARDS_AUTH_DISABLED": "true" if auth_disabled else "false"}
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "serve", "--port", str(port),
             "--workers", str(workers)], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, workers, timeout=240)  # every worker, not just the first
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def after(seconds: float, action) -> threading.Thread:  # noqa: ANN001
    """Run ``action`` ``seconds`` from now in the background (fault injection)."""
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--sustainable-rate", type=int, default=120)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None,
                        help="scenarios to run: load sustainable outage promotion auth")
    args = parser.parse_args()

    from serving.config import get_store_settings
    from serving.stores.keys import SCOPES, open_key_store

    wrk = ensure_wrk()
    source = get_store_settings()
    members = int(json.loads((source.world_dir / "world.json").read_text())["members"])
    want = set(args.only or ["load", "sustainable", "outage", "promotion", "auth"])
    report: dict[str, object] = {"workers": args.workers, "members": members}
    with tempfile.TemporaryDirectory(prefix="rewards-reliability-") as tmp:
        # a private copy: faults and promotions never touch the data folder benchmarked
        data, models = Path(tmp) / "data", Path(tmp) / "models"
        shutil.copytree(source.data, data, ignore=shutil.ignore_patterns("events.db*"))
        shutil.copytree(source.models, models)
        events_url = f"sqlite:///{Path(tmp) / 'events.db'}"
        keys = open_key_store(events_url)
        key = keys.create("bench", SCOPES, rate_limit=1e6)[1]
        keys.close()
        conns = args.connections

        if want & {"load", "sustainable", "outage", "promotion"}:
            server = Server(data, models, events_url, args.port, args.workers)
            try:
                wrk_run(wrk, args.port, key, 4, 5, members, None)  # warm-up
                scenarios = {
                    "load": lambda: wrk_run(wrk, args.port, key, conns, args.seconds, members,
                                            args.rate),
                    "sustainable": lambda: wrk_run(wrk, args.port, key, conns, args.seconds,
                                                   members, args.sustainable_rate),
                    "outage": lambda: outage(wrk, args, key, members, data),
                    "promotion": lambda: promotion(wrk, args, key, members, data, models),
                }
                for name, run in scenarios.items():
                    if name in want:
                        report[name] = guarded(run)
                        print(json.dumps({name: report[name]}), file=sys.stderr, flush=True)
            finally:
                server.stop()
        if "auth" in want:
            report["auth_overhead"] = guarded(lambda: auth_overhead(
                wrk, args, key, members, data, models, events_url))
    print(json.dumps(report, indent=2))


def guarded(run) -> object:  # noqa: ANN001
    """One scenario's result, or its error: a failure must not lose the other results."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def outage(wrk: str, args: argparse.Namespace, key: str, members: int,
           data: Path) -> dict[str, object]:
    """Clean / store gone for 12 s in a 20 s run / clean, at the sustainable rate."""
    db = data / "feast" / "online_store.db"
    saved = db.read_bytes()

    def kill() -> None:
        with db.open("r+b") as fh:
            fh.truncate(0)

    def restore() -> None:
        with db.open("r+b") as fh:
            fh.write(saved)

    rate, conns, phase = args.sustainable_rate, args.connections, 20
    result: dict[str, object] = {"rate": rate}
    try:
        result["before"] = wrk_run(wrk, args.port, key, conns, phase, members, rate)
        killer, healer = after(4, kill), after(16, restore)
        result["during"] = wrk_run(wrk, args.port, key, conns, phase, members, rate)
        killer.join()
        healer.join()
        result["fault"] = "online_store.db emptied at +4 s, restored at +16 s of 'during'"
        result["after"] = wrk_run(wrk, args.port, key, conns, phase, members, rate)
    finally:
        db.write_bytes(saved)
    return result


def promotion(wrk: str, args: argparse.Namespace, key: str, members: int, data: Path,
              models: Path) -> dict[str, object]:
    """A new champion version registered, aliased and reloaded 10 s into a 30 s run."""
    from mlflow import MlflowClient

    import mlflow

    uri = f"sqlite:///{data / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # registering from a models:/ source resolves it globally
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    old = registry.get_model_version_by_alias("reward", "champion")
    new = registry.create_model_version("reward", source=old.source, run_id=old.run_id,
                                        description="bench_reliability promotion")
    target = models / "reward" / str(new.version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(models / "reward" / str(old.version) / "model.onnx", target)
    outcome: dict[str, object] = {}

    def promote() -> None:
        registry.set_registered_model_alias("reward", "champion", new.version)
        outcome.update(get_json(args.port, "/v1/admin/reload", key, body={}))

    promoter = after(10, promote)
    result = wrk_run(wrk, args.port, key, args.connections, 30, members, args.sustainable_rate)
    promoter.join()
    result["reload"] = outcome
    result["from_version"], result["to_version"] = old.version, new.version
    return result


def auth_overhead(wrk: str, args: argparse.Namespace, key: str, members: int, data: Path,
                  models: Path, events_url: str) -> dict[str, object]:
    """Same closed-loop loads with auth disabled, then enabled (one run each: noisy)."""
    out: dict[str, object] = {}
    for label, disabled in (("auth_disabled", True), ("auth_enabled", False)):
        server = Server(data, models, events_url, args.port, 1, auth_disabled=disabled)
        try:
            wrk_run(wrk, args.port, key, 2, 5, members, None)  # warm-up
            out[label] = {"c1": wrk_run(wrk, args.port, key, 1, 15, members, None),
                          "c4": wrk_run(wrk, args.port, key, 4, 15, members, None)}
        finally:
            server.stop()
    out["in_process_us"] = auth_microbench()
    return out


def auth_microbench(n: int = 20_000) -> dict[str, float]:
    """The auth dependency's own cost on a cached key: authenticate + authorize + throttle."""
    import asyncio

    from serving.api.auth import Authenticator
    from serving.stores.keys import open_key_store

    with tempfile.TemporaryDirectory() as tmp:
        store = open_key_store(f"sqlite:///{Path(tmp) / 'k.db'}")
        raw = store.create("micro", ["recommend"], rate_limit=1e6)[1]
        auth = Authenticator(store, disabled=False, cache_ttl=60, default_rate_limit=1e9,
                             session_secret=b"x" * 32, session_ttl=60, cookie_secure=True)

        async def loop() -> float:
            await auth.authenticate(raw)  # fill the cache
            t0 = time.perf_counter()
            for _ in range(n):
                p = await auth.authenticate(raw)
                auth.authorize(p, "recommend")
                auth.throttle(p)
            return (time.perf_counter() - t0) / n * 1e6

        per_call = asyncio.run(loop())
        store.close()
    return {"per_request_us": round(per_call, 2)}


if __name__ == "__main__":
    main()
