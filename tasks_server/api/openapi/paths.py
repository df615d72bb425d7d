"""The task, owner and operations paths of the OpenAPI document, and the request
schemas generated from the pydantic models that validate requests."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from ..schemas import ListQuery, OwnerIn, TaskIn
from .failures import WAIT
from .parts import (
    DATE_FIELDS,
    DOCS_ASSETS,
    OWNER_AUTH,
    OWNER_NAME,
    OWNER_NAME_PATTERN,
    PRETTY,
    REF,
    STR,
    TASK_ID,
    JsonObject,
    json_body,
    list_parameters,
    operation,
    path_param,
    schema_ref,
)

IDEMPOTENCY_KEY: JsonObject = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    "description": "Same as config.deduplicationId (they must agree when both are given)",
}
DEDUPLICATED: JsonObject = {
    **json_body(schema_ref("Task"), "an existing task with the same deduplication id"),
    "headers": {"X-Tasks-Deduplicated": {"schema": {"type": "string", "const": "true"}}},
}


def task_paths() -> JsonObject:
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
                parameters=[PRETTY, WAIT, IDEMPOTENCY_KEY],
                also={
                    200: DEDUPLICATED,
                    202: json_body(schema_ref("Task"), "stored; not final when the wait ended"),
                },
                description="The call to make, when, and how to retry it. A 201 means "
                "the task is durably stored. With `wait`, the answer comes when the task "
                "is final (201 with its outcome) or when the wait ends (202). With a "
                "deduplication id (the Idempotency-Key header or config.deduplicationId) a "
                "repeat within DEDUP_WINDOW_S answers 200 with the existing task and "
                "`X-Tasks-Deduplicated: true`.",
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


def owner_paths(list_query: JsonObject) -> JsonObject:
    return {
        "/v1/owners/register": {
            "post": operation(
                "Register an owner",
                "owners",
                (201, json_body(schema_ref("OwnerCreated"), "the id and the key, shown once")),
                (400, 401, 403, 409, 413, 429),
                body=schema_ref("OwnerIn"),
                security=[{}, {"adminKey": []}],
                description="Who may register is the OWNER_REGISTRATION setting: anyone "
                "(`open`), only with the ADMIN_KEY bearer (`admin`, 401 without it), or "
                "nobody (`closed`, 403).",
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
                parameters=list_parameters(list_query),
            )
        },
    }


def _text(media_type: str, description: str) -> JsonObject:
    return {"description": description, "content": {media_type: {"schema": STR}}}


def operation_paths() -> JsonObject:
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
                (401, 403),
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


def request_schemas() -> dict[str, JsonObject]:
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
