"""Prometheus metrics, JSON logs and request ids."""

from __future__ import annotations

import json
import logging
import os
import time
from contextvars import ContextVar

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.decisioning.ids import random_bits

request_id: ContextVar[str] = ContextVar("request_id", default="-")
#: Set by `rewards serve --workers N` for its workers: where their samples are combined.
WORKERS_METRICS_DIR = "REWARDS_WORKERS_METRICS_DIR"


class Metrics:
    """One registry per app, so tests can build many apps in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "rewards_request_seconds", "Request latency by route", ["route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry)
        self.decisions = Counter(
            "rewards_decisions_total", "Decisions by experiment arm and model versions",
            ["arm", "reward_model", "difficulty_model"], registry=self.registry)
        self.fallbacks = Counter(
            "rewards_fallbacks_total", "Answers flagged cold_start / degraded / not personalized",
            ["kind"], registry=self.registry)
        self.errors = Counter("rewards_errors_total", "Unhandled errors by route", ["route"],
                              registry=self.registry)
        self.events = Counter("rewards_events_total", "Feedback events by outcome",
                              ["status"], registry=self.registry)
        # Stale features cost value: a model trained on each decision's recomputed features
        # served on 0-14-day-old ones reached 0.772 of the oracle against 0.804 on the same
        # decisions with fresh ones (BENCHMARKS.md, learning loop). Fresh: a refresh after
        # each member's events (`rewards serve --refresh-seconds N`).
        self.feature_age = Histogram(
            "rewards_feature_age_seconds",
            "Age of the online feature row a decision was served with (its timestamp to now)",
            buckets=(3_600, 6 * 3_600, 86_400, 2 * 86_400, 3 * 86_400, 7 * 86_400,
                     14 * 86_400, 30 * 86_400), registry=self.registry)
        # With `rewards serve --workers N` every worker writes its samples to files that any
        # worker sums at scrape time (see exposition()); a gauge there needs a rule to combine
        # the workers' values: the highest among live workers (every worker refuses the same
        # bad model; a version is loaded if some worker serves it).
        self.model_refusals = Gauge("rewards_model_refusals", "Models refused since start",
                                    ["model"], registry=self.registry,
                                    multiprocess_mode="livemax")
        self.model_version = Gauge("rewards_model_loaded",
                                   "1 for the loaded model version, 0 for one loaded before",
                                   ["model", "version"], registry=self.registry,
                                   multiprocess_mode="livemax")

    def exposition(self) -> bytes:
        """The text for /metrics: this app's registry, or with several workers all of them
        combined, so a scrape that lands on any worker sees the whole server.

        ``serving.workers`` names the folder in ``WORKERS_METRICS_DIR`` (and in
        PROMETHEUS_MULTIPROC_DIR, where prometheus_client keeps the samples). The latter alone
        cannot be the signal: importing Feast sets it in every process (feast/metrics.py)."""
        folder = os.environ.get(WORKERS_METRICS_DIR)
        if folder:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=folder)
            return generate_latest(registry)
        return generate_latest(self.registry)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the request id; extra={...} fields are merged in."""

    _skip = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage(), "request_id": request_id.get()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("rewards")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class RequestContextMiddleware:
    """Request id (from X-Request-ID or new), latency histogram by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode()[:64]
        rid = incoming if incoming.replace("-", "").isalnum() else f"{random_bits(128):032x}"
        token = request_id.set(rid)
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.latency.labels(path, str(status["code"])).observe(
                time.perf_counter() - t0)
            request_id.reset(token)
