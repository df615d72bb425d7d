"""Acting: ``CurlDispatcher``, one ``CurlMulti`` driven by the running asyncio loop, as
tornado's curl client does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import select
import socket
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from urllib.parse import urljoin, urlsplit

import pycurl

from tasks_server.clock import Clock, SystemClock
from tasks_server.models import Call, Outcome, ResolveEntry

from .egress import EgressPolicy, host_address, owner_allows
from .hosts import HostDefaults, HostGovernor
from .options import (
    CurlSettings,
    HstsEntry,
    HstsPreload,
    MimeForm,
    Option,
    PrivateDnsCache,
    curl_options,
    request_url,
)
from .pools import ConnectionPools, new_share, pool_key
from .prepared import Prepared

logger = logging.getLogger(__name__)

# Options whose effect outlives curl_easy_reset (cookie jar, HSTS cache, attached share):
# a handle that used one is closed instead of going back to the pool.
_STATEFUL_OPTIONS = frozenset(
    {pycurl.COOKIEFILE, pycurl.COOKIELIST, pycurl.HSTS_CTRL, pycurl.SHARE}
)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a call needs that does not depend on when it starts, worked out ahead by
    ``CurlDispatcher.prepare``: plain data, no libcurl object."""

    url: str  # the first request's URL, query included
    host: str  # "host:port" (the port defaulting by scheme): the unit of the per-host queue
    refusal: str | None  # why the egress policy refuses the first hop, or None
    failure: Outcome | None = None  # options that cannot be applied
    # None while a DoH server must be pinned first (the pin is one of the options)
    options: tuple[Option, ...] | None = None
    names: tuple[int, ...] = ()  # the options' names, in order
    pool: str | None = None  # the connection pool, unless the call brings its own share
    keeps_state: bool = False  # an option outlives curl_easy_reset: close the handle after
    live: bool = False  # some values describe per-handle objects (forms, HSTS, shares)


# option values that describe per-handle objects, built when the call starts
_LIVE_VALUES = (MimeForm, HstsPreload, PrivateDnsCache)


def _options_plan(call: Call, settings: CurlSettings) -> dict[str, Any]:
    """The options part of a plan (raises what curl_options raises)."""
    options = tuple(curl_options(call, settings))
    names = tuple(option for option, _ in options)
    return {
        "options": options,
        "names": names,
        "pool": None if pycurl.SHARE in names else pool_key(call),
        "keeps_state": not _STATEFUL_OPTIONS.isdisjoint(names),
        "live": any(isinstance(value, _LIVE_VALUES) for _, value in options),
    }


def _header_field(text: str) -> tuple[str, str] | None:
    """A response header line's name and value; None for a line that is none (a folded
    continuation, no colon, the empty line that ends the headers)."""
    name, colon, value = text.partition(":")
    if colon and name and not name[0].isspace():
        return name.strip(), value.strip()
    return None


class _CallFuture(asyncio.Future[Outcome]):
    """The future ``submit`` returns for a call it takes on. ``cancel`` itself drops the
    call (``dropped``), queued or running: a done callback would be paid for by every
    call, not only cancelled ones (a context copy, then a loop handle once the outcome
    is set: 2.2 µs against 0.5 µs for the future alone).

    The future and the call's transfer refer to each other until the call ends: then
    ``resolve`` or ``cancel`` lets go of ``dropped``, so that reference counting frees
    them at once instead of the cycle collector, later and at a cost."""

    __slots__ = ("dropped",)
    dropped: Callable[[], None] | None

    def resolve(self, outcome: Outcome) -> None:
        """End the call with ``outcome`` (unless its caller cancelled it first)."""
        self.dropped = None
        if not self.done():
            self.set_result(outcome)

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        dropped, self.dropped = self.dropped, None
        if dropped is not None:
            dropped()
        return True


@dataclass(slots=True, eq=False)
class _Transfer:
    """One call's mutable state while libcurl works on it."""

    call: Call
    future: _CallFuture
    host: _Host
    plan: _Plan
    curl: Any = None
    holds_host_slot: bool = False
    queued_at: float | None = None  # loop time it joined its host's queue, while there
    host_epoch: int = 0  # the governor's epoch when the call got its host slot
    body: bytearray = field(default_factory=bytearray)
    headers: list[tuple[str, str]] = field(default_factory=list)
    # a call that follows no redirect: the raw header lines, read once it ends
    header_lines: list[bytes] | None = None
    truncated: bool = False
    received: int = 0  # body bytes read, kept or not
    keeps_state: bool = False
    resources: list[Any] = field(default_factory=list)  # CurlMime / CurlShare to close
    policy: EgressPolicy = field(default_factory=EgressPolicy)
    hop_url: str = ""  # the URL of the request libcurl is making now (redirects move it)
    hop_status: int = 0
    denied: str | None = None  # why the egress policy refused a connection or a hop
    pool: str | None = None  # the connection pool the handle is attached to

    def write_body(self, chunk: bytes) -> int | None:
        """WRITEFUNCTION: keep the body up to the cap (nothing when tracing is off) and
        stop the download there: returning 0 makes libcurl abort the transfer."""
        cap = self.call.max_body_bytes
        room = cap - self.received
        self.received += len(chunk)
        if self.call.config.trace_response_data:
            self.body += chunk[: max(room, 0)]
        if self.received > cap:
            self.truncated = True
            return 0
        return None

    def write_header(self, line: bytes) -> int | None:
        """HEADERFUNCTION of a call that follows redirects: keep only the last response's
        headers (redirects, 100, CONNECT), and check where a redirect leads before libcurl
        follows it (returning 0 aborts). Other calls collect the lines (``header_lines``)
        and read them once, when the call ends (``response_headers``)."""
        text = line.decode("latin-1").rstrip("\r\n")
        if text.startswith("HTTP/"):
            self.headers.clear()
            code = text.split(" ", 2)[1:2]
            self.hop_status = int(code[0]) if code and code[0].isdigit() else 0
            return None
        field = _header_field(text)
        if field is not None:
            self.headers.append(field)
            if field[0].lower() == "location" and self._follows_redirect():
                return self._next_hop(field[1])
        return None

    def response_headers(self) -> tuple[tuple[str, str], ...]:
        """The last response's headers, read as ``write_header`` reads them."""
        lines = self.header_lines
        if lines is None:
            return tuple(self.headers)
        headers: list[tuple[str, str]] = []
        for line in lines:
            text = line.decode("latin-1").rstrip("\r\n")
            if text.startswith("HTTP/"):
                headers.clear()
            elif (field := _header_field(text)) is not None:
                headers.append(field)
        return tuple(headers)

    def _follows_redirect(self) -> bool:
        return self.call.config.location and 300 <= self.hop_status < 400 and self.hop_status != 304

    def _next_hop(self, location: str) -> int | None:
        url = urljoin(self.hop_url, location)
        reason = self.hop_refusal(url)
        if reason is not None:
            self.denied = reason
            return 0
        self.hop_url = url
        return None

    def hop_refusal(self, url: str) -> str | None:
        return hop_refusal(self.policy, self.call.allowed_hosts, url)

    def open_socket(self, purpose: int, address: Any) -> socket.socket | int:
        """OPENSOCKETFUNCTION: every connection of this transfer (first request, redirect
        hops, ``resolve`` pins, the proxy) is checked on the address libcurl resolved,
        before a byte is sent. SOCKET_BAD makes libcurl try the next address or fail."""
        ip, port = address.addr[0], address.addr[1]
        proxy = self.call.config.proxy
        if proxy is not None:
            reason = self.policy.proxy_connection(ip, proxy.host)
        else:
            host = urlsplit(self.hop_url).hostname
            reason = self.policy.connection(ip, port, host)
            if reason is None and host is not None:
                reason = owner_allows(self.call.allowed_hosts, host)
        if reason is not None:
            self.denied = reason
            return int(pycurl.SOCKET_BAD)
        sock = socket.socket(address.family, address.socktype, address.protocol)
        # pycurl hands libcurl a dup() of this descriptor; ours is closed with the transfer
        self.resources.append(sock)
        return sock


@dataclass(slots=True, eq=False)
class _Host:
    """One target host and port: calls holding one of its slots, and calls waiting for
    one (in arrival order). One timer per host ends the waits that last too long: the
    oldest waiting call is always the first to expire."""

    name: str
    running: int = 0
    waiting: deque[_Transfer] = field(default_factory=deque)
    expiry: asyncio.TimerHandle | None = None  # due when the oldest wait runs out
    wake: asyncio.Task[None] | None = None  # re-checks the queue when the governor allows


def _host_port(url: str) -> tuple[str, int | None]:
    """Host (lower case) and port of a URL, the port defaulting by scheme; port None
    when the URL cannot be read."""
    try:
        parts = urlsplit(url)
        return parts.hostname or "", parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return "", None


def host_key(url: str) -> str:
    """``host:port`` of a URL, the unit of the per-host cap (the port defaults by scheme)."""
    host, port = _host_port(url)
    return f"{host}:{port}"


def hop_refusal(
    policy: EgressPolicy, allowed_hosts: tuple[str, ...] | None, url: str
) -> str | None:
    """Why the policy refuses a request to ``url`` before any address is known: the deny
    list, written-out or ``localhost`` hosts, ports, the owner's domains (``allowed_hosts``)."""
    host, port = _host_port(url)
    if port is None:
        return f"egress denied: {url!r} is not a valid URL"
    return policy.host(host, port) or owner_allows(allowed_hosts, host)


def _fixed_cap(max_host_connections: int) -> HostDefaults:
    """Only MAX_HOST_CONNECTIONS, as without a governor: no AIMD, rate or circuit."""
    cap = max_host_connections
    return HostDefaults(max_concurrency=cap or 2**31, max_connections=cap, adaptive=False)


def _hsts_reader(entries: tuple[HstsEntry, ...]) -> Callable[[], object]:
    pending: Iterator[HstsEntry] = iter(entries)

    def read() -> tuple[str, dt.datetime | None, bool] | None:
        entry = next(pending, None)
        if entry is None:
            return None
        return (entry.host, entry.expire, entry.include_subdomains)

    return read


def _failure(message: str, curl_code: int = 0) -> Outcome:
    return Outcome(status=0, error=message, curl_code=curl_code)


def _setup_failure(exc: Exception) -> Outcome:
    if isinstance(exc, pycurl.error) and len(exc.args) == 2:
        code, message = exc.args
        return _failure(f"option refused by libcurl: {message}", int(code))
    return _failure(f"option refused: {exc}")


def _outcome(transfer: _Transfer, curl_code: int, message: str | None) -> Outcome:
    getinfo = transfer.curl.getinfo
    timings = {
        "namelookup": getinfo(pycurl.NAMELOOKUP_TIME_T) / 1000,
        "connect": getinfo(pycurl.CONNECT_TIME_T) / 1000,
        "appconnect": getinfo(pycurl.APPCONNECT_TIME_T) / 1000,
        "starttransfer": getinfo(pycurl.STARTTRANSFER_TIME_T) / 1000,
        "total": getinfo(pycurl.TOTAL_TIME_T) / 1000,
    }
    if transfer.truncated and curl_code == pycurl.E_WRITE_ERROR:
        curl_code = 0  # we stopped it at the cap: the answer came, cut short
    denied = bool(curl_code and transfer.denied)
    error = (message or f"curl error {curl_code}") if curl_code else None
    if denied:
        error = transfer.denied
    elif curl_code in _CERTIFICATE_ERRORS:
        # libcurl's text names the file it read, a path on this server
        error = f"{_CERTIFICATE_ERRORS[curl_code]} (libcurl error {curl_code})"
    return Outcome(
        status=getinfo(pycurl.RESPONSE_CODE),
        body=bytes(transfer.body) if curl_code == 0 else b"",
        headers=transfer.response_headers(),
        error=error,
        curl_code=curl_code,
        timed_out=curl_code == pycurl.E_OPERATION_TIMEDOUT,
        truncated=transfer.truncated,
        total_ms=timings["total"],
        timings=timings,
        denied=denied,
    )


def _set_callbacks(transfer: _Transfer) -> None:
    curl = transfer.curl
    curl.setopt(pycurl.WRITEFUNCTION, transfer.write_body)
    if transfer.call.config.location:
        curl.setopt(pycurl.HEADERFUNCTION, transfer.write_header)
    else:
        # a C method, no Python frame per line: the lines are read once, at the end
        transfer.header_lines = []
        curl.setopt(pycurl.HEADERFUNCTION, transfer.header_lines.append)
    curl.setopt(pycurl.OPENSOCKETFUNCTION, transfer.open_socket)


def _doh_needs_pin(call: Call) -> bool:
    doh_url = call.config.doh_url
    if doh_url is None:
        return False
    host = urlsplit(doh_url).hostname or ""
    pinned = any(entry.host == host for entry in call.config.resolve or ())
    return host_address(host) is None and not pinned


_FAILED = select.EPOLLERR | select.EPOLLHUP

# a host queue that gave a call its slot this recently is draining (draining_host_queues)
DRAINING_S = 0.02

_VERDICTS_KEPT = 4096  # first-hop verdicts remembered; all forgotten at once beyond this

_CERTIFICATE_ERRORS = {
    pycurl.E_SSL_CERTPROBLEM: "config.cert / config.key: the client certificate or key "
    "could not be used",
    pycurl.E_SSL_CACERT_BADFILE: "config.ca: the CA certificates could not be read",
}


def _doh_refusal(call: Call, policy: EgressPolicy) -> str | None:
    """libcurl opens DoH connections on internal handles that skip OPENSOCKETFUNCTION, so
    the DoH server is held to the host rules here (it must be https)."""
    doh_url = call.config.doh_url
    if doh_url is None:
        return None
    if not doh_url.lower().startswith("https://"):
        return "egress denied: config.dohUrl must be an https URL"
    return hop_refusal(policy, call.allowed_hosts, doh_url)


class CurlDispatcher:
    """The libcurl ``Dispatcher``: one CurlMulti driven by the loop, no thread per call.

    libcurl tells the loop which sockets to watch (M_SOCKETFUNCTION → add_reader/add_writer)
    and when to wake it (M_TIMERFUNCTION → call_later); each event becomes a
    ``socket_action`` and finished transfers are drained with ``info_read``.

    Two caps, both kept here rather than in libcurl (whose pending queue would start a
    call's timeout while it waits): the ``hosts`` governor (dispatch/hosts.py) decides
    how many calls run at once to one host and port — never more than
    ``max_host_connections``, fewer after 429/503 answers or while its circuit is open —
    and later ones wait in that host's own queue, so a slow host never holds up another;
    at most ``max_connections`` run in all, and calls with a host slot
    wait for a global one in FIFO order. A call is handed to libcurl, and its timeout
    starts, only when it has both. Easy handles are pooled and reset between calls;
    connections are reused through the multi's cache. ``close`` waits ``close_grace_s``
    seconds for in-flight calls before aborting them.

    ``prepare`` works out, ahead of the due time, everything a call needs that does not
    depend on when it starts (the options list, the signature, the egress verdict of its
    first hop), so that at the due time ``submit`` only applies the options to a pooled
    handle: a burst's first calls leave at once and the rest follow at libcurl's pace.
    """

    def __init__(
        self,
        settings: CurlSettings,
        max_connections: int = 1000,
        *,
        close_grace_s: float = 10.0,
        hosts: HostGovernor | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._settings = settings
        # destination backpressure (dispatch/hosts.py); without one, only the fixed cap
        self.hosts = hosts or HostGovernor(_fixed_cap(settings.max_host_connections))
        self._clock = clock or SystemClock()
        self._max_connections = max_connections
        self._close_grace_s = close_grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._multi: Any = None
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0  # loop time the timer is due at
        # libcurl's sockets are watched by an epoll set of the dispatcher's own, which the
        # loop watches as one reader (see _on_socket)
        self._epoll: select.epoll | None = None
        self._interest: dict[int, int] = {}  # fd → the epoll events libcurl waits for
        self._idle: list[Any] = []
        # Idle handles are not reset: each keeps the options of its last call (and that
        # call's callbacks, a few kB) until it is used again. A call setting the same
        # options in the same order then sets only the values that differ, in a burst of
        # like calls the headers alone: 6 µs against 19 µs for a reset and 17 setopt
        # calls. Handles missing here are reset (or new).
        self._applied: dict[Any, _Plan] = {}
        self._waiting: deque[_Transfer] = deque()  # have a host slot, wait for a global one
        self._active: dict[Any, _Transfer] = {}
        self._hosts: dict[str, _Host] = {}
        self._host_waiting = 0  # calls waiting for a slot to their host
        self._queue_moved_at = float("-inf")  # loop time a queued call last got its slot
        # egress verdicts of first hops by (host, port, owner's domains): the policy is
        # fixed for the dispatcher's life, so each is worked out once
        self._verdicts: dict[tuple[str, int, tuple[str, ...] | None], str | None] = {}
        self._pinning: set[asyncio.Task[None]] = set()  # DoH servers being looked up
        self._pools = ConnectionPools()  # per owner and credentials: no shared connection
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._active) + self._host_waiting

    @property
    def waiting_for_host(self) -> int:
        """Calls queued behind their host's connection cap."""
        return self._host_waiting

    @property
    def draining_host_queues(self) -> bool:
        """Calls wait for their host and one of them got its slot within DRAINING_S."""
        if not self._host_waiting or self._loop is None:
            return False
        return self._loop.time() - self._queue_moved_at < DRAINING_S

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("CurlDispatcher is already started")
        self._loop = asyncio.get_running_loop()
        multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, self._max_connections)
        multi.setopt(pycurl.M_MAXCONNECTS, self._max_connections)
        self._multi = multi
        self._epoll = select.epoll()
        self._loop.add_reader(self._epoll.fileno(), self._on_events)

    def prepare(self, call: Call) -> Prepared:
        return Prepared(call, self._plan(call))

    def _plan(self, call: Call) -> _Plan:
        url = request_url(call.request)
        host, port = _host_port(url)  # the query added to the URL leaves these as they are
        host_name = f"{host}:{port}"
        # Checked before any socket: a proxied call never opens one to its target. The
        # owner's domains are read when the call is prepared, a moment before it starts.
        refusal = self._first_hop_refusal(call, url, host, port) or _doh_refusal(
            call, self._settings.egress
        )
        if refusal is not None or _doh_needs_pin(call):
            # the pinned DoH server's address is one of the options
            return _Plan(url, host_name, refusal)
        try:
            return _Plan(url, host_name, None, **_options_plan(call, self._settings))
        except (pycurl.error, ValueError, TypeError) as exc:
            return _Plan(url, host_name, None, failure=_setup_failure(exc))

    def _first_hop_refusal(self, call: Call, url: str, host: str, port: int | None) -> str | None:
        """``_Transfer.hop_refusal`` for the first request to ``url`` (whose host and port
        are given), remembered per host."""
        if port is None:
            return hop_refusal(self._settings.egress, call.allowed_hosts, url)
        key = (host, port, call.allowed_hosts)
        if key not in self._verdicts:
            if len(self._verdicts) >= _VERDICTS_KEPT:
                self._verdicts.clear()
            self._verdicts[key] = hop_refusal(self._settings.egress, call.allowed_hosts, url)
        return self._verdicts[key]

    def submit(self, call: Call | Prepared) -> asyncio.Future[Outcome]:
        if self._loop is None:
            raise RuntimeError("CurlDispatcher.start() has not been awaited")
        prepared = call if isinstance(call, Prepared) else self.prepare(call)
        plan = prepared.plan
        if not isinstance(plan, _Plan):  # prepared by another dispatcher
            plan = self._plan(prepared.call)
        refusal = plan.refusal
        if refusal is not None or plan.failure is not None or self._closed:
            ended: asyncio.Future[Outcome] = self._loop.create_future()
            denied = Outcome(status=0, error=refusal, denied=True) if refusal else None
            ended.set_result(denied or plan.failure or _failure("dispatcher is closed"))
            return ended
        future = _CallFuture(loop=self._loop)
        host = self._hosts.get(plan.host) or self._hosts.setdefault(plan.host, _Host(plan.host))
        policy = self._settings.egress
        transfer = _Transfer(prepared.call, future, host, plan, policy=policy, hop_url=plan.url)
        future.dropped = partial(self._drop, transfer)
        if plan.options is None:
            pinning = self._loop.create_task(self._pin_doh(transfer))
            self._pinning.add(pinning)
            pinning.add_done_callback(self._pinning.discard)
            return future
        self._enqueue(transfer)
        return future

    def _enqueue(self, transfer: _Transfer) -> None:
        """Start the call now or queue it behind its host's cap (behind the calls
        already waiting for that host, which go first)."""
        if transfer.host.waiting or not self._admit(transfer):
            self._wait_for_host(transfer)
        else:
            self._take_host_slot(transfer)
            self._start_waiting()

    async def _pin_doh(self, transfer: _Transfer) -> None:
        """Start ``transfer`` once its DoH server is pinned, or end it with the refusal."""
        outcome = await self._pinned_doh(transfer)
        if outcome is None and (transfer.future.done() or self._closed):
            outcome = _failure("aborted: the dispatcher was closed")
        if outcome is None:
            try:
                options = _options_plan(transfer.call, self._settings)
            except (pycurl.error, ValueError, TypeError) as exc:
                outcome = _setup_failure(exc)
            else:
                transfer.plan = replace(transfer.plan, **options)
        if outcome is None:
            self._enqueue(transfer)
        else:
            transfer.future.resolve(outcome)
            self._forget_idle_host(transfer.host)

    async def _pinned_doh(self, transfer: _Transfer) -> Outcome | None:
        """Resolve the DoH server's name here, keep only addresses the policy allows and
        pin them with a ``resolve`` entry: libcurl's DoH handles skip OPENSOCKETFUNCTION
        but look their host up in the transfer's private DNS cache, where the pin is.
        Returns the failure, or None once ``transfer.call`` carries the pin."""
        assert self._loop is not None
        config = transfer.call.config
        parts = urlsplit(config.doh_url or "")
        host, port = parts.hostname or "", parts.port or 443
        refusal = _doh_refusal(transfer.call, self._settings.egress)
        if refusal is not None:
            return Outcome(status=0, error=refusal, denied=True)
        try:
            infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return _failure(f"config.dohUrl: cannot resolve {host}: {exc}")
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        verdicts = [(a, self._settings.egress.connection(a, port, host)) for a in addresses]
        allowed = tuple(a for a, reason in verdicts if reason is None)
        if not allowed:
            reason = next((r for _, r in verdicts if r), f"egress denied: {host} has no address")
            return Outcome(status=0, error=reason, denied=True)
        pinned = replace(
            config, resolve=(*(config.resolve or ()), ResolveEntry(host, port, allowed))
        )
        transfer.call = replace(transfer.call, config=pinned)
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pinning in list(self._pinning):
            pinning.cancel()
        pending = [t.future for t in (*self._waiting, *self._active.values())]
        if pending:
            await asyncio.wait(pending, timeout=self._close_grace_s)
        aborted = _failure("aborted: the dispatcher was closed")
        for host in list(self._hosts.values()):
            if host.expiry is not None:
                host.expiry.cancel()
                host.expiry = None
            if host.wake is not None:
                host.wake.cancel()
            while host.waiting:
                transfer = host.waiting.popleft()
                self._left_host_queue(transfer)
                transfer.future.resolve(aborted)
        while self._waiting:
            self._waiting.popleft().future.resolve(aborted)
        for transfer in list(self._active.values()):
            self._detach(transfer)
            transfer.future.resolve(aborted)
        self._free_handles()

    # -- starting and finishing transfers -------------------------------------------------

    def _start_waiting(self) -> None:
        while self._waiting and len(self._active) < self._max_connections:
            self._begin(self._waiting.popleft())

    def _begin(self, transfer: _Transfer) -> None:
        curl = transfer.curl = self._idle.pop() if self._idle else pycurl.Curl()
        try:
            self._configure(transfer)
            self._multi.add_handle(curl)
        except (pycurl.error, ValueError, TypeError) as exc:
            self._release(transfer)
            self._settle(transfer, _setup_failure(exc))
            return
        self._active[curl] = transfer

    def _configure(self, transfer: _Transfer) -> None:
        curl, plan = transfer.curl, transfer.plan
        assert plan.options is not None
        previous = self._applied.pop(curl, None)
        if previous is not None and (plan.live or previous.names != plan.names):
            curl.reset()
            previous = None
        if plan.pool is not None:
            transfer.pool = plan.pool
            curl.setopt(pycurl.SHARE, self._pools.acquire(plan.pool))
        setopt = curl.setopt
        if plan.live:
            for option, value in plan.options:
                setopt(option, self._live_value(transfer, value))
        elif previous is not None:
            assert previous.options is not None
            for (option, value), (_, applied) in zip(plan.options, previous.options, strict=True):
                if value != applied:
                    setopt(option, value)
        else:
            for option, value in plan.options:
                setopt(option, value)
        transfer.keeps_state = plan.keeps_state
        _set_callbacks(transfer)
        if not plan.live:  # per-handle objects (forms, HSTS, shares) are never reused
            self._applied[curl] = plan

    def _live_value(self, transfer: _Transfer, value: object) -> object:
        """Build the per-handle object a descriptive option value stands for."""
        if isinstance(value, MimeForm):
            mime = pycurl.CurlMime(transfer.curl)
            for name, data in value.fields:
                mime.add_field(name, data)
            transfer.resources.append(mime)
            return mime
        if isinstance(value, HstsPreload):
            return _hsts_reader(value.entries)
        if isinstance(value, PrivateDnsCache):
            # connections and TLS sessions private too: the transfer uses no pool
            share = new_share(
                pycurl.LOCK_DATA_DNS, pycurl.LOCK_DATA_CONNECT, pycurl.LOCK_DATA_SSL_SESSION
            )
            transfer.resources.append(share)
            return share
        return value

    def _finish(self, curl: Any, curl_code: int, message: str | None) -> None:
        transfer = self._active.get(curl)
        if transfer is None:
            return
        outcome = _outcome(transfer, curl_code, message)
        self._detach(transfer)
        self._settle(transfer, outcome)

    def _settle(self, transfer: _Transfer, outcome: Outcome) -> None:
        """End a call: its host slot goes to the next call waiting for that host, and
        its caller gets the outcome."""
        self._release_host_slot(transfer, outcome)
        transfer.future.resolve(outcome)

    def _detach(self, transfer: _Transfer) -> None:
        """Take an active transfer out of the multi and give its handle back."""
        del self._active[transfer.curl]
        self._multi.remove_handle(transfer.curl)
        self._release(transfer)

    def _release(self, transfer: _Transfer) -> None:
        curl, transfer.curl = transfer.curl, None
        if transfer.pool is not None:
            # curl_easy_reset keeps a share attached: detach it, or the next call made
            # with this handle would start in this pool
            curl.unsetopt(pycurl.SHARE)
            self._pools.release(transfer.pool)
            transfer.pool = None
        if transfer.keeps_state or self._closed or len(self._idle) >= self._max_connections:
            self._applied.pop(curl, None)
            curl.close()
        else:
            if curl not in self._applied:  # its setup failed part way, or used live values
                curl.reset()
            self._idle.append(curl)
        # Closed after the handle lets go of them: a share or mime must outlive its user.
        for resource in transfer.resources:
            resource.close()

    def _drop(self, transfer: _Transfer) -> None:
        """The caller cancelled the call (``_CallFuture.cancel``): drop it, queued or
        running, and give its host slot to the next call waiting for that host."""
        if self._multi is None:
            return
        if transfer.curl is not None and self._active.get(transfer.curl) is transfer:
            self._detach(transfer)
        elif transfer.queued_at is not None:
            transfer.host.waiting.remove(transfer)
            self._left_host_queue(transfer)
            self._forget_idle_host(transfer.host)
        elif transfer in self._waiting:
            self._waiting.remove(transfer)
        self._release_host_slot(transfer, None)
        self._start_waiting()

    # -- the per-host queues --------------------------------------------------------------

    def _admit(self, transfer: _Transfer) -> bool:
        """The one place that decides whether the call's host may start another call
        now; if so, the call then takes one of the host's slots (``_take_host_slot``). The
        governor decides, and counts the call when it says yes."""
        epoch = self.hosts.try_start(transfer.host.name, self._clock.now_ms())
        if epoch is None:
            return False
        transfer.host_epoch = epoch
        return True

    def _take_host_slot(self, transfer: _Transfer) -> None:
        transfer.holds_host_slot = True
        transfer.host.running += 1
        self._waiting.append(transfer)

    def _release_host_slot(self, transfer: _Transfer, outcome: Outcome | None) -> None:
        """The call ended with ``outcome`` (None: its caller cancelled it); its host slot
        goes to the next call waiting for that host."""
        if transfer.holds_host_slot:
            transfer.holds_host_slot = False
            transfer.host.running -= 1
            host = transfer.host.name
            self.hosts.finished(host, transfer.host_epoch, outcome, self._clock.now_ms())
            self._next_for_host(transfer.host)

    def _wait_for_host(self, transfer: _Transfer) -> None:
        assert self._loop is not None
        host = transfer.host
        transfer.queued_at = self._loop.time()
        host.waiting.append(transfer)
        self._host_waiting += 1
        self.hosts.queued(host.name, 1)
        if host.expiry is None:
            self._arm_expiry(host)
        self._arm_host_wake(host)

    def _arm_expiry(self, host: _Host) -> None:
        """Wake when the oldest call waiting for ``host`` has waited ``host_wait_s``."""
        assert self._loop is not None
        host.expiry = None
        if host.waiting:
            oldest = host.waiting[0].queued_at
            assert oldest is not None
            when = oldest + self._settings.host_wait_s
            host.expiry = self._loop.call_at(when, self._host_waits_expired, host)

    def _left_host_queue(self, transfer: _Transfer) -> None:
        """Bookkeeping for a call taken out of its host's queue."""
        transfer.queued_at = None
        self._host_waiting -= 1
        self.hosts.queued(transfer.host.name, -1)

    def _host_waits_expired(self, host: _Host) -> None:
        """End the calls that have waited ``host_wait_s`` for a slot to ``host``."""
        assert self._loop is not None
        wait_s = self._settings.host_wait_s
        why = self.hosts.why_waiting(host.name, self._clock.now_ms())
        message = f"no connection slot to host {host.name} within {wait_s:g} s ({why})"
        now = self._loop.time()
        while host.waiting and (host.waiting[0].queued_at or 0.0) + wait_s <= now:
            transfer = host.waiting.popleft()
            self._left_host_queue(transfer)
            transfer.future.resolve(Outcome(status=0, error=message, timed_out=True))
        self._arm_expiry(host)
        self._forget_idle_host(host)

    def _next_for_host(self, host: _Host) -> None:
        """Start the calls waiting for ``host`` that it may take now, oldest first."""
        while host.waiting and not self._closed and self._admit(host.waiting[0]):
            transfer = host.waiting.popleft()
            self._left_host_queue(transfer)
            self._take_host_slot(transfer)
            if self._loop is not None:
                self._queue_moved_at = self._loop.time()
        self._start_waiting()
        self._arm_host_wake(host)
        self._forget_idle_host(host)

    def _arm_host_wake(self, host: _Host) -> None:
        """While calls wait for a cool-down or a rate token (not for a call to end),
        look at the queue again when the governor says it may move, on the clock."""
        if not host.waiting or host.wake is not None or self._loop is None:
            return
        now_ms = self._clock.now_ms()
        at_ms = self.hosts.next_start_ms(host.name, now_ms)
        if at_ms is not None:
            host.wake = self._loop.create_task(self._wake_host(host, max(at_ms - now_ms, 0)))

    async def _wake_host(self, host: _Host, delay_ms: int) -> None:
        await self._clock.sleep(delay_ms / 1000)
        host.wake = None
        self._next_for_host(host)

    def _forget_idle_host(self, host: _Host) -> None:
        if host.running == 0 and not host.waiting:
            if host.expiry is not None:
                host.expiry.cancel()
                host.expiry = None
            if host.wake is not None:
                host.wake.cancel()
                host.wake = None
            if self._hosts.get(host.name) is host:
                del self._hosts[host.name]
            self.hosts.forget_idle(host.name, self._clock.now_ms())

    def _free_handles(self) -> None:
        for curl in self._idle:
            curl.close()
        self._idle.clear()
        self._applied.clear()
        if self._multi is not None:
            self._multi.close()
            self._multi = None
        self._pools.close()
        # libcurl may call back while closing its connection cache; forget it all afterwards.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._epoll is not None and self._loop is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
        self._interest.clear()

    # -- libcurl ↔ event loop --------------------------------------------------------------

    def _on_socket(self, event: int, fd: int, multi: Any, data: Any) -> None:
        """M_SOCKETFUNCTION: mirror libcurl's interest in ``fd`` onto the dispatcher's epoll
        set.

        The set is changed in place (one ``epoll_ctl``), not through the loop's reader and
        writer registrations: libcurl changes a socket's interest three or four times per
        call (send, receive, idle), and each loop registration builds handles in Python.
        A socket not in ``_interest`` (new, or an idle connection back in use after its
        POLL_REMOVE) is added at once, sparing a failed ``modify`` and its exception.
        ``modify`` goes by the open socket, not the number: libcurl can close a socket and
        get the same fd number back without a POLL_REMOVE in between; the new socket is
        then not in the set (ENOENT) and is added. A closed socket's entry that outlives it
        (the dispatcher still holds the original of libcurl's dup) only causes a spurious
        ``socket_action``, which libcurl ignores."""
        epoll = self._epoll
        if epoll is None:
            return
        if event == pycurl.POLL_REMOVE:
            self._interest.pop(fd, None)
            try:
                epoll.unregister(fd)
            except OSError:  # closed already, which took it out of the set
                pass
            return
        mask = (select.EPOLLIN if event & pycurl.POLL_IN else 0) | (
            select.EPOLLOUT if event & pycurl.POLL_OUT else 0
        )
        known = fd in self._interest
        self._interest[fd] = mask
        if not known:  # a new socket, or an idle one back in use after its POLL_REMOVE
            epoll.register(fd, mask)
            return
        try:
            epoll.modify(fd, mask)
        except FileNotFoundError:
            epoll.register(fd, mask)

    def _on_timer(self, timeout_ms: int) -> None:
        """M_TIMERFUNCTION: libcurl wants ``socket_action(SOCKET_TIMEOUT)`` in ``timeout_ms``
        (-1: no timeout is pending).

        libcurl asks again with every handle added, mostly for 0 ms. A wake-up already
        armed for the same time or earlier is kept rather than replaced: waking early
        costs one ``socket_action`` that finds nothing due, after which ``_on_timeout``
        re-arms from libcurl's own view, so a burst arms one timer, not one per call.
        """
        assert self._loop is not None
        timer = self._timer
        if timeout_ms < 0:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        when = self._loop.time() + timeout_ms / 1000
        if timer is not None:
            if self._timer_at <= when:
                return
            timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timeout)
        self._timer_at = when

    def _on_timeout(self) -> None:
        self._timer = None
        self._drive(pycurl.SOCKET_TIMEOUT, 0)
        if self._multi is None:
            return
        # The loop may fire a hair before libcurl's own clock says the timeout is due; then
        # libcurl does nothing and never asks again, so re-arm from its current view.
        pending_ms = int(self._multi.timeout())
        if pending_ms >= 0 and self._timer is None:
            self._on_timer(pending_ms)

    def _on_events(self) -> None:
        """The epoll set has sockets ready: one ``socket_action`` each, then the finished
        transfers once for them all."""
        if self._epoll is None or self._multi is None:
            return
        for fd, events in self._epoll.poll(0):
            if events & _FAILED:
                # as the loop reports them: readable and writable for whatever was awaited,
                # so that libcurl reads the error or the end of the stream itself
                events |= self._interest.get(fd, 0)
            action = pycurl.CSELECT_IN if events & select.EPOLLIN else 0
            if events & select.EPOLLOUT:
                action |= pycurl.CSELECT_OUT
            self._act(fd, action)
            if self._multi is None:
                return
        self._collect_finished()

    def _drive(self, fd: int, action: int) -> None:
        if self._multi is None:
            return
        self._act(fd, action)
        self._collect_finished()

    def _act(self, fd: int, action: int) -> None:
        try:
            self._multi.socket_action(fd, action)
        except pycurl.error:
            logger.exception("curl socket_action failed for fd %s", fd)

    def _collect_finished(self) -> None:
        while True:
            queued, succeeded, failed = self._multi.info_read()
            for curl in succeeded:
                self._finish(curl, 0, None)
            for curl, code, message in failed:
                self._finish(curl, int(code), message)
            if queued == 0:
                break
        self._start_waiting()
