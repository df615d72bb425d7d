"""The admin view: owners (create, disable, enable, new key, delete), destination hosts
with their backpressure and per-host overrides (set, clear), server health and settings
with secrets masked. Owners and overrides change through the functions behind the admin
API (``api/admin.py``, ``api/hosts.py``) and hosts are read through ``host_views``, so
both paths check and show the same things."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ...config import describe
from ...errors import NotFound, PreconditionFailed, TasksServerError, ValidationFailed
from ...models import Owner
from ..admin import add_owner, change_owner_settings, remove_owner, replace_owner_key
from ..admin_schemas import OwnerChangeIn, OwnerCreateIn
from ..hosts import (
    HostLimitPatch,
    clear_host_override,
    host_views,
    parse_host,
    set_host_override,
)
from ..services import services
from . import charts
from .session import NotSignedIn, Viewer, checked_form, flash, redirect, render, require

_OWNER_ID = re.compile(r"^[A-Z0-9]{26}$")
# settings that may hold a URL with a password in it
_URL_SETTINGS = ("database_url", "public_url", "s3_endpoint")


async def require_admin(request: Request) -> Viewer:
    who = await require(request)
    if not who.admin:
        raise NotSignedIn()
    return who


def masked_settings(settings: Any) -> list[tuple[str, object]]:
    """Every setting by name, secrets as ``***`` and passwords inside URLs hidden."""
    shown = describe(settings)
    for name in _URL_SETTINGS:
        value = shown.get(name)
        if isinstance(value, str) and "@" in value:
            shown[name] = ",".join(_without_password(part) for part in value.split(","))
    return sorted(shown.items())


def _without_password(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "***"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f"***@{host}"))


async def _page(request: Request, who: Viewer, status: int = 200, **extra: Any) -> Response:
    app = services(request)
    owners = await app.store.list_owners()
    hosts = host_views(app)
    busy = [(view.host, view.in_flight + view.waiting) for view in hosts]
    busy = sorted((pair for pair in busy if pair[1]), key=lambda pair: -pair[1])[:8]
    return render(
        request,
        "admin.html",
        who,
        status,
        owners=owners,
        hosts=hosts,
        hosts_chart=charts.bars(busy, "Calls in flight and waiting per host") if busy else "",
        readiness=await app.readiness(),
        settings=masked_settings(app.settings),
        form=extra.pop("form", {}),
        host_form=extra.pop("host_form", {}),
        **extra,
    )


async def admin(request: Request) -> Response:
    who = await require_admin(request)
    return await _page(request, who)


def owner_from_form(form: dict[str, str]) -> OwnerCreateIn:
    """The create-owner form as the admin API's body. Raises ValidationFailed."""
    body: dict[str, Any] = {"name": form.get("name", "").strip()}
    for field in ("tasksInQueueLimit", "requestBudget"):
        raw = form.get(field, "").strip()
        if raw:
            if not raw.isdigit():
                raise ValidationFailed(message=f"{field} must be a whole number")
            body[field] = int(raw)
    try:
        return OwnerCreateIn.model_validate(body)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "form"
        raise ValidationFailed(message=f"{where}: {problem['msg']}") from exc


async def create(request: Request) -> Response:
    """Create an owner and show its key on this response only (never stored, never in
    the session cookie)."""
    who = await require_admin(request)
    form = await checked_form(request)
    try:
        owner, key = await add_owner(services(request), owner_from_form(form))
    except TasksServerError as exc:
        shown = {k: form.get(k, "") for k in ("name", "tasksInQueueLimit", "requestBudget")}
        return await _page(request, who, 400, error=exc.message, form=shown)
    return await _page(request, who, 201, new_key=_new_key(owner, key, "created"))


def _owner_id(request: Request) -> str:
    raw = str(request.path_params["owner_id"]).upper()
    if not _OWNER_ID.match(raw):
        raise NotFound()
    return raw


def _new_key(owner: Owner | str, key: str, what: str) -> dict[str, str]:
    owner_id = owner if isinstance(owner, str) else owner.id
    name = "" if isinstance(owner, str) else owner.name
    return {"owner_id": owner_id, "name": name, "key": key, "what": what}


async def owner_action(request: Request) -> Response:
    """Disable, enable, delete or give a new key to an owner."""
    who = await require_admin(request)
    await checked_form(request)
    app = services(request)
    owner_id = _owner_id(request)
    action = str(request.path_params["action"])
    if action in ("disable", "enable"):
        body = OwnerChangeIn(disabled=action == "disable")
        owner = await change_owner_settings(app, owner_id, body)
        state = "disabled: its key no longer works" if owner.disabled else "enabled again"
        flash(request, f"Owner {owner.name} ({owner.id}) is {state}.")
        return redirect("/ui/admin")
    if action == "rotate":
        owner = await app.store.get_owner(owner_id)
        key = await replace_owner_key(app, owner_id)
        return await _page(request, who, new_key=_new_key(owner, key, "given a new key"))
    if action == "delete":
        owner = await app.store.get_owner(owner_id)
        try:
            await remove_owner(app, owner_id)
        except PreconditionFailed as exc:
            return await _page(request, who, 422, owner_error=f"{owner.name}: {exc.message}")
        flash(request, f"Owner {owner.name} ({owner.id}) is deleted, with its finished tasks.")
        return redirect("/ui/admin")
    raise NotFound()


_HOST_FIELDS = ("host", "maxConcurrency", "maxRate")


def host_limits_from_form(form: dict[str, str]) -> tuple[str, HostLimitPatch]:
    """The set-limits form as the host and the admin API's patch: a blank limit returns
    to the server's default. Raises ValidationFailed with a message naming the field."""
    host = _form_host(form)
    body: dict[str, Any] = {}
    for name, cast, kind in (
        ("maxConcurrency", int, "a whole number"),
        ("maxRate", float, "a number"),
    ):
        raw = form.get(name, "").strip()
        try:
            body[name] = cast(raw) if raw else None
        except ValueError as exc:
            raise ValidationFailed(message=f"{name} must be {kind}") from exc
    try:
        return host, HostLimitPatch.model_validate(body)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "form"
        raise ValidationFailed(message=f"{where}: {problem['msg']}") from exc


def _form_host(form: dict[str, str]) -> str:
    try:
        return parse_host(form.get("host", ""))
    except ValidationFailed as exc:
        raise ValidationFailed(message="host: a name or IPv4 address, optionally :port") from exc


async def set_host(request: Request) -> Response:
    """Set (or replace) a host's override from the form."""
    who = await require_admin(request)
    form = await checked_form(request)
    app = services(request)
    try:
        host, patch = host_limits_from_form(form)
        view = await set_host_override(app, host, patch)
    except ValidationFailed as exc:
        shown = {k: form.get(k, "") for k in _HOST_FIELDS}
        return await _page(request, who, 400, host_error=exc.message, host_form=shown)
    rate = f"{view.max_rate:g}/s" if view.max_rate else "no rate limit"
    flash(request, f"Host {host}: at most {view.max_concurrency} at once, {rate}.")
    return redirect("/ui/admin#hosts-title")


async def clear_host(request: Request) -> Response:
    """Remove a host's override: it returns to the server-wide defaults."""
    await require_admin(request)
    form = await checked_form(request)
    app = services(request)
    host = _form_host(form)
    await clear_host_override(app, host)
    flash(request, f"Host {host} is back to the server's defaults.")
    return redirect("/ui/admin#hosts-title")
