"""`POST /v1/recommendations` answered without FastAPI's per-request machinery, when all is well.

The route in ``serving/api/routes/recommendations.py`` stays the definition: OpenAPI, errors,
every other case. For a well-formed JSON request, FastAPI's dependency solving, routing and
response handling cost about 0.3 ms of a ~1.85 ms answer in-process (BENCHMARKS.md, serving).
This middleware runs the same steps directly: the same body validation (JSON, then the model in
Python mode), ``authorize_request``, the route's own ``answer()`` and serialization; an auth
error (401/403/429/503) is rendered by the app's own ``ApiError`` handler, as the route would
(its auth also runs before body errors are reported). A body that does not validate, or another
content type, goes to the route unchanged (the body replayed), so validation errors have one
source. Auth runs at most once per request, so a key is charged once.

It sits inside ``RequestContextMiddleware`` and ``BodyLimitMiddleware``: request ids, the
latency histogram (labelled with the route's path, as the router would) and body limits apply
as before. ``app.state.fast_path`` switches it (``enabled``) and counts what it answered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.routes.recommendations import answer, json_response
from serving.api.auth import ApiError, authorize_request
from serving.contract.schemas import RecommendationRequest

PATH = "/v1/recommendations"


@dataclass
class FastPathState:
    enabled: bool = True
    answered: int = 0  # recommendations answered here
    refused: int = 0  # auth errors (401/403/429/503) answered here, as the route renders them


class _Route:
    """What the latency histogram reads from ``scope["route"]``: the route's path."""

    path = PATH


class FastRecommendPath:
    def __init__(self, app: ASGIApp, state: FastPathState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST"
                or not self.state.enabled):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:  # BodyLimitMiddleware hands over the whole body as one message
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if await self._answer(scope, body, send):
            return
        replayed: Message | None = {"type": "http.request", "body": body, "more_body": False}

        async def replay() -> Message:
            nonlocal replayed
            if replayed is not None:
                message, replayed = replayed, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _answer(self, scope: Scope, body: bytes, send: Send) -> bool:
        """Answer as the route would; False (nothing sent) to leave the request to the route."""
        request = Request(scope)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return False
        try:
            # as FastAPI does it: JSON to Python objects, then the model in Python mode
            req = RecommendationRequest.model_validate(json.loads(body))
        except Exception:  # noqa: BLE001 - not only ValueError: deep nesting is a RecursionError
            return False  # the route answers it (422, naming the field)
        scope["route"] = _Route  # the metrics' route label, as the router would set it
        try:
            await authorize_request(request, "recommend")
        except ApiError as exc:
            # the app's own handler, as the route would render it: the body was valid, so the
            # route would have failed at the same step (its auth runs before body errors)
            handler = request.app.exception_handlers[ApiError]
            await (await handler(request, exc))(scope, _no_body, send)
            self.state.refused += 1
            return True
        response = json_response(await answer(req, request.app.state.services))
        await response(scope, _no_body, send)  # the route's own serialization and headers
        self.state.answered += 1
        return True


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
