"""Queue (task) endpoints: register, read, list, edit and move tasks between states
(docs/compatibility.md#tasks). Every call is scoped to the caller: another owner's task
is a missing task."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..dispatch.options import owner_cert_dir
from ..errors import PreconditionFailed, TaskNotFound, Unsupported, ValidationFailed
from ..models import NewTask, Task, TaskSpec, TaskState
from ..timing import first_due_ms
from . import results
from .convert import field_error, spec_to_wire, to_new_task
from .errors import validation_failed
from .outgoing import check_outgoing
from .redact import redact
from .schemas import ListQuery, TaskIn
from .services import Services, services
from .wire import DONE, answer, parse_json, query_of, read_body, read_json

Transition = Callable[[str, str, int], Awaitable[Task]]
_TASK_ID = re.compile(r"^[A-Z0-9]{24}$")


def summary(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "state": task.state.value,
        "createdAt": task.created_at_ms,
        "statusCode": task.status_code,
        "estimateEndAt": task.estimate_end_at_ms,
        "estimateExecutionAt": task.estimate_execution_at_ms,
    }


def record(task: Task) -> dict[str, Any]:
    """The 8-field record; ``response`` is the base64 of the body, as in the original."""
    out = summary(task)
    out["response"] = None if task.response is None else base64.b64encode(task.response).decode()
    out["metadata"] = None if task.metadata is None else dict(task.metadata)
    if task.response_truncated:
        out["truncated"] = True  # the response was cut at MAX_SIZE_DATA_RESPONSE
    return out


def task_id_of(request: Request) -> str:
    raw = str(request.path_params["task_id"]).upper()
    if not _TASK_ID.match(raw):
        raise field_error(("queueId",), "Invalid queue id")
    return raw


def validation_context(app: Services, owner_id: str) -> dict[str, Any]:
    """What the wire models read: the time zone, and the owner's certificate directory
    (``CERT_DIR/<owner id>/``: no owner may name another's files)."""
    return {"tz": app.settings.tz, "cert_dir": owner_cert_dir(app.settings.cert_dir, owner_id)}


def validate_task(app: Services, data: Any, now_ms: int, owner_id: str) -> NewTask:
    """A registration body (as a value) → the new task, with every rule applied."""
    context = validation_context(app, owner_id)
    try:
        body = TaskIn.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_failed(exc, data) from exc
    return check_supported(app, to_new_task(body, now_ms))


def check_supported(app: Services, new: NewTask) -> NewTask:
    """Refuse options this server's libcurl cannot do, rather than ignore them."""
    missing = app.unsupported(new.spec.request, new.spec.config)
    if missing:
        raise Unsupported(f"Not supported by this server's libcurl: {', '.join(missing)}")
    return new


def _validate_body(app: Services, body: bytes | None, now_ms: int, owner_id: str) -> NewTask:
    """Like validate_task, but pydantic parses the JSON text itself: one pass in Rust on the
    registration hot path. The text is parsed again in Python only to name bad fields."""
    if body is None:
        return validate_task(app, {}, now_ms, owner_id)
    context = validation_context(app, owner_id)
    try:
        wire = TaskIn.model_validate_json(body, context=context)
    except ValidationError as exc:
        # parse_json names the syntax error, or gives the value to name bad fields by
        raise validation_failed(exc, parse_json(body)) from exc
    return check_supported(app, to_new_task(wire, now_ms))


def with_dedup(app: Services, new: NewTask, header: str | None, now_ms: int) -> NewTask:
    """Take the ``Idempotency-Key`` header as the deduplication id and set the window."""
    config = new.spec.config
    if header is not None:
        if not 1 <= len(header) <= 128:
            raise field_error(("Idempotency-Key",), "Must be 1 to 128 characters")
        if config.deduplication_id not in (None, header):
            raise field_error(
                ("config", "deduplicationId"), "Differs from the Idempotency-Key header"
            )
        config = dataclasses.replace(config, deduplication_id=header)
    if config.deduplication_id is None:
        return new
    spec = dataclasses.replace(new.spec, config=config)
    until = now_ms + app.settings.dedup_window_s * 1000
    return dataclasses.replace(new, spec=spec, dedup_until_ms=until)


def arm(app: Services, owner_id: str, task_id: str, due_at_ms: int, spec: TaskSpec) -> None:
    """Tell the scheduler a task is claimable, with its priority and flow-control key; a
    key named by the task takes the limits it gives (the last registration wins)."""
    config = spec.config
    flow = config.flow_control
    if flow is not None:
        app.scheduler.configure_flow(owner_id, flow)
    ref = None if flow is None else (owner_id, flow.key)
    app.scheduler.notify(task_id, due_at_ms, config.priority, ref)


async def rearm(app: Services, owner_id: str, task: Task) -> None:
    """``arm`` a task again after a transition (its spec is read for its key)."""
    if task.due_at_ms is None:
        return
    try:
        spec = await app.store.get_spec(owner_id, task.id)
    except TaskNotFound:
        return  # deleted meanwhile
    config = spec.config
    ref = None if config.flow_control is None else (owner_id, config.flow_control.key)
    app.scheduler.notify(task.id, task.due_at_ms, config.priority, ref)


def created(request: Request, task: Task) -> Response:
    """201 with a new task; 200 and ``X-Tasks-Deduplicated: true`` with an existing one."""
    if task.deduplicated:
        response = answer(request, record(task), 200)
        response.headers["X-Tasks-Deduplicated"] = "true"
        return response
    return answer(request, record(task), 201)


async def register(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    body = await read_body(request, app.settings.max_size_body_request)
    now = app.clock.now_ms()
    new = _validate_body(app, body, now, owner_id)
    await check_outgoing(app, owner_id, new.spec)
    new = with_dedup(app, new, request.headers.get("idempotency-key"), now)
    wait_s = results.wait_seconds(request)
    task = await app.store.create_task(owner_id, new, now)
    if task.deduplicated:
        return created(request, task)
    arm(app, owner_id, task.id, new.due_at_ms, new.spec)
    if wait_s is not None:
        task = await results.wait_until_final(app, owner_id, task.id, wait_s)
        return results.answer_result(request, task, 201)
    return created(request, task)


async def list_tasks(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    raw = query_of(request)
    try:
        query = ListQuery.model_validate(raw)
    except ValidationError as exc:
        raise validation_failed(exc, raw) from exc
    tasks = await app.store.list_tasks(
        owner_id,
        TaskState(query.state) if query.state else None,
        query.order,
        query.sort == "desc",
        query.limit,
        query.offset,
    )
    return answer(request, [summary(task) for task in tasks])


async def get(request: Request) -> Response:
    """The 8-field record plus the retry progress: ``retryCount`` (retries made),
    ``retriesLeft`` and ``nextAttemptAt`` (the planned time of the next attempt, or of the
    one in flight, while RUNNING; else null)."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task_id = task_id_of(request)
    task = await app.store.get_task(owner_id, task_id)
    spec = await app.store.get_spec(owner_id, task_id)
    view = record(task)
    view["retryCount"] = task.retry_count
    view["retriesLeft"] = max(spec.config.retry_limit - task.retry_count, 0)
    view["nextAttemptAt"] = task.due_at_ms if task.state is TaskState.RUNNING else None
    return answer(request, view)


async def get_config(request: Request) -> Response:
    """The request and options as stored, in the registration body's shape; secrets
    read ``"***"`` unless the owner asks for them with ``?reveal=true``."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    spec = await app.store.get_spec(owner_id, task_id_of(request))
    wire = spec_to_wire(spec)
    reveal = request.query_params.get("reveal", "").lower() in ("true", "1")
    return answer(request, wire if reveal else redact(wire))


async def attempts(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    history = await app.store.list_attempts(owner_id, task_id_of(request))
    return answer(
        request,
        [
            {
                "attempt": a.number,
                "cycle": a.cycle,
                "startedAt": a.started_at_ms,
                "finishedAt": a.finished_at_ms,
                "statusCode": a.status_code,
                "error": a.error,
                "durationMs": round(a.total_ms, 3),
                "headers": [list(pair) for pair in a.headers],
                "response": None if a.response is None else base64.b64encode(a.response).decode(),
                "truncated": a.truncated,
            }
            for a in history
        ],
    )


def merge_patch(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386): objects merge key by key, null removes a key."""
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


async def edit(request: Request) -> Response:
    """Change a task that has not started: the body is merged into the stored
    registration (JSON merge patch) and re-validated whole. A patch that leaves the timing
    (``executeAt``, ``executionDelay``) alone keeps the due time; one that changes it
    recomputes it from the task's registration time."""
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task_id = task_id_of(request)
    patch = await read_json(request, app.settings.max_size_body_request)
    if not isinstance(patch, dict) or not patch:
        raise ValidationFailed(
            {"_errors": ["Expected a non-empty object with httpRequest, config or metadata"]}
        )
    spec = await app.store.get_spec(owner_id, task_id)
    current = await app.store.get_task(owner_id, task_id)
    data = merge_patch(spec_to_wire(spec), patch)
    now = app.clock.now_ms()
    new = validate_task(app, data, now, owner_id)
    await check_outgoing(app, owner_id, new.spec)
    new = dataclasses.replace(new, due_at_ms=_edited_due_ms(current, new, patch, now))
    task = await app.store.edit_task(owner_id, task_id, new, now)
    if task.state is TaskState.RUNNING:
        arm(app, owner_id, task.id, new.due_at_ms, new.spec)
    return answer(request, record(task))


_TIMING_KEYS = ("executeAt", "executionDelay")


def _edited_due_ms(current: Task, new: NewTask, patch: dict[str, Any], now_ms: int) -> int:
    """The due time after an edit (see ``edit``)."""
    config_patch = patch.get("config")
    touches_timing = isinstance(config_patch, dict) and any(
        key in config_patch for key in _TIMING_KEYS
    )
    if touches_timing or current.due_at_ms is None:
        return first_due_ms(new.spec.config, current.created_at_ms)
    if current.state is TaskState.PAUSED:
        # the edit restarts the pause at now: shift the due time so that the time left
        # at resume stays what it was
        return current.due_at_ms + now_ms - current.estimate_end_at_ms
    return current.due_at_ms


async def execute(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task = await _action(app.store.execute_task, app, owner_id, task_id_of(request))
    await rearm(app, owner_id, task)
    return answer(request, DONE)


async def pause(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task = await _action(app.store.pause_task, app, owner_id, task_id_of(request))
    app.scheduler.forget(task.id)
    return answer(request, DONE)


async def resume(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task = await _action(app.store.resume_task, app, owner_id, task_id_of(request))
    await rearm(app, owner_id, task)
    return answer(request, record(task))


async def revoke(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task = await _action(app.store.revoke_task, app, owner_id, task_id_of(request))
    app.scheduler.forget(task.id)
    return answer(request, DONE)


async def delete(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task_id = task_id_of(request)
    try:
        await app.store.delete_task(owner_id, task_id)
    except TaskNotFound as exc:
        raise PreconditionFailed("This owner has no task with that id") from exc
    app.scheduler.forget(task_id)
    return answer(request, DONE)


async def _action(transition: Transition, app: Services, owner_id: str, task_id: str) -> Task:
    """Run a state transition; a missing (or foreign) task is a 422, as in the original."""
    try:
        return await transition(owner_id, task_id, app.clock.now_ms())
    except TaskNotFound as exc:
        raise PreconditionFailed("This owner has no task with that id") from exc
