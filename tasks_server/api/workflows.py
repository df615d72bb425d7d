"""Workflow endpoints: start a run, read and list runs, retry, cancel, delete, and wait
for a run's result (docs/workflows.md). Every call is scoped to the caller's runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..dispatch.egress import EgressPolicy
from ..errors import ValidationFailed, WorkflowNotFound
from ..models import NewTask
from ..workflows.graph import DefinitionError, check
from ..workflows.model import (
    NewRun,
    RunState,
    StepTemplate,
    WorkflowRun,
    WorkflowStep,
)
from ..workflows.steps import callback_request, envelope
from ..workflows.template import TemplateError, references, render
from . import results
from .convert import field_error
from .errors import validation_failed
from .outgoing import refuse_outgoing, url_refusal
from .services import Services, services
from .step_tasks import step_validator
from .wire import DONE, answer, query_of, read_json
from .workflow_schemas import RUN_ID, ConditionIn, RunListQuery, StepIn, WorkflowIn

# -- the body → a new run ---------------------------------------------------------------------


def _field_error(path: tuple[str | int, ...], message: str) -> ValidationFailed:
    return field_error(tuple(str(part) for part in path), message)


def _condition(step: int, value: ConditionIn) -> dict[str, Any]:
    operators = ["in" if name == "in_" else name for name in value.operators()]
    if len(operators) != 1:
        raise _field_error(
            ("steps", step, "when"), "A condition needs a value and exactly one operator"
        )
    data = value.model_dump(by_alias=True)
    return {"value": value.value, operators[0]: data[operators[0]]}


def _template(position: int, step: StepIn) -> StepTemplate:
    request: dict[str, Any] = {"httpRequest": step.httpRequest}
    config = dict(step.config or {})
    if "executeAt" not in config and "executionDelay" not in config:
        config["executionDelay"] = 0  # a step starts as soon as its dependencies allow
    request["config"] = config
    if step.metadata is not None:
        request["metadata"] = step.metadata
    when: Any = None
    if isinstance(step.when, list):
        when = [_condition(position, item) for item in step.when]
    elif step.when is not None:
        when = _condition(position, step.when)
    return StepTemplate(
        id=step.id,
        depends_on=tuple(step.dependsOn),
        request=request,
        when=when,
        output=step.output,
        run_if_skipped=step.runIfSkipped,
    )


def to_new_run(
    app: Services, body: WorkflowIn, now_ms: int, allowed: tuple[str, ...] | None
) -> NewRun:
    """The run the body describes, checked as far as it can be before any step runs:
    the graph, every step that uses only the input (as a registration, destinations
    included), the literal destinations of the others, and the callbacks. ``allowed``:
    the owner's validated domains (None: no list)."""
    steps = tuple(_template(position, step) for position, step in enumerate(body.steps))
    try:
        check(steps, body.input)
    except DefinitionError as exc:
        raise _field_error(exc.path, exc.message) from exc
    validate = step_validator(app.settings, app.unsupported)
    built = {}
    for position, step in enumerate(steps):
        new = _check_early(
            app.destinations.policy, allowed, validate, position, step, body.input, now_ms
        )
        if new is not None and _is_reusable(new, now_ms):
            built[step.id] = new
    config = body.config
    if config.executeAt is not None and config.executionDelay is not None:
        raise field_error(("config", "executeAt"), "Give executeAt or executionDelay, not both")
    due = (
        config.executeAt if config.executeAt is not None else now_ms + (config.executionDelay or 0)
    )
    metadata = tuple(config.metadata.items()) if config.metadata else None
    for field, callback in (("onSuccess", body.onSuccess), ("onFailure", body.onFailure)):
        if callback is not None:
            _check_callback(app.destinations.policy, allowed, validate, field, callback, now_ms)
    return NewRun(
        body.name,
        body.input,
        steps,
        due,
        config.timeoutMs,
        metadata,
        body.onSuccess,
        body.onFailure,
        built,
        allowed,
    )


def _is_reusable(new: NewTask, now_ms: int) -> bool:
    """Whether a step's task built now is the one it would be built as later: due as
    soon as its dependencies allow, and with no dates of its own, which are checked
    against the time of the build."""
    config = new.spec.config
    return new.due_at_ms == now_ms and config.retry_at_ms is None and config.timeout_at_ms is None


Validate = Callable[[dict[str, Any], int], NewTask]


def _check_callback(
    egress: EgressPolicy,
    allowed: tuple[str, ...] | None,
    validate: Validate,
    field: str,
    callback: dict[str, Any],
    now_ms: int,
) -> None:
    """A callback is a registration whose body the server supplies: validated as one now,
    its destination included."""
    for supplied in ("data",):
        if supplied in callback:
            raise _field_error((field, supplied), "The server supplies a callback's body")
    sample = envelope({"id": "", "state": "SUCCESS"}, [])
    try:
        new = validate(callback_request(callback, sample), now_ms)
    except ValueError as exc:
        raise _field_error((field,), str(exc)) from exc
    reason = url_refusal(egress, new.spec.request.url, allowed)
    if reason is not None:
        raise _field_error((field, "url"), reason)


def _check_early(
    egress: EgressPolicy,
    allowed: tuple[str, ...] | None,
    validate: Validate,
    position: int,
    step: StepTemplate,
    run_input: Any,
    now_ms: int,
) -> NewTask | None:
    """A step that refers to nothing but the input can be rendered and checked now, as a
    registration (its task is returned); of the others, the destinations written out
    literally are checked now and the rest when the step is created."""
    if any(ref.root != "input" for ref in references(step.request)):
        _check_literal_urls(egress, allowed, position, step)
        return None
    try:
        new = validate(render(step.request, {"input": run_input}), now_ms)
    except (TemplateError, ValueError) as exc:
        raise _field_error(("steps", position), str(exc)) from exc
    refuse_outgoing(egress, new.spec, allowed, ("steps", str(position)))
    return new


def _check_literal_urls(
    egress: EgressPolicy, allowed: tuple[str, ...] | None, position: int, step: StepTemplate
) -> None:
    """The URL and DoH server of a step whose request refers to other steps, when they
    are written out (no placeholder): refused now rather than when the step starts."""
    http = step.request.get("httpRequest") or {}
    config = step.request.get("config") or {}
    for path, url in (
        (("httpRequest", "url"), http.get("url")),
        (("config", "dohUrl"), config.get("dohUrl")),
    ):
        if isinstance(url, str) and not any(references(url)):
            reason = url_refusal(egress, url, allowed if path[1] == "url" else None)
            if reason is not None:
                raise _field_error(("steps", position, *path), reason)


# -- views ----------------------------------------------------------------------------------


def step_view(step: WorkflowStep) -> dict[str, Any]:
    return {
        "id": step.id,
        "state": step.state.value,
        "dependsOn": list(step.depends_on),
        "taskId": step.task_id,
        "attempts": step.attempts,
        "statusCode": step.status_code,
        "output": step.output,
        "error": step.error,
        "startedAt": step.started_at_ms,
        "finishedAt": step.finished_at_ms,
    }


def run_view(run: WorkflowRun, with_steps: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": run.id,
        "name": run.name,
        "state": run.state.value,
        "createdAt": run.created_at_ms,
        "dueAt": run.due_at_ms,
        "finishedAt": run.finished_at_ms,
        "deadlineAt": run.deadline_ms,
        "error": run.error,
        "metadata": None if run.metadata is None else dict(run.metadata),
        "scheduleId": run.schedule_id,
    }
    if with_steps:
        view["steps"] = [step_view(step) for step in run.steps]
    return view


def _run_id(request: Request) -> str:
    raw = str(request.path_params["run_id"]).upper()
    if not RUN_ID.fullmatch(raw):
        raise field_error(("runId",), "Invalid workflow run id")
    return raw


# -- handlers -------------------------------------------------------------------------------


async def create(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    data = await read_json(request, app.settings.max_size_body_request)
    try:
        body = WorkflowIn.model_validate(data, context={"tz": app.settings.tz})
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc
    now = app.clock.now_ms()
    security = await app.store.owner_security(owner_id)
    new = to_new_run(app, body, now, security.allowed_hosts)
    run = await app.store.create_run(owner_id, new, now)
    return answer(request, run_view(run), 201)


async def list_runs(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    raw = query_of(request)
    try:
        query = RunListQuery.model_validate(raw)
    except ValidationError as exc:
        raise validation_failed(exc, raw) from exc
    before = None
    if query.cursor is not None:
        at, _, last_id = query.cursor.partition(".")
        before = (int(at), last_id)
    state = RunState(query.state) if query.state else None
    runs = await app.store.list_runs(owner_id, state, query.name, query.limit, before)
    cursor = f"{runs[-1].created_at_ms}.{runs[-1].id}" if len(runs) == query.limit else None
    return answer(request, {"runs": [run_view(run, False) for run in runs], "cursor": cursor})


async def get(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    return answer(request, run_view(await app.store.get_run(owner_id, _run_id(request))))


async def retry(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    run = await app.store.retry_run(owner_id, _run_id(request), app.clock.now_ms())
    return answer(request, run_view(run))


async def cancel(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    run_id = _run_id(request)
    for task_id in await app.store.cancel_run(owner_id, run_id, app.clock.now_ms()):
        app.scheduler.forget(task_id)
    return answer(request, run_view(await app.store.get_run(owner_id, run_id)))


async def delete(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    await app.store.delete_run(owner_id, _run_id(request))
    return answer(request, DONE)


async def result(request: Request) -> Response:
    """The run once it is final (200), or as it is when the wait ends (202)."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    run_id = _run_id(request)
    wait_s = results.wait_seconds(request) or 0.0
    run = await _wait_until_final(app, owner_id, run_id, wait_s)
    return answer(request, run_view(run), 200 if run.state.is_final else 202)


async def _wait_until_final(
    app: Services, owner_id: str, run_id: str, wait_s: float
) -> WorkflowRun:
    runs = app.runs
    if runs is None:
        raise WorkflowNotFound(run_id)
    return await results.wait_for_final(
        app.clock,
        lambda: runs.wait(run_id),
        lambda woken: runs.release(run_id, woken),
        lambda: app.store.get_run(owner_id, run_id),
        lambda run: run.state.is_final,
        wait_s,
    )
