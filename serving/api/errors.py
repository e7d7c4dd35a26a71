"""Every error the app answers, in one shape: ``{"errors": [{"field": ..., "reason": ...}]}``.

Also the methods a path supports: FastAPI declares one route per (path, method), and Starlette
answers a method no route of the path takes with the first route's methods only (``OPTIONS
/v1/experiments`` said ``Allow: POST``, not ``GET, POST``). Here OPTIONS answers 204 and a 405
answers with the error body, both with an ``Allow`` header listing every method of the path.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from serving.api.auth import ApiError, LoginRequired
from serving.api.observability import Metrics
from serving.contract.events import error_field

log = logging.getLogger("rewards.api")
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, path: str, root_path: str = "") -> list[str]:
    """Every method some route of ``path`` takes, plus OPTIONS (answered here). Asked of the
    routes themselves, method by method, so routers included at any depth are seen."""
    methods = ["OPTIONS"]
    for method in _METHOD_ORDER[:-1]:
        scope = {"type": "http", "path": path, "root_path": root_path, "method": method,
                 "headers": []}
        if any(route.matches(scope)[0] is Match.FULL for route in app.router.routes):
            methods.append(method)
    return sorted(methods, key=_METHOD_ORDER.index)


def _reason(message: str) -> str:
    return message.removeprefix("Value error, ")


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Render auth errors, validation errors, HTTP errors and crashes as the API's errors."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, headers=exc.headers, content={
            "errors": [{"field": exc.field, "reason": exc.reason}]})

    @app.exception_handler(LoginRequired)
    async def login_required(_: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='')}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body it cannot decode (e.g. not UTF-8) with a bare 400: make it
        # the documented 422 naming the body.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return JSONResponse(status_code=422, content={"errors": [
                {"field": "body", "reason": "body is not valid UTF-8 JSON"}]})
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(app, request.scope["path"],
                                              request.scope.get("root_path", "")))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            return JSONResponse(status_code=405, headers={"Allow": allow}, content={
                "errors": [{"field": "method", "reason": f"{request.method} is not allowed "
                                                         f"here; allowed: {allow}"}]})
        # HTTPException(404, "...") from any route: the API's error shape, plus FastAPI's
        # `detail` for callers that read it.
        return JSONResponse(status_code=exc.status_code, headers=exc.headers, content={
            "errors": [{"field": None, "reason": str(exc.detail)}], "detail": exc.detail})

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": error_field(e["loc"], e["type"]), "reason": _reason(e["msg"])}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content={"errors": errors})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.errors.labels(route).inc()
        return JSONResponse(status_code=500, content={"errors": [
            {"field": None, "reason": "internal error; see logs with this request id"}]})
