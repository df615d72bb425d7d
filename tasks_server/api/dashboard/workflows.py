"""Workflow pages: the owner's runs, and a run's graph of steps with their states."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ...errors import NotFound, PreconditionFailed
from ...workflows.model import RunState
from ..services import services
from ..workflow_schemas import RUN_ID
from . import charts
from .session import checked_form, flash, redirect, render, require_owner

PAGE_SIZE = 50


async def run_list(request: Request) -> Response:
    who, owner_id = await require_owner(request)
    raw = request.query_params.get("state", "")
    if raw and raw not in RunState.__members__:
        error = f"state must be one of {', '.join(RunState.__members__)}"
        return render(request, "workflows.html", who, 400, runs=[], error=error, state=raw)
    state = RunState(raw) if raw else None
    runs = await services(request).store.list_runs(owner_id, state, None, PAGE_SIZE)
    return render(request, "workflows.html", who, runs=runs, state=raw, states=list(RunState))


def _run_id(request: Request) -> str:
    raw = str(request.path_params["run_id"]).upper()
    if not RUN_ID.fullmatch(raw):
        raise NotFound()
    return raw


async def run_page(request: Request) -> Response:
    who, owner_id = await require_owner(request)
    run = await services(request).store.get_run(owner_id, _run_id(request))
    graph = charts.step_graph(
        [(s.id, s.state.value, s.depends_on, s.task_id) for s in run.steps],
        f"Steps of run {run.name}",
    )
    return render(request, "workflow.html", who, run=run, graph=graph)


async def run_action(request: Request) -> Response:
    """Cancel a run that is not final, or retry a failed or cancelled one."""
    _, owner_id = await require_owner(request)
    await checked_form(request)
    app = services(request)
    run_id = _run_id(request)
    action = str(request.path_params["action"])
    now = app.clock.now_ms()
    try:
        if action == "cancel":
            for task_id in await app.store.cancel_run(owner_id, run_id, now):
                app.scheduler.forget(task_id)
            flash(request, "The run is cancelled.")
        elif action == "retry":
            await app.store.retry_run(owner_id, run_id, now)
            flash(request, "The run's failed and cancelled steps run again.")
        else:
            raise NotFound()
    except PreconditionFailed as exc:
        flash(request, f"Not done: {exc.message}")
    return redirect(f"/ui/workflows/{run_id}")
