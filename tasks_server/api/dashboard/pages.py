"""The other pages: overview, schedules and the test-a-task form."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...alerting import AlertRule, Incident
from ...errors import NotFound, PreconditionFailed, TasksServerError, ValidationFailed
from ...models import NewTask, TaskState
from ...schedules import policy
from ..convert import spec_to_wire
from ..overview import OverviewFigures, overview_figures
from ..schedules import pause_schedule, resume_schedule
from ..services import services
from . import charts
from .present import mask_registration, pretty_json, when
from .session import checked_form, flash, redirect, render, require, require_owner
from .tasks import error_text, validate_registration

_SCHEDULE_ID = re.compile(r"^[A-Z0-9]{24}$")


def overview_charts(figures: OverviewFigures) -> dict[str, Any]:
    """The overview's figures and charts (pure: from the store's figures)."""
    view = figures.tasks
    hourly = view.hourly
    last_hour = hourly[-1] if hourly else (0, 0, 0)
    day_ok = sum(ok for _, ok, _ in hourly)
    day_bad = sum(bad for _, _, bad in hourly)
    columns = [(when(start)[11:16], ok, bad) for start, ok, bad in hourly]
    return {
        "counts": view.counts,
        "hour": {"done": last_hour[1] + last_hour[2], "failed": last_hour[2]},
        "day": {"done": day_ok + day_bad, "failed": day_bad},
        "state_chart": charts.bars(
            [(state.value, view.counts.get(state, 0)) for state in TaskState], "Tasks by state"
        ),
        "hourly_chart": charts.stacked_columns(
            columns, "Finished tasks per hour, last 24 hours (failed on top)"
        ),
        "hosts_chart": charts.bars(list(view.busiest_hosts), "Hosts with most pending tasks"),
        "hour_gauge": charts.gauge(_share(last_hour[2], last_hour[1] + last_hour[2]), "Failed"),
        "day_gauge": charts.gauge(_share(day_bad, day_ok + day_bad), "Failed"),
        "flow_chart": charts.bars(
            list(figures.flow_keys), "Flow-control keys with most tasks waiting"
        ),
        "incidents": figures.incidents,
        "incidents_chart": charts.bars(
            [
                (_incident_label(rule, incident), incident.failures)
                for rule, incident in figures.incidents
            ],
            "Open alert incidents: failures since each opened",
        ),
        "rules": figures.rules,
    }


def _incident_label(rule: AlertRule, incident: Incident) -> str:
    return f"{rule.name} {incident.subject}".strip()


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


async def overview(request: Request) -> Response:
    who = await require(request)
    app = services(request)
    if app.overview is not None:
        figures = await app.overview.get(who.owner_id)
    else:
        figures = await overview_figures(app.store, who.owner_id, app.clock.now_ms())
    engine = app.engine_figures() if app.engine_figures is not None else None
    return render(request, "overview.html", who, engine=engine, **overview_charts(figures))


# -- schedules ---------------------------------------------------------------------------


async def schedule_list(request: Request) -> Response:
    who, owner_id = await require_owner(request)
    found = await services(request).store.list_schedules(owner_id, 200, 0)
    return render(request, "schedules.html", who, schedules=found)


def _schedule_id(request: Request) -> str:
    raw = str(request.path_params["schedule_id"]).upper()
    if not _SCHEDULE_ID.match(raw):
        raise NotFound()
    return raw


async def schedule_page(request: Request) -> Response:
    who, owner_id = await require_owner(request)
    app = services(request)
    schedule = await app.store.get_schedule(owner_id, _schedule_id(request))
    spec = await app.store.get_schedule_spec(owner_id, schedule.id)
    recent = await app.store.list_schedule_tasks(owner_id, schedule.id, 20, 0)
    upcoming = policy.preview(schedule, app.clock.now_ms(), 5)
    return render(
        request,
        "schedule.html",
        who,
        schedule=schedule,
        upcoming=upcoming,
        recent=recent,
        template_json=pretty_json(mask_registration(spec_to_wire(spec))),
    )


async def schedule_action(request: Request) -> Response:
    _, owner_id = await require_owner(request)
    await checked_form(request)
    app = services(request)
    schedule_id = _schedule_id(request)
    action = str(request.path_params["action"])
    schedule = await app.store.get_schedule(owner_id, schedule_id)
    try:
        if action == "pause":
            await pause_schedule(app, owner_id, schedule.id)
            flash(request, "The schedule is paused.")
        elif action == "resume":
            await resume_schedule(app, owner_id, schedule.id)
            flash(request, "The schedule is active again.")
        elif action == "run":
            spec = await app.store.get_schedule_spec(owner_id, schedule.id)
            now = app.clock.now_ms()
            task = await app.store.create_task(owner_id, NewTask(spec, now), now)
            app.scheduler.notify(task.id, now)
            flash(request, f"Started task {task.id} from the schedule's template.")
        else:
            raise NotFound()
    except PreconditionFailed as exc:
        flash(request, f"Not done: {exc.message}")
    return redirect(f"/ui/schedules/{schedule.id}")


# -- test a task ---------------------------------------------------------------------------

_FORM_DEFAULTS = {
    "method": "POST",
    "url": "",
    "headers": "Content-Type: application/json",
    "body": "",
    "delay": "0",
    "retry": "0",
    "retryInterval": "1000",
}


def registration_from_form(form: dict[str, str]) -> dict[str, Any]:
    """The registration body the form describes, as the CLI or curl would send it.
    Raises ValidationFailed for a header line without a colon or a non-number."""
    headers: dict[str, str] = {}
    for line in form.get("headers", "").splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValidationFailed(message=f"Header line {line.strip()!r} has no name: value")
        headers[name.strip()] = value.strip()
    request: dict[str, Any] = {"url": form.get("url", "").strip(), "method": form["method"]}
    if headers:
        request["headers"] = headers
    if form.get("body"):
        request["data"] = form["body"]
    config: dict[str, Any] = {}
    for field, key in (("delay", "executionDelay"), ("retry", "retry")):
        config[key] = _number(form.get(field, "0"), field)
    if config["retry"]:
        config["retryInterval"] = _number(form.get("retryInterval", "1000"), "retryInterval")
    return {"httpRequest": request, "config": config}


def _number(raw: str, name: str) -> int:
    try:
        return int(raw.strip() or "0")
    except ValueError as exc:
        raise ValidationFailed(message=f"{name} must be a whole number") from exc


async def test_form(request: Request) -> Response:
    who, _ = await require_owner(request)
    return render(request, "test.html", who, form=_FORM_DEFAULTS)


async def test_submit(request: Request) -> Response:
    """Show the JSON the form builds, checked as the API checks it; with ``register``,
    register it too."""
    who, owner_id = await require_owner(request)
    posted = await checked_form(request)
    form = {**_FORM_DEFAULTS, **{k: str(v) for k, v in posted.items() if k != "csrf"}}
    if form["method"] not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
        form["method"] = "POST"
    app = services(request)
    body: dict[str, Any] | None = None
    try:
        body = registration_from_form(form)
        now = app.clock.now_ms()
        new = validate_registration(app, body, now, owner_id)
    except TasksServerError as exc:
        text = json.dumps(body, indent=2) if body else ""
        return render(request, "test.html", who, 400, form=form, json=text, error=error_text(exc))
    text = json.dumps(body, indent=2)
    if "register" not in posted:
        return render(request, "test.html", who, form=form, json=text, valid=True)
    task = await app.store.create_task(owner_id, new, now)
    app.scheduler.notify(task.id, new.due_at_ms)
    flash(request, f"Registered task {task.id}.")
    return redirect(f"/ui/tasks/{task.id}")
