"""ASGI middleware at the edge: security headers, the throttle and a request log line."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..clock import Clock
from ..errors import PayloadTooLarge, Throttled
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


class Edge:
    def __init__(
        self,
        app: ASGIApp,
        clock: Clock,
        throttle: Throttle | None,
        log_requests: bool,
        on_request: RequestObserver | None = None,
        max_body_bytes: int | None = None,
        auth_failures: TokenBuckets | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # failed authentications (401/403) per client address and per owner id named
        self.auth_failures = auth_failures
        self.clock = clock
        self.throttle = throttle
        self.log_requests = log_requests
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        extra: list[tuple[bytes, bytes]] = list(SECURITY_HEADERS)
        status_holder = [500]
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
                await self.app(scope, receive, send_with_headers)
        finally:
            self._count_failure(status_holder[0], guessing)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if self.log_requests:
                # the path only: query strings and headers may carry secrets
                logger.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    scope["path"],
                    status_holder[0],
                    elapsed_ms,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status_holder[0],
                        "duration_ms": round(elapsed_ms, 3),
                    },
                )
            if self.on_request is not None:
                route = getattr(scope.get("route"), "path", "")  # set by Starlette's router
                self.on_request(scope["method"], route, status_holder[0], elapsed_ms)

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
