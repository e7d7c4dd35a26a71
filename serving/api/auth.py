"""Who may call what: API keys with scopes, per-key rate limits, and signed login cookies.

Routes declare what they need as FastAPI dependencies:

- JSON API: ``Depends(require_scope("recommend"))`` — the key comes in
  ``Authorization: Bearer <key>`` (or ``X-API-Key``). Missing or wrong key: 401 with
  ``WWW-Authenticate``; a valid key without the scope: 403; over the key's rate: 429 with
  ``Retry-After``.
- HTML pages for people (marketers): ``Depends(require_page_scope("experiments:read"))`` —
  a signed, HttpOnly, SameSite=Strict cookie set by ``POST /login`` (the key is typed into a
  form, never put in a URL); without one the browser is redirected to ``/login``.

Keys are looked up once and cached in memory for ``auth_cache_ttl_seconds`` (default 5 s), so a
cached request costs one SHA-256 and a dict lookup; a revoked key stops working within that TTL
in every process. Rate limits are token buckets shared by the workers of one server
(``rewards serve --workers N``, see ``serving.worker_group``), in memory for a single process. They
are not shared between servers: with N replicas a key gets up to N times its rate (put a shared
limiter in the gateway if that matters).

Only the key id (public) is ever logged, never the key.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serving import worker_group
from serving.config import ServeSettings
from serving.stores.keys import SCOPES, ApiKey, KeyStore, matches, open_key_store, parse_key_id

log = logging.getLogger("rewards.auth")
SESSION_COOKIE = "rewards_session"
_REALM = 'Bearer realm="rewards-reco"'
_CACHE_MAX = 10_000  # bounded, so random key ids cannot grow memory without limit


@dataclass(frozen=True)
class Principal:
    """The caller of one request: which key, what it may do."""

    key_id: str
    name: str
    scopes: frozenset[str]
    rate_limit: float | None


DEV_PRINCIPAL = Principal("auth-disabled", "local development", frozenset(SCOPES), None)


class ApiError(Exception):
    """An error answer (401, 403, 429, 503...), rendered by the app as
    ``{"errors": [{"field": ..., "reason": ...}]}`` with the status and headers given."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None,
                 field: str | None = "authorization") -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers, self.field = status, reason, headers or {}, field


class LoginRequired(Exception):
    """An HTML page without a valid session: the app redirects to /login?next=<path>."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass
class TokenBuckets:
    """Per-key token buckets: ``rate`` tokens a second, bursts of up to one second's worth.

    Only touched from the event loop (async dependencies), so no lock is needed.
    """

    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key_id: str, rate: float, now: float | None = None) -> float:
        """Spend one token; 0.0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        burst = max(rate, 1.0)
        tokens, last = self.buckets.get(key_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens >= 1.0:
            self.buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self.buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / rate


class Authenticator:
    """Key lookups (TTL-cached), scope checks, rate limits and session cookies for one app."""

    def __init__(self, keys: KeyStore | None, *, disabled: bool, cache_ttl: float,
                 default_rate_limit: float, session_secret: bytes,
                 session_ttl: int, cookie_secure: bool,
                 buckets: TokenBuckets | worker_group.WorkerGroup | None = None) -> None:
        if keys is None and not disabled:
            raise ValueError("a key store is required unless auth is disabled")
        self.keys = keys
        self.disabled = disabled
        self.cache_ttl = cache_ttl
        self.default_rate_limit = default_rate_limit
        self.session_ttl = session_ttl
        self.cookie_secure = cookie_secure
        self._secret = session_secret
        self._cache: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()
        self.buckets = TokenBuckets() if buckets is None else buckets

    # -- keys ----------------------------------------------------------------------------------

    async def lookup(self, key_id: str) -> ApiKey | None:
        """The stored key (None if unknown), from the cache while it is fresh.

        Unknown ids are cached too, so guessing keys cannot hammer the database.
        """
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        assert self.keys is not None
        try:
            key = await asyncio.to_thread(self.keys.get, key_id)
        except Exception as exc:  # noqa: BLE001 - the key database is down
            if hit is not None:  # a stale answer beats refusing every caller
                log.warning("key store unavailable; serving a stale key lookup",
                            extra={"key_id": key_id, "error": type(exc).__name__})
                return hit[1]
            log.error("key store unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
            raise ApiError(503, "key store unavailable; retry shortly",
                            {"Retry-After": "1"}) from exc
        self._cache[key_id] = (now + self.cache_ttl, key)
        self._cache.move_to_end(key_id)
        while len(self._cache) > _CACHE_MAX:
            self._cache.popitem(last=False)
        return key

    async def authenticate(self, raw: str | None) -> Principal:
        """The principal for a presented key; ApiError(401) when missing, unknown or revoked."""
        if not raw:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                            {"WWW-Authenticate": _REALM})
        key_id = parse_key_id(raw)
        key = await self.lookup(key_id) if key_id else None
        if key is None or not key.active or not matches(key, raw):
            raise ApiError(401, "invalid or revoked API key",
                            {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'})
        return Principal(key.key_id, key.name, key.scopes, key.rate_limit)

    def authorize(self, principal: Principal, scope: str) -> None:
        if scope not in principal.scopes:
            raise ApiError(403, f"this API key lacks the '{scope}' scope",
                            {"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", '
                                                 f'scope="{scope}"'})

    def throttle(self, principal: Principal) -> None:
        rate = principal.rate_limit or self.default_rate_limit
        wait = self.buckets.take(principal.key_id, rate)
        if wait > 0:
            raise ApiError(429, f"rate limit of {rate:g} requests/s exceeded for this key",
                            {"Retry-After": str(max(1, math.ceil(wait)))})

    # -- sessions (HTML pages) -----------------------------------------------------------------

    def _sign(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()

    def session_cookie(self, key_id: str, now: float | None = None) -> str:
        """``<key_id>.<expiry>.<hmac>``: binds the session to the key, so revoking the key
        ends the session; scopes are read from the key at each request, never the cookie."""
        expires = int((time.time() if now is None else now) + self.session_ttl)
        payload = f"{key_id}.{expires}"
        return f"{payload}.{self._sign(payload)}"

    async def session_principal(self, cookie: str | None) -> Principal | None:
        """The principal of a valid, unexpired session cookie whose key is still active."""
        if not cookie or len(cookie) > 256:
            return None
        key_id, _, rest = cookie.partition(".")
        expires, _, signature = rest.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(
                signature, self._sign(f"{key_id}.{expires}")):
            return None
        if int(expires) < time.time():
            return None
        key = await self.lookup(key_id)
        if key is None or not key.active:
            return None
        return Principal(key.key_id, key.name, key.scopes, key.rate_limit)


async def get_auth_dep(request: Request) -> Authenticator:
    """As a dependency: async, so FastAPI calls it inline instead of in its thread pool."""
    return get_auth(request)


def get_auth(request: Request) -> Authenticator:
    return request.app.state.auth  # type: ignore[no-any-return]


AuthDep = Annotated[Authenticator, Depends(get_auth_dep)]
# Declared as security schemes so the OpenAPI document (and /docs) shows how to authenticate.
_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer rk_...`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="API key, alternative header")


def presented_key(request: Request) -> str | None:
    """The key in ``Authorization: Bearer`` or ``X-API-Key`` (never in the URL)."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key") or None


async def authorize_request(request: Request, scope: str) -> Principal:
    """Authenticate, authorize and rate-limit one request (what ``require_scope`` runs)."""
    auth = get_auth(request)
    if auth.disabled:
        return DEV_PRINCIPAL
    principal = await auth.authenticate(presented_key(request))
    auth.authorize(principal, scope)
    auth.throttle(principal)
    request.state.principal = principal
    return principal


@functools.cache
def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency for JSON routes: a valid key holding ``scope``, within its rate limit."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(
        request: Request,
        # declared so that OpenAPI (and /docs) show both ways to send the key
        _bearer_doc: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        _header_doc: Annotated[str | None, Depends(_api_key_header)],
    ) -> Principal:
        return await authorize_request(request, scope)

    dependency.__name__ = f"require_{scope.replace(':', '_')}"
    return dependency


@functools.cache
def require_page_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency for HTML pages: a session cookie from /login whose key holds ``scope``.

    No session: redirect to /login (back here afterwards). Session without the scope: 403.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(request: Request, auth: AuthDep) -> Principal:
        if auth.disabled:
            return DEV_PRINCIPAL
        principal = await auth.session_principal(request.cookies.get(SESSION_COOKIE))
        if principal is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target)
        auth.authorize(principal, scope)
        auth.throttle(principal)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_page_{scope.replace(':', '_')}"
    return dependency


def safe_next(path: str | None) -> str:
    """Only same-site paths after login: no open redirect to another host."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/login"
    return path[:512]


def build_authenticator(keys_url: str, settings: ServeSettings) -> Authenticator:
    """Open the key store (unless auth is disabled, which is said loudly) and the cookie key."""
    def authenticator(keys: KeyStore | None, secret: bytes) -> Authenticator:
        return Authenticator(keys, disabled=keys is None, session_secret=secret,
                             cache_ttl=settings.auth_cache_ttl_seconds,
                             default_rate_limit=settings.default_rate_limit,
                             session_ttl=settings.session_ttl_seconds,
                             cookie_secure=settings.session_cookie_secure,
                             buckets=worker_group.current())  # None: this process's own

    if settings.auth_disabled:
        log.warning("AUTHENTICATION IS DISABLED (REWARDS_AUTH_DISABLED=true): every route is "
                    "open to anyone who can reach this port. Local development only.")
        return authenticator(None, secrets.token_bytes(32))
    keys = open_key_store(keys_url)
    secret = (settings.session_secret.get_secret_value() if settings.session_secret
              else keys.server_secret("session_hmac"))
    return authenticator(keys, secret.encode())
