"""Waiting for a condition with a deadline, instead of sleeping a guessed amount."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005
) -> None:
    """Return as soon as ``predicate()`` is truthy; fail the test after ``timeout`` seconds.

    The timeout is only a failure deadline: a passing test waits as little as it can.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate!r}")
        await asyncio.sleep(interval)
