"""The OpenAPI 3.1 description of the API, served at ``/openapi.json``, and the docs page
at ``/docs`` that renders it from assets shipped inside the package (no CDN).

Request schemas are generated from the pydantic models that validate requests
(``schemas.TaskIn``, ``OwnerIn``, ``ListQuery``); paths and response shapes are written
here, next to each other, so a new route without an entry fails ``tests/api/test_openapi``.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from .. import __version__
from ..errors import NotFound
from . import schedule_schemas
from .schemas import ListQuery, OwnerIn, TaskIn

REF = "#/components/schemas/{model}"
OWNER_NAME_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
TASK_ID_PATTERN = r"^[A-Za-z0-9]{24}$"
DATE_FIELDS = ("executeAt", "retryAt", "timeoutAt")
DOCS_ASSETS = {"docs.js": "text/javascript", "docs.css": "text/css"}

JsonObject = dict[str, Any]


def schema_ref(name: str) -> JsonObject:
    return {"$ref": REF.format(model=name)}


def _object(required: tuple[str, ...], **properties: JsonObject) -> JsonObject:
    return {"type": "object", "required": list(required), "properties": properties}


_INT = {"type": "integer"}
_MS = {"type": "integer", "description": "epoch milliseconds (UTC)"}
_STR = {"type": "string"}

# -- response shapes (written by hand: the handlers build these dicts) ------------------

_STATES = ["RUNNING", "PAUSED", "SUCCESS", "ERROR", "REVOKED"]
_SUMMARY_FIELDS: dict[str, JsonObject] = {
    "id": {"type": "string", "pattern": "^[A-Z0-9]{24}$"},
    "state": {"type": "string", "enum": _STATES},
    "createdAt": _MS,
    "statusCode": {"type": "integer", "description": "last HTTP status; 0 before any"},
    "estimateEndAt": _MS,
    "estimateExecutionAt": _MS,
}
RESPONSE_SCHEMAS: dict[str, JsonObject] = {
    "Error": {
        "type": "object",
        "required": ["action", "message"],
        "properties": {
            "action": _STR,
            "message": {
                "description": "a sentence, or for 400 a tree mirroring the input with an "
                "`_errors` list at every level",
                "anyOf": [_STR, {"type": "object"}],
            },
            "requestId": {"type": "string", "description": "only on 500"},
        },
    },
    "Done": _object(("status",), status={"type": "string", "const": "Done"}),
    "OwnerCreated": _object(
        ("id", "key"),
        id={"type": "string", "description": "ULID; send as X-Tasks-Owner-Id"},
        key={"type": "string", "description": "64 characters, shown once: send as Bearer"},
    ),
    "Owner": _object(
        ("id", "name", "createdAt", "tasksInQueue", "tasksInQueueLimit"),
        id=_STR,
        name=_STR,
        createdAt=_MS,
        tasksInQueue={"type": "integer", "description": "RUNNING and PAUSED tasks"},
        tasksInQueueLimit={"type": "integer", "description": "0 = unlimited"},
    ),
    "TaskSummary": _object(tuple(_SUMMARY_FIELDS), **_SUMMARY_FIELDS),
    "Task": _object(
        (*_SUMMARY_FIELDS, "response", "metadata"),
        **_SUMMARY_FIELDS,
        response={
            "type": ["string", "null"],
            "description": "base64 of the last response body",
        },
        metadata={
            "type": ["object", "null"],
            "additionalProperties": {"type": "string"},
        },
    ),
    "Attempt": _object(
        ("attempt", "startedAt", "finishedAt", "statusCode", "error", "durationMs"),
        attempt={"type": "integer", "minimum": 1},
        startedAt=_MS,
        finishedAt={"type": ["integer", "null"]},
        statusCode=_INT,
        error={"type": ["string", "null"], "description": "libcurl's error text"},
        durationMs={"type": "number"},
        headers={
            "type": "array",
            "items": {"type": "array", "items": _STR, "minItems": 2, "maxItems": 2},
        },
        response={"type": ["string", "null"], "description": "base64 of the body"},
    ),
    "Health": _object(("status",), status={"type": "string", "enum": ["ok"]}),
    "Readiness": _object(
        ("status", "checks"),
        status={"type": "string", "enum": ["ok", "unavailable"]},
        checks={
            "type": "object",
            "properties": {"database": {"type": "boolean"}, "scheduler": {"type": "boolean"}},
        },
    ),
}

# -- operations -------------------------------------------------------------------------

OWNER_AUTH: list[JsonObject] = [{"ownerKey": [], "ownerId": []}]
SECURITY_SCHEMES: JsonObject = {
    "ownerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "The owner's 64-character key from POST /v1/owners/register",
    },
    "ownerId": {"type": "apiKey", "in": "header", "name": "X-Tasks-Owner-Id"},
    "adminKey": {"type": "http", "scheme": "bearer", "description": "The ADMIN_KEY setting"},
    "metricsKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "The METRICS_KEY setting; without it /metrics is open",
    },
}


def json_body(schema: JsonObject, description: str) -> JsonObject:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, JsonObject]:
    meaning = {
        400: "invalid input: the message is an error tree that mirrors the input",
        401: "the key does not belong to this owner",
        403: "missing or malformed credentials, or unknown owner",
        404: "not found (another owner's task looks the same)",
        409: "conflict",
        413: "body larger than MAX_SIZE_BODY_REQUEST",
        422: "precondition failed (wrong state, limit reached, unknown task)",
        429: "throttled",
    }
    return {str(s): json_body(schema_ref("Error"), meaning[s]) for s in statuses}


def operation(
    summary: str,
    tag: str,
    ok: tuple[int, JsonObject],
    errors: tuple[int, ...] = (),
    *,
    security: list[JsonObject] | None = None,
    body: JsonObject | None = None,
    parameters: list[JsonObject] | None = None,
    description: str | None = None,
    also: dict[int, JsonObject] | None = None,
) -> JsonObject:
    entry: JsonObject = {"summary": summary, "tags": [tag], "security": security or []}
    if description:
        entry["description"] = description
    if parameters:
        entry["parameters"] = parameters
    if body is not None:
        entry["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    entry["responses"] = {
        str(ok[0]): ok[1],
        **{str(status): answer for status, answer in (also or {}).items()},
        **_errors(*errors),
    }
    return entry


def path_param(name: str, schema: JsonObject, description: str) -> JsonObject:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


TASK_ID = path_param(
    "task_id", {"type": "string", "pattern": TASK_ID_PATTERN}, "task id (any case)"
)
OWNER_NAME = path_param(
    "name",
    {"type": "string", "minLength": 5, "maxLength": 32, "pattern": OWNER_NAME_PATTERN},
    "the caller's own owner name",
)
PRETTY = {
    "name": "pretty",
    "in": "query",
    "required": False,
    "allowEmptyValue": True,
    "schema": {"type": "string"},
    "description": "present: indent the JSON answer by 4 spaces",
}


def _list_parameters(query_schema: JsonObject) -> list[JsonObject]:
    """ListQuery's fields as query parameters; limits its validators enforce are added."""
    bounds = {"limit": (1, 1000), "offset": (0, 1_000_000)}
    parameters = []
    for name, schema in query_schema["properties"].items():
        schema = dict(schema)
        if name in bounds:
            schema["minimum"], schema["maximum"] = bounds[name]
        if name == "state":
            schema = {"type": "string", "enum": _STATES, "description": "any case"}
        parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
    return parameters


def _task_paths() -> JsonObject:
    task = "/v1/queues/{task_id}"
    done = (200, json_body(schema_ref("Done"), "done"))
    record = (200, json_body(schema_ref("Task"), "the task"))
    action_errors = (400, 401, 403, 422)
    return {
        "/v1/queues/register": {
            "post": operation(
                "Register a task",
                "tasks",
                (201, json_body(schema_ref("Task"), "accepted and committed")),
                (400, 401, 403, 413, 422),
                security=OWNER_AUTH,
                body=schema_ref("TaskIn"),
                parameters=[PRETTY],
                description="The call to make, when, and how to retry it. A 201 means "
                "the task is durably stored.",
            )
        },
        task: {
            "parameters": [TASK_ID],
            "get": operation(
                "Read a task", "tasks", record, (400, 401, 403, 404), security=OWNER_AUTH
            ),
            "patch": operation(
                "Edit a task that has not started",
                "tasks",
                record,
                (400, 401, 403, 404, 413, 422),
                security=OWNER_AUTH,
                body={"type": "object", "description": "JSON merge patch over TaskIn"},
                description="The body is merged into the stored registration (RFC 7386) "
                "and the result is validated as a whole.",
            ),
            "delete": operation("Delete a task", "tasks", done, action_errors, security=OWNER_AUTH),
        },
        f"{task}/config": {
            "parameters": [TASK_ID],
            "get": operation(
                "The task's request and options as registered",
                "tasks",
                (200, json_body(schema_ref("TaskIn"), "the registration")),
                (400, 401, 403, 404),
                security=OWNER_AUTH,
            ),
        },
        f"{task}/attempts": {
            "parameters": [TASK_ID],
            "get": operation(
                "The attempt history",
                "tasks",
                (
                    200,
                    json_body(
                        {"type": "array", "items": schema_ref("Attempt")}, "first attempt first"
                    ),
                ),
                (400, 401, 403, 404),
                security=OWNER_AUTH,
            ),
        },
        f"{task}/execute": {
            "parameters": [TASK_ID],
            "post": operation("Run a task now", "tasks", done, action_errors, security=OWNER_AUTH),
        },
        f"{task}/pause": {
            "parameters": [TASK_ID],
            "patch": operation("Pause a task", "tasks", done, action_errors, security=OWNER_AUTH),
        },
        f"{task}/resume": {
            "parameters": [TASK_ID],
            "patch": operation(
                "Resume a task", "tasks", record, action_errors, security=OWNER_AUTH
            ),
        },
        f"{task}/revoke": {
            "parameters": [TASK_ID],
            "patch": operation("Revoke a task", "tasks", done, action_errors, security=OWNER_AUTH),
        },
    }


def _owner_paths(list_query: JsonObject) -> JsonObject:
    return {
        "/v1/owners/register": {
            "post": operation(
                "Register an owner",
                "owners",
                (201, json_body(schema_ref("OwnerCreated"), "the id and the key, shown once")),
                (400, 409, 413),
                body=schema_ref("OwnerIn"),
            )
        },
        "/v1/owners/{name}": {
            "parameters": [OWNER_NAME],
            "get": operation(
                "Read the caller's owner record",
                "owners",
                (200, json_body(schema_ref("Owner"), "the owner")),
                (400, 401, 403, 404),
                security=OWNER_AUTH,
            ),
            "delete": operation(
                "Delete the caller's owner (no unfinished tasks) and its finished tasks",
                "owners",
                (200, json_body(schema_ref("Done"), "deleted")),
                (400, 401, 403, 422),
                security=OWNER_AUTH,
            ),
        },
        "/v1/queues": {
            "get": operation(
                "List the caller's tasks",
                "tasks",
                (200, json_body({"type": "array", "items": schema_ref("TaskSummary")}, "a page")),
                (400, 401, 403),
                security=OWNER_AUTH,
                parameters=_list_parameters(list_query),
            )
        },
        "/v1/admin/owners": {
            "get": operation(
                "List every owner (administrators)",
                "operations",
                (200, json_body({"type": "array", "items": schema_ref("Owner")}, "oldest first")),
                (401, 404),
                security=[{"adminKey": []}],
                description="Exists only when the ADMIN_KEY setting is set (404 otherwise).",
            )
        },
    }


def _text(media_type: str, description: str) -> JsonObject:
    return {"description": description, "content": {media_type: {"schema": _STR}}}


def _operation_paths() -> JsonObject:
    asset = path_param("asset", {"type": "string", "enum": list(DOCS_ASSETS)}, "file name")
    return {
        "/status": {
            "get": operation(
                "Liveness, as in the original", "operations", (200, _text("text/plain", "OK"))
            )
        },
        "/healthz": {
            "get": operation(
                "The process is up", "operations", (200, json_body(schema_ref("Health"), "up"))
            )
        },
        "/readyz": {
            "get": operation(
                "The database answers and the scheduler loop is alive",
                "operations",
                (200, json_body(schema_ref("Readiness"), "ready")),
                also={503: json_body(schema_ref("Readiness"), "not ready: see checks")},
            )
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics (text format 0.0.4)",
                "operations",
                (200, _text("text/plain", "the exposition")),
                (401,),
                security=[{"metricsKey": []}, {}],
            )
        },
        "/openapi.json": {
            "get": operation(
                "This document",
                "operations",
                (200, json_body({"type": "object"}, "OpenAPI 3.1")),
            )
        },
        "/docs": {
            "get": operation("API docs page", "operations", (200, _text("text/html", "HTML")))
        },
        "/docs/{asset}": {
            "parameters": [asset],
            "get": operation("Docs page assets", "operations", (200, _text("text/plain", "file"))),
        },
    }


def _request_schemas() -> dict[str, JsonObject]:
    """The pydantic models' JSON Schemas, with what their custom validators accept added."""
    _, top = models_json_schema(
        [(TaskIn, "validation"), (OwnerIn, "validation"), (ListQuery, "validation")],
        ref_template=REF,
    )
    schemas: dict[str, JsonObject] = top["$defs"]
    config = schemas["ConfigIn"]["properties"]
    for name in DATE_FIELDS:  # _date_ms takes what JavaScript's new Date(v) takes
        config[name] = {
            "anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}],
            "default": None,
            "description": "epoch ms, or a date string (ISO 8601 or RFC 2822); "
            "strings without an offset are read in the server's TZ",
        }
    schemas["OwnerIn"]["properties"]["name"]["pattern"] = OWNER_NAME_PATTERN
    for schema in schemas.values():
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)  # pydantic's "Executeat"-style titles say nothing
    return schemas


@functools.cache
def spec() -> JsonObject:
    """The whole OpenAPI 3.1 document (computed once per process; it never changes)."""
    requests = _request_schemas()
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
            schedule_schemas.OPENAPI_TAG,
        ],
        "paths": {
            **_owner_paths(list_query),
            **_task_paths(),
            **_operation_paths(),
            **schedule_schemas.openapi_paths(),
        },
        "components": {
            # the task models' own entries (with their date notes) win over the copies
            "schemas": {**schedule_schemas.openapi_schemas(), **requests, **RESPONSE_SCHEMAS},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


@functools.cache
def _spec_bytes() -> bytes:
    return json.dumps(spec(), separators=(",", ":")).encode()


@functools.cache
def _asset(name: str) -> bytes:
    return resources.files("tasks_server.api").joinpath("docs", name).read_bytes()


async def spec_json(request: Request) -> Response:
    return Response(_spec_bytes(), media_type="application/json")


async def docs_page(request: Request) -> Response:
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8")


async def docs_asset(request: Request) -> Response:
    """Only the files the page needs: the name is checked against a fixed list."""
    name = request.path_params["asset"]
    if name not in DOCS_ASSETS:
        raise NotFound()
    return Response(_asset(name), media_type=f"{DOCS_ASSETS[name]}; charset=utf-8")
