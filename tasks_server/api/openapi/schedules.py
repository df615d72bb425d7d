"""The schedule paths and schemas of the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from ..schedule_schemas import SCHEDULE_NAME, ScheduleIn, WorkflowScheduleIn
from .parts import OWNER_AUTH, PRETTY, REF, json_body, operation, path_param, schema_ref

OPENAPI_TAG = {
    "name": "schedules",
    "description": "Recurring schedules that create tasks or start workflow runs",
}
_SCHEDULE_FIELDS: dict[str, Any] = {
    "id": {"type": "string", "pattern": "^[A-Z0-9]{24}$"},
    "name": {"type": "string", "pattern": f"^{SCHEDULE_NAME.pattern}$"},
    "schedule": {"type": "string", "description": "cron, macro or @every <duration>"},
    "timezone": {"type": "string", "description": "IANA zone"},
    "state": {"type": "string", "enum": ["ACTIVE", "PAUSED", "FINISHED"]},
    "createdAt": {"type": "integer"},
    "updatedAt": {"type": "integer"},
    "startAt": {"type": ["integer", "null"]},
    "endAt": {"type": ["integer", "null"]},
    "maxRuns": {"type": ["integer", "null"]},
    "misfirePolicy": {"type": "string", "enum": ["skip", "run_once", "run_all"]},
    "overlapPolicy": {"type": "string", "enum": ["allow", "skip", "queue"]},
    "catchUpLimit": {"type": "integer"},
    "runs": {"type": "integer", "description": "tasks created so far"},
    "lastRunAt": {"type": ["integer", "null"], "description": "slot of the last task"},
    "lastTaskId": {"type": ["string", "null"]},
    "nextRunAt": {"type": ["integer", "null"], "description": "null unless ACTIVE"},
}


def openapi_schemas() -> dict[str, Any]:
    """ScheduleIn's JSON Schema (with what DateMs accepts) and the response shapes."""
    models = [(ScheduleIn, "validation"), (WorkflowScheduleIn, "validation")]
    _, top = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = top["$defs"]
    for model in ("ScheduleIn", "WorkflowScheduleIn"):
        fields = schemas[model]["properties"]
        for name in ("startAt", "endAt"):
            fields[name] = {
                "anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}],
                "default": None,
                "description": "epoch ms, or a date string (ISO 8601 or RFC 2822)",
            }
    schemas["WorkflowScheduleIn"]["properties"]["workflow"] = {
        "$ref": REF.format(model="WorkflowIn"),
        "description": "the run each slot starts: the body of POST /v1/workflows, without "
        "config.executeAt or config.executionDelay (each run is due at its slot)",
    }
    summary = {"type": "object", "required": list(_SCHEDULE_FIELDS)}
    schemas["ScheduleSummary"] = {**summary, "properties": _SCHEDULE_FIELDS}
    schemas["Schedule"] = {
        "type": "object",
        "required": list(_SCHEDULE_FIELDS),
        "description": "httpRequest and config for a schedule that creates tasks; target, "
        "workflow and lastRunId for one that starts workflow runs",
        "properties": {
            **_SCHEDULE_FIELDS,
            "httpRequest": {"$ref": REF.format(model="HttpRequestIn")},
            "config": {"$ref": REF.format(model="ConfigIn")},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "target": {"type": "string", "enum": ["workflow"]},
            "workflow": {"$ref": REF.format(model="WorkflowIn")},
            "lastRunId": {"type": ["string", "null"], "description": "the last run started"},
        },
    }
    return schemas


def openapi_paths() -> dict[str, Any]:
    key = path_param("key", {"type": "string"}, "the schedule's id or name")
    one = "/v1/schedules/{key}"
    full = (200, json_body(schema_ref("Schedule"), "the schedule with its task template"))
    short = (200, json_body(schema_ref("ScheduleSummary"), "the schedule"))
    page = [
        {"name": n, "in": "query", "required": False, "schema": {"type": "integer"}}
        for n in ("limit", "offset")
    ]
    slots = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"at": {"type": "integer"}, "local": {"type": "string"}},
        },
    }
    tasks = {"type": "array", "items": schema_ref("TaskSummary")}
    runs = {"type": "array", "items": schema_ref("WorkflowRunSummary")}
    return {
        "/v1/schedules": {
            "get": operation(
                "List the caller's schedules, by name",
                "schedules",
                (
                    200,
                    json_body({"type": "array", "items": schema_ref("ScheduleSummary")}, "a page"),
                ),
                (400, 401, 403),
                parameters=page,
                security=OWNER_AUTH,
            ),
            "post": operation(
                "Create a schedule",
                "schedules",
                (201, json_body(schema_ref("Schedule"), "created")),
                (400, 401, 403, 409, 413, 422),
                body={"oneOf": [schema_ref("ScheduleIn"), schema_ref("WorkflowScheduleIn")]},
                parameters=[PRETTY],
                description="At each slot, a task is created from httpRequest + config, or "
                "(a body with workflow) a workflow run is started.",
                security=OWNER_AUTH,
            ),
        },
        one: {
            "parameters": [key],
            "get": operation(
                "Read a schedule", "schedules", full, (401, 403, 404), security=OWNER_AUTH
            ),
            "patch": operation(
                "Edit a schedule",
                "schedules",
                full,
                (400, 401, 403, 404, 409, 413, 422),
                body={
                    "type": "object",
                    "description": "JSON merge patch over ScheduleIn or WorkflowScheduleIn",
                },
                security=OWNER_AUTH,
            ),
            "delete": operation(
                "Delete a schedule (its tasks stay)",
                "schedules",
                (200, json_body(schema_ref("Done"), "deleted")),
                (401, 403, 404),
                security=OWNER_AUTH,
            ),
        },
        f"{one}/pause": {
            "parameters": [key],
            "patch": operation(
                "Pause a schedule", "schedules", short, (401, 403, 404, 422), security=OWNER_AUTH
            ),
        },
        f"{one}/resume": {
            "parameters": [key],
            "patch": operation(
                "Resume a schedule", "schedules", short, (401, 403, 404, 422), security=OWNER_AUTH
            ),
        },
        f"{one}/next": {
            "parameters": [key],
            "get": operation(
                "Preview the next slots (query n, 1-100, default 5)",
                "schedules",
                (200, json_body(slots, "epoch ms and local time")),
                (400, 401, 403, 404),
                security=OWNER_AUTH,
            ),
        },
        f"{one}/tasks": {
            "parameters": [key],
            "get": operation(
                "The tasks the schedule created, newest first",
                "schedules",
                (200, json_body(tasks, "a page")),
                (400, 401, 403, 404),
                parameters=page,
                security=OWNER_AUTH,
            ),
        },
        f"{one}/runs": {
            "parameters": [key],
            "get": operation(
                "The workflow runs the schedule started, newest first",
                "schedules",
                (200, json_body(runs, "a page")),
                (400, 401, 403, 404),
                parameters=page,
                security=OWNER_AUTH,
            ),
        },
    }
