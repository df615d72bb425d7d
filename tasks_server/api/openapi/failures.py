"""The OpenAPI paths of the failure-handling side: waiting for a result, the dead-letter
queue and alerts."""

from __future__ import annotations

from .parts import OWNER_AUTH, TASK_ID, JsonObject, json_body, operation, schema_ref

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


OPENAPI_TAGS = [
    {"name": "dead letters", "description": "Tasks that ended in ERROR: list, replay, delete"},
    {"name": "alerts", "description": "Rules that send e-mail or webhook alerts"},
]


def openapi_paths() -> JsonObject:
    return {**result_paths()}
