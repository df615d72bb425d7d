"""Reading request bodies and writing JSON answers the way the original's clients expect."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..errors import ClientGone, PayloadTooLarge, ValidationFailed

logger = logging.getLogger(__name__)

# Hono's validator parses JSON only for these content types
# (docs/compatibility.md#validation-errors)
_JSON_TYPE = re.compile(r"^application/([a-z-\.]+\+)?json(\s*;.*)?$")


async def read_body(request: Request, max_bytes: int) -> bytes | None:
    """The raw body, or None when the content type is not JSON (the original then
    validates ``{}``, docs/compatibility.md#validation-errors). Bodies over ``max_bytes`` → 413."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge()
            chunks.append(chunk)
    except ClientDisconnect:
        # an ordinary event (a client gave up): one quiet line, no traceback
        logger.debug("client hung up during the request body of %s", request.url.path)
        raise ClientGone() from None
    body = b"".join(chunks)
    content_type = request.headers.get("content-type", "")
    if not _JSON_TYPE.match(content_type):
        if body.strip():  # a body the original would have ignored: say why instead
            received = f"'{content_type}'" if content_type else "none"
            raise ValidationFailed(
                message=f"Content-Type must be application/json (received {received})"
            )
        return None
    return body


def parse_json(body: bytes | None) -> Any:
    """JSON text → value; ``None`` (not JSON) → ``{}``; anything the parser refuses
    (syntax, encoding, nesting deeper than the interpreter's recursion limit, integers
    with too many digits) → 400 with the default message."""
    if body is None:
        return {}
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ValidationFailed(message=f"The body is not valid JSON: {exc.msg} at {where}") from exc
    except (ValueError, RecursionError) as exc:
        raise ValidationFailed(message="The body is not valid JSON") from exc


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body as JSON (see read_body and parse_json)."""
    return parse_json(await read_body(request, max_bytes))


# json.dumps with any option builds a new encoder per call: these are built once
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_PRETTY = json.JSONEncoder(indent=4, ensure_ascii=False)


class JSON(Response):
    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200, pretty: bool = False) -> None:
        text = (_PRETTY if pretty else _COMPACT).encode(content)
        super().__init__(text.encode(), status_code)


def answer(request: Request, content: Any, status_code: int = 200) -> JSON:
    """A JSON answer, indented by 4 spaces when the query has ``pretty``
    (docs/compatibility.md#pretty-json)."""
    query: bytes = request.scope.get("query_string", b"")
    return JSON(content, status_code, pretty=bool(query) and "pretty" in request.query_params)


def query_of(request: Request) -> dict[str, str]:
    """The query parameters an operation reads: all but ``pretty``, which shapes the
    answer (see ``answer``) and is accepted on every request."""
    raw = dict(request.query_params)
    raw.pop("pretty", None)
    return raw


DONE = {"status": "Done"}
