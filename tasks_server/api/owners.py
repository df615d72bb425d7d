"""Owner endpoints: register, read and delete the caller's own account.

The rules are the original's (docs/compatibility.md#owners).
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..errors import NotFound, OwnerNotFound, PreconditionFailed, RegistrationClosed
from ..sealing import key_digest
from .admin import require_bearer
from .errors import validation_failed
from .keys import new_owner_key
from .schemas import OwnerIn
from .services import services
from .wire import DONE, answer, read_json


def _name(request: Request) -> str:
    raw = request.path_params["name"]
    try:
        return OwnerIn.model_validate({"name": raw}).name
    except ValidationError as exc:
        raise validation_failed(exc, {"name": raw}) from exc


async def register(request: Request) -> Response:
    """Anyone may register in ``open`` mode, only the administrator in ``admin`` mode,
    nobody in ``closed`` mode (OWNER_REGISTRATION)."""
    app = services(request)
    mode = app.settings.registration_mode
    if mode == "closed":
        raise RegistrationClosed()
    if mode == "admin":
        assert app.settings.admin_key  # config.validate refuses admin mode without it
        require_bearer(request, app.settings.admin_key)
    data = await read_json(request, app.settings.max_size_body_request)
    try:
        body = OwnerIn.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc
    key = new_owner_key()
    owner = await app.store.create_owner(
        body.name, key_digest(key), app.clock.now_ms(), app.settings.tasks_in_queue_limit
    )
    return answer(request, {"id": owner.id, "key": key}, 201)


async def get(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    name = _name(request)
    try:
        owner = await app.store.get_owner(owner_id)
    except OwnerNotFound:
        owner = None
    if owner is None or owner.name != name:
        raise NotFound()
    return answer(
        request,
        {
            "id": owner.id,
            "name": owner.name,
            "createdAt": owner.created_at_ms,
            "tasksInQueue": owner.tasks_in_queue,
            "tasksInQueueLimit": owner.tasks_in_queue_limit,
        },
    )


async def delete(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    name = _name(request)
    owner = await app.store.get_owner(owner_id)
    if owner.name != name:
        raise PreconditionFailed(f"{name} is not the name of the owner in X-Tasks-Owner-Id")
    await app.store.delete_owner(owner_id)
    app.auth.forget(owner_id)
    app.destinations.forget(owner_id)
    return answer(request, DONE)
