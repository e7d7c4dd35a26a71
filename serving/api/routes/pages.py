"""HTML pages for people (marketers): signed in through /login (a signed cookie, never a key in
the URL); without a session they redirect there."""

from __future__ import annotations

import asyncio
import html

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from serving.api.deps import ExperimentsReadPage, ServicesDep
from serving.api.routes.experiments import ExperimentId, service_report
from serving.experiments.render import render_html
from serving.experiments.service import get_experiment

router = APIRouter(tags=["pages"], include_in_schema=False)


@router.get("/experiments/{experiment_id}", response_class=HTMLResponse)
async def experiment_page(experiment_id: ExperimentId, services: ServicesDep,
                          _: ExperimentsReadPage) -> HTMLResponse:
    """The experiment report as a page readable without training in statistics."""
    found = await asyncio.to_thread(get_experiment, services.events, experiment_id)
    if found is None:
        return HTMLResponse(f"<h1>No experiment {html.escape(experiment_id)}</h1>", status_code=404)
    report = await asyncio.to_thread(service_report, services, found)
    return HTMLResponse(render_html(report))
