"""Wire models of the schedule API: the body of a schedule and its queries.

The task template reuses the queue registration's ``httpRequest`` and ``config`` models;
the cron expression and the time zone are checked here, by the cron module.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from .. import cron
from .schemas import (
    MAX_SAFE_INTEGER,
    ConfigIn,
    DateMs,
    HttpRequestIn,
    Metadata,
    Strict,
    query_int,
)

SCHEDULE_NAME = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
SCHEDULE_ID = re.compile(r"[0-9A-Z]{24}")


def _name(value: str) -> str:
    if not SCHEDULE_NAME.fullmatch(value):
        # names never look like ids (those are upper case), so a path can hold either
        raise PydanticCustomError(
            "schedule_name",
            "Must start with a lowercase letter, followed by at most 63 of a-z 0-9 . _ -",
        )
    return value


def _expression(value: str) -> str:
    try:
        cron.parse(value)
    except ValueError as exc:
        raise PydanticCustomError("schedule", "{reason}", {"reason": str(exc)}) from exc
    return " ".join(value.split())


def _zone(value: str) -> str:
    try:
        return cron.check_zone(value)
    except ValueError as exc:
        raise PydanticCustomError("timezone", "{reason}", {"reason": str(exc)}) from exc


ScheduleName = Annotated[str, AfterValidator(_name)]
Expression = Annotated[
    str, Field(max_length=cron.MAX_EXPRESSION_CHARS), AfterValidator(_expression)
]
Zone = Annotated[str, Field(max_length=64), AfterValidator(_zone)]


class ScheduleIn(Strict):
    name: ScheduleName
    schedule: Expression
    timezone: Zone = "UTC"
    httpRequest: HttpRequestIn
    config: ConfigIn = Field(default_factory=ConfigIn)
    metadata: Metadata | None = None
    startAt: DateMs | None = None
    endAt: DateMs | None = None
    maxRuns: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)] | None = None
    misfirePolicy: Literal["skip", "run_once", "run_all"] = "run_once"
    overlapPolicy: Literal["allow", "skip", "queue"] = "allow"
    catchUpLimit: Annotated[int, Field(ge=1, le=1000)] = 10


# config options a template may not set: every run is due at its slot
TEMPLATE_REFUSED = ("executeAt", "executionDelay", "executeImmediately", "retryAt", "timeoutAt")


def _page(low: int, high: int) -> Any:
    return Annotated[int, BeforeValidator(lambda v: query_int(v, low, high))]


class PageQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    limit: _page(1, 1000) = 100  # type: ignore[valid-type]
    offset: _page(0, 1_000_000) = 0  # type: ignore[valid-type]


class NextQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    n: _page(1, 100) = 5  # type: ignore[valid-type]


# -- OpenAPI (merged into the document by openapi.spec) ------------------------------------

OPENAPI_TAG = {"name": "schedules", "description": "Recurring schedules that create tasks"}
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
    from pydantic.json_schema import models_json_schema

    from .openapi import REF

    _, top = models_json_schema([(ScheduleIn, "validation")], ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    fields = schemas["ScheduleIn"]["properties"]
    for name in ("startAt", "endAt"):
        fields[name] = {
            "anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}],
            "default": None,
            "description": "epoch ms, or a date string (ISO 8601 or RFC 2822)",
        }
    summary = {"type": "object", "required": list(_SCHEDULE_FIELDS)}
    schemas["ScheduleSummary"] = {**summary, "properties": _SCHEDULE_FIELDS}
    schemas["Schedule"] = {
        "type": "object",
        "required": [*_SCHEDULE_FIELDS, "httpRequest", "config"],
        "properties": {
            **_SCHEDULE_FIELDS,
            "httpRequest": {"$ref": REF.format(model="HttpRequestIn")},
            "config": {"$ref": REF.format(model="ConfigIn")},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    return schemas


def openapi_paths() -> dict[str, Any]:
    from .openapi import OWNER_AUTH, PRETTY, json_body, operation, path_param, schema_ref

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
                body=schema_ref("ScheduleIn"),
                parameters=[PRETTY],
                description="A task is created from httpRequest + config at each slot.",
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
                body={"type": "object", "description": "JSON merge patch over ScheduleIn"},
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
    }
