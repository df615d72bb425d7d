from __future__ import annotations

from tasks_server.engine.limits import FlowGate, FlowLimits
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


def test_calls_leave_at_the_rate_however_long_their_claims_took() -> None:
    """Tasks admitted at the rate may leave bunched when their claim transactions took
    different times; the send bucket holds a call back until the starts keep the rate."""
    gate = FlowGate()
    gate.limits.configure(REF, FlowControl("key", rate=10))
    for n in range(11):
        gate.note(f"t{n}", REF)
    assert gate.sort([(T0, 0, f"t{n}") for n in range(11)]) == []
    burst = gate.admit(T0, 100)
    assert burst == [f"t{n}" for n in range(10)]
    assert gate.admit(T0 + 100, 100) == ["t10"]  # one token earned in 100 ms
    # the burst's claim took 50 ms, the eleventh's only 20 ms
    assert [gate.send_at_ms(task_id, T0 + 50) for task_id in burst] == [None] * 10
    assert gate.send_at_ms("t10", T0 + 120) == T0 + 150  # 70 ms after the burst: 0.7 token
    assert gate.send_at_ms("t10", T0 + 150) is None
    assert gate.send_at_ms("free", T0) is None  # a task of no key never waits


def test_a_new_rate_refills_the_send_bucket_too() -> None:
    limits = FlowLimits()
    limits.configure(REF, FlowControl("key", rate=2))
    assert [limits.try_send(REF, T0) for _ in range(3)] == [0, 0, 500]
    limits.configure(REF, FlowControl("key", rate=3))
    assert [limits.try_send(REF, T0) for _ in range(4)] == [0, 0, 0, 334]
