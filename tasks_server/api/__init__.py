"""The HTTP layer: the routes and the Starlette app with its error handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from ..errors import TasksServerError
from . import (
    admin,
    alerts,
    batch,
    dead_letters,
    flow_control,
    health,
    hosts,
    openapi,
    owners,
    queues,
    results,
    schedules,
    security,
    workflows,
)
from .errors import handle_domain_error, handle_http_error, handle_unexpected
from .services import Services


def routes() -> list[BaseRoute]:
    task = "/v1/queues/{task_id}"
    schedule = "/v1/schedules/{key}"  # a schedule's id or name
    run = "/v1/workflows/{run_id}"
    return [
        Route("/status", health.status, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", admin.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.spec_json, methods=["GET"]),
        Route("/docs", openapi.docs_page, methods=["GET"]),
        Route("/docs/{asset}", openapi.docs_asset, methods=["GET"]),
        Route("/v1/admin/owners", admin.list_owners, methods=["GET"]),
        Route("/v1/admin/owners", admin.create_owner, methods=["POST"]),
        Route("/v1/admin/owners/{owner_id}", admin.change_owner, methods=["PATCH"]),
        Route("/v1/admin/owners/{owner_id}", admin.delete_owner, methods=["DELETE"]),
        Route("/v1/admin/owners/{owner_id}/key", admin.rotate_owner_key, methods=["POST"]),
        Route("/v1/hosts", hosts.list_hosts, methods=["GET"]),
        Route("/v1/hosts/{host}", hosts.get_host, methods=["GET"]),
        Route("/v1/hosts/{host}", hosts.patch_host, methods=["PATCH"]),
        Route("/v1/hosts/{host}", hosts.delete_host, methods=["DELETE"]),
        Route("/v1/owners/register", owners.register, methods=["POST"]),
        Route("/v1/owners/{name}", owners.get, methods=["GET"]),
        Route("/v1/owners/{name}", owners.delete, methods=["DELETE"]),
        Route("/v1/owners/{name}/signing", security.get_signing, methods=["GET"]),
        Route("/v1/owners/{name}/signing", security.set_signing, methods=["PATCH"]),
        Route("/v1/owners/{name}/signing/rotate", security.rotate_signing, methods=["POST"]),
        Route("/v1/admin/owners/{owner_id}/domains", security.get_domains, methods=["GET"]),
        Route("/v1/admin/owners/{owner_id}/domains", security.set_domains, methods=["PUT"]),
        Route("/v1/queues", queues.list_tasks, methods=["GET"]),
        Route("/v1/queues/register", queues.register, methods=["POST"]),
        Route("/v1/queues/register/batch", batch.register_batch, methods=["POST"]),
        Route("/v1/flow-control", flow_control.list_keys, methods=["GET"]),
        Route("/v1/flow-control/{key}", flow_control.get_key, methods=["GET"]),
        Route("/v1/flow-control/{key}", flow_control.patch_key, methods=["PATCH"]),
        Route("/v1/queues/batch/{action}", batch.batch_action, methods=["POST"]),
        Route(task, queues.get, methods=["GET"]),
        Route(task, queues.edit, methods=["PATCH"]),
        Route(task, queues.delete, methods=["DELETE"]),
        Route(f"{task}/config", queues.get_config, methods=["GET"]),
        Route(f"{task}/attempts", queues.attempts, methods=["GET"]),
        Route(f"{task}/result", results.result, methods=["GET"]),
        Route(f"{task}/execute", queues.execute, methods=["POST"]),
        Route(f"{task}/pause", queues.pause, methods=["PATCH"]),
        Route(f"{task}/resume", queues.resume, methods=["PATCH"]),
        Route(f"{task}/revoke", queues.revoke, methods=["PATCH"]),
        Route("/v1/alerts", alerts.list_rules, methods=["GET"]),
        Route("/v1/alerts", alerts.create, methods=["POST"]),
        Route("/v1/alerts/{rule_id}", alerts.get, methods=["GET"]),
        Route("/v1/alerts/{rule_id}", alerts.update, methods=["PATCH"]),
        Route("/v1/alerts/{rule_id}", alerts.delete, methods=["DELETE"]),
        Route("/v1/alerts/{rule_id}/test", alerts.test, methods=["POST"]),
        Route("/v1/alerts/{rule_id}/deliveries", alerts.deliveries, methods=["GET"]),
        Route("/v1/dlq", dead_letters.list_dead_letters, methods=["GET"]),
        Route("/v1/dlq", dead_letters.delete_many, methods=["DELETE"]),
        Route("/v1/dlq/replay", dead_letters.replay_many, methods=["POST"]),
        Route("/v1/dlq/{task_id}", dead_letters.delete, methods=["DELETE"]),
        Route("/v1/dlq/{task_id}/replay", dead_letters.replay, methods=["POST"]),
        Route("/v1/schedules", schedules.list_schedules, methods=["GET"]),
        Route("/v1/schedules", schedules.create, methods=["POST"]),
        Route(schedule, schedules.get, methods=["GET"]),
        Route(schedule, schedules.edit, methods=["PATCH"]),
        Route(schedule, schedules.delete, methods=["DELETE"]),
        Route(f"{schedule}/pause", schedules.pause, methods=["PATCH"]),
        Route(f"{schedule}/resume", schedules.resume, methods=["PATCH"]),
        Route(f"{schedule}/next", schedules.next_runs, methods=["GET"]),
        Route(f"{schedule}/tasks", schedules.tasks, methods=["GET"]),
        Route(f"{schedule}/runs", schedules.runs, methods=["GET"]),
        Route("/v1/workflows", workflows.create, methods=["POST"]),
        Route("/v1/workflows", workflows.list_runs, methods=["GET"]),
        Route(run, workflows.get, methods=["GET"]),
        Route(run, workflows.delete, methods=["DELETE"]),
        Route(f"{run}/retry", workflows.retry, methods=["POST"]),
        Route(f"{run}/cancel", workflows.cancel, methods=["POST"]),
        Route(f"{run}/result", workflows.result, methods=["GET"]),
    ]


def create_app(svc: Services, lifespan: Any = None) -> Starlette:
    handlers: dict[Any, Callable[..., Any]] = {
        TasksServerError: handle_domain_error,
        HTTPException: handle_http_error,
        Exception: handle_unexpected,
    }
    all_routes = routes()
    if svc.settings.dashboard:
        from .dashboard import dashboard

        all_routes += [Route("/", _to_dashboard), Mount("/ui", app=dashboard(svc))]
    app = Starlette(routes=all_routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.services = svc
    return app


async def _to_dashboard(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=307)
