"""Privacy: erase everything the service holds about one member (admin only)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Path

from serving.api.deps import AdminKey, ServicesDep
from serving.api.auth import ApiError
from serving.contract.schemas import AUTH_ERRORS, MAX_MEMBER_ID, ErasureResponse, error_responses

router = APIRouter(prefix="/v1/members", tags=["privacy"], responses=AUTH_ERRORS)
log = logging.getLogger("rewards.audit")


@router.delete("/{member_id}", response_model=ErasureResponse,
               responses=error_responses(503))
async def erase_member(member_id: Annotated[int, Path(ge=1, le=MAX_MEMBER_ID)],
                       services: ServicesDep, principal: AdminKey) -> ErasureResponse:
    """Delete the member's events, decisions and online features; counts of what was erased.

    Writes already queued (a decision served a moment ago) are committed first, so none lands
    after the erasure. Consent is separate: a `consent_withdrawn` event stops personalization
    at the next request without erasing anything.
    """
    # Flush both group-commit queues: a queued decision must not reappear after the erasure.
    await services.decision_writer.write([])
    await services.event_writer.write([])
    erased = await asyncio.to_thread(services.events.erase_member, member_id)
    if services.reader is None:
        raise ApiError(503, "online store unavailable: events and decisions were erased, "
                             "online features were not; retry", {"Retry-After": "5"},
                        field=None)
    erased["online_features"] = await asyncio.to_thread(services.reader.erase, member_id)
    # Audit: who erased which pseudonymous id, and how much; nothing else about the member.
    log.info("member erased", extra={"key_id": principal.key_id, "member_id": member_id,
                                     "erased": erased})
    return ErasureResponse(member_id=member_id, erased=erased)
