"""Liveness and readiness probes, and the original's ``/status``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .services import services
from .wire import JSON


async def status(request: Request) -> Response:
    return PlainTextResponse("OK")


async def healthz(request: Request) -> Response:
    """The process is up and serving."""
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    """The database answers and the scheduler loop is alive; 503 otherwise."""
    checks = await services(request).readiness()
    ready = all(checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    return JSON(body, 200 if ready else 503)
