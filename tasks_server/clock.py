"""Time as a collaborator: wall milliseconds, a monotonic clock and sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in integer epoch milliseconds (UTC)."""

    def seconds_until(self, at_ms: int) -> float:
        """Seconds of wall-clock time from now until ``at_ms`` (negative once it has
        passed), to the clock's full precision: ``at_ms - now_ms()`` is up to a
        millisecond too long, since ``now_ms`` drops the fraction."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""

    def sleep(self, seconds: float) -> Awaitable[None]:
        """An awaitable that completes after ``seconds`` of this clock's time.

        The deadline is fixed when ``sleep`` is called, not when it is first awaited.
        """


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def seconds_until(self, at_ms: int) -> float:
        return at_ms / 1000 - time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(max(seconds, 0.0))


async def sleep_or_wake(clock: Clock, delay_s: float, wake: asyncio.Event) -> None:
    """Return after ``delay_s`` seconds of ``clock`` time, or as soon as ``wake`` is set.

    The background loops park here, so they never poll on a fixed period: an
    idle server does no work, and a wake-up is seen at once.
    """
    waker = asyncio.ensure_future(wake.wait())
    sleeper = asyncio.ensure_future(clock.sleep(delay_s))
    try:
        await asyncio.wait((waker, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waker.cancel()
        sleeper.cancel()


class Backoff:
    """Growing pauses between tries of something that failed for now (a write the
    database refused): ``first_s``, doubled per failure up to ``most_s``; ``reset`` after
    a success. A wake-up event ends a pause early."""

    def __init__(self, clock: Clock, first_s: float = 0.05, most_s: float = 2.0) -> None:
        self._clock = clock
        self._first_s = first_s
        self._most_s = most_s
        self._next_s = first_s

    def reset(self) -> None:
        self._next_s = self._first_s

    async def wait(self, wake: asyncio.Event) -> None:
        delay_s, self._next_s = self._next_s, min(self._next_s * 2, self._most_s)
        await sleep_or_wake(self._clock, delay_s, wake)
