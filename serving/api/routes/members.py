"""Members: their profiles (upserted by the program's CRM) and, for privacy, their erasure."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Body, Path
from fastapi.responses import JSONResponse

from serving.api import examples
from serving.api.auth import ApiError
from serving.api.deps import AdminKey, EventsKey, ServicesDep
from serving.contract.events import ID_DESCRIPTION, ID_PATTERN
from serving.contract.schemas import (
    AUTH_ERRORS, ErasureResponse, MemberProfile, MemberUpserted, error_responses,
)

router = APIRouter(prefix="/v1/members", tags=["members"], responses=AUTH_ERRORS)
log = logging.getLogger("rewards.audit")
#: The member id in the path: the same rule as in bodies (serving.contract.events.MemberId).
MemberIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN,
                                   description=ID_DESCRIPTION)]


@router.put("/{member_id}", response_model=MemberUpserted,
            responses={201: {"model": MemberUpserted, "description": "profile created"},
                       200: {"description": "profile updated"}})
async def upsert_member(member_id: MemberIdPath,
                        profile: Annotated[MemberProfile, Body(openapi_examples=examples.MEMBER)],
                        services: ServicesDep, _: EventsKey) -> JSONResponse:
    """Create or replace the member's profile: 201 when created, 200 when updated.

    Needs the `events` scope: profiles come from the same CRM feeds as the events. The whole
    profile is replaced (a field left out is cleared), so replays are harmless.
    """
    created = await asyncio.to_thread(
        services.events.upsert_member, member_id, profile.joined_at, profile.tier,
        profile.region, profile.consent, profile.attributes)
    body = MemberUpserted(member_id=member_id, status="created" if created else "updated")
    return JSONResponse(body.model_dump(), status_code=201 if created else 200)


@router.delete("/{member_id}", response_model=ErasureResponse, tags=["privacy"],
               responses=error_responses(503))
async def erase_member(member_id: MemberIdPath, services: ServicesDep,
                       principal: AdminKey) -> ErasureResponse:
    """Delete the member's profile, events, decisions and online features; counts of what was
    erased. Needs the `admin` scope.

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
