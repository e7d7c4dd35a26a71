"""`rewards serve --workers N`: N uvicorn processes, each listening on its own SO_REUSEPORT socket.

uvicorn's own ``--workers`` share one listening socket, and whichever process wakes first
accepts a whole burst of new connections. Keep-alive clients (a CRM's connection pool, the
benchmark's load generator) then stay pinned to it: 64 connections split 50/14 between two
workers, one queued for 100+ ms while the other idled (BENCHMARKS.md, "Serving"). With
SO_REUSEPORT each worker has its own socket and the kernel spreads connections over them by a
hash of the client address, so each worker gets an even share in expectation.

The supervisor restarts a worker that dies (after a growing pause when it keeps dying within
seconds of its start, so a broken deployment does not spin), stops them all on SIGTERM/SIGINT,
and each worker is told by the kernel (PR_SET_PDEATHSIG) to stop if the supervisor itself is
killed. The workers share rate limits and model reloads through ``serving.worker_group``.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from prometheus_client import multiprocess

from serving import worker_group
from serving.api.observability import WORKERS_METRICS_DIR

log = logging.getLogger("rewards.serve")
APP = "serving.main:create_app"
#: A worker that dies before serving, or within this many seconds of starting to serve, is
#: restarted after a pause that doubles each time (1, 2, 4 ... up to ``MAX_BACKOFF`` seconds);
#: one that served longer at once.
QUICK_DEATH_SECONDS = 10.0
MAX_BACKOFF = 30.0


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT (shared by the workers), not yet listening.

    uvicorn starts listening on it only once the app's startup (stores, models) has finished:
    a listening socket would take its share of new connections while the worker still loads,
    and leave them waiting for seconds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def restart_pause(previous: float, lived: float) -> float:
    """Seconds to wait before restarting a worker that served for ``lived`` seconds (0 if it
    never got to serve): none after a normal life, else double the previous pause (at least
    1 s, at most ``MAX_BACKOFF``)."""
    if lived >= QUICK_DEATH_SECONDS:
        return 0.0
    return min(MAX_BACKOFF, max(1.0, 2 * previous))


def _stop_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (no orphaned workers on a SIGKILL)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker(host: str, port: int, log_level: str, group_path: str, index: int) -> None:
    import uvicorn

    _stop_with_parent()
    worker_group.attach(Path(group_path), index)  # before the app exists: it reads the group
    sock = reuseport_socket(host, port)
    config = uvicorn.Config(APP, factory=True, log_level=log_level, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def serve(host: str, port: int, workers: int, log_level: str = "warning") -> None:
    """Run the API in ``workers`` processes until SIGTERM/SIGINT."""
    import uvicorn

    if workers == 1:
        uvicorn.run(APP, factory=True, host=host, port=port, log_level=log_level,
                    access_log=False)
        return
    reuseport_socket(host, port).close()  # fail here, once, if the port is taken
    ctx = mp.get_context("spawn")
    group_fd, group_path = worker_group.create_file(workers)
    # Prometheus samples of every worker, combined at scrape time (serving.api.observability);
    # set before the workers start, which read it when they import prometheus_client.
    metrics_dir = tempfile.mkdtemp(prefix="rewards-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[WORKERS_METRICS_DIR] = metrics_dir
    watch = worker_group.WorkerGroup(group_path, 0)  # read-only use: which workers serve
    stopping = False
    ready_at: list[float | None] = [None] * workers  # when each worker started serving
    backoff = [0.0] * workers
    restart_at: list[float | None] = [None] * workers

    def start(i: int) -> BaseProcess:
        proc = ctx.Process(target=_worker, args=(host, port, log_level, str(group_path), i),
                           daemon=False)
        proc.start()
        ready_at[i] = None
        return proc

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs = [start(i) for i in range(workers)]
    try:
        while not stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for i, proc in enumerate(procs):
                if stopping:
                    break
                if proc.is_alive():
                    if ready_at[i] is None and watch.slot(i)[0] == proc.pid:
                        ready_at[i] = now  # it loaded its models and joined the group
                    continue
                if restart_at[i] is None:
                    multiprocess.mark_process_dead(proc.pid, metrics_dir)  # its live gauges
                    # a worker that never got to serve, or died soon after, backs off
                    ready = ready_at[i]
                    served = 0.0 if ready is None else now - ready
                    backoff[i] = restart_pause(backoff[i], lived=served)
                    restart_at[i] = now + backoff[i]
                    log.error("worker exited; restarting it", extra={
                        "pid": proc.pid, "exitcode": proc.exitcode,
                        "restart_in_seconds": backoff[i]})
                due = restart_at[i]
                if due is not None and now >= due:
                    restart_at[i] = None
                    procs[i] = start(i)
        _stop_all(procs)
    finally:
        watch.close()
        os.close(group_fd)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop_all(procs: list[BaseProcess]) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()  # SIGTERM: uvicorn finishes in-flight requests, runs shutdown
    deadline = time.monotonic() + 30
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
