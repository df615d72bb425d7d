"""OpenAPI paths and schemas of the destination hosts (``/v1/hosts``, behind ADMIN_KEY)."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from ..hosts import HostLimitPatch
from .admin import ADMIN
from .parts import REF, JsonObject, json_body, operation, path_param, schema_ref

_ONLY_WITH_KEY = "Exists only when the ADMIN_KEY setting is set (404 otherwise)."
_MS_OR_NULL: JsonObject = {"type": ["integer", "null"], "description": "epoch milliseconds"}
HOST = path_param(
    "host",
    {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.\\-]{0,252}(:[0-9]{1,5})?$"},
    "`name:port` as calls use it (`api.example.com:443`), or a bare name (every port)",
)

_HOST_LIMIT: JsonObject = {
    "type": "object",
    "required": ["host", "maxConcurrency", "maxRate", "updatedAt"],
    "properties": {
        "host": {"type": "string"},
        "maxConcurrency": {"type": ["integer", "null"]},
        "maxRate": {"type": ["number", "null"], "description": "calls started per second"},
        "updatedAt": {"type": "integer", "description": "epoch milliseconds"},
    },
}
_HOST: JsonObject = {
    "type": "object",
    "required": [
        "host",
        "maxConcurrency",
        "maxRate",
        "override",
        "concurrency",
        "inFlight",
        "waiting",
        "circuit",
        "consecutiveFailures",
        "circuitReopensAt",
        "lastThrottled",
        "throttled",
        "circuitOpened",
        "lastFailure",
        "waitingReason",
    ],
    "properties": {
        "host": {"type": "string", "description": "name:port"},
        "maxConcurrency": {
            "type": "integer",
            "description": "the ceiling: the override's, else HOST_MAX_CONCURRENCY; never "
            "above MAX_HOST_CONNECTIONS",
        },
        "maxRate": {
            "type": ["number", "null"],
            "description": "calls started per second (the override's, else HOST_MAX_RATE)",
        },
        "override": {"oneOf": [schema_ref("HostLimit"), {"type": "null"}]},
        "concurrency": {
            "type": "integer",
            "description": "calls that may run at once now: halved by 429/503 answers, "
            "one more per window of successes, up to maxConcurrency",
        },
        "inFlight": {"type": "integer"},
        "waiting": {"type": "integer", "description": "calls queued for this host"},
        "circuit": {"type": "string", "enum": ["closed", "open", "half-open"]},
        "consecutiveFailures": {"type": "integer"},
        "circuitReopensAt": _MS_OR_NULL,
        "lastThrottled": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"status": {"type": "integer"}, "at": {"type": "integer"}},
                },
                {"type": "null"},
            ],
            "description": "the last 429 or 503 answer",
        },
        "throttled": {"type": "integer", "description": "429 and 503 answers counted"},
        "circuitOpened": {"type": "integer"},
        "lastFailure": {"type": ["string", "null"]},
        "waitingReason": {
            "type": ["string", "null"],
            "description": "why calls wait, in words (null when none waits)",
        },
    },
}


def openapi_schemas() -> dict[str, Any]:
    _, top = models_json_schema([(HostLimitPatch, "validation")], ref_template=REF)
    schemas: dict[str, JsonObject] = top["$defs"]
    schemas["HostLimit"] = _HOST_LIMIT
    schemas["Host"] = _HOST
    return schemas


def openapi_paths() -> dict[str, Any]:
    one = (200, json_body(schema_ref("Host"), "the host"))
    return {
        "/v1/hosts": {
            "get": operation(
                "List destination hosts with their limits and state (administrators)",
                "operations",
                (
                    200,
                    json_body(
                        {"type": "array", "items": schema_ref("Host")},
                        "hosts with calls running or waiting, recent 429/503 answers or "
                        "failures, or an override; by name",
                    ),
                ),
                (401, 404, 429),
                security=ADMIN,
                description=_ONLY_WITH_KEY,
            )
        },
        "/v1/hosts/{host}": {
            "parameters": [HOST],
            "get": operation(
                "Read one destination host (administrators)",
                "operations",
                one,
                (400, 401, 404, 429),
                security=ADMIN,
                description="A host the server knows nothing of shows the limits it would "
                "get. " + _ONLY_WITH_KEY,
            ),
            "patch": operation(
                "Override a host's concurrency ceiling or rate (administrators)",
                "operations",
                one,
                (400, 401, 404, 413, 429),
                security=ADMIN,
                body=schema_ref("HostLimitPatch"),
                description="Stored, and applied at once on this server. Fields left out "
                "keep their value; null returns that limit to the server's default. "
                + _ONLY_WITH_KEY,
            ),
            "delete": operation(
                "Remove a host's override (administrators)",
                "operations",
                one,
                (400, 401, 404, 429),
                security=ADMIN,
                description="404 when the host has no override. " + _ONLY_WITH_KEY,
            ),
        },
    }
