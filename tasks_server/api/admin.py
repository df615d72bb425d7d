"""Operator endpoints, each behind a bearer key the operator sets: owner administration
(``ADMIN_KEY``; the routes do not exist without it) and Prometheus metrics (``METRICS_KEY``,
open only with ``METRICS_PUBLIC=1``)."""

from __future__ import annotations

import hmac
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..errors import NotFound, OwnerNotFound, Unauthenticated, WrongKey
from ..models import Owner
from ..sealing import key_digest
from .admin_schemas import OwnerChangeIn, OwnerCreateIn
from .errors import validation_failed
from .keys import new_owner_key
from .schemas import Strict
from .services import Services, services
from .wire import DONE, answer, read_json

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_OWNER_ID_CHARS = 26


def require_bearer(request: Request, secret: str) -> None:
    """Raise WrongKey (401) unless the request carries ``Authorization: Bearer <secret>``;
    the comparison takes the same time whatever the offered key."""
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not hmac.compare_digest(offered.encode(), secret.encode()):
        raise WrongKey()


def admin_services(request: Request) -> Services:
    """The services, once the request carries ADMIN_KEY (404 when the server has none)."""
    app = services(request)
    if not app.settings.admin_key:
        raise NotFound()
    require_bearer(request, app.settings.admin_key)
    return app


def owner_record(owner: Owner) -> dict[str, Any]:
    return {
        "id": owner.id,
        "name": owner.name,
        "createdAt": owner.created_at_ms,
        "tasksInQueue": owner.tasks_in_queue,
        "tasksInQueueLimit": owner.tasks_in_queue_limit,
        "disabled": owner.disabled,
        "requestBudget": owner.request_budget,
    }


def _owner_id(request: Request) -> str:
    owner_id: str = request.path_params["owner_id"]
    if len(owner_id) != _OWNER_ID_CHARS or not owner_id.isalnum():
        raise NotFound()
    return owner_id.upper()


async def _body(request: Request, app: Services, model: type[Strict]) -> Any:
    data = await read_json(request, app.settings.max_size_body_request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc


async def list_owners(request: Request) -> Response:
    """Every owner, oldest first, without keys (``tasks-server owner list``)."""
    app = admin_services(request)
    return answer(request, [owner_record(owner) for owner in await app.store.list_owners()])


# -- what the endpoints and the dashboard's admin page both do ------------------------------


async def add_owner(app: Services, body: OwnerCreateIn) -> tuple[Owner, str]:
    """Create an owner, whatever the registration mode; returns it with its new key (the
    only time the key exists in the clear: the store keeps its digest)."""
    key = new_owner_key()
    limit = body.tasksInQueueLimit
    owner = await app.store.create_owner(
        body.name,
        key_digest(key),
        app.clock.now_ms(),
        app.settings.tasks_in_queue_limit if limit is None else limit,
        body.requestBudget,
    )
    return owner, key


async def change_owner_settings(app: Services, owner_id: str, body: OwnerChangeIn) -> Owner:
    """Apply the fields given in ``body``; the others keep their value (``requestBudget``
    given as None returns to the default). Raises NotFound for an unknown owner."""
    try:
        owner = await app.store.get_owner(owner_id)
    except OwnerNotFound as exc:
        raise NotFound() from exc
    given = body.model_fields_set
    changed = await app.store.update_owner(
        owner_id,
        disabled=owner.disabled if body.disabled is None else body.disabled,
        tasks_in_queue_limit=(
            owner.tasks_in_queue_limit if body.tasksInQueueLimit is None else body.tasksInQueueLimit
        ),
        request_budget=body.requestBudget if "requestBudget" in given else owner.request_budget,
    )
    app.auth.forget(owner_id)  # a disabled owner's cached key check must not outlive it
    return changed


async def replace_owner_key(app: Services, owner_id: str) -> str:
    """Give the owner a new key and return it; the old one stops working at once.
    Raises NotFound for an unknown owner."""
    key = new_owner_key()
    try:
        await app.store.set_owner_key(owner_id, key_digest(key))
    except OwnerNotFound as exc:
        raise NotFound() from exc
    app.auth.forget(owner_id)
    return key


async def remove_owner(app: Services, owner_id: str) -> None:
    """Delete an owner with no unfinished task, and its finished tasks; its key and
    sessions stop working at once. Raises OwnerNotFound (a NotFound) for an unknown owner and
    PreconditionFailed while it still has tasks in queue."""
    await app.store.delete_owner(owner_id)
    app.auth.forget(owner_id)
    app.destinations.forget(owner_id)


# -- the endpoints ----------------------------------------------------------------------------


async def create_owner(request: Request) -> Response:
    """A new owner with its key (shown once), whatever the registration mode."""
    app = admin_services(request)
    body: OwnerCreateIn = await _body(request, app, OwnerCreateIn)
    owner, key = await add_owner(app, body)
    return answer(request, {**owner_record(owner), "key": key}, 201)


async def change_owner(request: Request) -> Response:
    """Disable or enable an owner, or change its queue limit or request budget. Fields
    left out keep their value; ``requestBudget: null`` returns to the default."""
    app = admin_services(request)
    owner_id = _owner_id(request)
    body: OwnerChangeIn = await _body(request, app, OwnerChangeIn)
    return answer(request, owner_record(await change_owner_settings(app, owner_id, body)))


async def delete_owner(request: Request) -> Response:
    """Delete an owner with no unfinished task (422 otherwise), and its finished tasks."""
    app = admin_services(request)
    await remove_owner(app, _owner_id(request))
    return answer(request, DONE)


async def rotate_owner_key(request: Request) -> Response:
    """A new key for the owner (shown once); the old one stops working at once."""
    app = admin_services(request)
    owner_id = _owner_id(request)
    return answer(request, {"id": owner_id, "key": await replace_owner_key(app, owner_id)})


async def metrics(request: Request) -> Response:
    """The Prometheus text exposition (format 0.0.4): behind METRICS_KEY, or open with
    METRICS_PUBLIC=1 (counts and timings tell an outsider how the server is used)."""
    app = services(request)
    if app.settings.metrics_key:
        require_bearer(request, app.settings.metrics_key)
    elif not app.settings.metrics_public:
        raise Unauthenticated("Metrics need METRICS_KEY (or METRICS_PUBLIC=1 on the server)")
    if app.metrics_text is None:
        raise NotFound()
    return Response(await app.metrics_text(), media_type=PROMETHEUS_TEXT)
