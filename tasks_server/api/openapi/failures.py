"""The OpenAPI paths of the failure-handling side: waiting for a result, the dead-letter
queue and alerts."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from ..alert_schemas import AlertIn
from .parts import (
    OWNER_AUTH,
    REF,
    TASK_ID,
    JsonObject,
    json_body,
    operation,
    path_param,
    schema_ref,
)

WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "minimum": 0, "maximum": 60},
    "description": "seconds to wait for the task to end (long poll), at most 60",
}


def result_paths() -> JsonObject:
    task = schema_ref("Task")
    return {
        "/v1/queues/{task_id}/result": {
            "parameters": [TASK_ID],
            "get": operation(
                "Wait for a task's outcome",
                "tasks",
                (200, json_body(task, "the task is final: its stored outcome")),
                (400, 401, 403, 404),
                security=OWNER_AUTH,
                parameters=[WAIT],
                also={202: json_body(task, "not final when the wait ended: its state")},
                description="Answers as soon as the task is SUCCESS, ERROR or REVOKED, or "
                "when `wait` seconds have passed (then 202). The server wakes the request "
                "when the outcome is committed; it does not poll.",
            ),
        },
    }


def _query(name: str, schema: JsonObject, description: str) -> JsonObject:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_TIME = {"anyOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]}
DEAD_FILTERS = [
    _query("from", _TIME, "failed at or after (epoch ms or ISO 8601; UTC without offset)"),
    _query("to", _TIME, "failed before"),
    _query("statusCode", {"type": "integer", "minimum": 0, "maximum": 999}, "last status"),
    _query("schedule", {"type": "string"}, "the id or name of the schedule that made it"),
    _query("label", {"type": "string"}, "a metadata key, or key=value"),
]
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most")


def dead_letter_paths() -> JsonObject:
    task_done = (200, json_body(schema_ref("Done"), "done"))
    replayed = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string"},
            "estimateExecutionAt": {"type": "integer"},
        },
    }
    return {
        "/v1/dlq": {
            "get": operation(
                "List the caller's dead letters (tasks in ERROR), newest failure first",
                "dead letters",
                (200, json_body(schema_ref("DeadLetterPage"), "a page and the next cursor")),
                (400, 401, 403),
                security=OWNER_AUTH,
                parameters=[
                    *DEAD_FILTERS,
                    _LIMIT,
                    _query("cursor", {"type": "string"}, "`next` of the previous page"),
                ],
            ),
            "delete": operation(
                "Delete matching dead letters (a filter is required; from=0 is all)",
                "dead letters",
                (200, json_body(schema_ref("DeadLettersDeleted"), "how many")),
                (400, 401, 403),
                security=OWNER_AUTH,
                parameters=[*DEAD_FILTERS, _LIMIT],
            ),
        },
        "/v1/dlq/replay": {
            "post": operation(
                "Replay matching dead letters at a bounded rate",
                "dead letters",
                (200, json_body(schema_ref("DeadLettersReplayed"), "the replayed tasks")),
                (400, 401, 403),
                security=OWNER_AUTH,
                parameters=[
                    *DEAD_FILTERS,
                    _LIMIT,
                    _query("rate", {"type": "integer", "minimum": 1, "maximum": 1000}, "per s"),
                ],
                description="At most `limit` (default 100) tasks, due `rate` per second "
                "(default 50) from now; each starts a new attempt cycle. Stops at the "
                "owner's task limit.",
            ),
        },
        "/v1/dlq/{task_id}": {
            "parameters": [TASK_ID],
            "delete": operation(
                "Delete one dead letter",
                "dead letters",
                task_done,
                (400, 401, 403, 404),
                security=OWNER_AUTH,
            ),
        },
        "/v1/dlq/{task_id}/replay": {
            "parameters": [TASK_ID],
            "post": operation(
                "Replay one dead letter, optionally edited",
                "dead letters",
                (200, json_body(replayed, "running again")),
                (400, 401, 403, 404, 413, 422),
                security=OWNER_AUTH,
                body={"type": "object", "description": "optional JSON merge patch over TaskIn"},
                description="A new attempt cycle of the same task, due now (or as the "
                "patch's config says); its history keeps every attempt. A body edits the "
                "stored registration first (RFC 7386) and is validated like a new one.",
            ),
        },
    }


_DEAD_LETTER = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": ["ERROR"]},
        "createdAt": {"type": "integer"},
        "failedAt": {"type": "integer"},
        "statusCode": {"type": "integer"},
        "attempts": {"type": "integer"},
        "cycle": {"type": "integer"},
        "scheduleId": {"type": ["string", "null"]},
        "metadata": {"type": ["object", "null"]},
    },
}
SCHEMAS: dict[str, JsonObject] = {
    "DeadLetterPage": {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": _DEAD_LETTER},
            "next": {"type": ["string", "null"]},
        },
    },
    "DeadLettersDeleted": {
        "type": "object",
        "properties": {"deleted": {"type": "integer"}, "more": {"type": "boolean"}},
    },
    "DeadLettersReplayed": {
        "type": "object",
        "properties": {
            "replayed": {"type": "integer"},
            "tasks": {"type": "array", "items": {"type": "object"}},
            "more": {"type": "boolean"},
        },
    },
}


def alert_schemas() -> dict[str, JsonObject]:
    """AlertIn and the models it uses, as pydantic describes them."""
    _, top = models_json_schema([(AlertIn, "validation")], ref_template=REF)
    schemas: dict[str, JsonObject] = top["$defs"]
    rule: JsonObject = {
        "allOf": [schema_ref("AlertIn")],
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "createdAt": {"type": "integer"},
            "updatedAt": {"type": "integer"},
        },
    }
    schemas["AlertRule"] = rule
    schemas["AlertDelivery"] = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "ruleId": {"type": "string"},
            "kind": {"type": "string", "enum": ["alert", "digest", "resolved", "test"]},
            "channel": {"type": "string", "enum": ["email", "webhook"]},
            "status": {"type": "string", "enum": ["sent", "queued", "failed", "suppressed"]},
            "subject": {"type": "string"},
            "error": {"type": ["string", "null"]},
            "taskId": {"type": ["string", "null"], "description": "the webhook's task"},
            "createdAt": {"type": "integer"},
        },
    }
    return schemas


RULE_ID = path_param("rule_id", {"type": "string", "pattern": "^[A-Za-z0-9]{24}$"}, "rule id")


def alert_paths() -> JsonObject:
    rule = json_body(schema_ref("AlertRule"), "the rule")
    rule_errors = (400, 401, 403, 404)
    return {
        "/v1/alerts": {
            "get": operation(
                "List the caller's alert rules",
                "alerts",
                (200, json_body({"type": "array", "items": schema_ref("AlertRule")}, "by name")),
                (401, 403),
                security=OWNER_AUTH,
            ),
            "post": operation(
                "Create an alert rule",
                "alerts",
                (201, rule),
                (400, 401, 403, 409, 413),
                security=OWNER_AUTH,
                body=schema_ref("AlertIn"),
                description="A rule (`on`: task.failed, attempt.failed, schedule.failed or "
                "response.unexpected), an optional scope (a schedule or a metadata label) "
                "and a channel (e-mail over the server's SMTP settings, or a webhook "
                "called as a task).",
            ),
        },
        "/v1/alerts/{rule_id}": {
            "parameters": [RULE_ID],
            "get": operation(
                "Read an alert rule", "alerts", (200, rule), rule_errors, security=OWNER_AUTH
            ),
            "patch": operation(
                "Change an alert rule (JSON merge patch, validated whole)",
                "alerts",
                (200, rule),
                (400, 401, 403, 404, 409, 413),
                security=OWNER_AUTH,
                body={"type": "object", "description": "JSON merge patch over AlertIn"},
            ),
            "delete": operation(
                "Delete an alert rule with its incidents and deliveries",
                "alerts",
                (200, json_body(schema_ref("Done"), "deleted")),
                rule_errors,
                security=OWNER_AUTH,
            ),
        },
        "/v1/alerts/{rule_id}/test": {
            "parameters": [RULE_ID],
            "post": operation(
                "Send a test message through the rule's channel",
                "alerts",
                (200, json_body(schema_ref("AlertDelivery"), "the delivery")),
                rule_errors,
                security=OWNER_AUTH,
            ),
        },
        "/v1/alerts/{rule_id}/deliveries": {
            "parameters": [RULE_ID],
            "get": operation(
                "The rule's deliveries, newest first",
                "alerts",
                (200, json_body({"type": "array", "items": schema_ref("AlertDelivery")}, "a page")),
                rule_errors,
                security=OWNER_AUTH,
                parameters=[_LIMIT],
            ),
        },
    }


OPENAPI_TAGS = [
    {"name": "dead letters", "description": "Tasks that ended in ERROR: list, replay, delete"},
    {"name": "alerts", "description": "Rules that send e-mail or webhook alerts"},
]


def openapi_paths() -> JsonObject:
    return {**result_paths(), **dead_letter_paths(), **alert_paths()}
