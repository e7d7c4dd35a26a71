"""Health, readiness, metrics and admin operations."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.api.deps import ServicesDep
from serving.schemas import ReloadResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """Models and stores loaded (readiness); 503 with the reasons otherwise."""
    models = {name: {"version": slot.current.meta.version if slot.current else None,
                     "last_error": slot.last_error, "refusals": slot.refusals}
              for name, slot in services.models.slots.items()}
    checks = {
        "models": all(m["version"] for m in models.values()),
        "online_store": services.reader is not None,
        "event_store": await asyncio.to_thread(services.events.ping),
    }
    ready = all(checks.values())
    body = {"ready": ready, "checks": checks, "models": models, "problems": services.problems}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    """Prometheus exposition."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/v1/admin/reload", response_model=ReloadResponse)
async def reload_models(services: ServicesDep) -> ReloadResponse:
    """Check the registry now and swap in changed champions (no request fails meanwhile)."""
    outcomes = await asyncio.to_thread(services.refresh_models)
    return ReloadResponse(outcomes=outcomes, versions=services.models.versions())
