"""The FastAPI application: `create_app()`; stores and models are opened in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.api.routes import events, experiments, ops, pages, recommendations
from serving.config import ServeSettings, StoreSettings, get_serve_settings, get_store_settings
from serving.observability import Metrics, RequestContextMiddleware, configure_logging

log = logging.getLogger("rewards.api")
MAX_BODY_BYTES = 2 * 1024 * 1024


def create_app(store: StoreSettings | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """Build the app; tests pass settings pointing at their own small world."""
    store = store or get_store_settings()
    settings = settings or get_serve_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from serving.services import build_services

        configure_logging()
        services = await asyncio.to_thread(build_services, store, settings, metrics)
        app.state.services = services
        services.start_background()
        log.info("ready", extra={"models": services.models.versions(),
                                 "problems": services.problems})
        try:
            yield
        finally:
            services.close()

    app = FastAPI(title="rewards-reco", version="0.1.0", lifespan=lifespan,
                  description="Personalized rewards and challenges for loyalty programs.")
    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(ops.router)
    app.include_router(experiments.router)
    app.include_router(pages.router)  # HTML for people; auth attaches to this router
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # noqa: ANN001, ANN202
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse(status_code=413, content={"errors": [
                {"field": "body", "reason": f"request body over {MAX_BODY_BYTES} bytes"}]})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"errors": errors})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.errors.labels(route).inc()
        return JSONResponse(status_code=500, content={"errors": [
            {"field": None, "reason": "internal error; see logs with this request id"}]})

    return app
