"""The FastAPI application: `create_app()`; stores and models are opened in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api.fast_path import FastPathState, FastRecommendPath
from serving.api.routes import events, experiments, login, members, ops, pages, recommendations
from serving.api.auth import ApiError, LoginRequired, build_authenticator
from serving.config import ServeSettings, StoreSettings, get_serve_settings, get_store_settings
from serving.api.limits import BodyLimitMiddleware
from serving.api.observability import Metrics, RequestContextMiddleware, configure_logging

log = logging.getLogger("rewards.api")


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
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel})
    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(members.router)
    app.include_router(ops.router)
    app.include_router(experiments.router)
    app.include_router(pages.router)  # HTML for people; auth attaches to this router
    app.include_router(login.router)
    app.state.fast_path = FastPathState(enabled=settings.fast_recommend_path)
    app.add_middleware(FastRecommendPath, state=app.state.fast_path)  # innermost of the three
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, headers=exc.headers, content={
            "errors": [{"field": exc.field, "reason": exc.reason}]})

    @app.exception_handler(LoginRequired)
    async def login_required(_: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='')}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body it cannot decode (e.g. not UTF-8) with a bare 400: make it
        # the documented 422 naming the body.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return JSONResponse(status_code=422, content={"errors": [
                {"field": "body", "reason": "body is not valid UTF-8 JSON"}]})
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        # HTTPException(404, "...") from any route: the API's error shape, plus FastAPI's
        # `detail` for callers that read it.
        return JSONResponse(status_code=exc.status_code, headers=exc.headers, content={
            "errors": [{"field": None, "reason": str(exc.detail)}], "detail": exc.detail})

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
