"""The workflow paths and schemas of the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from ..workflow_schemas import WorkflowIn
from .parts import OWNER_AUTH, PRETTY, REF, json_body, operation, path_param, schema_ref

OPENAPI_TAG = {
    "name": "workflows",
    "description": "Runs of several HTTP steps with dependencies (docs/workflows.md)",
}
_NULL_INT = {"type": ["integer", "null"]}
_STEP_FIELDS: dict[str, Any] = {
    "id": {"type": "string"},
    "state": {
        "type": "string",
        "enum": ["WAITING", "RUNNING", "SUCCESS", "ERROR", "SKIPPED", "CANCELLED"],
    },
    "dependsOn": {"type": "array", "items": {"type": "string"}},
    "taskId": {"type": ["string", "null"], "description": "the task that runs the step"},
    "attempts": {"type": "integer"},
    "statusCode": {"type": "integer"},
    "output": {"description": "the step's output template, rendered"},
    "error": {"type": ["string", "null"]},
    "startedAt": _NULL_INT,
    "finishedAt": _NULL_INT,
}
_RUN_FIELDS: dict[str, Any] = {
    "id": {"type": "string", "pattern": "^[A-Z0-9]{24}$"},
    "name": {"type": "string"},
    "state": {"type": "string", "enum": ["PENDING", "RUNNING", "SUCCESS", "ERROR", "CANCELLED"]},
    "createdAt": {"type": "integer"},
    "dueAt": {"type": "integer"},
    "finishedAt": _NULL_INT,
    "deadlineAt": _NULL_INT,
    "error": {"type": ["string", "null"]},
    "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    "scheduleId": {
        "type": ["string", "null"],
        "description": "the schedule whose slot started the run, or null",
    },
}


def openapi_schemas() -> dict[str, Any]:
    _, top = models_json_schema([(WorkflowIn, "validation")], ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    step = {"type": "object", "required": list(_STEP_FIELDS), "properties": _STEP_FIELDS}
    schemas["WorkflowStep"] = step
    schemas["WorkflowRunSummary"] = {
        "type": "object",
        "required": list(_RUN_FIELDS),
        "properties": _RUN_FIELDS,
    }
    schemas["WorkflowRun"] = {
        "type": "object",
        "required": [*_RUN_FIELDS, "steps"],
        "properties": {
            **_RUN_FIELDS,
            "steps": {"type": "array", "items": schema_ref("WorkflowStep")},
        },
    }
    return schemas


def openapi_paths() -> dict[str, Any]:
    run_id = path_param("run_id", {"type": "string"}, "the run's id")
    one = "/v1/workflows/{run_id}"
    full = (200, json_body(schema_ref("WorkflowRun"), "the run with its steps"))
    page = {
        "type": "object",
        "properties": {
            "runs": {"type": "array", "items": schema_ref("WorkflowRunSummary")},
            "cursor": {"type": ["string", "null"], "description": "next page, or null"},
        },
    }
    query = [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
        for name, kind in (("state", "string"), ("name", "string"), ("limit", "integer"))
    ] + [{"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}}]
    wait = {"name": "wait", "in": "query", "required": False, "schema": {"type": "number"}}
    return {
        "/v1/workflows": {
            "post": operation(
                "Start a workflow run",
                "workflows",
                (201, json_body(schema_ref("WorkflowRun"), "created; root steps are due")),
                (400, 401, 403, 413),
                body=schema_ref("WorkflowIn"),
                parameters=[PRETTY],
                security=OWNER_AUTH,
            ),
            "get": operation(
                "List the caller's runs, newest first",
                "workflows",
                (200, json_body(page, "a page")),
                (400, 401, 403),
                parameters=query,
                security=OWNER_AUTH,
            ),
        },
        one: {
            "parameters": [run_id],
            "get": operation(
                "Read a run", "workflows", full, (400, 401, 403, 404), security=OWNER_AUTH
            ),
            "delete": operation(
                "Delete a final run (its tasks stay)",
                "workflows",
                (200, json_body(schema_ref("Done"), "deleted")),
                (400, 401, 403, 404, 422),
                security=OWNER_AUTH,
            ),
        },
        f"{one}/retry": {
            "parameters": [run_id],
            "post": operation(
                "Run the failed and cancelled steps again, and what follows them",
                "workflows",
                full,
                (400, 401, 403, 404, 422),
                security=OWNER_AUTH,
            ),
        },
        f"{one}/cancel": {
            "parameters": [run_id],
            "post": operation(
                "Cancel a run: nothing new starts, running steps' tasks are revoked",
                "workflows",
                full,
                (400, 401, 403, 404, 422),
                security=OWNER_AUTH,
            ),
        },
        f"{one}/result": {
            "parameters": [run_id],
            "get": operation(
                "The run once it is final; 202 with its state when the wait ends first",
                "workflows",
                full,
                (400, 401, 403, 404),
                parameters=[wait],
                also={202: json_body(schema_ref("WorkflowRun"), "not final yet")},
                security=OWNER_AUTH,
            ),
        },
    }
