"""Token buckets for the guessing limits and the per-owner request budgets: pure
bookkeeping on times the caller passes (epoch ms), no I/O."""

from __future__ import annotations

import math

_MAX_KEYS = 100_000  # beyond this many tracked clients, start afresh (memory stays bounded)


class TokenBuckets:
    """One bucket per key (a client address, an owner id): ``capacity`` tokens, refilled
    at ``capacity`` per ``period_ms``. A full bucket is not stored."""

    def __init__(self, capacity: int, period_ms: int = 60_000) -> None:
        self.capacity = capacity
        self.period_ms = period_ms
        self._buckets: dict[str, tuple[float, int]] = {}  # key → (tokens, at ms)

    def _level(self, key: str, now_ms: int, capacity: int) -> float:
        tokens, at = self._buckets.get(key, (float(capacity), now_ms))
        refilled = tokens + (now_ms - at) * capacity / self.period_ms
        return min(float(capacity), refilled)

    def wait_s(self, key: str, now_ms: int, capacity: int | None = None) -> int:
        """Seconds until ``key`` has a token (0: it has one now)."""
        capacity = self.capacity if capacity is None else capacity
        missing = 1.0 - self._level(key, now_ms, capacity)
        if missing <= 0:
            return 0
        return max(1, math.ceil(missing * self.period_ms / capacity / 1000))

    def take(self, key: str, now_ms: int, capacity: int | None = None) -> int:
        """Take a token if there is one; returns 0, or the seconds to wait when empty."""
        capacity = self.capacity if capacity is None else capacity
        level = self._level(key, now_ms, capacity)
        if level < 1.0:
            return self.wait_s(key, now_ms, capacity)
        if len(self._buckets) >= _MAX_KEYS:
            self._buckets.clear()
        self._buckets[key] = (level - 1.0, now_ms)
        return 0
