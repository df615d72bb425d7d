"""The edge: the one ASGI layer in front of the API (security headers, the throttle, the
guessing limits, the request log line and metric, routing, error answers)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Message, Receive, Scope, Send

from ..clock import Clock
from ..errors import PayloadTooLarge, TasksServerError, Throttled
from .buckets import TokenBuckets
from .errors import error_response

logger = logging.getLogger("tasks_server.access")

SECURITY_HEADERS = [
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"x-xss-protection", b"0"),
]


class Throttle:
    """Fixed window per client address (docs/compatibility.md#throttle); pure bookkeeping, no I/O.

    The original kept this in a second SQLite file and opened a connection per request;
    a dict is enough for one process.
    """

    def __init__(self, max_requests: int, window_ms: int) -> None:
        self.max_requests = max_requests
        self.window_ms = window_ms
        self._windows: dict[str, tuple[int, int]] = {}  # client → (start ms, count)

    def hit(self, client: str, now_ms: int) -> tuple[bool, int, int]:
        """(allowed, remaining, seconds until the window ends) for one request."""
        start, count = self._windows.get(client, (now_ms, 0))
        if now_ms - start >= self.window_ms:
            start, count = now_ms, 0
        reset_s = math.ceil((start + self.window_ms - now_ms) / 1000)
        if count >= self.max_requests:
            return False, 0, reset_s
        if len(self._windows) > 100_000:
            self._windows.clear()
        self._windows[client] = (start, count + 1)
        return True, self.max_requests - count - 1, reset_s


# (method, route template such as "/v1/queues/{task_id}" or "" when none matched,
# status, milliseconds): route templates keep metric labels few, whatever the ids
RequestObserver = Callable[[str, str, int, float], None]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def exact_routes(routes: list[BaseRoute]) -> dict[tuple[str, str], Route]:
    """(method, path) → route, for the paths without parameters that Starlette's router
    would give to that route (the first route matching fully, in order), so the edge can
    find them with one dict lookup instead of trying every route's pattern."""
    table: dict[tuple[str, str], Route] = {}
    for route in routes:
        if not isinstance(route, Route) or route.param_convertors or not route.methods:
            continue
        for method in route.methods:
            probe = {"type": "http", "path": route.path, "root_path": "", "method": method}
            first = next(r for r in routes if r.matches(probe)[0] is Match.FULL)
            if first is route:
                table.setdefault((method, route.path), route)
    return table


def _handler_for(
    handlers: dict[type[Exception], ErrorHandler], exc: Exception
) -> ErrorHandler | None:
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


class Edge:
    """The one ASGI layer in front of the routes: security headers, the throttle, the
    guessing limits, the declared body size, the request log line and metric, routing and
    error answers.

    Starlette's own middleware (server errors, then handled exceptions) would wrap every
    request in two more layers, each with its own send wrapper; the edge maps errors to
    answers itself, once, with the API's handler table (``api.exception_handlers``). Paths
    without parameters go straight to their handler; the others through Starlette's router.
    """

    def __init__(
        self,
        app: Starlette,
        clock: Clock,
        throttle: Throttle | None,
        log_requests: bool,
        on_request: RequestObserver | None = None,
        max_body_bytes: int | None = None,
        auth_failures: TokenBuckets | None = None,
        error_handlers: dict[type[Exception], ErrorHandler] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # failed authentications (401/403) per client address and per owner id named
        self.auth_failures = auth_failures
        self.clock = clock
        self.throttle = throttle
        self.log_requests = log_requests
        self.on_request = on_request
        self._error_handlers = error_handlers or {}
        self._router = app.router
        self._exact = exact_routes(app.router.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # the lifespan
            return
        started = time.perf_counter()
        extra: list[tuple[bytes, bytes]] = list(SECURITY_HEADERS)
        status_holder = [0]  # the answer's status once it has started
        if self.throttle is not None and await self._throttled(scope, send, extra):
            return

        guessing = self._guessing_keys(scope)
        wait_s = self._guessing_wait_s(guessing)
        if wait_s:
            logger.warning("authentication failures: %s waits %d s", guessing[0], wait_s)
            await error_response(Throttled(wait_s))(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            if self._declares_too_much(scope):
                # refused before a byte of the body is read, whatever the route
                await error_response(PayloadTooLarge())(scope, receive, send_with_headers)
            else:
                await self._route(scope, receive, send_with_headers, status_holder)
        finally:
            status = status_holder[0] or 500  # nothing answered: the server says 500
            self._count_failure(status, guessing)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if self.log_requests:
                self._log(scope, status, elapsed_ms)
            if self.on_request is not None:
                route = getattr(scope.get("route"), "path", "")  # set by the routing
                self.on_request(scope["method"], route, status, elapsed_ms)

    async def _route(
        self, scope: Scope, receive: Receive, send: Send, status_holder: list[int]
    ) -> None:
        """Run the request's handler; an error becomes its answer (an unexpected one a 500,
        raised again afterwards for the server to see, as Starlette does)."""
        scope["app"] = self.app  # what handlers reach their services through
        route = self._exact.get((scope["method"], scope["path"]))
        request = Request(scope, receive, send)
        try:
            if route is None:
                await self._router(scope, receive, send)
            else:
                scope["route"] = route
                scope["path_params"] = {}
                response = await route.endpoint(request)
                await response(scope, receive, send)
        except Exception as exc:
            handler = _handler_for(self._error_handlers, exc)
            if handler is None or status_holder[0]:
                raise  # too late for an answer of its own: the server closes the connection
            response = await handler(request, exc)
            await response(scope, receive, send)
            if not isinstance(exc, HTTPException | TasksServerError):
                raise

    def _log(self, scope: Scope, status: int, elapsed_ms: float) -> None:
        # the path only: query strings and headers may carry secrets
        logger.info(
            "%s %s %d %.1fms",
            scope["method"],
            scope["path"],
            status,
            elapsed_ms,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed_ms, 3),
            },
        )

    async def _throttled(self, scope: Scope, send: Send, extra: list[tuple[bytes, bytes]]) -> bool:
        """Count the request against its client's window (MAX_THROTTLE_REQUEST): adds
        the RateLimit headers to ``extra``, and answers 429 (True) when it is used up."""
        assert self.throttle is not None
        client = (scope.get("client") or ("?", 0))[0]
        allowed, remaining, reset_s = self.throttle.hit(client, self.clock.now_ms())
        limit = self.throttle.max_requests
        window_s = self.throttle.window_ms // 1000
        extra += [
            (b"ratelimit-policy", f"{limit};w={window_s}".encode()),
            (b"ratelimit-limit", str(limit).encode()),
            (b"ratelimit-remaining", str(remaining).encode()),
        ]
        if not allowed:
            logger.warning("throttled %s", client)
            await self._too_many(send, extra, reset_s)
        return not allowed

    def _count_failure(self, status: int, keys: list[str]) -> None:
        if status in (401, 403) and self.auth_failures is not None:
            for key in keys:
                self.auth_failures.take(key, self.clock.now_ms())

    def _guessing_wait_s(self, keys: list[str]) -> int:
        """Seconds until the emptiest of ``keys``' failure buckets allows a try (0: now)."""
        if self.auth_failures is None:
            return 0
        now = self.clock.now_ms()
        return max(self.auth_failures.wait_s(key, now) for key in keys)

    def _guessing_keys(self, scope: Scope) -> list[str]:
        """The buckets a failed authentication of this request drains: its client
        address, and the owner id it names."""
        keys = [f"address:{(scope.get('client') or ('?', 0))[0]}"]
        for name, value in scope["headers"]:
            if name == b"x-tasks-owner-id":
                keys.append(f"owner:{value.decode('latin-1').upper()[:32]}")
        return keys

    def _declares_too_much(self, scope: Scope) -> bool:
        if self.max_body_bytes is None:
            return False
        for name, value in scope["headers"]:
            if name == b"content-length":
                return value.isdigit() and int(value) > self.max_body_bytes
        return False

    async def _too_many(self, send: Send, extra: list[tuple[bytes, bytes]], reset_s: int) -> None:
        body = json.dumps(
            {
                "action": "Please wait until the server restore your connection",
                "message": "Too many requests in a given amount of time",
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *[(k, v) for k, v in extra if k != b"ratelimit-remaining"],
            (b"ratelimit-remaining", b"0"),
            (b"ratelimit-reset", str(reset_s).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
