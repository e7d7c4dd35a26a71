"""`POST /v1/recommendations` answered without FastAPI's per-request machinery, when all is well.

The route in ``serving/api/routes/recommendations.py`` stays the definition: OpenAPI, errors,
every other case. For a well-formed JSON request with a valid key, FastAPI's dependency solving,
routing and response handling cost about 0.3 ms of a ~1.85 ms answer in-process
(BENCHMARKS.md, serving). This middleware runs the same steps (the same body validation,
``authorize_request``, the route's own ``answer()`` and serialization) directly, and hands
anything else to the app unchanged (the request body replayed): a body that does not validate,
a missing or wrong key, a rate-limited one, a non-JSON content type. So errors always come from the route, and a request is charged to the
key's rate limit once, except when the key is already over it.

It sits inside ``RequestContextMiddleware`` and ``BodyLimitMiddleware``: request ids, the
latency histogram (labelled with the route's path, as the router would) and body limits apply
as before. ``app.state.fast_path`` switches it (``enabled``) and counts what it answered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.routes.recommendations import answer
from serving.auth import ApiError, authorize_request
from serving.schemas import RecommendationRequest

PATH = "/v1/recommendations"


@dataclass
class FastPathState:
    enabled: bool = True
    answered: int = 0  # requests answered here (the rest went to the route)


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
            self.state.answered += 1
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
        """Answer a request the route would answer with 200; False (nothing sent) otherwise."""
        request = Request(scope)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return False
        try:
            # as FastAPI does it: JSON to Python objects, then the model in Python mode
            req = RecommendationRequest.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError too
            return False
        try:
            await authorize_request(request, "recommend")
        except ApiError:
            return False
        response = await answer(req, request.app.state.services)
        payload = response.model_dump_json().encode()  # as the route's _json()
        scope["route"] = _Route  # the latency histogram's label, as the router would set it
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", str(len(payload)).encode()),
            (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})
        return True
