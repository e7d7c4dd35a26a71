"""FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serving.api.auth import Principal, require_page_scope, require_scope
from serving.services import Services


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
    # per request that costs more than the lookup
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]

# Scope guards, one per scope (serving/api/auth.py). JSON routes take `dependencies=[...]` or one of
# these aliases as a parameter when they need to know the caller; HTML pages use the Page ones.
RecommendKey = Annotated[Principal, Depends(require_scope("recommend"))]
EventsKey = Annotated[Principal, Depends(require_scope("events"))]
ExperimentsReadKey = Annotated[Principal, Depends(require_scope("experiments:read"))]
ExperimentsWriteKey = Annotated[Principal, Depends(require_scope("experiments:write"))]
AdminKey = Annotated[Principal, Depends(require_scope("admin"))]
ExperimentsReadPage = Annotated[Principal, Depends(require_page_scope("experiments:read"))]
ExperimentsWritePage = Annotated[Principal, Depends(require_page_scope("experiments:write"))]
