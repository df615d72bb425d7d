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
    FlowSetting,
    MisfirePolicy,
    NewSchedule,
    OverlapPolicy,
    Schedule,
    ScheduleState,
    ScheduleTarget,
    ScheduleTiming,
    TaskSpec,
)
from ..schedules import policy
from ..workflows.model import NewWorkflowSchedule, WorkflowDefinition
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
    WorkflowScheduleIn,
)
from .scheduled_runs import definition_to_wire, workflow_definition
from .schemas import TaskIn
from .services import Services, services
from .wire import DONE, answer, query_of, read_json
from .workflows import run_view

_SAVE_ATTEMPTS = 5  # an edit races only with the runner firing the same schedule

# (schedule as read, now) → (schedule to write, new template or workflow, None to keep it)
Transform = Callable[
    [Schedule, int], Awaitable[tuple[Schedule, TaskSpec | WorkflowDefinition | None]]
]


# -- wire ↔ domain ------------------------------------------------------------------------


def record(schedule: Schedule) -> dict[str, Any]:
    timing = schedule.timing
    view = {
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
    if schedule.target is ScheduleTarget.WORKFLOW:  # its last "task" is its last run
        view.update(target=schedule.target.value, lastTaskId=None, lastRunId=schedule.last_task_id)
    return view


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


Target = TaskSpec | WorkflowDefinition  # what each slot starts


def full_record(schedule: Schedule, target: Target) -> dict[str, Any]:
    if isinstance(target, WorkflowDefinition):
        return {**record(schedule), "workflow": definition_to_wire(target)}
    return {**record(schedule), **template_to_wire(target)}


async def read_target(app: Services, schedule: Schedule) -> Target:
    """The task template, or the workflow, a schedule starts at each slot."""
    if schedule.target is ScheduleTarget.WORKFLOW:
        return await app.store.get_schedule_workflow(schedule.owner_id, schedule.id)
    return await app.store.get_schedule_spec(schedule.owner_id, schedule.id)


def _definition(schedule: Schedule, target: Target) -> dict[str, Any]:
    """The stored schedule as a creation body: what an edit is merged into."""
    wire = full_record(schedule, target)
    model = WorkflowScheduleIn if isinstance(target, WorkflowDefinition) else ScheduleIn
    keys = set(model.model_fields)
    return {k: v for k, v in wire.items() if k in keys and v is not None}


def _refuse_template_timing(body: ScheduleIn) -> None:
    for name in TEMPLATE_REFUSED:
        if name in body.config.model_fields_set:
            raise field_error(
                ("config", name), "Not allowed in a schedule: each run is due at its slot"
            )


def _timing(body: ScheduleIn | WorkflowScheduleIn) -> ScheduleTiming:
    if body.startAt is not None and body.endAt is not None and body.endAt <= body.startAt:
        raise field_error(("endAt",), "End date must be greater than start date")
    return ScheduleTiming(
        expression=body.schedule,
        timezone=body.timezone,
        start_at_ms=body.startAt,
        end_at_ms=body.endAt,
        max_runs=body.maxRuns,
        misfire=MisfirePolicy(body.misfirePolicy),
        overlap=OverlapPolicy(body.overlapPolicy),
        catch_up_limit=body.catchUpLimit,
    )


def to_new_schedule(app: Services, body: ScheduleIn, now_ms: int) -> NewSchedule:
    """Apply the cross-field rules (raising ValidationFailed) and build the domain value."""
    _refuse_template_timing(body)
    timing = _timing(body)
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
    return NewSchedule(body.name, timing, task)


def to_new_workflow_schedule(
    app: Services, body: WorkflowScheduleIn, now_ms: int, allowed: tuple[str, ...] | None
) -> NewWorkflowSchedule:
    """A schedule whose slots start runs of ``body.workflow``, checked as POST
    /v1/workflows checks a run; ``allowed``: the owner's validated domains."""
    timing = _timing(body)
    return NewWorkflowSchedule(
        body.name, timing, workflow_definition(app, body.workflow, now_ms, allowed)
    )


async def _checked(
    app: Services, data: Any, now_ms: int, owner_id: str
) -> NewSchedule | NewWorkflowSchedule:
    """A schedule body validated whole, its destinations included: a task template, or
    with ``workflow`` a workflow (WorkflowScheduleIn, where the template's fields are
    unknown keys)."""
    context = validation_context(app, owner_id)
    model = WorkflowScheduleIn if isinstance(data, dict) and "workflow" in data else ScheduleIn
    try:
        body = model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc
    if isinstance(body, ScheduleIn):
        new = to_new_schedule(app, body, now_ms)
        await check_outgoing(app, owner_id, new.task)
        return new
    security = await app.store.owner_security(owner_id)
    return to_new_workflow_schedule(app, body, now_ms, security.allowed_hosts)


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


async def _name_flow_key(app: Services, owner_id: str, task: TaskSpec) -> None:
    """A template naming a flow-control key sets the key's limits, as a registration does
    (the last one wins); its tasks then wait behind the key (a paused key stays paused)."""
    flow = task.config.flow_control
    if flow is None:
        return
    current = await app.store.get_flow_control(owner_id, flow.key)
    paused = current is not None and current.paused
    await app.store.save_flow_control(owner_id, FlowSetting(flow, paused), app.clock.now_ms())
    app.scheduler.configure_flow(owner_id, flow)


def _wake(app: Services, schedule: Schedule) -> None:
    if app.schedules is not None:
        app.schedules.notify(schedule.next_at_ms)


# -- endpoints ----------------------------------------------------------------------------


async def create(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    data = await read_json(request, app.settings.max_size_body_request)
    now = app.clock.now_ms()
    new = await _checked(app, data, now, owner_id)
    first = policy.start(new.timing, now)
    progress = (first.state, first.cursor_ms, first.next_at_ms)
    if isinstance(new, NewWorkflowSchedule):
        schedule = await app.store.create_workflow_schedule(owner_id, new, now, *progress)
        target: Target = new.workflow
    else:
        schedule = await app.store.create_schedule(owner_id, new, now, *progress)
        await _name_flow_key(app, owner_id, new.task)
        target = new.task
    _wake(app, schedule)
    return answer(request, full_record(schedule, target), 201)


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
    return answer(request, full_record(schedule, await read_target(app, schedule)))


async def edit(request: Request) -> Response:
    """Change a schedule: the body is merged into the stored definition (JSON merge
    patch), validated whole, and the progress recomputed (schedules.policy.revised)."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    key = _key(request)
    patch = await read_json(request, app.settings.max_size_body_request)
    if not isinstance(patch, dict) or not patch:
        raise ValidationFailed({"_errors": ["Expected a non-empty object of schedule fields"]})

    async def revise(schedule: Schedule, now_ms: int) -> tuple[Schedule, Target | None]:
        stored = await read_target(app, schedule)
        merged = merge_patch(_definition(schedule, stored), patch)
        new = await _checked(app, merged, now_ms, owner_id)
        if isinstance(new, NewWorkflowSchedule) != isinstance(stored, WorkflowDefinition):
            raise field_error(
                ("workflow",),
                "A schedule cannot change between a task and a workflow; create a new one",
            )
        state = policy.revised(schedule, new.timing, now_ms)
        changed = _with_progress(schedule, state, name=new.name, timing=new.timing)
        return changed, (new.workflow if isinstance(new, NewWorkflowSchedule) else new.task)

    saved, target = await _save(app, owner_id, key, revise)
    assert target is not None
    if not isinstance(target, WorkflowDefinition):
        await _name_flow_key(app, owner_id, target)
    return answer(request, full_record(saved, target))


async def _paused(schedule: Schedule, now_ms: int) -> tuple[Schedule, Target | None]:
    if schedule.state is not ScheduleState.ACTIVE:
        raise PreconditionFailed("Only an ACTIVE schedule can be paused")
    state = policy.Progress(ScheduleState.PAUSED, schedule.cursor_ms, None)
    return _with_progress(schedule, state), None


async def _resumed(schedule: Schedule, now_ms: int) -> tuple[Schedule, Target | None]:
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


async def runs(request: Request) -> Response:
    """The workflow runs the schedule started (also under /v1/workflows), newest first."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    page: PageQuery = _query(PageQuery, request)
    schedule = await app.store.get_schedule(owner_id, _key(request))
    found = await app.store.list_schedule_runs(owner_id, schedule.id, page.limit, page.offset)
    return answer(request, [run_view(run, False) for run in found])


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
) -> tuple[Schedule, Target | None]:
    """Read, transform and write back, again if the runner fired the schedule between the
    read and the write (the store refuses a write made from an older version)."""
    for _ in range(_SAVE_ATTEMPTS):
        schedule = await app.store.get_schedule(owner_id, key)
        now = app.clock.now_ms()
        changed, target = await transform(schedule, now)
        if isinstance(target, WorkflowDefinition):
            saved = await app.store.save_schedule(
                changed, None, schedule.version, now, workflow=target
            )
        else:
            saved = await app.store.save_schedule(changed, target, schedule.version, now)
        if saved is not None:
            _wake(app, saved)
            return saved, target
    raise Conflict("The schedule kept changing during the update; try again")
