"""Error responses: the one table from error class to status and the original's body.

Every error answer is ``{"action": ..., "message": ...}``
(docs/compatibility.md#error-body). Validation failures
carry a zod-like tree as the message: it mirrors the input, with an ``_errors`` list at
every level (docs/compatibility.md#validation-errors).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import (
    AuthError,
    ClientGone,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    StorageUnavailable,
    TasksServerError,
    Throttled,
    Unauthenticated,
    ValidationFailed,
    WrongKey,
)

logger = logging.getLogger(__name__)

FIX = "Do not retry without fixing the problem"
NO_REPEAT = "The request should not be repeated"

# error class → (status, action); the first matching class (in MRO order) wins
STATUS: dict[type[TasksServerError], tuple[int, str]] = {
    ValidationFailed: (400, FIX),
    ClientGone: (400, FIX),
    WrongKey: (401, NO_REPEAT),
    Unauthenticated: (403, NO_REPEAT),
    AuthError: (403, NO_REPEAT),
    NotFound: (404, FIX),
    Conflict: (409, FIX),
    PayloadTooLarge: (413, FIX),
    PreconditionFailed: (422, FIX),
    Throttled: (429, "Please wait until the server restore your connection"),
    StorageUnavailable: (503, "Retry after the number of seconds in Retry-After"),
}


def field_error(path: tuple[str, ...], message: str) -> ValidationFailed:
    """A ValidationFailed whose tree names one field, like the original's zod tree
    (docs/compatibility.md#validation-errors)."""
    tree: dict[str, Any] = {"_errors": []}
    node = tree
    for part in path:
        node[part] = {"_errors": []}
        node = node[part]
    node["_errors"].append(message)
    return ValidationFailed(tree)


def error_body(exc: TasksServerError) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a domain error (also used per item of a batch)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            status, action = STATUS[cls]
            break
    else:
        status, action = 500, "Do not retry this request more than once"
    message: Any = exc.message
    if isinstance(exc, ValidationFailed) and exc.tree is not None:
        message = exc.tree
    return status, {"action": action, "message": message}


def error_response(exc: TasksServerError) -> JSONResponse:
    status, body = error_body(exc)
    headers = None
    if isinstance(exc, Throttled):
        headers = {
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(exc.reset_s),
            "Retry-After": str(exc.reset_s),
        }
    if isinstance(exc, StorageUnavailable):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return JSONResponse(body, status, headers=headers)


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TasksServerError)
    return error_response(exc)


async def handle_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors: unknown routes and methods answer 404 like the original,
    but with a JSON body (the original's was empty)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (404, 405):
        return error_response(NotFound())
    return JSONResponse(
        {"action": FIX, "message": exc.detail}, exc.status_code, headers=exc.headers
    )


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    request_id = secrets.token_hex(8)
    logger.error(
        "unexpected error in %s %s (request %s)",
        request.method,
        request.url.path,
        request_id,
        exc_info=exc,
    )
    return JSONResponse(
        {
            "action": "Do not retry this request more than once",
            "message": "Internal server error",
            "requestId": request_id,
        },
        500,
    )


# -- pydantic errors → zod-like tree ----------------------------------------------------

_JSON_TYPES = {
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    dict: "object",
    list: "array",
    type(None): "null",
}
_EXPECTED = {
    "string_type": "string",
    "float_type": "number",
    "int_type": "number",
    "bool_type": "boolean",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "list_type": "array",
    "tuple_type": "array",
}


_TEMPLATES = {
    "missing": "Required",
    "greater_than_equal": "Number must be greater than or equal to {ge}",
    "less_than_equal": "Number must be less than or equal to {le}",
    "string_too_short": "String must contain at least {min_length} character(s)",
    "string_too_long": "String must contain at most {max_length} character(s)",
    "array_too_short": "Array must contain at least {min_length} element(s)",
    "array_too_long": "Array must contain at most {max_length} element(s)",
    "too_short": "Must contain at least {min_length} element(s)",
    "too_long": "Must contain at most {max_length} element(s)",
    "literal_error": "Invalid enum value. Expected {expected}, received '{input}'",
    "string_pattern_mismatch": "Invalid",
}


def _plain_number(value: Any) -> Any:
    # zod prints bounds in full (9007199254740991), never as 9.0072e+15 or 1000.0
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _message(error: Any) -> str:
    kind = error["type"]
    ctx = {key: _plain_number(value) for key, value in (error.get("ctx") or {}).items()}
    if kind in _EXPECTED:
        received = _JSON_TYPES.get(type(error.get("input")), "unknown")
        return f"Expected {_EXPECTED[kind]}, received {received}"
    if kind in ("too_short", "too_long") and ctx.get("field_type") == "List":
        kind = f"array_{kind}"
    if kind in _TEMPLATES:
        return _TEMPLATES[kind].format(input=error.get("input"), **ctx)
    return str(error["msg"]).removeprefix("Value error, ")


def _real_path(loc: tuple[Any, ...], data: Any, kind: str) -> list[str]:
    """The error's location in the input, dropping pydantic's union-member tags.

    Only a missing key may name something that is not in the input.
    """
    path: list[str] = []
    node = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(str(part))
            node = node[part]
        elif kind == "missing" and last:
            path.append(str(part))
    return path


def _add(tree: dict[str, Any], path: list[str], message: str) -> None:
    node = tree
    for part in path:
        node = node.setdefault(part, {"_errors": []})
    if message not in node["_errors"]:
        node["_errors"].append(message)


def validation_tree(exc: ValidationError, data: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {"_errors": []}
    unknown: dict[tuple[str, ...], list[str]] = {}  # object path → its unknown keys
    for error in exc.errors():
        kind = error["type"]
        path = _real_path(tuple(error["loc"]), data, kind)
        if kind == "extra_forbidden" and path:
            unknown.setdefault(tuple(path[:-1]), []).append(path[-1])
        else:
            _add(tree, path, _message(error))
    for parent, keys in unknown.items():
        # zod names all unknown keys of one object in one message
        names = ", ".join(f"'{key}'" for key in keys)
        _add(tree, list(parent), f"Unrecognized key(s) in object: {names}")
    return tree


def validation_failed(exc: ValidationError, data: Any) -> ValidationFailed:
    return ValidationFailed(validation_tree(exc, data))
