"""Destination backpressure, per target host and port, shared by every owner: a
concurrency limit that halves on 429 or 503 and grows back additively on successes
(AIMD), an optional start rate, and a circuit that opens after consecutive failures and
is probed with exactly one call after a cool-down.

Pure: time comes in as ``now_ms``. The dispatcher asks ``try_start`` before a call to a
host leaves its queue and tells ``finished`` how it ended; docs/architecture.md
("Destination backpressure") describes how the limits relate to MAX_HOST_CONNECTIONS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum

from ..models import HostLimit, Outcome

THROTTLE_STATUSES = frozenset({429, 503})
# libcurl codes that say the host could not be reached or did not answer: couldn't
# resolve, couldn't connect, timed out, TLS handshake, sending or receiving failed,
# empty reply. Refusals of our own (egress, options) say nothing of the host.
CONNECTION_FAILURES = frozenset({6, 7, 28, 35, 52, 55, 56})
KEEP_TROUBLED_MS = 3_600_000  # an idle host's state is kept this long after a 429/503/failure
MAX_IDLE_HOSTS = 10_000  # idle host states kept at most (the view and the metrics)


class Circuit(StrEnum):
    """A host's circuit, as shown in ``GET /v1/hosts``."""

    CLOSED = "closed"  # calls go out, within the limits
    OPEN = "open"  # nothing goes out until the cool-down ends
    HALF_OPEN = "half-open"  # one call (the probe) goes out; its outcome decides


class Ending(Enum):
    """What an ended call says about its host."""

    SUCCESS = "success"  # an answer that is neither 5xx nor 429
    THROTTLED = "throttled"  # 429 (503 is THROTTLED and a failure)
    FAILURE = "failure"  # 5xx, or the host could not be reached
    NEUTRAL = "neutral"  # cancelled, refused by us, or a failure of our own


def ending_of(outcome: Outcome | None) -> Ending:
    if outcome is None or outcome.denied:
        return Ending.NEUTRAL
    if outcome.status in THROTTLE_STATUSES:
        return Ending.THROTTLED
    if outcome.status >= 500:
        return Ending.FAILURE
    if outcome.status == 0:
        return Ending.FAILURE if outcome.curl_code in CONNECTION_FAILURES else Ending.NEUTRAL
    return Ending.SUCCESS


@dataclass(frozen=True, slots=True)
class HostDefaults:
    """The server-wide settings. ``max_connections`` (MAX_HOST_CONNECTIONS, 0 = none) is a
    hard cap no override lifts; ``max_concurrency`` (HOST_MAX_CONCURRENCY) is the default
    ceiling of the adaptive limit; ``max_rate`` (HOST_MAX_RATE) starts per second, 0 =
    none; ``circuit_failures`` (HOST_CIRCUIT_FAILURES, 0 = never open) and
    ``circuit_cooldown_ms`` (HOST_CIRCUIT_COOLDOWN_S)."""

    max_concurrency: int = 256
    max_rate: float = 0.0
    max_connections: int = 256
    circuit_failures: int = 5
    circuit_cooldown_ms: int = 30_000
    adaptive: bool = True  # False: only the fixed caps (no AIMD, no circuit)


@dataclass(slots=True)
class HostState:
    """One host's limits and live state."""

    name: str
    ceiling: int  # the configured concurrency, capped by MAX_HOST_CONNECTIONS
    rate: float | None  # starts per second; None: no rate limit
    limit: float  # the adaptive concurrency limit, 1 … ceiling
    tokens: float = 0.0
    tokens_at_ms: int | None = None
    circuit: Circuit = Circuit.CLOSED
    failures: int = 0  # consecutive failures
    reopen_at_ms: int | None = None  # while open: when the probe may go
    probing: bool = False
    epoch: int = 0  # bumped by each decrease: calls started before it cannot halve again
    in_flight: int = 0
    waiting: int = 0
    last_throttled_status: int | None = None
    last_throttled_at_ms: int | None = None
    throttled: int = 0  # 429/503 answers, counted
    opened: int = 0  # times the circuit opened
    last_failure: str | None = None
    troubled_at_ms: int | None = None  # the last 429/503 or failure

    @property
    def concurrency(self) -> int:
        """The calls that may run at once now."""
        return max(1, min(self.ceiling, math.floor(self.limit)))

    def refill(self, now_ms: int) -> None:
        if self.rate is None:
            return
        burst = max(1.0, self.rate)
        if self.tokens_at_ms is None:
            self.tokens = burst
        elif now_ms > self.tokens_at_ms:  # a clock stepping back earns nothing
            earned = (now_ms - self.tokens_at_ms) * self.rate / 1000
            self.tokens = min(burst, self.tokens + earned)
        else:
            return
        self.tokens_at_ms = now_ms

    def blocker(self, now_ms: int) -> str | None:
        """Why a call may not start now (None: it may)."""
        # Asked for every call: the usual closed circuit costs one look-up of a member
        # (on Python 3.11 each ``Circuit.X`` goes through EnumType.__getattr__, ~120 ns).
        if self.circuit is not Circuit.CLOSED:
            if self.circuit is Circuit.OPEN:
                if self.reopen_at_ms is not None and now_ms < self.reopen_at_ms:
                    return "circuit open"
                self.circuit, self.reopen_at_ms = Circuit.HALF_OPEN, None
            return "circuit half-open: one probe call in flight" if self.probing else None
        if self.in_flight >= self.concurrency:
            return "concurrency"
        if self.rate is not None:
            self.refill(now_ms)
            if self.tokens < 1:
                return "rate"
        return None


@dataclass(frozen=True, slots=True)
class HostView:
    """What ``GET /v1/hosts`` shows of one host."""

    host: str
    max_concurrency: int  # configured ceiling (override or HOST_MAX_CONCURRENCY, capped)
    max_rate: float | None
    override: HostLimit | None
    concurrency: int  # effective now (AIMD)
    in_flight: int
    waiting: int
    circuit: Circuit
    failures: int
    reopen_at_ms: int | None
    last_throttled_status: int | None
    last_throttled_at_ms: int | None
    throttled: int
    circuit_opened: int
    last_failure: str | None
    waiting_reason: str | None  # why calls wait, in words; None when none waits


class HostGovernor:
    """Every known host's state and the admin's overrides. Hosts are ``host:port``, as
    the dispatcher's queues; an override names ``host:port`` or a bare host name (every
    port). States of idle hosts at rest are dropped."""

    def __init__(self, defaults: HostDefaults | None = None) -> None:
        self.defaults = defaults or HostDefaults()
        self._states: dict[str, HostState] = {}
        self._overrides: dict[str, HostLimit] = {}

    # -- overrides ------------------------------------------------------------------------

    def load(self, overrides: Iterable[HostLimit]) -> None:
        """Replace every override (start-up: what the store holds)."""
        self._overrides = {limit.host: limit for limit in overrides}
        self._reconfigure()

    def set_override(self, limit: HostLimit) -> None:
        self._overrides[limit.host] = limit
        self._reconfigure()

    def drop_override(self, host: str) -> None:
        self._overrides.pop(host, None)
        self._reconfigure()

    def override_for(self, name: str) -> HostLimit | None:
        found = self._overrides.get(name)
        if found is None and ":" in name:
            found = self._overrides.get(name.rsplit(":", 1)[0])
        return found

    def _limits(self, name: str) -> tuple[int, float | None]:
        defaults = self.defaults
        override = self.override_for(name)
        concurrency = defaults.max_concurrency
        rate = defaults.max_rate or None
        if override is not None:
            concurrency = override.max_concurrency or concurrency
            rate = override.max_rate if override.max_rate is not None else rate
        if defaults.max_connections > 0:
            concurrency = min(concurrency, defaults.max_connections)
        return max(concurrency, 1), rate

    def _reconfigure(self) -> None:
        for state in self._states.values():
            ceiling, rate = self._limits(state.name)
            if ceiling != state.ceiling:
                state.limit = min(state.limit, ceiling) if state.limit < state.ceiling else ceiling
            state.ceiling = ceiling
            if rate != state.rate:
                state.rate, state.tokens_at_ms = rate, None  # a new rate starts with its burst

    # -- the dispatcher's questions and reports ---------------------------------------------

    def state(self, name: str) -> HostState:
        state = self._states.get(name)
        if state is None:
            ceiling, rate = self._limits(name)
            state = self._states[name] = HostState(name, ceiling, rate, float(ceiling))
        return state

    def try_start(self, name: str, now_ms: int) -> int | None:
        """Admit one call to ``name`` if its limits allow it now: returns the host's epoch
        (hand it back to ``finished``), or None when the call must wait."""
        state = self.state(name)
        if state.blocker(now_ms) is not None:
            return None
        if state.rate is not None:
            state.tokens -= 1
        if state.circuit is Circuit.HALF_OPEN:
            state.probing = True
        state.in_flight += 1
        return state.epoch

    def next_start_ms(self, name: str, now_ms: int) -> int | None:
        """When a waiting call may start without another call ending first (the circuit's
        cool-down or the next rate token); None when only an ending call can free it."""
        state = self.state(name)
        reason = state.blocker(now_ms)
        if reason == "circuit open":
            return state.reopen_at_ms
        if reason == "rate" and state.rate:
            return now_ms + math.ceil((1 - state.tokens) * 1000 / state.rate)
        return now_ms if reason is None else None

    def queued(self, name: str, delta: int) -> None:
        """``delta`` calls joined (+) or left (-) the host's queue."""
        self.state(name).waiting += delta

    def finished(self, name: str, epoch: int, outcome: Outcome | None, now_ms: int) -> None:
        """A call admitted at ``epoch`` ended (``outcome`` None: cancelled)."""
        state = self.state(name)
        state.in_flight = max(state.in_flight - 1, 0)
        ending = ending_of(outcome)
        probe, state.probing = state.probing and state.circuit is Circuit.HALF_OPEN, False
        if not self.defaults.adaptive or ending is Ending.NEUTRAL:
            return
        assert outcome is not None
        if ending is Ending.SUCCESS:
            self._succeeded(state)
            return
        if ending is Ending.THROTTLED:
            self._throttled(state, epoch, outcome.status, now_ms)
        if ending is Ending.FAILURE or outcome.status >= 500:
            self._failed(state, outcome, now_ms, probe)

    def _succeeded(self, state: HostState) -> None:
        state.failures = 0
        state.circuit, state.reopen_at_ms = Circuit.CLOSED, None
        # additive increase: one more slot per full window of successes, as TCP's
        # congestion avoidance grows by one segment per round trip
        state.limit = min(float(state.ceiling), state.limit + 1 / max(state.limit, 1.0))

    def _throttled(self, state: HostState, epoch: int, status: int, now_ms: int) -> None:
        state.throttled += 1
        state.last_throttled_status, state.last_throttled_at_ms = status, now_ms
        state.troubled_at_ms = now_ms
        if epoch == state.epoch:  # one halving per window: later answers of it do not count
            state.limit = max(1.0, math.floor(min(state.limit, state.ceiling)) / 2)
            state.epoch += 1

    def _failed(self, state: HostState, outcome: Outcome, now_ms: int, probe: bool) -> None:
        state.failures += 1
        state.last_failure = outcome.error or f"HTTP {outcome.status}"
        state.troubled_at_ms = now_ms
        threshold = self.defaults.circuit_failures
        if probe or (threshold > 0 and state.failures >= threshold):
            if state.circuit is not Circuit.OPEN:
                state.opened += 1
            state.circuit = Circuit.OPEN
            state.reopen_at_ms = now_ms + self.defaults.circuit_cooldown_ms

    def forget_idle(self, name: str, now_ms: int) -> None:
        """The host has no call running or waiting: drop its state if it is at rest (or
        too many idle hosts are kept), so memory follows the busy hosts, not all hosts."""
        state = self._states.get(name)
        if state is None or state.in_flight or state.waiting:
            return
        troubled_at = state.troubled_at_ms
        at_rest = (
            state.circuit is Circuit.CLOSED
            and state.failures == 0
            and state.limit >= state.ceiling
            and (troubled_at is None or now_ms - troubled_at > KEEP_TROUBLED_MS)
            and (state.rate is None or state.tokens_at_ms is None or state.tokens >= state.rate)
        )
        if at_rest or len(self._states) > MAX_IDLE_HOSTS:
            del self._states[name]

    # -- what the operator sees -----------------------------------------------------------

    def view(self, name: str, now_ms: int) -> HostView:
        state = self._states.get(name)
        if state is None:  # nothing known: the limits it would get
            ceiling, rate = self._limits(name)
            state = HostState(name, ceiling, rate, float(ceiling))
        reason = state.blocker(now_ms) if state.waiting else None
        return HostView(
            host=name,
            max_concurrency=state.ceiling,
            max_rate=state.rate,
            override=self.override_for(name),
            concurrency=state.concurrency,
            in_flight=state.in_flight,
            waiting=state.waiting,
            circuit=state.circuit,
            failures=state.failures,
            reopen_at_ms=state.reopen_at_ms,
            last_throttled_status=state.last_throttled_status,
            last_throttled_at_ms=state.last_throttled_at_ms,
            throttled=state.throttled,
            circuit_opened=state.opened,
            last_failure=state.last_failure,
            waiting_reason=None if reason is None else self._explain(state, reason),
        )

    def why_waiting(self, name: str, now_ms: int) -> str:
        """Why a call to ``name`` cannot start now, in words."""
        state = self.state(name)
        reason = state.blocker(now_ms)
        return "no limit reached" if reason is None else self._explain(state, reason)

    def views(self, now_ms: int) -> list[HostView]:
        """Every host with live state, and every override, by name."""
        names = set(self._states) | set(self._overrides)
        return [self.view(name, now_ms) for name in sorted(names)]

    def _explain(self, state: HostState, reason: str) -> str:
        if reason == "circuit open":
            return (
                f"circuit open after {state.failures} consecutive failures "
                f"(last: {state.last_failure}); one probe call goes at {state.reopen_at_ms}"
            )
        if reason == "concurrency":
            cap = self.defaults.max_connections
            if state.concurrency < state.ceiling:
                return (
                    f"concurrency limit {state.concurrency} of {state.ceiling} reached "
                    f"(lowered after HTTP {state.last_throttled_status} answers)"
                )
            if cap and state.ceiling == cap:
                return f"all MAX_HOST_CONNECTIONS={cap} connections to it were busy"
            return f"concurrency limit {state.ceiling} reached"
        if reason == "rate":
            return f"rate limit {state.rate:g} calls/s reached"
        return reason
