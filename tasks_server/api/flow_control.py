"""Flow-control endpoints: an owner's keys with their limits, what waits behind them and
what is in flight; pause, resume or change a key's limits."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..errors import NotFound
from ..models import FlowControl, FlowPeriod, FlowSetting, FlowStatus
from .errors import field_error, validation_failed
from .schemas import Strict
from .services import Services, services
from .wire import answer, read_json

_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class FlowControlPatch(Strict):
    """Fields given replace the key's; ``null`` for rate or parallelism removes that limit."""

    rate: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    period: Literal["1s", "1m", "1h"] | None = None
    parallelism: Annotated[int, Field(ge=1, le=100_000)] | None = None
    paused: bool | None = None


def _status(app: Services, owner_id: str, status: FlowStatus, now_ms: int) -> dict[str, Any]:
    flow = status.setting.flow
    oldest = status.oldest_due_ms
    return {
        "key": flow.key,
        "rate": flow.rate,
        "period": flow.period.value,
        "parallelism": flow.parallelism,
        "paused": status.setting.paused,
        "waiting": status.waiting,
        "inFlight": app.scheduler.flow_in_flight((owner_id, flow.key)),
        "waitMs": 0 if oldest is None else max(now_ms - oldest, 0),
    }


def _key(request: Request) -> str:
    key = str(request.path_params["key"])
    if not _KEY.match(key):
        raise field_error(("key",), "Invalid flow-control key")
    return key


async def _find(app: Services, owner_id: str, key: str) -> FlowStatus:
    for status in await app.store.list_flow_controls(owner_id):
        if status.setting.flow.key == key:
            return status
    raise NotFound()


async def list_keys(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    now = app.clock.now_ms()
    keys = await app.store.list_flow_controls(owner_id)
    return answer(request, [_status(app, owner_id, status, now) for status in keys])


async def get_key(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    status = await _find(app, owner_id, _key(request))
    return answer(request, _status(app, owner_id, status, app.clock.now_ms()))


async def patch_key(request: Request) -> Response:
    """Pause, resume or change a key's limits; the scheduler applies them at once."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    key = _key(request)
    data = await read_json(request, app.settings.max_size_body_request)
    try:
        patch = FlowControlPatch.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc
    current = (await _find(app, owner_id, key)).setting
    given = patch.model_fields_set
    flow = current.flow
    changed = FlowControl(
        key,
        patch.rate if "rate" in given else flow.rate,
        FlowPeriod(patch.period) if patch.period is not None else flow.period,
        patch.parallelism if "parallelism" in given else flow.parallelism,
    )
    paused = patch.paused if patch.paused is not None else current.paused
    await app.store.save_flow_control(owner_id, FlowSetting(changed, paused), app.clock.now_ms())
    app.scheduler.configure_flow(owner_id, changed, paused)
    status = await _find(app, owner_id, key)
    return answer(request, _status(app, owner_id, status, app.clock.now_ms()))
