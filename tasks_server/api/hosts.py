"""Destination hosts (administrators, behind ADMIN_KEY): each host's limits, its current
adaptive concurrency, what runs and waits, its circuit and last 429/503, and why calls
wait; per-host overrides of HOST_MAX_CONCURRENCY and HOST_MAX_RATE.

``host_views`` and ``host_record`` are the one way to read this state: the API and the
dashboard both use them."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..dispatch.hosts import HostGovernor, HostView
from ..errors import NotFound
from ..models import HostLimit
from .admin import admin_services
from .errors import field_error, validation_failed
from .schemas import Strict
from .services import Services
from .wire import answer, read_json

# a host name or IPv4 address, lower case, with an optional port: the dispatcher's
# "host:port" (one port) or a bare name (every port of it)
_HOST = re.compile(r"^[a-z0-9_](?:[a-z0-9_.\-]{0,252})(?::(\d{1,5}))?$")


class HostLimitPatch(Strict):
    """Fields given replace the override's; ``null`` returns that limit to the default."""

    maxConcurrency: Annotated[int, Field(ge=1, le=100_000)] | None = None
    maxRate: Annotated[float, Field(gt=0, le=1_000_000)] | None = None


def _governor(app: Services) -> HostGovernor:
    if app.hosts is None:
        raise NotFound()
    return app.hosts


def host_views(app: Services) -> list[HostView]:
    """Every host the server keeps state for (busy, throttled, failing or with an
    override), by name; empty when this server has no governor."""
    if app.hosts is None:
        return []
    return app.hosts.views(app.clock.now_ms())


def host_record(view: HostView) -> dict[str, Any]:
    """One host as the API shows it (times are epoch milliseconds)."""
    override = view.override
    last = None
    if view.last_throttled_status is not None:
        last = {"status": view.last_throttled_status, "at": view.last_throttled_at_ms}
    return {
        "host": view.host,
        "maxConcurrency": view.max_concurrency,
        "maxRate": view.max_rate,
        "override": None
        if override is None
        else {
            "host": override.host,
            "maxConcurrency": override.max_concurrency,
            "maxRate": override.max_rate,
            "updatedAt": override.updated_at_ms,
        },
        "concurrency": view.concurrency,
        "inFlight": view.in_flight,
        "waiting": view.waiting,
        "circuit": view.circuit.value,
        "consecutiveFailures": view.failures,
        "circuitReopensAt": view.reopen_at_ms,
        "lastThrottled": last,
        "throttled": view.throttled,
        "circuitOpened": view.circuit_opened,
        "lastFailure": view.last_failure,
        "waitingReason": view.waiting_reason,
    }


def parse_host(raw: str) -> str:
    """A host as overrides name it (lower case, optional port). Raises ValidationFailed."""
    host = raw.strip().lower()
    match = _HOST.match(host)
    if match is None or (match.group(1) is not None and not 0 < int(match.group(1)) < 65536):
        raise field_error(("host",), "Invalid host: a name or IPv4 address, optionally :port")
    return host


def _host(request: Request) -> str:
    return parse_host(str(request.path_params["host"]))


async def set_host_override(app: Services, host: str, patch: HostLimitPatch) -> HostView:
    """Store the host's override and apply it at once; fields not given in ``patch`` keep
    their value, a field given as None returns that limit to the default. The API and the
    dashboard both change overrides through here."""
    governor = _governor(app)
    given = patch.model_fields_set
    current = next((h for h in await app.store.list_host_limits() if h.host == host), None)
    current = current or HostLimit(host)
    limit = HostLimit(
        host,
        patch.maxConcurrency if "maxConcurrency" in given else current.max_concurrency,
        patch.maxRate if "maxRate" in given else current.max_rate,
        app.clock.now_ms(),
    )
    await app.store.save_host_limit(limit)
    governor.set_override(limit)
    return governor.view(host, app.clock.now_ms())


async def clear_host_override(app: Services, host: str) -> HostView:
    """Remove the host's override (NotFound when it has none): the host returns to the
    server-wide defaults at once."""
    governor = _governor(app)
    if not await app.store.delete_host_limit(host):
        raise NotFound()
    governor.drop_override(host)
    return governor.view(host, app.clock.now_ms())


async def list_hosts(request: Request) -> Response:
    app = admin_services(request)
    return answer(request, [host_record(view) for view in host_views(app)])


async def get_host(request: Request) -> Response:
    """One host: its live state, or the limits it would get when nothing is known."""
    app = admin_services(request)
    host = _host(request)
    return answer(request, host_record(_governor(app).view(host, app.clock.now_ms())))


async def patch_host(request: Request) -> Response:
    """Set the host's override (stored, applied at once); fields left out keep theirs."""
    app = admin_services(request)
    host = _host(request)
    _governor(app)
    data = await read_json(request, app.settings.max_size_body_request)
    try:
        patch = HostLimitPatch.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc
    return answer(request, host_record(await set_host_override(app, host, patch)))


async def delete_host(request: Request) -> Response:
    """Remove the host's override: it returns to the server-wide defaults."""
    app = admin_services(request)
    return answer(request, host_record(await clear_host_override(app, _host(request))))
