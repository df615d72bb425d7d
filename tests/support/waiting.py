"""Waiting for a condition with a deadline, instead of sleeping a guessed amount."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


# Tests call wait_until(predicate, timeout=...) with the deadline beside the condition, so the
# deadline stays a parameter rather than an asyncio.timeout() around the call.
async def wait_until(
    predicate: Callable[[], object],
    timeout: float = 5.0,  # noqa: ASYNC109
    interval: float = 0.005,
    message: str | None = None,
) -> None:
    """Return as soon as ``predicate()`` is truthy (it may be a coroutine function);
    fail the test after ``timeout`` seconds.

    The timeout is only a failure deadline: a passing test waits as little as it can.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"not met within {timeout} s: {message or predicate!r}")
        await asyncio.sleep(interval)
