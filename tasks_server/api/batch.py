"""Batch endpoints: many registrations in one request and one transaction, and state
changes of many tasks (by ids or by a filter) in one request. Each item gets its own
answer; a bad item never blocks the others."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from ..errors import TaskNotFound, TasksServerError, ValidationFailed
from ..models import NewTask, Task, TaskState
from ..store import Store
from .convert import ConfigPlan, new_task, plan_config, to_new_task
from .errors import error_body, validation_failed
from .queues import arm, check_supported, rearm, record, validation_context
from .schemas import BatchItemIn, ConfigIn, TaskIn
from .services import Services, services
from .wire import answer, parse_json, read_body

_BATCH = TypeAdapter(list[BatchItemIn])
Item = NewTask | TasksServerError
MAX_FILTER_MATCHES = 100_000  # tasks one filtered batch action may touch
_PAGE = 1000


def parse_items(app: Services, body: bytes | None, now_ms: int, owner_id: str) -> list[Item]:
    """Validate every registration of the array; an item's failure is its answer.

    When every item is valid (the fast path), the array is validated in one pydantic pass
    with each configuration left as JSON, and each distinct configuration is validated
    and converted once (``_Plans``). Otherwise item by item, to name each bad item's
    fields.
    """
    if body is None:
        raise ValidationFailed({"_errors": ["Expected a JSON array of registrations"]})
    limit = app.settings.max_batch_items
    context = validation_context(app, owner_id)
    try:
        wires = _BATCH.validate_json(body, context=context)
        if not 1 <= len(wires) <= limit:
            raise ValidationFailed({"_errors": [f"Expected 1 to {limit} registrations"]})
        plans = _Plans(context, now_ms)
        planned = [(wire, plans.plan(wire)) for wire in wires]
    except ValidationError:
        items = _validate_each(parse_json(body), limit, context)
        return [_to_new(app, item, now_ms) for item in items]
    return [_planned_new(app, wire, plan, now_ms) for wire, plan in planned]


class _Plans:
    """Each distinct configuration of a batch validated and planned once (with this
    request's validation context and time). Raises pydantic's ValidationError for an
    invalid one: the batch is then validated item by item, naming each bad field."""

    def __init__(self, context: dict[str, Any], now_ms: int) -> None:
        self._context = context
        self._now_ms = now_ms
        self._plans: dict[tuple[bytes, str | None], ConfigPlan] = {}

    def plan(self, wire: BatchItemIn) -> ConfigPlan:
        # the JSON text tells 1, 1.0 and true apart, which equal Python values do not
        key = (to_json(wire.config, inf_nan_mode="constants"), wire.httpRequest.transport)
        plan = self._plans.get(key)
        if plan is None:
            config = ConfigIn.model_validate(wire.config, context=self._context)
            plan = self._plans[key] = plan_config(config, key[1], self._now_ms)
        return plan


def _planned_new(app: Services, wire: BatchItemIn, plan: ConfigPlan, now_ms: int) -> Item:
    new = new_task(wire, plan)
    if isinstance(new, TasksServerError):
        return new
    return _supported_new(app, new, now_ms)


def _validate_each(
    data: Any, limit: int, context: dict[str, Any]
) -> list[TaskIn | TasksServerError]:
    if not isinstance(data, list):
        raise ValidationFailed({"_errors": ["Expected a JSON array of registrations"]})
    if not 1 <= len(data) <= limit:
        raise ValidationFailed({"_errors": [f"Expected 1 to {limit} registrations"]})
    wires: list[TaskIn | TasksServerError] = []
    for item in data:
        try:
            wires.append(TaskIn.model_validate(item, context=context))
        except ValidationError as exc:
            wires.append(validation_failed(exc, item))
    return wires


def _to_new(app: Services, wire: TaskIn | TasksServerError, now_ms: int) -> Item:
    if isinstance(wire, TasksServerError):
        return wire
    try:
        new = to_new_task(wire, now_ms)
    except TasksServerError as exc:
        return exc
    return _supported_new(app, new, now_ms)


def _supported_new(app: Services, new: NewTask, now_ms: int) -> Item:
    """``new`` if this server can make its calls, with its deduplication window set."""
    try:
        check_supported(app, new)
    except TasksServerError as exc:
        return exc
    if new.spec.config.deduplication_id is None:
        return new
    return NewTask(new.spec, new.due_at_ms, now_ms + app.settings.dedup_window_s * 1000)


class _Refusals:
    """The egress policy's refusal (or None) of each item's destinations: they depend only
    on the URLs (the task's and its callbacks') and the configuration, which the items of
    a batch mostly share."""

    def __init__(self, app: Services, domains: tuple[str, ...] | None) -> None:
        self._app = app
        self._domains = domains
        # keyed by the configuration's identity: the items hold their configurations, so
        # no other configuration takes an id while this lives
        self._seen: dict[tuple[str, int, str | None, str | None], TasksServerError | None] = {}

    def allowed(self, item: Item) -> Item:
        """The item, or the egress policy's refusal of where its calls would go."""
        if not isinstance(item, NewTask):
            return item
        spec = item.spec
        on_success, on_failure = spec.on_success, spec.on_failure
        key = (
            spec.request.url,
            id(spec.config),
            None if on_success is None else on_success.url,
            None if on_failure is None else on_failure.url,
        )
        if key not in self._seen:
            try:
                self._app.destinations.refuse(spec, self._domains)
                self._seen[key] = None
            except TasksServerError as exc:
                self._seen[key] = exc
        return self._seen[key] or item


async def register_batch(request: Request) -> Response:
    """``POST /v1/queues/register/batch``: one transaction; per item 201 with the task,
    200 with an existing task (deduplicated), or the item's 4xx error."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    body = await read_body(request, app.settings.max_size_body_batch)
    now = app.clock.now_ms()
    domains = await app.destinations.domains(owner_id)
    refusals = _Refusals(app, domains)
    items = [refusals.allowed(item) for item in parse_items(app, body, now, owner_id)]
    news = [item for item in items if isinstance(item, NewTask)]
    stored = iter(await app.store.create_tasks(owner_id, news, now) if news else [])
    results = []
    for item in items:
        outcome = next(stored) if isinstance(item, NewTask) else item
        if isinstance(outcome, Task):
            if not outcome.deduplicated and isinstance(item, NewTask):
                arm(app, owner_id, outcome.id, item.due_at_ms, item.spec)
            results.append(_task_result(outcome))
        else:
            status, error = error_body(outcome)
            results.append({"status": status, **error})
    if request.scope.get("query_string"):
        return answer(request, results, 200)  # ?pretty is honoured
    # written by pydantic-core (Rust), several times faster than the json module for a
    # thousand records; the same JSON but for non-ASCII text, sent as UTF-8, not escaped
    return Response(to_json(results), 200, media_type="application/json")


def _task_result(task: Task) -> dict[str, Any]:
    if task.deduplicated:
        return {"status": 200, "deduplicated": True, "task": record(task)}
    return {"status": 201, "task": record(task)}


# -- state changes of many tasks ---------------------------------------------------------


class BatchFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    state: Literal["RUNNING", "PAUSED", "SUCCESS", "ERROR", "REVOKED"] | None = None


class BatchActionIn(BaseModel):
    """Either ``ids`` or ``filter`` (``{}`` matches every task of the owner)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ids: (
        Annotated[
            list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]{24}$")]],
            Field(min_length=1, max_length=10_000),
        ]
        | None
    ) = None
    filter: BatchFilter | None = None


Action = Callable[[Store, str, str, int], Awaitable[Task | None]]


async def _pause(store: Store, owner_id: str, task_id: str, now_ms: int) -> Task | None:
    return await store.pause_task(owner_id, task_id, now_ms)


async def _resume(store: Store, owner_id: str, task_id: str, now_ms: int) -> Task | None:
    return await store.resume_task(owner_id, task_id, now_ms)


async def _revoke(store: Store, owner_id: str, task_id: str, now_ms: int) -> Task | None:
    return await store.revoke_task(owner_id, task_id, now_ms)


async def _delete(store: Store, owner_id: str, task_id: str, now_ms: int) -> Task | None:
    await store.delete_task(owner_id, task_id)
    return None


ACTIONS: dict[str, Action] = {
    "pause": _pause,
    "resume": _resume,
    "revoke": _revoke,
    "delete": _delete,
}


async def batch_action(request: Request) -> Response:
    """``POST /v1/queues/batch/{action}``: apply one transition to many tasks.

    Answers how many changed and, for each task that did not, its id and error (a task
    in the wrong state is a 422, an unknown one a 404).
    """
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    action = str(request.path_params["action"])
    if action not in ACTIONS:
        raise TaskNotFound(action)
    data = parse_json(await read_body(request, app.settings.max_size_body_batch))
    try:
        query = BatchActionIn.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc
    if (query.ids is None) == (query.filter is None):
        raise ValidationFailed({"_errors": ["Give either ids or filter"]})
    ids = query.ids or await _matching(app.store, owner_id, query.filter or BatchFilter())
    now = app.clock.now_ms()
    outcomes = await asyncio.gather(
        *(_apply(app, ACTIONS[action], owner_id, task_id.upper(), now) for task_id in ids)
    )
    failed = [outcome for outcome in outcomes if outcome is not None]
    return answer(request, {"matched": len(ids), "done": len(ids) - len(failed), "failed": failed})


async def _apply(
    app: Services, action: Action, owner_id: str, task_id: str, now_ms: int
) -> dict[str, Any] | None:
    try:
        task = await action(app.store, owner_id, task_id, now_ms)
    except TasksServerError as exc:
        status, error = error_body(exc)
        return {"id": task_id, "status": status, **error}
    if task is not None and task.state is TaskState.RUNNING and task.due_at_ms is not None:
        await rearm(app, owner_id, task)
    else:
        app.scheduler.forget(task_id)
    return None


async def _matching(store: Store, owner_id: str, where: BatchFilter) -> list[str]:
    state = TaskState(where.state) if where.state else None
    ids: list[str] = []
    while len(ids) < MAX_FILTER_MATCHES:
        page = await store.list_tasks(owner_id, state, "createdAt", False, _PAGE, len(ids))
        ids += [task.id for task in page]
        if len(page) < _PAGE:
            break
    return ids[:MAX_FILTER_MATCHES]
