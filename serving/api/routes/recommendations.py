"""Next-best rewards and challenges, for one member or a campaign batch."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Response

from serving.api import examples
from serving.api.auth import require_scope
from serving.api.deps import ServicesDep
from serving.contract.schemas import (
    AUTH_ERRORS, BatchRecommendationRequest, BatchRecommendationResponse, RecommendationRequest,
    RecommendationResponse,
)
from serving.services import Services

router = APIRouter(prefix="/v1/recommendations", tags=["recommendations"],
                   dependencies=[Depends(require_scope("recommend"))], responses=AUTH_ERRORS)
log = logging.getLogger("rewards.api")


def json_response(model: RecommendationResponse | BatchRecommendationResponse) -> Response:
    """The response built by the service is already a validated model: serialize it once.
    Returned as a model, FastAPI would dump it, validate the dump against response_model and
    serialize it again on every request. The route keeps response_model for the OpenAPI schema
    (and the fuzz tests check the answers against it)."""
    return Response(model.model_dump_json(), media_type="application/json")


async def answer(req: RecommendationRequest, services: Services) -> RecommendationResponse:
    """One member's answer: what this route and its fast path (serving/api/fast_path.py) run."""
    decision = await services.decide(
        req.member_id, channel=req.channel, k_rewards=req.k_rewards,
        k_challenges=req.k_challenges, exclude=set(req.exclude),
        tier_hint=req.context.tier if req.context else None)
    return decision.response


@router.post("", response_model=RecommendationResponse)
async def recommend(req: Annotated[RecommendationRequest,
                                   Body(openapi_examples=examples.RECOMMENDATION)],
                    services: ServicesDep) -> Response:
    """Ranked rewards (by incremental value) and challenges (personal flow-zone targets)."""
    return json_response(await answer(req, services))


@router.post("/batch", response_model=BatchRecommendationResponse)
async def recommend_batch(req: Annotated[BatchRecommendationRequest,
                                         Body(openapi_examples=examples.BATCH)],
                          services: ServicesDep) -> Response:
    """Up to 1,000 members in one call (CRM campaigns); each answer is logged as a decision."""
    results = []
    for member_id in req.member_ids:
        decision = await services.decide(
            member_id, channel=req.channel, k_rewards=req.k_rewards,
            k_challenges=req.k_challenges, exclude=set(req.exclude), tier_hint=None)
        results.append(decision.response)
    return json_response(BatchRecommendationResponse(results=results))
