"""The HTTP layer: routes, the services handlers use, and the error handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from ..clock import Clock
from ..config import Settings
from ..errors import TasksServerError
from ..models import HttpRequest, TaskConfig
from ..store import Store
from .auth import Authenticator


class Notifier(Protocol):
    """What the API may tell the scheduler: in-memory calls, no I/O, never blocking."""

    def notify(self, task_id: str, due_at_ms: int) -> None: ...

    def forget(self, task_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: Store
    clock: Clock
    scheduler: Notifier
    auth: Authenticator
    unsupported: Callable[[HttpRequest, TaskConfig], list[str]]
    readiness: Callable[[], Awaitable[dict[str, bool]]]


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def routes() -> list[BaseRoute]:
    from . import health, owners, queues

    task = "/v1/queues/{task_id}"
    return [
        Route("/status", health.status, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/v1/owners/register", owners.register, methods=["POST"]),
        Route("/v1/owners/{name}", owners.get, methods=["GET"]),
        Route("/v1/owners/{name}", owners.delete, methods=["DELETE"]),
        Route("/v1/queues", queues.list_tasks, methods=["GET"]),
        Route("/v1/queues/register", queues.register, methods=["POST"]),
        Route(task, queues.get, methods=["GET"]),
        Route(task, queues.edit, methods=["PATCH"]),
        Route(task, queues.delete, methods=["DELETE"]),
        Route(f"{task}/config", queues.get_config, methods=["GET"]),
        Route(f"{task}/attempts", queues.attempts, methods=["GET"]),
        Route(f"{task}/execute", queues.execute, methods=["POST"]),
        Route(f"{task}/pause", queues.pause, methods=["PATCH"]),
        Route(f"{task}/resume", queues.resume, methods=["PATCH"]),
        Route(f"{task}/revoke", queues.revoke, methods=["PATCH"]),
    ]


def create_app(svc: Services, lifespan: Any = None) -> Starlette:
    from .errors import handle_domain_error, handle_http_error, handle_unexpected

    handlers: dict[Any, Callable[..., Any]] = {
        TasksServerError: handle_domain_error,
        HTTPException: handle_http_error,
        Exception: handle_unexpected,
    }
    app = Starlette(routes=routes(), exception_handlers=handlers, lifespan=lifespan)
    app.state.services = svc
    return app
