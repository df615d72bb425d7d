"""The web dashboard at ``/ui``: server-rendered pages (Jinja2) over the same store methods
and scheduler notifications as the API; a small script refreshes numbers in place, and
every page reads without it. ``DASHBOARD=0`` leaves it out."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...errors import NotFound, StorageUnavailable, TasksServerError
from ..services import Services
from . import admin, failures, pages, present, session, tasks, workflows

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "tasks_session"
# pages load only this server's own files; nothing inline runs, nothing frames them
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def session_secret(settings_cipher_key: str) -> bytes:
    """The key that signs session cookies: derived from CIPHER_KEY when one is set (so
    sessions survive a restart and are shared by nodes), else random for this process.
    Never a value shipped with the code."""
    if settings_cipher_key:
        return hmac.new(
            settings_cipher_key.encode(), b"tasks-server/dashboard-session/v1", hashlib.sha256
        ).digest()
    return secrets.token_bytes(32)


def _routes() -> list[Any]:
    task = "/tasks/{task_id}"
    schedule = "/schedules/{schedule_id}"
    return [
        Route("/", pages.overview),
        Route("/login", session.login_page, methods=["GET"]),
        Route("/login", session.login, methods=["POST"]),
        Route("/logout", session.logout, methods=["POST"]),
        Route("/tasks", tasks.task_list),
        Route(task, tasks.task_page),
        Route(f"{task}/edit", tasks.edit_page, methods=["GET"]),
        Route(f"{task}/edit", tasks.edit, methods=["POST"]),
        Route(task + "/{action}", tasks.task_action, methods=["POST"]),
        Route("/failures", failures.failures),
        Route("/failures/{action}", failures.bulk, methods=["POST"]),
        Route("/workflows", workflows.run_list),
        Route("/workflows/{run_id}", workflows.run_page),
        Route("/workflows/{run_id}/{action}", workflows.run_action, methods=["POST"]),
        Route("/schedules", pages.schedule_list),
        Route(schedule, pages.schedule_page),
        Route(schedule + "/{action}", pages.schedule_action, methods=["POST"]),
        Route("/test", pages.test_form, methods=["GET"]),
        Route("/test", pages.test_submit, methods=["POST"]),
        Route("/admin", admin.admin),
        Route("/admin/owners", admin.create, methods=["POST"]),
        Route("/admin/owners/{owner_id}/{action}", admin.owner_action, methods=["POST"]),
        Route("/admin/hosts", admin.set_host, methods=["POST"]),
        Route("/admin/hosts/clear", admin.clear_host, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


async def _not_signed_in(request: Request, exc: Exception) -> Response:
    return session.to_login(request)


async def _not_found(request: Request, exc: Exception) -> Response:
    who = await _viewer_or_none(request)
    return session.render(
        request,
        "error.html",
        who,
        404,
        title="Not found",
        message="There is no such page, or it is not yours.",
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return await _not_found(request, exc)
    who = await _viewer_or_none(request)
    return session.render(
        request, "error.html", who, exc.status_code, title="Cannot do that", message=str(exc.detail)
    )


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TasksServerError)
    status = 403 if isinstance(exc, session.CsrfRefused) else 400
    if isinstance(exc, StorageUnavailable):
        status = 503
    who = await _viewer_or_none(request)
    return session.render(
        request, "error.html", who, status, title="Cannot do that", message=exc.message
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    request_id = secrets.token_hex(8)
    logger.error(
        "dashboard error in %s %s (request %s)",
        request.method,
        request.url.path,
        request_id,
        exc_info=exc,
    )
    return session.render(
        request,
        "error.html",
        None,
        500,
        title="Something broke",
        message=f"The server logged this error as request {request_id}.",
    )


async def _viewer_or_none(request: Request) -> session.Viewer | None:
    try:
        return await session.viewer(request)
    except Exception:  # the page that explains an error must not raise another
        return None


class _PageHeaders:
    """Adds the content security policy to every dashboard response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_policy)


def dashboard(svc: Services) -> Starlette:
    """The dashboard as an app to mount at ``/ui``."""
    settings = svc.settings
    secret = session_secret(settings.cipher_key)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(when=present.when, iso=present.iso, duration=present.duration)
    handlers: dict[Any, Any] = {
        session.NotSignedIn: _not_signed_in,
        NotFound: _not_found,
        HTTPException: _http_error,
        TasksServerError: _domain_error,
        Exception: _unexpected,
    }
    middleware = [
        Middleware(_PageHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=secret.hex(),
            session_cookie=SESSION_COOKIE,
            max_age=settings.dashboard_session_s,
            path="/ui",
            same_site="strict",
            https_only=bool(settings.path_tls_cert),
        ),
    ]
    app = Starlette(routes=_routes(), middleware=middleware, exception_handlers=handlers)
    app.state.services = svc
    app.state.templates = templates
    app.state.session_secret = secret
    return app
