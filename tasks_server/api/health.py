"""Liveness and readiness probes, and the original's ``/status``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .services import services
from .wire import answer


async def status(request: Request) -> Response:
    return PlainTextResponse("OK")


async def healthz(request: Request) -> Response:
    """The process is up and serving."""
    return answer(request, {"status": "ok"})


async def readyz(request: Request) -> Response:
    """The database answers and takes writes, and the scheduler loop is alive; 503
    otherwise, with what is wrong under ``problems``."""
    problems = await services(request).readiness()
    ready = all(problem is None for problem in problems.values())
    body: dict[str, object] = {
        "status": "ok" if ready else "unavailable",
        "checks": {name: problem is None for name, problem in problems.items()},
    }
    if not ready:
        body["problems"] = {name: text for name, text in problems.items() if text is not None}
    return answer(request, body, 200 if ready else 503)
