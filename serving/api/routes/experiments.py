"""Uplift experiments: define them, list them, and read their report (JSON)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serving.api import examples
from serving.api.auth import require_scope
from serving.api.deps import ServicesDep
from serving.contract.events import ID_DESCRIPTION, ID_PATTERN
from serving.contract.schemas import AUTH_ERRORS, error_responses
from serving.experiments import service as experiment_service
from serving.experiments.definition import Experiment, ExperimentCreate
from serving.experiments.report import ExperimentReport
from serving.experiments.service import ExperimentConflict, compute_report, load_segments
from serving.services import Services

# Scopes per route, not per router: a write-only key can still create experiments.
router = APIRouter(prefix="/v1/experiments", tags=["experiments"], responses=AUTH_ERRORS)
READ = [Depends(require_scope("experiments:read"))]
WRITE = [Depends(require_scope("experiments:write"))]
ExperimentId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN,
                                   description=ID_DESCRIPTION)]


class ExperimentList(BaseModel):
    experiments: list[Experiment]


def _not_found(experiment_id: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={"errors": [
        {"field": "path.experiment_id", "reason": f"no experiment {experiment_id!r}"}]})


@router.post("", response_model=Experiment, status_code=201, dependencies=WRITE,
             responses=error_responses(409))
async def create_experiment(
        body: Annotated[ExperimentCreate, Body(openapi_examples=examples.EXPERIMENT)],
        services: ServicesDep) -> Experiment | JSONResponse:
    """Define an experiment; members are assigned to arms by a salted hash of their id."""
    try:
        experiment = await asyncio.to_thread(experiment_service.create_experiment,
                                             services.events, body, datetime.now(UTC))
    except ExperimentConflict as exc:
        return JSONResponse(status_code=409, content={"errors": [
            {"field": exc.field, "reason": exc.reason}]})
    await asyncio.to_thread(services.experiments.refresh)  # applies from the next decision
    return experiment


@router.get("", response_model=ExperimentList, dependencies=READ)
async def list_experiments(services: ServicesDep) -> ExperimentList:
    """Every experiment defined, past and present."""
    found = await asyncio.to_thread(experiment_service.list_experiments, services.events)
    return ExperimentList(experiments=found)


@router.get("/{experiment_id}", response_model=Experiment, dependencies=READ,
            responses=error_responses(404))
async def get_experiment(experiment_id: ExperimentId, services: ServicesDep
                         ) -> Experiment | JSONResponse:
    """One experiment's definition."""
    found = await asyncio.to_thread(experiment_service.get_experiment, services.events,
                                    experiment_id)
    return found if found is not None else _not_found(experiment_id)


def service_report(services: Services, experiment: Experiment) -> ExperimentReport:
    """The report as the service computes it (item costs from the catalog, region segments)."""
    # retired rewards too: an experiment may have offered one before it was retired
    rewards = (services.catalog_store.frame("rewards", include_retired=True)
               if services.catalog_store is not None else services.recommender.catalog.rewards)
    costs = dict(zip(rewards["reward_id"], rewards["cost"].astype(float), strict=True))
    segments = load_segments(services.events)
    return compute_report(services.events, experiment, datetime.now(UTC), costs, segments)


@router.get("/{experiment_id}/report", response_model=ExperimentReport, dependencies=READ,
            responses=error_responses(404))
async def experiment_report(experiment_id: ExperimentId, services: ServicesDep
                            ) -> ExperimentReport | JSONResponse:
    """Per-arm rates with 95% CIs, uplift vs holdout and random, Qini, segments, budget."""
    found = await asyncio.to_thread(experiment_service.get_experiment, services.events,
                                    experiment_id)
    if found is None:
        return _not_found(experiment_id)
    return await asyncio.to_thread(service_report, services, found)
