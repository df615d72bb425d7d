"""The admin view: owners (create, disable, enable, new key), server health and settings
with secrets masked. Owner changes go through the same functions as the admin API
(``api/admin.py``), so both paths check and record the same things."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ...config import describe
from ...errors import NotFound, TasksServerError, ValidationFailed
from ...models import Owner
from ..admin import add_owner, change_owner_settings, replace_owner_key
from ..admin_schemas import OwnerChangeIn, OwnerCreateIn
from ..services import services
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
    return render(
        request,
        "admin.html",
        who,
        status,
        owners=owners,
        readiness=await app.readiness(),
        settings=masked_settings(app.settings),
        form=extra.pop("form", {}),
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
    """Disable, enable or give a new key to an owner."""
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
    raise NotFound()
