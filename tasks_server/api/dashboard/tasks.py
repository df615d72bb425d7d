"""Task pages: the filtered list, one task with its attempts, its actions and its edit
form, and the failures page. Every read and change goes through the same store methods
(and scheduler notifications) as the API."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from ...errors import NotFound, PreconditionFailed, TasksServerError, ValidationFailed
from ...models import NewTask, TaskState
from ...store.listing import TaskQuery
from ..convert import spec_to_wire
from ..queues import merge_patch, validate_task
from ..services import Services, services
from .present import MASK, mask_registration, pretty_json, preview
from .session import checked_form, flash, redirect, render, require_owner

PAGE_SIZE = 50
_TASK_ID = re.compile(r"^[A-Z0-9]{24}$")
_CURSOR = re.compile(r"^(\d{1,15})\.([A-Z0-9]{24})$")
_SCHEDULE_ID = re.compile(r"^[A-Z0-9]{24}$")


class BadFilter(ValueError):
    """A filter of the list that cannot be understood; shown on the page as a 400."""


def parse_time(raw: str, name: str) -> int | None:
    """A ``datetime-local`` or ISO date (UTC unless it says otherwise) as epoch ms."""
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadFilter(f"{name} is not a date and time") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def parse_query(params: dict[str, str]) -> TaskQuery:
    """The list's query string as a TaskQuery. Raises BadFilter."""
    state = params.get("state", "")
    if state and state not in TaskState.__members__:
        raise BadFilter(f"state must be one of {', '.join(TaskState.__members__)}")
    label = None
    if params.get("label"):
        key, sep, value = params["label"].partition("=")
        if not sep or not key:
            raise BadFilter("label must look like key=value")
        label = (key.strip(), value.strip())
    after = None
    if params.get("after"):
        match = _CURSOR.match(params["after"])
        if match is None:
            raise BadFilter("the page cursor is not valid")
        after = (int(match.group(1)), match.group(2))
    schedule = params.get("schedule", "").strip().upper() or None
    if schedule is not None and not _SCHEDULE_ID.match(schedule):
        raise BadFilter("schedule must be a schedule id")
    sort = params.get("sort", "newest")
    if sort not in ("newest", "oldest"):
        raise BadFilter("sort must be newest or oldest")
    return TaskQuery(
        state=TaskState(state) if state else None,
        host=params.get("host", "").strip().lower() or None,
        schedule_id=schedule,
        created_from_ms=parse_time(params.get("from", ""), "from"),
        created_to_ms=parse_time(params.get("to", ""), "to"),
        url_contains=params.get("q", "").strip()[:200] or None,
        label=label,
        newest_first=sort == "newest",
        after=after,
        limit=PAGE_SIZE,
    )


def _next_link(params: dict[str, str], after: tuple[int, str] | None) -> str | None:
    if after is None:
        return None
    kept = {k: v for k, v in params.items() if v and k != "after"}
    return "?" + urlencode({**kept, "after": f"{after[0]}.{after[1]}"})


async def task_list(request: Request) -> Response:
    return await _listing(request, "tasks.html", {})


async def _listing(request: Request, template: str, fixed: dict[str, str]) -> Response:
    who, owner_id = await require_owner(request)
    params = {**dict(request.query_params), **fixed}
    try:
        query = parse_query(params)
    except BadFilter as exc:
        return render(request, template, who, 400, error=str(exc), params=params, rows=[])
    page = await services(request).store.search_tasks(owner_id, query)
    return render(
        request,
        template,
        who,
        params=params,
        rows=page.rows,
        next_link=_next_link(params, page.next_after),
        scan_exhausted=page.scan_exhausted,
        states=list(TaskState),
    )


def _task_id(request: Request) -> str:
    raw = str(request.path_params["task_id"]).upper()
    if not _TASK_ID.match(raw):
        raise NotFound()
    return raw


async def task_page(request: Request) -> Response:
    who, owner_id = await require_owner(request)
    app = services(request)
    task_id = _task_id(request)
    task = await app.store.get_task(owner_id, task_id)
    spec = await app.store.get_spec(owner_id, task_id)
    history = await app.store.list_attempts(owner_id, task_id)
    wire = mask_registration(spec_to_wire(spec))
    attempts = []
    for attempt in reversed(history):
        text, cut = preview(attempt.response)
        attempts.append({"a": attempt, "body": text, "cut": cut})
    body, body_cut = preview(task.response)
    return render(
        request,
        "task.html",
        who,
        task=task,
        request_json=pretty_json(wire["httpRequest"]),
        config_json=pretty_json(wire["config"]),
        metadata=task.metadata or (),
        attempts=attempts,
        body=body,
        body_cut=body_cut,
        truncated=task.response_truncated,
    )


# -- actions -----------------------------------------------------------------------------


async def _run_now(app: Services, owner_id: str, task_id: str) -> str:
    task = await app.store.execute_task(owner_id, task_id, app.clock.now_ms())
    if task.due_at_ms is not None:
        app.scheduler.notify(task.id, task.due_at_ms)
    return "The task runs now."


async def _pause(app: Services, owner_id: str, task_id: str) -> str:
    task = await app.store.pause_task(owner_id, task_id, app.clock.now_ms())
    app.scheduler.forget(task.id)
    return "The task is paused."


async def _resume(app: Services, owner_id: str, task_id: str) -> str:
    task = await app.store.resume_task(owner_id, task_id, app.clock.now_ms())
    if task.due_at_ms is not None:
        app.scheduler.notify(task.id, task.due_at_ms)
    return "The task is running again."


async def _revoke(app: Services, owner_id: str, task_id: str) -> str:
    task = await app.store.revoke_task(owner_id, task_id, app.clock.now_ms())
    app.scheduler.forget(task.id)
    return "The task is revoked."


async def _replay(app: Services, owner_id: str, task_id: str) -> str:
    """A failed task runs again: a new attempt cycle of the same task, due now, with its
    stored registration (as ``POST /v1/dlq/:id/replay`` without a body)."""
    now = app.clock.now_ms()
    task = await app.store.replay_task(owner_id, task_id, None, now, now)
    app.scheduler.notify(task.id, now)
    return "The task runs again."


_ACTIONS = {
    "run": _run_now,
    "pause": _pause,
    "resume": _resume,
    "revoke": _revoke,
    "replay": _replay,
}


async def task_action(request: Request) -> Response:
    _, owner_id = await require_owner(request)
    await checked_form(request)
    app = services(request)
    task_id = _task_id(request)
    action = str(request.path_params["action"])
    if action == "delete":
        await app.store.delete_task(owner_id, task_id)
        app.scheduler.forget(task_id)
        flash(request, f"Task {task_id} is deleted.")
        return redirect("/ui/tasks")
    run = _ACTIONS.get(action)
    if run is None:
        raise NotFound()
    await app.store.get_task(owner_id, task_id)  # another owner's task is a 404 page
    try:
        flash(request, await run(app, owner_id, task_id))
    except PreconditionFailed as exc:
        flash(request, f"Not done: {exc.message}")
    return redirect(f"/ui/tasks/{task_id}")


# -- editing a task that has not started -------------------------------------------------


def validate_registration(app: Services, data: Any, now_ms: int, owner_id: str) -> NewTask:
    """A registration body checked exactly as ``POST /v1/queues/register`` checks it."""
    return validate_task(app, data, now_ms, owner_id)


def error_text(exc: TasksServerError) -> str:
    if isinstance(exc, ValidationFailed) and exc.tree is not None:
        return json.dumps(exc.tree, indent=2)
    return exc.message


async def edit_page(request: Request) -> Response:
    who, owner_id = await require_owner(request)
    app = services(request)
    task_id = _task_id(request)
    task = await app.store.get_task(owner_id, task_id)
    spec = await app.store.get_spec(owner_id, task_id)
    text = pretty_json(mask_registration(spec_to_wire(spec)))
    return render(request, "edit.html", who, task=task, text=text)


async def edit(request: Request) -> Response:
    """Merge the posted JSON into the stored registration (masked values left as they
    were) and save it, as ``PATCH /v1/queues/:id`` does."""
    who, owner_id = await require_owner(request)
    form = await checked_form(request)
    app = services(request)
    task_id = _task_id(request)
    task = await app.store.get_task(owner_id, task_id)
    text = str(form.get("registration", ""))
    try:
        patch = json.loads(text)
        if not isinstance(patch, dict):
            raise ValidationFailed(message="The registration must be a JSON object")
        spec = await app.store.get_spec(owner_id, task_id)
        stored = spec_to_wire(spec)
        data = merge_patch(stored, _unmasked(patch, stored))
        now = app.clock.now_ms()
        new = validate_registration(app, data, now, owner_id)
        saved = await app.store.edit_task(owner_id, task_id, new, now)
    except json.JSONDecodeError as exc:
        return render(request, "edit.html", who, 400, task=task, text=text, error=str(exc))
    except (ValidationFailed, PreconditionFailed) as exc:
        error = error_text(exc)
        return render(request, "edit.html", who, 400, task=task, text=text, error=error)
    if saved.state is TaskState.RUNNING:
        app.scheduler.notify(saved.id, new.due_at_ms)
    flash(request, "The task is saved.")
    return redirect(f"/ui/tasks/{task_id}")


def _unmasked(patch: Any, stored: Any) -> Any:
    """The edited body with every value still showing the mask put back as stored."""
    if isinstance(patch, dict):
        return {
            key: _unmasked(value, stored.get(key) if isinstance(stored, dict) else None)
            for key, value in patch.items()
        }
    if isinstance(patch, str) and MASK in patch:
        return stored
    return patch
