"""Owner security endpoints: the Standard Webhooks signing secret (read, rotate, switch
off) for the owner, and the validated domains an administrator sets for an owner."""

from __future__ import annotations

import dataclasses
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..dispatch.egress import is_host_pattern, normalize_host
from ..dispatch.signing import secret_text
from ..errors import NotFound, OwnerNotFound, ValidationFailed, WrongKey
from ..models import OwnerSecurity
from ..store.security import new_signing_secret
from .services import Services, services
from .wire import answer, read_json


async def _own_security(request: Request) -> tuple[Services, str, OwnerSecurity]:
    """The caller's own security record; ``{name}`` must be the caller's name (else 404)."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    owner = await app.store.get_owner(owner_id)
    if owner.name != request.path_params["name"]:
        raise NotFound()
    return app, owner_id, await app.store.owner_security(owner_id)


def _signing_view(security: OwnerSecurity, now_ms: int) -> dict[str, Any]:
    overlap = security.previous_until_ms is not None and now_ms < security.previous_until_ms
    previous = security.previous_secret if overlap else None
    return {
        "enabled": security.signing_enabled,
        "secret": secret_text(security.signing_secret),
        "previousSecret": None if previous is None else secret_text(previous),
        "previousValidUntil": security.previous_until_ms if previous is not None else None,
    }


async def get_signing(request: Request) -> Response:
    app, _, security = await _own_security(request)
    return answer(request, _signing_view(security, app.clock.now_ms()))


async def rotate_signing(request: Request) -> Response:
    """A new secret; the old one still signs for SIGNING_OVERLAP_S seconds."""
    app, owner_id, security = await _own_security(request)
    now = app.clock.now_ms()
    rotated = dataclasses.replace(
        security,
        signing_secret=new_signing_secret(),
        previous_secret=security.signing_secret,
        previous_until_ms=now + int(app.settings.signing_overlap_s * 1000),
    )
    await app.store.save_owner_security(owner_id, rotated)
    return answer(request, _signing_view(rotated, now))


async def set_signing(request: Request) -> Response:
    """``{"enabled": false}`` switches signing off; true switches it on again."""
    app, owner_id, security = await _own_security(request)
    data = await read_json(request, app.settings.max_size_body_request)
    enabled = data.get("enabled") if isinstance(data, dict) else None
    if not isinstance(enabled, bool) or set(data) != {"enabled"}:
        raise ValidationFailed({"_errors": [], "enabled": {"_errors": ["Expected boolean"]}})
    changed = dataclasses.replace(security, signing_enabled=enabled)
    await app.store.save_owner_security(owner_id, changed)
    return answer(request, _signing_view(changed, app.clock.now_ms()))


def _require_admin(request: Request, app: Services) -> None:
    """404 without ADMIN_KEY (the routes do not exist), 401 without its bearer."""
    if not app.settings.admin_key:
        raise NotFound()
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    secret = app.settings.admin_key.encode()
    if scheme != "Bearer" or not hmac.compare_digest(offered.encode(), secret):
        raise WrongKey()


async def _admin_security(request: Request) -> tuple[Services, str, OwnerSecurity]:
    app = services(request)
    _require_admin(request, app)
    owner_id = str(request.path_params["owner_id"])
    try:
        return app, owner_id, await app.store.owner_security(owner_id)
    except OwnerNotFound as exc:
        raise NotFound() from exc


async def get_domains(request: Request) -> Response:
    _, _, security = await _admin_security(request)
    hosts = security.allowed_hosts
    return answer(request, {"domains": None if hosts is None else list(hosts)})


def _domains(data: Any) -> tuple[str, ...] | None:
    domains: Any = data.get("domains", ...) if isinstance(data, dict) else ...
    if domains is None:
        return None
    problem = None
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        problem = "Expected a list of host names (example.com, *.example.com) or null"
    elif len(domains) > 256:
        problem = "At most 256 domains"
    else:
        bad = [d for d in domains if not is_host_pattern(normalize_host(_ascii(d)))]
        if bad:
            problem = f"Not a host name or *.host pattern: {bad[0]}"
    if problem is not None:
        raise ValidationFailed({"_errors": [], "domains": {"_errors": [problem]}})
    return tuple(dict.fromkeys(normalize_host(_ascii(d)) for d in domains))


def _ascii(host: str) -> str:
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


async def set_domains(request: Request) -> Response:
    """``{"domains": ["example.com", "*.example.com"]}`` limits the owner's calls to these
    hosts (at registration and at connect time); ``{"domains": null}`` lifts the limit."""
    app, owner_id, security = await _admin_security(request)
    data = await read_json(request, app.settings.max_size_body_request)
    hosts = _domains(data)
    await app.store.save_owner_security(
        owner_id, dataclasses.replace(security, allowed_hosts=hosts)
    )
    app.destinations.forget(owner_id)
    return answer(request, {"domains": None if hosts is None else list(hosts)})
