"""The FastAPI application: `create_app()`; stores and models are opened in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from collections import Counter
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from serving.api.auth import build_authenticator
from serving.api.errors import install_error_handlers
from serving.api.fast_path import FastPathState, FastRecommendPath
from serving.api.limits import BodyLimitMiddleware
from serving.api.observability import Metrics, RequestContextMiddleware, configure_logging
from serving.api.routes import (
    catalog, events, experiments, login, members, ops, pages, recommendations,
)
from serving.config import ServeSettings, StoreSettings, get_serve_settings, get_store_settings

log = logging.getLogger("rewards.api")


def operation_id(route: APIRoute) -> str:
    """The route function's name (``recommend``, ``post_events``...): what generated clients
    call their methods, instead of FastAPI's ``recommend_v1_recommendations_post``."""
    return route.name


def check_operation_ids(app: FastAPI) -> None:
    """Operation ids must be unique in the OpenAPI document: refuse to build an app where two
    documented routes share a function name."""
    document = app.openapi()
    app.openapi_schema = None  # built again on first request, with any route added later
    names = Counter(operation["operationId"] for methods in document["paths"].values()
                    for operation in methods.values())
    repeated = sorted(name for name, count in names.items() if count > 1)
    if repeated:
        raise RuntimeError(f"operation ids used by more than one route: {repeated}; "
                           "give the route functions distinct names")


def create_app(store: StoreSettings | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """Build the app; tests pass settings pointing at their own small world."""
    store = store or get_store_settings()
    settings = settings or get_serve_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from serving.services import build_services

        configure_logging()
        app.state.auth = await asyncio.to_thread(build_authenticator, settings.keys(store),
                                                 settings)
        services = await asyncio.to_thread(build_services, store, settings, metrics)
        app.state.services = services
        services.start_background()
        log.info("ready", extra={"models": services.models.versions(),
                                 "problems": services.problems})
        try:
            yield
        finally:
            services.close()
            if app.state.auth.keys is not None:
                app.state.auth.keys.close()

    # FastAPI's native OpenTelemetry asks the global providers on every request whether it is
    # on (~5 us, more with cold caches); the service reports through Prometheus, so it is off
    # unless REWARDS_OPENTELEMETRY turns it on for a deployment that configures providers.
    otel = settings.opentelemetry
    app = FastAPI(title="rewards-reco", version="0.1.0", lifespan=lifespan,
                  description="Personalized rewards and challenges for loyalty programs.",
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel},
                  generate_unique_id_function=operation_id)
    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(members.router)
    app.include_router(ops.router)
    app.include_router(experiments.router)
    app.include_router(catalog.router)
    app.include_router(pages.router)  # HTML for people; auth attaches to this router
    app.include_router(login.router)
    app.state.fast_path = FastPathState(enabled=settings.fast_recommend_path)
    app.add_middleware(FastRecommendPath, state=app.state.fast_path)  # innermost of the three
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    install_error_handlers(app, metrics)
    check_operation_ids(app)
    return app
