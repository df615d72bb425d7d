"""Signing in and out, who is looking, CSRF tokens, and rendering a page for them.

The session is Starlette's signed cookie (itsdangerous, HttpOnly, SameSite=Strict, with an
expiry). It holds the owner id (or the admin flag), a fingerprint of the key that signed
in, and the CSRF token; never the key. Every request checks the fingerprint against the
stored key digest, so deleting an owner or changing its key ends its sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from ...errors import AuthError, PayloadTooLarge, TasksServerError
from ...sealing import keys_match
from ..services import Services, services

_OWNER_ID_LENGTH = 26
MAX_FORM_BYTES = 256 * 1024


class NotSignedIn(Exception):
    """The page needs a signed-in viewer; the handler sends them to the sign-in page."""


class CsrfRefused(TasksServerError):
    default_message = "The form is out of date or was not sent from this dashboard"


@dataclass(frozen=True, slots=True)
class Viewer:
    owner_id: str | None
    admin: bool
    csrf: str


def fingerprint(digest: bytes, secret: bytes) -> str:
    """Short keyed hash of an owner's key digest: changes when the key does."""
    return hmac.new(secret, digest, hashlib.sha256).hexdigest()[:32]


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def viewer(request: Request) -> Viewer | None:
    """Who is signed in, or None (also when their key changed or they were removed)."""
    session = request.session
    app = services(request)
    if session.get("admin") and app.settings.admin_key:
        return Viewer(None, True, csrf_token(request))
    owner_id = session.get("owner")
    if not isinstance(owner_id, str):
        return None
    digest = await app.store.owner_key_digest(owner_id)
    secret: bytes = request.app.state.session_secret
    if digest is None or not hmac.compare_digest(
        fingerprint(digest, secret), str(session.get("kf", ""))
    ):
        session.clear()
        return None
    return Viewer(owner_id, False, csrf_token(request))


async def require(request: Request) -> Viewer:
    found = await viewer(request)
    if found is None:
        raise NotSignedIn()
    return found


async def require_owner(request: Request) -> tuple[Viewer, str]:
    """A signed-in owner (the admin has no tasks of its own to act on)."""
    found = await require(request)
    if found.owner_id is None:
        raise NotSignedIn()
    return found, found.owner_id


async def read_form(request: Request) -> dict[str, str]:
    """A posted URL-encoded form (the dashboard's forms carry no files), at most
    MAX_FORM_BYTES. Raises PayloadTooLarge."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge()
    pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return dict(pairs)


async def checked_form(request: Request) -> dict[str, str]:
    """The posted form, once its CSRF token matches the session's. Raises CsrfRefused."""
    form = await read_form(request)
    sent = form.get("csrf")
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(expected, str):
        raise CsrfRefused()
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfRefused()
    return form


def flash(request: Request, message: str) -> None:
    request.session["flash"] = message[:300]


def render(
    request: Request,
    template: str,
    who: Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    templates: Jinja2Templates = request.app.state.templates
    has_session = "session" in request.scope  # not when the error handler runs outside it
    notice = request.session.pop("flash", None) if has_session else None
    csrf = who.csrf if who is not None else (csrf_token(request) if has_session else "")
    return templates.TemplateResponse(
        request,
        template,
        {"viewer": who, "csrf": csrf, "notice": notice, "nav": template, **context},
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def to_login(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return redirect(f"/ui/login?next={quote(target, safe='')}")


# -- the sign-in page ---------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    return render(request, "login.html", None, next=_safe_next(request.query_params.get("next")))


async def login(request: Request) -> Response:
    form = await checked_form(request)
    app = services(request)
    owner_id = str(form.get("ownerId", "")).strip().upper()
    key = str(form.get("key", "")).strip()
    target = _safe_next(str(form.get("next", "")))
    try:
        role = await _authenticate(app, owner_id, key, request.app.state.session_secret)
    except AuthError:
        error = "The owner id and key do not match."
        return render(request, "login.html", None, 401, error=error, next=target, owner=owner_id)
    request.session.clear()
    request.session.update(role)
    request.session["csrf"] = secrets.token_urlsafe(32)  # a new token for the new session
    return redirect(target)


async def _authenticate(app: Services, owner_id: str, key: str, secret: bytes) -> dict[str, Any]:
    """The session content for these credentials. Raises AuthError when they are wrong."""
    admin_key = app.settings.admin_key
    if not owner_id and admin_key and hmac.compare_digest(key.encode(), admin_key.encode()):
        return {"admin": True}
    if len(owner_id) != _OWNER_ID_LENGTH or not key:
        raise AuthError()
    digest = await app.store.owner_key_digest(owner_id)
    if digest is None or not keys_match(digest, key):
        raise AuthError()
    return {"owner": owner_id, "kf": fingerprint(digest, secret)}


async def logout(request: Request) -> Response:
    await checked_form(request)
    request.session.clear()
    response = redirect("/ui/login")
    return response


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never another site."""
    if target and target.startswith("/ui") and not target.startswith("//"):
        return target
    return "/ui/"
