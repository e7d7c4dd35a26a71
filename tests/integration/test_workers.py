"""`rewards serve --workers 2`: real processes on one port (serving/workers.py).

Each worker listens on its own SO_REUSEPORT socket, only once its stores and models are loaded;
both answer on the one port; they share each key's rate limit and apply a reload together;
SIGTERM to the supervisor stops them, and so does a SIGKILL (the kernel tells orphaned workers
to stop).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_reliability import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def running(pid: int) -> bool:
    """Alive and not a zombie (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def start(store, events_url: str, port: int, log: Path) -> subprocess.Popen:  # noqa: ANN001
    env = {**os.environ, "REWARDS_DATA_DIR": str(store.data),
           "REWARDS_MODELS_DIR": str(store.models), "REWARDS_EVENTS_URL": events_url,
           "REWARDS_MODEL_POLL_SECONDS": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "training.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def ready_pids(port: int, want: int, proc: subprocess.Popen, log: Path) -> set[int]:
    """Distinct worker pids answering /readyz (a new connection each time) until ``want``."""
    seen: set[int] = set()
    deadline = time.monotonic() + 240
    while len(seen) < want and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if r.status_code == 200:
                seen.add(r.json()["worker_pid"])
        except httpx.HTTPError:
            time.sleep(0.5)
    assert len(seen) == want, log.read_text()[-3000:]
    return seen


def wait_gone(pids: set[int], timeout: float = 40) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if running(p)}
        time.sleep(0.2)
    return alive


def client_get(port: int, path: str) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).json()


def check_shared_rate_limit(port: int, key: str, pids: set[int]) -> None:
    """A key limited to 0.01 requests/s (a burst of 1, then one every 100 s) gets one request
    through in total, not one per worker, while its requests land on both workers."""
    answered, codes = set(), []
    began = time.monotonic()
    for _ in range(30):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            r = client.post("/v1/recommendations", json={"member_id": "5"},
                            headers={"Authorization": f"Bearer {key}"})
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
            answered.add(client.get("/readyz").json()["worker_pid"])
    elapsed = time.monotonic() - began
    assert answered == pids
    assert set(codes) <= {200, 429}
    assert codes.count(200) == 1 + int(elapsed * 0.01), (codes, elapsed)


def metric_samples(text: str, name: str) -> dict[str, float]:
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(name + "{")}


def check_metrics_cover_every_worker(port: int, decisions: int, pids: set[int]) -> None:
    """Whichever worker answers the scrape, /metrics counts the whole server's decisions."""
    answered: set[int] = set()
    for _ in range(20):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            counted = metric_samples(client.get("/metrics").text, "rewards_decisions_total")
            assert sum(counted.values()) == decisions, counted
            answered.add(client.get("/readyz").json()["worker_pid"])
    assert answered == pids


def check_reload_reaches_every_worker(port: int, key: str, store, pids: set[int]) -> None:  # noqa: ANN001
    """POST /v1/admin/reload reaches one worker; it answers once both run the new champion
    (model polling is off here, so only the reload can have told the other one)."""
    import mlflow
    from mlflow import MlflowClient

    # the registry resolves a models:/ source through the process-wide tracking URI, which an
    # earlier test may have pointed at its own store
    mlflow.set_tracking_uri(store.tracking_uri)
    registry = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
    old = registry.get_model_version_by_alias("reward", "champion")
    new = registry.create_model_version("reward", source=old.source, run_id=old.run_id)
    target = store.models / "reward" / str(new.version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((store.models / "reward" / str(old.version) / "model.onnx").read_bytes())
    registry.set_registered_model_alias("reward", "champion", new.version)
    r = httpx.post(f"http://127.0.0.1:{port}/v1/admin/reload", timeout=60,
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outcomes"]["reward"] == f"loaded v{new.version}"
    assert (body["workers_reloaded"], body["workers"]) == (2, 2)
    versions: dict[int, str] = {}
    for _ in range(40):
        ready = client_get(port, "/readyz")
        versions[ready["worker_pid"]] = ready["models"]["reward"]["version"]
    assert set(versions) == pids and set(versions.values()) == {str(new.version)}
    loaded = metric_samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text,
                            "rewards_model_loaded")
    assert loaded[f'rewards_model_loaded{{model="reward",version="{new.version}"}}'] == 1.0
    assert loaded[f'rewards_model_loaded{{model="reward",version="{old.version}"}}'] == 0.0


def test_two_workers_share_the_port_and_stop_with_the_supervisor(
        copy_store, make_api_key, tmp_path: Path) -> None:  # noqa: ANN001
    store = copy_store(tmp_path)
    url = f"sqlite:///{tmp_path / 'events.db'}"
    key = make_api_key(url, "recommend")
    port, log = free_port(), tmp_path / "server.log"
    server = start(store, url, port, log)
    try:
        pids = ready_pids(port, 2, server, log)
        assert pids <= children(server.pid)  # the supervisor's own worker processes
        # connections spread over both workers, and each one answers recommendations
        answered: set[int] = set()
        for _ in range(40):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                r = client.post("/v1/recommendations", json={"member_id": "5"},
                                headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
                assert set(r.json()["model_versions"]) == {"reward", "difficulty"}
                answered.add(client.get("/readyz").json()["worker_pid"])
        assert answered == pids
        assert client_get(port, "/readyz")["workers"] == 2
        check_shared_rate_limit(port, make_api_key(url, "recommend", rate_limit=0.01), pids)
        check_metrics_cover_every_worker(port, decisions=41, pids=pids)
        check_reload_reaches_every_worker(port, make_api_key(url, "admin"), store, pids)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        assert not wait_gone(pids), "workers outlived the supervisor's SIGTERM"
    finally:
        if server.poll() is None:
            server.kill()

    # a supervisor killed outright leaves no orphaned workers behind (PR_SET_PDEATHSIG)
    server = start(store, url, port, log)
    try:
        pids = ready_pids(port, 2, server, log)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        assert not wait_gone(pids), "workers outlived a SIGKILLed supervisor"
    finally:
        if server.poll() is None:
            server.kill()
