"""The OpenAPI 3.1 description of the API, served at ``/openapi.json``, and the docs page
at ``/docs`` that renders it from assets shipped inside the package (no CDN).

Request schemas are generated from the pydantic models that validate requests; paths and
response shapes are written beside them (``paths``, ``schedules``), so a new route
without an entry fails the OpenAPI test."""

from __future__ import annotations

import functools
import json
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from ... import __version__
from ...errors import NotFound
from ..wire import answer
from . import admin, delivery, failures, hosts, schedules, security, workflows
from .parts import DOCS_ASSETS, PRETTY, RESPONSE_SCHEMAS, SECURITY_SCHEMES, JsonObject
from .paths import operation_paths, owner_paths, request_schemas, task_paths


@functools.cache
def spec() -> JsonObject:
    """The whole OpenAPI 3.1 document (computed once per process; it never changes)."""
    requests = request_schemas()
    list_query = requests.pop("ListQuery")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tasks-server",
            "version": __version__,
            "description": "Schedule, retry and record outgoing HTTP calls. Wire-compatible "
            "with the Tasks Server API (owners and queues).",
        },
        "tags": [
            {"name": "owners", "description": "API accounts"},
            {"name": "tasks", "description": "Scheduled HTTP calls (the original's queues)"},
            {"name": "operations", "description": "Health, metrics, docs, administration"},
            schedules.OPENAPI_TAG,
            *failures.OPENAPI_TAGS,
            workflows.OPENAPI_TAG,
        ],
        "paths": _with_pretty(
            {
                **owner_paths(list_query),
                **task_paths(),
                **operation_paths(),
                **admin.admin_paths(),
                **hosts.openapi_paths(),
                **schedules.openapi_paths(),
                **failures.openapi_paths(),
                **workflows.openapi_paths(),
                **delivery.openapi_paths(),
                **security.openapi_paths(),
            }
        ),
        "components": {
            # the task models' own entries (with their date notes) win over the copies
            "schemas": {
                **schedules.openapi_schemas(),
                **workflows.openapi_schemas(),
                **delivery.openapi_schemas(),
                **admin.admin_schemas(),
                **hosts.openapi_schemas(),
                **requests,
                **RESPONSE_SCHEMAS,
                **failures.SCHEMAS,
                **failures.alert_schemas(),
            },
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def _with_pretty(paths: JsonObject) -> JsonObject:
    """Every operation that answers JSON takes ``pretty`` (wire.answer indents the answer)."""
    for item in paths.values():
        for method, entry in item.items():
            if method == "parameters":
                continue
            answers_json = any(
                "application/json" in response.get("content", {})
                for status, response in entry["responses"].items()
                if status.startswith("2")
            )
            parameters = entry.get("parameters", [])
            if answers_json and PRETTY not in parameters:
                entry["parameters"] = [PRETTY, *parameters]
    return paths


@functools.cache
def _spec_bytes() -> bytes:
    return json.dumps(spec(), separators=(",", ":")).encode()


@functools.cache
def _asset(name: str) -> bytes:
    return resources.files("tasks_server.api").joinpath("docs", name).read_bytes()


async def spec_json(request: Request) -> Response:
    if "pretty" in request.query_params:
        return answer(request, spec())
    return Response(_spec_bytes(), media_type="application/json")


async def docs_page(request: Request) -> Response:
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8")


async def docs_asset(request: Request) -> Response:
    """Only the files the page needs: the name is checked against a fixed list."""
    name = request.path_params["asset"]
    if name not in DOCS_ASSETS:
        raise NotFound()
    return Response(_asset(name), media_type=f"{DOCS_ASSETS[name]}; charset=utf-8")
