"""Building blocks of the OpenAPI document: references, parameters, operations with
their error responses, and the response shapes the handlers build by hand."""

from __future__ import annotations

from typing import Any

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
STR = {"type": "string"}

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
            "action": STR,
            "message": {
                "description": "a sentence, or for 400 a tree mirroring the input with an "
                "`_errors` list at every level",
                "anyOf": [STR, {"type": "object"}],
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
        id=STR,
        name=STR,
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
        truncated={
            "type": "boolean",
            "description": "present (true) when the response was cut at MAX_SIZE_DATA_RESPONSE",
        },
        retryCount={**_INT, "description": "retries made (GET /v1/queues/{id} only)"},
        retriesLeft={**_INT, "description": "retries still allowed (GET /v1/queues/{id} only)"},
        nextAttemptAt={
            "type": ["integer", "null"],
            "description": "planned time of the next attempt, or of the one in flight, while "
            "RUNNING; null otherwise (GET /v1/queues/{id} only)",
        },
    ),
    "Attempt": _object(
        ("attempt", "startedAt", "finishedAt", "statusCode", "error", "durationMs"),
        attempt={"type": "integer", "minimum": 1},
        cycle={
            "type": "integer",
            "minimum": 1,
            "description": "1, then one more per replay from the dead-letter queue",
        },
        startedAt=_MS,
        finishedAt={"type": ["integer", "null"]},
        statusCode=_INT,
        error={"type": ["string", "null"], "description": "libcurl's error text"},
        durationMs={"type": "number"},
        headers={
            "type": "array",
            "items": {"type": "array", "items": STR, "minItems": 2, "maxItems": 2},
        },
        response={"type": ["string", "null"], "description": "base64 of the body"},
        truncated={
            "type": "boolean",
            "description": "the body went past MAX_SIZE_DATA_RESPONSE: kept up to it",
        },
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
        "description": "The METRICS_KEY setting; without it /metrics answers 403 "
        "unless METRICS_PUBLIC=1",
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


def list_parameters(query_schema: JsonObject) -> list[JsonObject]:
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
