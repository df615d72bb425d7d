from __future__ import annotations

from tasks_server.clock import SystemClock


def test_seconds_until_is_measured_from_the_time_itself_not_the_whole_millisecond() -> None:
    clock = SystemClock()
    now_ms = clock.now_ms()
    # the millisecond now_ms names has begun: the time until it is not positive
    assert -0.5 < clock.seconds_until(now_ms) <= 0
    assert 0.5 < clock.seconds_until(now_ms + 1000) <= 1.0
