"""The host governor alone, with explicit times: AIMD on 429/503, the circuit's states, the
rate, overrides and what the operator is told."""

from __future__ import annotations

from tasks_server.dispatch.hosts import (
    Circuit,
    Ending,
    HostDefaults,
    HostGovernor,
    ending_of,
)
from tasks_server.models import HostLimit, Outcome

HOST = "api.example.com:443"
T0 = 1_000_000
OK = Outcome(status=200)
TOO_MANY = Outcome(status=429)
UNAVAILABLE = Outcome(status=503)
REFUSED = Outcome(status=0, error="connection refused", curl_code=7)


def governor(**defaults: object) -> HostGovernor:
    base: dict[str, object] = {"max_concurrency": 8, "max_connections": 256}
    return HostGovernor(HostDefaults(**(base | defaults)))  # type: ignore[arg-type]


def start(hosts: HostGovernor, count: int, now_ms: int = T0) -> list[int]:
    epochs = [hosts.try_start(HOST, now_ms) for _ in range(count)]
    assert None not in epochs
    return [e for e in epochs if e is not None]


def test_outcomes_are_sorted_by_what_they_say_of_the_host() -> None:
    assert ending_of(OK) is Ending.SUCCESS
    assert ending_of(Outcome(status=404)) is Ending.SUCCESS  # the host answered
    assert ending_of(TOO_MANY) is Ending.THROTTLED
    assert ending_of(UNAVAILABLE) is Ending.THROTTLED
    assert ending_of(Outcome(status=502)) is Ending.FAILURE
    assert ending_of(REFUSED) is Ending.FAILURE
    assert ending_of(Outcome(status=0, error="timed out", curl_code=28)) is Ending.FAILURE
    assert ending_of(Outcome(status=0, error="egress denied", denied=True)) is Ending.NEUTRAL
    assert ending_of(Outcome(status=0, error="option refused", curl_code=48)) is Ending.NEUTRAL
    assert ending_of(None) is Ending.NEUTRAL  # cancelled


def test_concurrency_is_capped_at_the_ceiling() -> None:
    hosts = governor()
    start(hosts, 8)
    assert hosts.try_start(HOST, T0) is None
    assert hosts.next_start_ms(HOST, T0) is None  # only a call ending frees a slot
    hosts.finished(HOST, 0, OK, T0)
    assert hosts.try_start(HOST, T0) is not None


def test_max_host_connections_caps_every_ceiling() -> None:
    hosts = governor(max_concurrency=500, max_connections=3)
    hosts.set_override(HostLimit(HOST, max_concurrency=1000))
    assert hosts.view(HOST, T0).max_concurrency == 3
    start(hosts, 3)
    assert hosts.try_start(HOST, T0) is None
    assert hosts.why_waiting(HOST, T0) == "all MAX_HOST_CONNECTIONS=3 connections to it were busy"


def test_a_429_halves_the_limit_once_per_window_and_successes_add_it_back() -> None:
    hosts = governor()
    epochs = start(hosts, 8)
    for epoch in epochs[:4]:  # four answers of the same window: one halving
        hosts.finished(HOST, epoch, TOO_MANY, T0 + 10)
    view = hosts.view(HOST, T0 + 10)
    assert view.concurrency == 4
    assert (view.last_throttled_status, view.last_throttled_at_ms, view.throttled) == (
        429,
        T0 + 10,
        4,
    )
    later = hosts.try_start(HOST, T0 + 20)  # 4 in flight, limit 4: none may start
    assert later is None
    for epoch in epochs[4:]:
        hosts.finished(HOST, epoch, OK, T0 + 30)  # four successes: 4 + 1/4 + ... ≈ 4.9
    assert hosts.view(HOST, T0 + 30).concurrency == 4
    epoch = hosts.try_start(HOST, T0 + 40)
    assert epoch is not None
    hosts.finished(HOST, epoch, OK, T0 + 50)
    assert hosts.view(HOST, T0 + 50).concurrency == 5  # additive: a window of successes adds one
    epoch = hosts.try_start(HOST, T0 + 60)
    assert epoch is not None
    hosts.finished(HOST, epoch, TOO_MANY, T0 + 70)  # a call of the new window halves again
    assert hosts.view(HOST, T0 + 70).concurrency == 2


def test_the_limit_never_drops_below_one() -> None:
    hosts = governor(max_concurrency=2)
    for step in range(5):
        epoch = hosts.try_start(HOST, T0 + step)
        assert epoch is not None
        hosts.finished(HOST, epoch, TOO_MANY, T0 + step)
    assert hosts.view(HOST, T0).concurrency == 1
    assert hosts.try_start(HOST, T0 + 10) is not None


def test_the_circuit_opens_after_n_failures_probes_once_and_closes() -> None:
    hosts = governor(circuit_failures=3, circuit_cooldown_ms=30_000)
    for epoch in start(hosts, 3):
        hosts.finished(HOST, epoch, REFUSED, T0 + 5)
    view = hosts.view(HOST, T0 + 5)
    assert view.circuit is Circuit.OPEN and view.reopen_at_ms == T0 + 30_005
    assert view.circuit_opened == 1 and view.last_failure == "connection refused"
    assert hosts.try_start(HOST, T0 + 30_004) is None
    assert hosts.next_start_ms(HOST, T0 + 10) == T0 + 30_005
    probe = hosts.try_start(HOST, T0 + 30_005)
    assert probe is not None  # the cool-down is over: one probe
    assert hosts.view(HOST, T0 + 30_005).circuit is Circuit.HALF_OPEN
    assert hosts.try_start(HOST, T0 + 30_006) is None  # exactly one
    hosts.queued(HOST, 1)
    reason = hosts.view(HOST, T0 + 30_006).waiting_reason
    assert reason == "circuit half-open: one probe call in flight"
    hosts.finished(HOST, probe, OK, T0 + 30_010)
    assert hosts.view(HOST, T0 + 30_010).circuit is Circuit.CLOSED
    assert hosts.view(HOST, T0 + 30_010).failures == 0
    assert hosts.try_start(HOST, T0 + 30_011) is not None


def test_a_failed_probe_opens_the_circuit_again() -> None:
    hosts = governor(circuit_failures=2, circuit_cooldown_ms=1000)
    for epoch in start(hosts, 2):
        hosts.finished(HOST, epoch, Outcome(status=500), T0)
    probe = hosts.try_start(HOST, T0 + 1000)
    assert probe is not None
    hosts.finished(HOST, probe, Outcome(status=502), T0 + 1200)
    view = hosts.view(HOST, T0 + 1200)
    assert view.circuit is Circuit.OPEN and view.reopen_at_ms == T0 + 2200
    assert view.circuit_opened == 2


def test_successes_between_failures_keep_the_circuit_closed() -> None:
    hosts = governor(circuit_failures=3)
    for outcome in (REFUSED, REFUSED, OK, REFUSED, REFUSED):
        epoch = hosts.try_start(HOST, T0)
        assert epoch is not None
        hosts.finished(HOST, epoch, outcome, T0)
    assert hosts.view(HOST, T0).circuit is Circuit.CLOSED


def test_a_rate_spaces_starts_and_says_when_the_next_may_go() -> None:
    hosts = governor(max_rate=2.0)
    start(hosts, 2)  # the burst equals the rate
    assert hosts.try_start(HOST, T0) is None
    assert hosts.next_start_ms(HOST, T0) == T0 + 500
    assert hosts.try_start(HOST, T0 + 499) is None
    assert hosts.try_start(HOST, T0 + 500) is not None
    hosts.queued(HOST, 1)
    assert hosts.view(HOST, T0 + 500).waiting_reason == "rate limit 2 calls/s reached"


def test_overrides_apply_to_one_port_or_every_port_of_a_name() -> None:
    hosts = governor(max_concurrency=8, max_rate=0.0)
    hosts.load([HostLimit("api.example.com", max_rate=5.0)])
    assert hosts.view(HOST, T0).max_rate == 5.0
    assert hosts.view("api.example.com:8443", T0).max_rate == 5.0
    hosts.set_override(HostLimit(HOST, max_concurrency=2))
    view = hosts.view(HOST, T0)
    assert (view.max_concurrency, view.max_rate, view.concurrency) == (2, None, 2)
    hosts.drop_override(HOST)
    assert hosts.view(HOST, T0).max_rate == 5.0


def test_an_override_applies_to_a_host_with_live_state() -> None:
    hosts = governor(max_concurrency=8)
    start(hosts, 3)
    hosts.set_override(HostLimit(HOST, max_concurrency=3))
    assert hosts.try_start(HOST, T0) is None
    hosts.set_override(HostLimit(HOST, max_concurrency=10))
    assert hosts.view(HOST, T0).concurrency == 10
    assert hosts.try_start(HOST, T0) is not None


def test_idle_hosts_at_rest_are_forgotten_and_troubled_ones_kept() -> None:
    hosts = governor()
    epoch = hosts.try_start(HOST, T0)
    assert epoch is not None
    hosts.finished(HOST, epoch, OK, T0)
    hosts.forget_idle(HOST, T0)
    assert hosts.views(T0) == []
    epoch = hosts.try_start(HOST, T0)
    assert epoch is not None
    hosts.finished(HOST, epoch, TOO_MANY, T0)
    hosts.forget_idle(HOST, T0)
    assert [v.host for v in hosts.views(T0)] == [HOST]  # its last 429 stays visible


def test_a_fixed_cap_governor_neither_adapts_nor_opens() -> None:
    hosts = governor(adaptive=False, max_concurrency=2)
    for _ in range(10):
        epoch = hosts.try_start(HOST, T0)
        assert epoch is not None
        hosts.finished(HOST, epoch, UNAVAILABLE, T0)
    view = hosts.view(HOST, T0)
    assert (view.concurrency, view.circuit) == (2, Circuit.CLOSED)
