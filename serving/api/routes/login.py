"""Sign-in for the HTML pages: the key is typed into a form (never put in a URL) and exchanged
for a signed, HttpOnly, SameSite=Strict session cookie (see serving/api/auth.py)."""

from __future__ import annotations

import html
import logging
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from serving.api.auth import SESSION_COOKIE, AuthDep, ApiError, safe_next

router = APIRouter(tags=["pages"], include_in_schema=False)
log = logging.getLogger("rewards.auth")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<title>rewards-reco: sign in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto}}
input{{width:100%;padding:.4rem;margin:.3rem 0}} .error{{color:#b00020}}</style></head>
<body><h1>Sign in</h1>{message}
<form method="post" action="/login" autocomplete="off">
<label for="key">API key (needs the <code>experiments:read</code> scope for reports)</label>
<input id="key" name="key" type="password" required maxlength="128">
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button></form></body></html>"""
_NO_STORE = {"Cache-Control": "no-store"}


def _page(next_path: str, message: str = "", status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(message=message, next=html.escape(next_path, quote=True)),
                        status_code=status, headers=_NO_STORE)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, auth: AuthDep, next: str | None = None) -> HTMLResponse:
    """The sign-in form; says who is signed in when a session is already valid."""
    principal = await auth.session_principal(request.cookies.get(SESSION_COOKIE))
    note = (f"<p>Signed in with key <code>{html.escape(principal.key_id)}</code> "
            f"({html.escape(principal.name)}).</p>" if principal else "")
    return _page(safe_next(next), note)


@router.post("/login", response_model=None)
async def login(request: Request, auth: AuthDep) -> HTMLResponse | RedirectResponse:
    """Check the key from the form; on success set the session cookie and go back."""
    if auth.disabled:
        return RedirectResponse(safe_next(None), status_code=303)
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
    raw = (form.get("key") or [""])[0].strip()
    target = safe_next((form.get("next") or [""])[0])
    try:
        principal = await auth.authenticate(raw)
    except ApiError:
        return _page(target, '<p class="error">Unknown or revoked key.</p>', status=401)
    auth.throttle(principal)  # 429 after too many sign-ins with one key
    response = RedirectResponse(target, status_code=303, headers=_NO_STORE)
    response.set_cookie(SESSION_COOKIE, auth.session_cookie(principal.key_id),
                        max_age=auth.session_ttl, httponly=True, samesite="strict",
                        secure=auth.cookie_secure, path="/")
    log.info("signed in", extra={"key_id": principal.key_id})
    return response


@router.post("/logout")
async def logout() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303, headers=_NO_STORE)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
