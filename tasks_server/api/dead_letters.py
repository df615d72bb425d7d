"""Dead-letter queue endpoints: the caller's tasks that ended in ERROR, listed with
filters and a cursor, replayed (one, or many by filter at a bounded rate) or deleted.

A replay is a new attempt cycle of the same task, so its history keeps every attempt."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response

from ..errors import NotFound, TaskNotFound, ValidationFailed
from ..models import Task
from ..store import DeadLetterFilter
from .convert import field_error, spec_to_wire
from .errors import validation_failed
from .outgoing import check_outgoing
from .queues import arm, merge_patch, task_id_of, validate_task
from .schemas import Strict, query_int
from .services import Services, services
from .wire import DONE, answer, query_of, read_json

# the scheduling options of the first run; a replay runs now unless its body sets them
_FIRST_RUN_OPTIONS = ("executeAt", "executeImmediately", "executionDelay")
_CURSOR = re.compile(r"(\d{1,19}):([A-Z0-9]{24})")


def _time_ms(value: Any) -> int:
    """Epoch milliseconds, or an ISO 8601 date (UTC unless it has an offset)."""
    if isinstance(value, str) and re.fullmatch(r"\d{1,15}", value):
        return int(value)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise PydanticCustomError(
            "time", "Expected epoch milliseconds or an ISO 8601 date"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _label(value: Any) -> tuple[str, str | None]:
    text = str(value)
    key, sep, wanted = text.partition("=")
    if not key or len(text) > 600:
        raise PydanticCustomError("label", "Expected key or key=value")
    return key, wanted if sep else None


def _int(low: int, high: int) -> Any:
    return Annotated[int, BeforeValidator(lambda v: query_int(v, low, high))]


class DeadLetterQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, populate_by_name=True)

    from_: Annotated[int | None, BeforeValidator(_time_ms)] = Field(default=None, alias="from")
    to: Annotated[int, BeforeValidator(_time_ms)] | None = None
    statusCode: _int(0, 999) | None = None  # type: ignore[valid-type]
    schedule: str | None = None
    label: Annotated[tuple[str, str | None], BeforeValidator(_label)] | None = None
    limit: _int(1, 1000) | None = None  # type: ignore[valid-type]
    cursor: str | None = None
    rate: _int(1, 1000) = 50  # type: ignore[valid-type]

    @property
    def has_filter(self) -> bool:
        fields = (self.from_, self.to, self.statusCode, self.schedule, self.label)
        return any(value is not None for value in fields)


def _query(request: Request, *refused: str) -> DeadLetterQuery:
    """The query, refusing parameters this operation does not take (``refused``)."""
    raw = query_of(request)
    try:
        query = DeadLetterQuery.model_validate(raw)
    except ValidationError as exc:
        raise validation_failed(exc, raw) from exc
    for name in refused:
        if name in raw:
            raise field_error((name,), "Not a parameter of this operation")
    return query


async def _filter(app: Services, owner_id: str, query: DeadLetterQuery) -> DeadLetterFilter:
    schedule_id = None
    if query.schedule is not None:
        try:
            schedule_id = (await app.store.get_schedule(owner_id, query.schedule)).id
        except NotFound:
            raise field_error(("schedule",), "No such schedule") from None
    return DeadLetterFilter(query.from_, query.to, query.statusCode, schedule_id, query.label)


def _cursor(query: DeadLetterQuery) -> tuple[int, str] | None:
    if query.cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(query.cursor.encode() + b"==").decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    found = _CURSOR.fullmatch(text)
    if found is None:
        raise field_error(("cursor",), "Invalid cursor: pass the `next` of the previous page")
    return int(found[1]), found[2]


def _next_cursor(task: Task) -> str:
    text = f"{task.estimate_end_at_ms}:{task.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def dead_letter(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "state": task.state.value,
        "createdAt": task.created_at_ms,
        "failedAt": task.estimate_end_at_ms,
        "statusCode": task.status_code,
        "attempts": task.attempts,
        "cycle": task.cycle,
        "scheduleId": task.schedule_id,
        "metadata": None if task.metadata is None else dict(task.metadata),
    }


async def list_dead_letters(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    query = _query(request, "rate")
    where = await _filter(app, owner_id, query)
    limit = query.limit or 100
    tasks = await app.store.list_dead_letters(owner_id, where, limit, _cursor(query))
    following = _next_cursor(tasks[-1]) if len(tasks) == limit else None
    return answer(request, {"items": [dead_letter(t) for t in tasks], "next": following})


async def replay(request: Request) -> Response:
    """Replay one task; an optional body (JSON merge patch over the registration) edits
    its request, options or metadata first, validated as a new registration."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task_id = task_id_of(request)
    patch = await read_json(request, app.settings.max_size_body_request)
    if not isinstance(patch, dict):
        raise ValidationFailed({"_errors": ["Expected an object with httpRequest or config"]})
    now = app.clock.now_ms()
    spec, due = None, now
    if patch:
        stored = spec_to_wire(await app.store.get_spec(owner_id, task_id))
        for name in _FIRST_RUN_OPTIONS:
            stored["config"].pop(name, None)
        new = validate_task(app, merge_patch(stored, patch), now, owner_id)
        await check_outgoing(app, owner_id, new.spec)
        config = patch.get("config")
        timed = isinstance(config, dict) and any(name in config for name in _FIRST_RUN_OPTIONS)
        spec, due = new.spec, new.due_at_ms if timed else now
    task = await app.store.replay_task(owner_id, task_id, spec, due, now)
    if spec is not None:
        arm(app, owner_id, task.id, due, spec)
    else:
        await arm_replayed(app, owner_id, [(task.id, due)])
    return answer(request, _replayed(task))


async def arm_replayed(app: Services, owner_id: str, replayed: Sequence[tuple[str, int]]) -> None:
    """Tell the scheduler about replayed tasks with their priority and flow-control key
    (read from each task's spec), so a replay waits behind its key like a registration."""
    for task_id, due in replayed:
        try:
            config = (await app.store.get_spec(owner_id, task_id)).config
        except TaskNotFound:
            continue  # deleted meanwhile
        ref = None if config.flow_control is None else (owner_id, config.flow_control.key)
        app.scheduler.notify(task_id, due, config.priority, ref)


def _replayed(task: Task) -> dict[str, Any]:
    return {"id": task.id, "state": task.state.value, "estimateExecutionAt": task.due_at_ms}


async def replay_many(request: Request) -> Response:
    """Replay up to ``limit`` (default 100, at most 1000) matching dead letters, spaced
    ``rate`` per second (default 50), oldest failure last."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    query = _query(request, "cursor")
    where = await _filter(app, owner_id, query)
    limit = query.limit or 100
    tasks = await app.store.list_dead_letters(owner_id, where, limit)
    now = app.clock.now_ms()
    spacing_ms = 1000 // query.rate
    replayed = await app.store.replay_dead_letters(
        owner_id, [task.id for task in tasks], now, spacing_ms
    )
    await arm_replayed(app, owner_id, replayed)
    return answer(
        request,
        {
            "replayed": len(replayed),
            "tasks": [{"id": task_id, "estimateExecutionAt": due} for task_id, due in replayed],
            "more": len(tasks) == limit,
        },
    )


async def delete(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task_id = task_id_of(request)
    if not await app.store.delete_dead_letters(owner_id, [task_id]):
        raise TaskNotFound(task_id)
    return answer(request, DONE)


async def delete_many(request: Request) -> Response:
    """Delete up to ``limit`` (default and at most 1000) matching dead letters; at least
    one filter is required (``from=0`` matches every one)."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    query = _query(request, "cursor", "rate")
    if not query.has_filter:
        raise ValidationFailed(
            {"_errors": ["Give a filter (from, to, statusCode, schedule, label); from=0 is all"]}
        )
    where = await _filter(app, owner_id, query)
    limit = query.limit or 1000
    tasks = await app.store.list_dead_letters(owner_id, where, limit)
    deleted = await app.store.delete_dead_letters(owner_id, [task.id for task in tasks])
    return answer(request, {"deleted": deleted, "more": len(tasks) == limit})
