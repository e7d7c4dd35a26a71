"""Health, readiness, metrics and admin operations."""

from __future__ import annotations

import asyncio
import logging
import os

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serving.api.deps import AdminKey, ServicesDep
from serving.api.auth import authorize_request, get_auth
from serving.contract.schemas import AUTH_ERRORS, ReloadResponse

log = logging.getLogger("rewards.audit")

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """Models and stores loaded (readiness); 503 with the reasons otherwise."""
    models = {name: {"version": slot.current.meta.version if slot.current else None,
                     "last_error": slot.last_error, "refusals": slot.refusals,
                     "cold_start": services.models.never_promoted(name),
                     # a version on trial beside the champion (never a readiness condition)
                     **({"trial": slot.trial.meta.version if slot.trial else None,
                         "trial_error": slot.trial_error} if slot.trials else {})}
              for name, slot in services.models.slots.items()}
    checks = {
        # a family never promoted serves by uniform exploration (cold start): ready
        "models": all(m["version"] or m["cold_start"] for m in models.values()),
        "online_store": services.reader is not None,
        "event_store": await asyncio.to_thread(services.events.ping),
    }
    ready = all(checks.values())
    body = {"ready": ready, "checks": checks, "models": models, "problems": services.problems,
            # local development with REWARDS_AUTH_DISABLED must be visible to any probe
            "auth": "disabled" if get_auth(request).disabled else "api_keys",
            "worker_pid": os.getpid(),  # which worker answered (`rewards serve --workers N`)
            "workers": len(services.group.live_workers()) if services.group else 1}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                       **AUTH_ERRORS})
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus exposition: open by default (no member data in it; block it at the edge),
    or behind an `admin` key with REWARDS_METRICS_REQUIRE_KEY=true."""
    if services.settings.metrics_require_key:
        await authorize_request(request, "admin")
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.post("/v1/admin/reload", response_model=ReloadResponse, responses=AUTH_ERRORS)
async def reload_models(services: ServicesDep, principal: AdminKey) -> ReloadResponse:
    """Check the registry now and swap in changed champions (no request fails meanwhile).

    With `rewards serve --workers N`, answers once every live worker has reloaded (up to 30 s):
    `workers_reloaded` of `workers`."""
    log.info("model reload requested", extra={"key_id": principal.key_id})
    outcomes, done, live = await services.reload_everywhere()
    return ReloadResponse(outcomes=outcomes, versions=services.models.versions(),
                          workers_reloaded=done, workers=live)
