"""OpenAPI paths and schemas of the batch and flow-control endpoints."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from ..batch import BatchActionIn
from ..flow_control import FlowControlPatch
from .parts import OWNER_AUTH, REF, JsonObject, json_body, operation, schema_ref

_ITEM_RESULT: JsonObject = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {
            "type": "integer",
            "description": "201 created, 200 deduplicated (an existing task), or the "
            "item's 4xx error status",
        },
        "deduplicated": {"type": "boolean"},
        "task": schema_ref("Task"),
        "action": {"type": "string"},
        "message": {"description": "the item's error, as a single request would answer"},
    },
}
_ACTION_RESULT: JsonObject = {
    "type": "object",
    "required": ["matched", "done", "failed"],
    "properties": {
        "matched": {"type": "integer"},
        "done": {"type": "integer"},
        "failed": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "integer"},
                    "action": {"type": "string"},
                    "message": {},
                },
            },
        },
    },
}


_FLOW_KEY: JsonObject = {
    "type": "object",
    "required": ["key", "period", "paused", "waiting", "inFlight", "waitMs"],
    "properties": {
        "key": {"type": "string"},
        "rate": {"type": ["integer", "null"], "description": "starts per period"},
        "period": {"type": "string", "enum": ["1s", "1m", "1h"]},
        "parallelism": {"type": ["integer", "null"], "description": "calls in flight"},
        "paused": {"type": "boolean"},
        "waiting": {"type": "integer", "description": "claimable tasks with this key"},
        "inFlight": {"type": "integer"},
        "waitMs": {"type": "integer", "description": "how overdue the oldest waiting task is"},
    },
}


def openapi_schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(BatchActionIn, "validation"), (FlowControlPatch, "validation")], ref_template=REF
    )
    schemas: dict[str, JsonObject] = top["$defs"]
    schemas["BatchItemResult"] = _ITEM_RESULT
    schemas["BatchActionResult"] = _ACTION_RESULT
    schemas["FlowControlKey"] = _FLOW_KEY
    return schemas


def openapi_paths() -> dict[str, Any]:
    key_param = {
        "name": "key",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,64}$"},
    }
    one_key = (200, json_body(schema_ref("FlowControlKey"), "the key"))
    return {
        "/v1/flow-control": {
            "get": operation(
                "List flow-control keys",
                "tasks",
                (
                    200,
                    json_body(
                        {"type": "array", "items": schema_ref("FlowControlKey")},
                        "the owner's keys with their limits and what waits behind them",
                    ),
                ),
                (401, 403),
                security=OWNER_AUTH,
            )
        },
        "/v1/flow-control/{key}": {
            "parameters": [key_param],
            "get": operation(
                "Read a flow-control key",
                "tasks",
                one_key,
                (400, 401, 403, 404),
                security=OWNER_AUTH,
            ),
            "patch": operation(
                "Pause, resume or change a flow-control key",
                "tasks",
                one_key,
                (400, 401, 403, 404, 413),
                security=OWNER_AUTH,
                body=schema_ref("FlowControlPatch"),
            ),
        },
        "/v1/queues/register/batch": {
            "post": operation(
                "Register many tasks",
                "tasks",
                (
                    200,
                    json_body(
                        {"type": "array", "items": schema_ref("BatchItemResult")},
                        "one result per item, in order",
                    ),
                ),
                (400, 401, 403, 413),
                security=OWNER_AUTH,
                body={
                    "type": "array",
                    "items": schema_ref("TaskIn"),
                    "minItems": 1,
                    "maxItems": 1000,
                    "description": "up to MAX_BATCH_ITEMS registrations",
                },
                description="All valid items are written in one transaction; an invalid "
                "item gets its own 4xx result and does not block the others.",
            )
        },
        "/v1/queues/batch/{action}": {
            "parameters": [
                {
                    "name": "action",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": ["pause", "resume", "revoke", "delete"]},
                }
            ],
            "post": operation(
                "Change many tasks",
                "tasks",
                (200, json_body(schema_ref("BatchActionResult"), "what changed")),
                (400, 401, 403, 404, 413),
                security=OWNER_AUTH,
                body=schema_ref("BatchActionIn"),
                description='By `ids` or by `filter` (e.g. `{"state": "PAUSED"}`).',
            ),
        },
    }
