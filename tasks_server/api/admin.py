"""Operator endpoints, each behind a bearer key the operator sets: the owner list
(``ADMIN_KEY``; the route does not exist without it) and Prometheus metrics
(``METRICS_KEY``; open when unset, as scrapers usually sit on a private network)."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from ..errors import NotFound, WrongKey
from .services import services
from .wire import answer

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _require_bearer(request: Request, secret: str) -> None:
    """Raise WrongKey (401) unless the request carries ``Authorization: Bearer <secret>``;
    the comparison takes the same time whatever the offered key."""
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not hmac.compare_digest(offered.encode(), secret.encode()):
        raise WrongKey()


async def list_owners(request: Request) -> Response:
    """Every owner, oldest first, without keys (for ``tasks-server owner list``)."""
    app = services(request)
    if not app.settings.admin_key:
        raise NotFound()
    _require_bearer(request, app.settings.admin_key)
    owners = await app.store.list_owners()
    return answer(
        request,
        [
            {
                "id": owner.id,
                "name": owner.name,
                "createdAt": owner.created_at_ms,
                "tasksInQueue": owner.tasks_in_queue,
                "tasksInQueueLimit": owner.tasks_in_queue_limit,
            }
            for owner in owners
        ],
    )


async def metrics(request: Request) -> Response:
    """The Prometheus text exposition (format 0.0.4)."""
    app = services(request)
    if app.settings.metrics_key:
        _require_bearer(request, app.settings.metrics_key)
    if app.metrics_text is None:
        raise NotFound()
    return Response(await app.metrics_text(), media_type=PROMETHEUS_TEXT)
