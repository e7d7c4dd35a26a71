"""Feedback events: acknowledged only once durably committed; replays counted once."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Depends

from serving.api import examples
from serving.api.auth import ApiError, require_scope
from serving.api.deps import ServicesDep
from serving.contract.schemas import AUTH_ERRORS, EventAck, EventsRequest, EventsResponse

log = logging.getLogger("rewards.events")
router = APIRouter(prefix="/v1/events", tags=["events"],
                   dependencies=[Depends(require_scope("events"))], responses=AUTH_ERRORS)


@router.post("", response_model=EventsResponse)
async def post_events(req: Annotated[EventsRequest, Body(openapi_examples=examples.EVENTS)],
                      services: ServicesDep) -> EventsResponse:
    """Store a batch of events, each of its own type (visit, purchase, impression, redemption,
    points, tier change, consent...; one schema per `event_type`), idempotent by `event_id`.

    Acknowledged only once durably committed; a replayed `event_id` is reported as `duplicate`
    and keeps its first copy."""
    try:
        results = await services.event_writer.write(list(req.events))
    except Exception as exc:  # noqa: BLE001 - the event store is down or refused the commit
        log.error("event store write failed; the batch was not acknowledged",
                  extra={"events": len(req.events), "error": f"{type(exc).__name__}: {exc}"})
        raise ApiError(503, "event store unavailable: nothing of this batch was acknowledged; "
                            "retry it (event ids make a retry safe)", {"Retry-After": "1"},
                       field=None) from exc
    acks = [EventAck(event_id=eid, status="stored" if new else "duplicate")
            for eid, new in results]
    stored = sum(1 for a in acks if a.status == "stored")
    services.metrics.events.labels("stored").inc(stored)
    services.metrics.events.labels("duplicate").inc(len(acks) - stored)
    return EventsResponse(accepted=stored, duplicates=len(acks) - stored, results=acks)
