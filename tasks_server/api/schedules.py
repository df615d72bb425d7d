"""Schedule endpoints: create, read, list, edit, pause, resume and delete recurring
schedules, preview their next slots and list the tasks they created. Every call is scoped
to the caller: another owner's schedule answers exactly like a missing one (404)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..errors import Conflict, NotFound, PreconditionFailed, Unsupported, ValidationFailed
from ..models import (
    MisfirePolicy,
    NewSchedule,
    OverlapPolicy,
    Schedule,
    ScheduleState,
    ScheduleTiming,
    TaskSpec,
)
from ..schedules import policy
from .convert import callbacks_to_wire, config_to_wire, field_error, request_to_wire, to_new_task
from .errors import validation_failed
from .outgoing import check_outgoing
from .queues import merge_patch, summary, validation_context
from .schedule_schemas import (
    SCHEDULE_ID,
    SCHEDULE_NAME,
    TEMPLATE_REFUSED,
    NextQuery,
    PageQuery,
    ScheduleIn,
)
from .schemas import TaskIn
from .services import Services, services
from .wire import DONE, answer, query_of, read_json

_SAVE_ATTEMPTS = 5  # an edit races only with the runner firing the same schedule

# (schedule as read, now) → (schedule to write, new template or None to keep it)
Transform = Callable[[Schedule, int], Awaitable[tuple[Schedule, TaskSpec | None]]]


# -- wire ↔ domain ------------------------------------------------------------------------


def record(schedule: Schedule) -> dict[str, Any]:
    timing = schedule.timing
    return {
        "id": schedule.id,
        "name": schedule.name,
        "schedule": timing.expression,
        "timezone": timing.timezone,
        "state": schedule.state.value,
        "createdAt": schedule.created_at_ms,
        "updatedAt": schedule.updated_at_ms,
        "startAt": timing.start_at_ms,
        "endAt": timing.end_at_ms,
        "maxRuns": timing.max_runs,
        "misfirePolicy": timing.misfire.value,
        "overlapPolicy": timing.overlap.value,
        "catchUpLimit": timing.catch_up_limit,
        "runs": schedule.runs,
        "lastRunAt": schedule.last_run_at_ms,
        "lastTaskId": schedule.last_task_id,
        "nextRunAt": schedule.next_at_ms,
    }


def template_to_wire(task: TaskSpec) -> dict[str, Any]:
    """The template as the body's ``httpRequest``, ``config`` and ``metadata``."""
    config = config_to_wire(task.config)
    for name in TEMPLATE_REFUSED:
        config.pop(name, None)
    wire: dict[str, Any] = {"httpRequest": request_to_wire(task.request), "config": config}
    if task.metadata:
        wire["metadata"] = dict(task.metadata)
    wire.update(callbacks_to_wire(task))
    return wire


def full_record(schedule: Schedule, task: TaskSpec) -> dict[str, Any]:
    return {**record(schedule), **template_to_wire(task)}


def _definition(schedule: Schedule, task: TaskSpec) -> dict[str, Any]:
    """The stored schedule as a creation body: what an edit is merged into."""
    wire = full_record(schedule, task)
    keys = set(ScheduleIn.model_fields)
    return {k: v for k, v in wire.items() if k in keys and v is not None}


def _refuse_template_timing(body: ScheduleIn) -> None:
    for name in TEMPLATE_REFUSED:
        if name in body.config.model_fields_set:
            raise field_error(
                ("config", name), "Not allowed in a schedule: each run is due at its slot"
            )


def to_new_schedule(app: Services, body: ScheduleIn, now_ms: int) -> NewSchedule:
    """Apply the cross-field rules (raising ValidationFailed) and build the domain value."""
    _refuse_template_timing(body)
    if body.startAt is not None and body.endAt is not None and body.endAt <= body.startAt:
        raise field_error(("endAt",), "End date must be greater than start date")
    task_in = TaskIn.model_construct(
        httpRequest=body.httpRequest,
        config=body.config,
        metadata=body.metadata,
        onSuccess=body.onSuccess,
        onFailure=body.onFailure,
    )
    spec = to_new_task(task_in, now_ms).spec
    missing = app.unsupported(spec.request, spec.config)
    if missing:
        raise Unsupported(f"Not supported by this server's libcurl: {', '.join(missing)}")
    # each run's task is due at its slot; the template carries no delay of its own
    task = dataclasses.replace(spec, config=dataclasses.replace(spec.config, execution_delay_ms=0))
    timing = ScheduleTiming(
        expression=body.schedule,
        timezone=body.timezone,
        start_at_ms=body.startAt,
        end_at_ms=body.endAt,
        max_runs=body.maxRuns,
        misfire=MisfirePolicy(body.misfirePolicy),
        overlap=OverlapPolicy(body.overlapPolicy),
        catch_up_limit=body.catchUpLimit,
    )
    return NewSchedule(body.name, timing, task)


def _validate(app: Services, data: Any, now_ms: int, owner_id: str) -> NewSchedule:
    context = validation_context(app, owner_id)
    try:
        body = ScheduleIn.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc
    return to_new_schedule(app, body, now_ms)


def _query(model: type[BaseModel], request: Request) -> Any:
    raw = query_of(request)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_failed(exc, raw) from exc


def _key(request: Request) -> str:
    """The schedule's id or name from the path; anything else cannot exist."""
    key = str(request.path_params["key"])
    if not (SCHEDULE_ID.fullmatch(key) or SCHEDULE_NAME.fullmatch(key)):
        raise NotFound()
    return key


def _wake(app: Services, schedule: Schedule) -> None:
    if app.schedules is not None:
        app.schedules.notify(schedule.next_at_ms)


# -- endpoints ----------------------------------------------------------------------------


async def create(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    data = await read_json(request, app.settings.max_size_body_request)
    now = app.clock.now_ms()
    new = _validate(app, data, now, owner_id)
    await check_outgoing(app, owner_id, new.task)
    first = policy.start(new.timing, now)
    schedule = await app.store.create_schedule(
        owner_id, new, now, first.state, first.cursor_ms, first.next_at_ms
    )
    _wake(app, schedule)
    return answer(request, full_record(schedule, new.task), 201)


async def list_schedules(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    page: PageQuery = _query(PageQuery, request)
    schedules = await app.store.list_schedules(owner_id, page.limit, page.offset)
    return answer(request, [record(schedule) for schedule in schedules])


async def get(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    schedule = await app.store.get_schedule(owner_id, _key(request))
    task = await app.store.get_schedule_spec(owner_id, schedule.id)
    return answer(request, full_record(schedule, task))


async def edit(request: Request) -> Response:
    """Change a schedule: the body is merged into the stored definition (JSON merge
    patch), validated whole, and the progress recomputed (schedules.policy.revised)."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    key = _key(request)
    patch = await read_json(request, app.settings.max_size_body_request)
    if not isinstance(patch, dict) or not patch:
        raise ValidationFailed({"_errors": ["Expected a non-empty object of schedule fields"]})

    async def revise(schedule: Schedule, now_ms: int) -> tuple[Schedule, TaskSpec | None]:
        template = await app.store.get_schedule_spec(owner_id, schedule.id)
        new = _validate(app, merge_patch(_definition(schedule, template), patch), now_ms, owner_id)
        await check_outgoing(app, owner_id, new.task)
        state = policy.revised(schedule, new.timing, now_ms)
        changed = _with_progress(schedule, state, name=new.name, timing=new.timing)
        return changed, new.task

    saved, task = await _save(app, owner_id, key, revise)
    assert task is not None
    return answer(request, full_record(saved, task))


async def _paused(schedule: Schedule, now_ms: int) -> tuple[Schedule, TaskSpec | None]:
    if schedule.state is not ScheduleState.ACTIVE:
        raise PreconditionFailed("Only an ACTIVE schedule can be paused")
    state = policy.Progress(ScheduleState.PAUSED, schedule.cursor_ms, None)
    return _with_progress(schedule, state), None


async def _resumed(schedule: Schedule, now_ms: int) -> tuple[Schedule, TaskSpec | None]:
    if schedule.state is not ScheduleState.PAUSED:
        raise PreconditionFailed("Only a PAUSED schedule can be resumed")
    return _with_progress(schedule, policy.resumed(schedule, now_ms)), None


async def pause_schedule(app: Services, owner_id: str, key: str) -> Schedule:
    """ACTIVE → PAUSED (also for the dashboard). Raises NotFound, PreconditionFailed."""
    return (await _save(app, owner_id, key, _paused))[0]


async def resume_schedule(app: Services, owner_id: str, key: str) -> Schedule:
    """PAUSED → ACTIVE; slots passed meanwhile are not made up."""
    return (await _save(app, owner_id, key, _resumed))[0]


async def pause(request: Request) -> Response:
    return await _transition(request, _paused)


async def resume(request: Request) -> Response:
    return await _transition(request, _resumed)


async def delete(request: Request) -> Response:
    """Delete a schedule. The tasks it created are ordinary tasks and stay."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    schedule = await app.store.get_schedule(owner_id, _key(request))
    await app.store.delete_schedule(owner_id, schedule.id)
    return answer(request, DONE)


async def next_runs(request: Request) -> Response:
    """The next slots, as epoch ms and as local time in the schedule's zone."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    query: NextQuery = _query(NextQuery, request)
    schedule = await app.store.get_schedule(owner_id, _key(request))
    zone = ZoneInfo(schedule.timing.timezone)
    slots = policy.preview(schedule, app.clock.now_ms(), query.n)
    return answer(
        request,
        [{"at": at, "local": datetime.fromtimestamp(at / 1000, zone).isoformat()} for at in slots],
    )


async def tasks(request: Request) -> Response:
    """The tasks the schedule created (ordinary tasks, also under /v1/queues), newest first."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    page: PageQuery = _query(PageQuery, request)
    schedule = await app.store.get_schedule(owner_id, _key(request))
    found = await app.store.list_schedule_tasks(owner_id, schedule.id, page.limit, page.offset)
    return answer(request, [summary(task) for task in found])


# -- read, change, write --------------------------------------------------------------------


def _with_progress(schedule: Schedule, state: policy.Progress, **changes: Any) -> Schedule:
    return dataclasses.replace(
        schedule,
        state=state.state,
        cursor_ms=state.cursor_ms,
        next_at_ms=state.next_at_ms,
        **changes,
    )


async def _transition(request: Request, transform: Transform) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    saved, _ = await _save(app, owner_id, _key(request), transform)
    return answer(request, record(saved))


async def _save(
    app: Services, owner_id: str, key: str, transform: Transform
) -> tuple[Schedule, TaskSpec | None]:
    """Read, transform and write back, again if the runner fired the schedule between the
    read and the write (the store refuses a write made from an older version)."""
    for _ in range(_SAVE_ATTEMPTS):
        schedule = await app.store.get_schedule(owner_id, key)
        now = app.clock.now_ms()
        changed, task = await transform(schedule, now)
        saved = await app.store.save_schedule(changed, task, schedule.version, now)
        if saved is not None:
            _wake(app, saved)
            return saved, task
    raise Conflict("The schedule kept changing during the update; try again")
