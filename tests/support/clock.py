"""FakeClock: wall and monotonic time that move only when a test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class FakeClock:
    def __init__(self, now_ms: int = START_MS) -> None:
        self._wall_ms = now_ms
        self._mono = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def now_ms(self) -> int:
        return self._wall_ms

    def seconds_until(self, at_ms: int) -> float:
        return (at_ms - self._wall_ms) / 1000

    def monotonic(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        """A future resolved by ``advance``; its deadline is fixed now, at the call."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if seconds <= 0:
            future.set_result(None)
        else:
            heapq.heappush(self._sleepers, (self._mono + seconds, next(self._ids), future))
        return future

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and wake every sleeper whose deadline has passed."""
        self._mono += seconds
        self._wall_ms += round(seconds * 1000)
        while self._sleepers and self._sleepers[0][0] <= self._mono + 1e-9:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def set_wall(self, now_ms: int) -> None:
        """Jump the wall clock only (monotonic time does not move)."""
        self._wall_ms = now_ms
