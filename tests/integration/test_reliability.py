"""Faults injected into the real service; what was acknowledged must survive, nothing may 5xx.

- the server SIGKILLed during a burst of 10,000 events (real uvicorn process, loopback);
- the online store (SQLite file) gone in the middle of traffic, then back;
- a corrupt and a mismatching ONNX file as champion.
The champion swap under traffic is in test_api.py. Bigger loads: bench/bench_reliability.py.
Every test works on a private copy of the small world.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.config import ServeSettings, StoreSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BURST = 10_000
BATCH = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(store: StoreSettings, events_url: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "REWARDS_DATA_DIR": str(store.data),
           "REWARDS_MODELS_DIR": str(store.models), "REWARDS_EVENTS_URL": events_url,
           "REWARDS_MODEL_POLL_SECONDS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.main:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("server did not become ready: " + log.read_text()[-3000:])


def event(i: int) -> dict:
    return {"event_id": f"burst-{i:05d}", "event_type": "purchase", "member_id": str(1 + i % 2000),
            "amount": 10.0 + i % 7, "timestamp": "2026-11-23T10:00:00Z"}


def test_sigkill_during_event_burst_loses_no_acknowledged_event(
        copy_store, make_api_key, tmp_path: Path) -> None:  # noqa: ANN001
    """4 clients send 10,000 events in batches of 50; the server is SIGKILLed mid-burst. Every
    event acknowledged with a 2xx is in the store after restart, once; a full replay after the
    restart stores exactly the rest (idempotent by event_id)."""
    from serving.stores.events import open_event_store

    store = copy_store(tmp_path)
    url = f"sqlite:///{tmp_path / 'events.db'}"
    headers = {"Authorization": f"Bearer {make_api_key(url, 'events')}"}
    port = free_port()
    log = tmp_path / "server.log"
    server = start_server(store, url, port, log)
    batches = [[event(i) for i in range(b, b + BATCH)] for b in range(0, BURST, BATCH)]
    acked: list[str] = []
    lock = threading.Lock()
    next_batch = iter(range(len(batches)))
    killed = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                          timeout=10) as http:
            for b in next_batch:
                try:
                    r = http.post("/v1/events", json={"events": batches[b]})
                except httpx.HTTPError:
                    if killed.is_set():
                        return
                    raise
                if r.status_code == 200:
                    with lock:
                        acked.extend(e["event_id"] for e in batches[b])

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        while len(acked) < BURST * 0.4:  # kill well inside the burst
            time.sleep(0.005)
        killed.set()
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        for t in threads:
            t.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert BURST * 0.4 <= len(acked) < BURST, "the kill must land inside the burst"

    # the store after the crash, opened directly (SQLite recovers its WAL)
    events = open_event_store(url)
    try:
        stored = set(events.events_between(datetime(2026, 11, 23, tzinfo=UTC),
                                           datetime(2026, 11, 24, tzinfo=UTC))["event_id"])
    finally:
        events.close()
    assert set(acked) <= stored, f"{len(set(acked) - stored)} acknowledged events lost"
    assert len(acked) == len(set(acked))

    # restart, replay everything: the acknowledged ones are duplicates, the rest are stored
    server = start_server(store, url, port, log)
    try:
        accepted = duplicates = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                          timeout=30) as http:
            for batch in batches:
                r = http.post("/v1/events", json={"events": batch})
                assert r.status_code == 200, r.text
                accepted += r.json()["accepted"]
                duplicates += r.json()["duplicates"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert accepted + duplicates == BURST and duplicates == len(stored)
    print(f"RELIABILITY sigkill: acknowledged before the kill {len(acked)}, stored {len(stored)} "
          f"(acked and lost: {len(set(acked) - stored)}), replay after restart: {accepted} new, "
          f"{duplicates} duplicates")
    events = open_event_store(url)
    try:
        assert events.count_events() == BURST  # each event exactly once
    finally:
        events.close()


@pytest.fixture
def private_app(copy_store, make_api_key, with_catalog,  # noqa: ANN001
                tmp_path: Path) -> Iterator[tuple[TestClient, StoreSettings]]:
    from serving.main import create_app

    store = copy_store(tmp_path)
    url = with_catalog(f"sqlite:///{tmp_path / 'events.db'}")
    key = make_api_key(url, "recommend", "admin")
    settings = ServeSettings(events_url=url, model_poll_seconds=0, seed=5)
    with TestClient(create_app(store, settings),
                    headers={"Authorization": f"Bearer {key}"}) as client:
        yield client, store


def test_online_store_outage_under_traffic(private_app, request_traffic) -> None:  # noqa: ANN001
    """The SQLite online store's file is emptied mid-traffic, then restored: no request fails,
    answers during the outage are flagged degraded, and personalization comes back."""
    client, store = private_app
    members = pd.read_parquet(store.world_dir / "members.parquet")
    ids = [str(i) for i in members[members["consent"]]["member_id"].iloc[:40]]
    db = store.data / "feast" / "online_store.db"
    saved = db.read_bytes()
    results: list[tuple[str, int, bool, bool, list[str]]] = []
    phase = ["before"]

    def one_request(i: int) -> None:
        current = phase[0]
        r = client.post("/v1/recommendations", json={"member_id": ids[i % len(ids)]})
        body = r.json() if r.status_code == 200 else {}
        if phase[0] != current:  # straddled a switch: it belongs to no phase
            current = "switch"
        results.append((current, r.status_code, body.get("degraded", False),
                        body.get("personalized", False), body.get("degraded_reasons", [])))

    try:
        with request_traffic(one_request):
            time.sleep(1.0)
            # a request answered between the cut and the next line belongs to no phase
            phase[0] = "cutting"
            with db.open("r+b") as fh:  # the store is gone: an empty file where it was
                fh.truncate(0)
            phase[0] = "outage"
            time.sleep(1.5)
            phase[0] = "restoring"
            with db.open("r+b") as fh:
                fh.write(saved)
            time.sleep(0.3)
            phase[0] = "after"
            time.sleep(1.0)
    finally:
        db.write_bytes(saved)
    by_phase = {p: [r for r in results if r[0] == p] for p in ("before", "outage", "after")}
    assert all(code == 200 for _, code, *_ in results), {c for _, c, *_ in results}
    assert by_phase["before"] and not any(r[2] for r in by_phase["before"])
    outage = by_phase["outage"]
    assert outage and all(r[2] and not r[3] for r in outage)
    assert all(any("online store" in reason for reason in r[4]) for r in outage)
    after = by_phase["after"]
    assert after and all(not r[2] and r[3] for r in after), "personalization did not return"
    print("RELIABILITY outage: " + ", ".join(
        f"{p} {len(rs)} requests / {sum(r[2] for r in rs)} degraded / "
        f"{sum(r[1] >= 500 for r in rs)} 5xx" for p, rs in by_phase.items()))


def test_corrupt_or_mismatching_champion_is_refused(private_app) -> None:  # noqa: ANN001
    """A champion whose ONNX file is garbage, then one whose inputs do not match its
    FeatureService: both refused, v1 keeps serving, /readyz and /metrics show the refusals."""
    import mlflow

    client, store = private_app
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store.tracking_uri)  # a models:/ source resolves globally
    try:
        check_refusals(client, store)
    finally:
        mlflow.set_tracking_uri(previous_uri)


def _register_file(registry: Any, store: StoreSettings, like: Any, content: bytes,
                   alias: str) -> str:
    """A new reward version (registered like ``like``) whose cached ONNX file is ``content``,
    with ``alias`` moved to it: what the cache holds is what serving loads."""
    mv = registry.create_model_version("reward", source=like.source, run_id=like.run_id)
    path = store.models / "reward" / str(mv.version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    registry.set_registered_model_alias("reward", alias, mv.version)
    return str(mv.version)


def check_refusals(client: TestClient, store: StoreSettings) -> None:
    import json

    import onnx
    from mlflow import MlflowClient

    from serving.contract.model_meta import METADATA_KEY

    registry = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
    v1 = registry.get_model_version_by_alias("reward", "champion")
    good = store.models / "reward" / str(v1.version) / "model.onnx"

    def new_champion(content: bytes) -> str:
        return _register_file(registry, store, v1, content, "champion")

    corrupt = new_champion(b"\x08\x07 definitely not an onnx model" * 100)
    reload = client.post("/v1/admin/reload")
    assert reload.status_code == 200 and reload.json()["outcomes"]["reward"] == f"refused v{corrupt}"

    model = onnx.load(str(good))
    prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(prop.value)
    meta["service_features"] = list(reversed(meta["service_features"]))
    prop.value = json.dumps(meta)
    mismatching = new_champion(model.SerializeToString())
    outcome = client.post("/v1/admin/reload").json()["outcomes"]["reward"]
    assert outcome == f"refused v{mismatching}"

    r = client.post("/v1/recommendations", json={"member_id": "7"})
    assert r.status_code == 200 and r.json()["model_versions"]["reward"] == str(v1.version)
    ready = client.get("/readyz").json()
    assert ready["models"]["reward"]["version"] == str(v1.version)
    assert ready["models"]["reward"]["refusals"] == 2
    assert "inputs do not match FeatureService" in ready["models"]["reward"]["last_error"]
    metrics = client.get("/metrics").text
    assert 'rewards_model_refusals{model="reward"} 2.0' in metrics
    assert f'rewards_model_loaded{{model="reward",version="{v1.version}"}} 1.0' in metrics


def test_a_trial_serves_its_share_and_a_broken_one_is_refused_without_harm(
        private_app) -> None:  # noqa: ANN001
    """A version put on trial (the registry's `trial` alias) is loaded on reload and serves
    about REWARDS_TRIAL_SHARE (0.3) of the decisions, every decision naming it in play;
    a trial whose file is garbage is refused: the champion serves alone, nothing degraded,
    /readyz stays ready and says why."""
    import mlflow
    from mlflow import MlflowClient

    client, store = private_app
    registry = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
    v1 = registry.get_model_version_by_alias("reward", "champion")
    good = (store.models / "reward" / str(v1.version) / "model.onnx").read_bytes()

    def new_trial(content: bytes) -> str:
        return _register_file(registry, store, v1, content, "trial")

    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store.tracking_uri)
    try:
        trial = new_trial(good)
        outcome = client.post("/v1/admin/reload").json()["outcomes"]["reward"]
        assert outcome == f"unchanged v{v1.version}; trial v{trial} loaded"
        assert client.get("/readyz").json()["models"]["reward"]["trial"] == trial
        served = Counter()
        for i in range(300):
            body = client.post("/v1/recommendations", json={"member_id": str(i)}).json()
            assert body["model_versions"]["reward@trial"] == trial and not body["degraded"]
            if body["rewards"]:
                served[body["model_versions"]["reward"]] += 1
        offered = sum(served.values())
        assert set(served) == {str(v1.version), trial}
        assert abs(served[trial] / offered - 0.3) < 4 * (0.3 * 0.7 / offered) ** 0.5
        assert f'reward_model="{trial}"' in client.get("/metrics").text  # decisions by version

        broken = new_trial(b"\x08\x07 definitely not an onnx model" * 100)
        outcome = client.post("/v1/admin/reload").json()["outcomes"]["reward"]
        assert outcome == f"unchanged v{v1.version}; trial v{broken} refused"
        for i in range(20):
            body = client.post("/v1/recommendations", json={"member_id": str(i)}).json()
            assert body["model_versions"]["reward"] == str(v1.version)
            assert "reward@trial" not in body["model_versions"] and not body["degraded"]
        ready = client.get("/readyz")
        assert ready.status_code == 200
        reward = ready.json()["models"]["reward"]
        assert reward["trial"] is None and "unreadable" in reward["trial_error"]
        registry.delete_registered_model_alias("reward", "trial")
        outcome = client.post("/v1/admin/reload").json()["outcomes"]["reward"]
        assert outcome == f"unchanged v{v1.version}"
    finally:
        mlflow.set_tracking_uri(previous_uri)
