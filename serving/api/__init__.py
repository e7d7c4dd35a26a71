"""The HTTP surface: routes per resource, authentication, limits, observability.

``routes/`` (one APIRouter per resource), ``deps`` (FastAPI dependencies), ``fast_path`` (the
recommendation route without FastAPI's per-request machinery, same answers), ``auth`` (API keys,
scopes, rate limits, login cookies), ``limits`` (request body size), ``errors`` (every error
answer in one shape, and ``Allow`` for OPTIONS and 405), ``examples`` (the request examples
published in the OpenAPI document), ``observability`` (Prometheus metrics, JSON logs, request
ids).

May import: every other ``serving`` package; nothing imports it but ``serving.main``.
"""
