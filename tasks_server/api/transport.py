"""Bounded connections: what uvicorn's HTTP protocol lacks, added around it.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no limit on
how long a client may take to send a request head or body, and no cap on connections
other than ``limit_concurrency``, which still accepts each socket (and spends its file
descriptor) to answer 503. ``guarded_protocol`` adds a head timeout (from the connection's
first byte or from its start, whichever is later), a timeout between body chunks, and a
cap on open connections that evicts the oldest idle one, so a full house of idle sockets
never locks out a real request such as ``/healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

# descriptors kept for everything but client connections: the database and its -wal,
# logs, the listener, libcurl's resolver pipes
_RESERVED_DESCRIPTORS = 64


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float  # from a request's first byte (or the connection's start)
    body_timeout_s: float  # the longest wait between two chunks of a request body
    max_connections: int  # open client connections; above it the oldest idle one goes


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def connection_cap(descriptors: int, outgoing: int, configured: int) -> int:
    """Client connections that fit below ``descriptors`` beside ``outgoing`` calls and a
    reserve (at least half the descriptors go to clients); ``configured`` (0: no setting)
    only lowers it."""
    reserve = min(outgoing + _RESERVED_DESCRIPTORS, descriptors // 2)
    fitting = max(1, descriptors - reserve)
    return min(configured, fitting) if configured > 0 else fitting


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the ``limits`` of the subclass that
    ``guarded_protocol`` makes (one per server: the idle list is per server)."""

    limits: ClassVar[ConnectionLimits]
    idle: ClassVar[OrderedDict[GuardedProtocol, None]]  # oldest first
    _timer: asyncio.TimerHandle | None = None
    _deadline: float | None = None  # loop time; None: no timeout running
    _status: bytes | None = None  # what a timeout answers (None: only close)
    _in_request = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()
        self._idle()
        self._arm(self.limits.header_timeout_s, b"408")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.idle.pop(self, None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.idle.pop(self, None)
        self._in_request = True
        if self._deadline is None:  # not already counting since the connection began
            self._arm(self.limits.header_timeout_s, b"408")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s, None)

    def on_body(self, body: bytes) -> None:
        self._arm(self.limits.body_timeout_s, None)  # another chunk came: the clock restarts
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._in_request = False
        if not self.transport.is_closing():
            self._idle()

    def _idle(self) -> None:
        self.idle[self] = None
        self.idle.move_to_end(self)

    def _make_room(self) -> None:
        """Close the oldest idle connection, or this new one when none is self.idle."""
        for other in self.idle:
            if other is not self:
                self.idle.pop(other)
                other.transport.close()
                return
        logger.warning("connection cap (%d) reached: refusing one", self.limits.max_connections)
        self.transport.close()

    def _arm(self, delay_s: float, status: bytes | None) -> None:
        """Time out ``delay_s`` from now (408 with ``status``). Re-arming only moves the
        deadline: the timer, when it fires early, sleeps again until the deadline, so a
        request costs no timer of its own for each of its events."""
        self._deadline = self.loop.time() + delay_s
        self._status = status
        if self._timer is None or self._timer.when() > self._deadline:
            if self._timer is not None:  # set for a later deadline
                self._timer.cancel()
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    def _disarm(self) -> None:
        self._deadline = None

    def _check_deadline(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)
            return
        self._deadline = None
        self._timed_out(self._status)

    def _timed_out(self, status: bytes | None) -> None:
        """A head (408, when nothing was answered yet) or a body that did not arrive
        in time: the connection closes; a handler waiting on the body sees a hang-up."""
        if self.transport.is_closing():
            return
        if status is not None and self._in_request:
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """A GuardedProtocol class with ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    attributes = {"limits": limits, "idle": OrderedDict()}
    return type("GuardedProtocol", (GuardedProtocol,), attributes)


def uvicorn_options(limits: ConnectionLimits, keep_alive_s: float) -> dict[str, Any]:
    """The uvicorn.Config arguments that carry the limits."""
    return {"http": guarded_protocol(limits), "timeout_keep_alive": keep_alive_s}
