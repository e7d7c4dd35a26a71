"""Next-best rewards and challenges, for one member or a campaign batch."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends

from serving.api.deps import ServicesDep
from serving.auth import require_scope
from serving.schemas import (
    AUTH_ERRORS, BatchRecommendationRequest, BatchRecommendationResponse, RecommendationRequest,
    RecommendationResponse,
)

router = APIRouter(prefix="/v1/recommendations", tags=["recommendations"],
                   dependencies=[Depends(require_scope("recommend"))], responses=AUTH_ERRORS)
log = logging.getLogger("rewards.api")


@router.post("", response_model=RecommendationResponse)
async def recommend(req: RecommendationRequest, services: ServicesDep) -> RecommendationResponse:
    """Ranked rewards (by incremental value) and challenges (personal flow-zone targets)."""
    decision = await services.decide(
        req.member_id, channel=req.channel, k_rewards=req.k_rewards,
        k_challenges=req.k_challenges, exclude=set(req.exclude),
        tier_hint=req.context.tier if req.context else None)
    return decision.response


@router.post("/batch", response_model=BatchRecommendationResponse)
async def recommend_batch(req: BatchRecommendationRequest,
                          services: ServicesDep) -> BatchRecommendationResponse:
    """Up to 1,000 members in one call (CRM campaigns); each answer is logged as a decision."""
    results = []
    for member_id in req.member_ids:
        decision = await services.decide(
            member_id, channel=req.channel, k_rewards=req.k_rewards,
            k_challenges=req.k_challenges, exclude=set(req.exclude), tier_hint=None)
        results.append(decision.response)
    return BatchRecommendationResponse(results=results)
