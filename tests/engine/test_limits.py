from __future__ import annotations

from tasks_server.engine.limits import FlowLimits
from tasks_server.models import FlowControl, FlowPeriod

REF = ("owner", "key")
T0 = 1_000_000


def starts(limits: FlowLimits, now_ms: int, wanted: int = 1000) -> int:
    count = 0
    while count < wanted and limits.try_start(REF, now_ms):
        count += 1
    return count


def test_rate_is_a_token_bucket_with_a_burst_of_the_rate() -> None:
    limits = FlowLimits()
    limits.configure(REF, FlowControl("key", rate=10))
    assert starts(limits, T0) == 10  # the burst
    assert starts(limits, T0 + 99) == 0
    assert limits.next_start_ms(REF, T0 + 99) == T0 + 100
    assert starts(limits, T0 + 100) == 1
    assert starts(limits, T0 + 1100) == 10
    assert starts(limits, T0 + 60_000) == 10  # never more than the burst after a pause


def test_per_minute_and_per_hour_periods() -> None:
    limits = FlowLimits()
    limits.configure(REF, FlowControl("key", rate=2, period=FlowPeriod.MINUTE))
    assert starts(limits, T0) == 2
    assert limits.next_start_ms(REF, T0) == T0 + 30_000
    assert starts(limits, T0 + 29_999) == 0 and starts(limits, T0 + 30_000) == 1
    hourly = FlowLimits()
    hourly.configure(REF, FlowControl("key", rate=1, period=FlowPeriod.HOUR))
    assert starts(hourly, T0) == 1 and hourly.next_start_ms(REF, T0) == T0 + 3_600_000


def test_parallelism_caps_calls_in_flight() -> None:
    limits = FlowLimits()
    limits.configure(REF, FlowControl("key", parallelism=3))
    assert starts(limits, T0) == 3
    assert limits.next_start_ms(REF, T0) is None  # only a call ending frees a slot
    limits.finish(REF)
    assert starts(limits, T0) == 1 and limits.in_flight(REF) == 3


def test_a_paused_key_starts_nothing_and_the_last_configuration_wins() -> None:
    limits = FlowLimits()
    limits.configure(REF, FlowControl("key", rate=5), paused=True)
    assert starts(limits, T0) == 0 and limits.next_start_ms(REF, T0) is None
    limits.configure(REF, FlowControl("key", rate=2))  # a registration: still paused
    assert starts(limits, T0) == 0
    limits.configure(REF, FlowControl("key", rate=2), paused=False)
    assert starts(limits, T0) == 2
