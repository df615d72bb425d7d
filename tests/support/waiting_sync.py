"""Waiting for a condition with a deadline in synchronous code (browser tests)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    predicate: Callable[[], object], timeout: float = 5.0, message: str | None = None
) -> None:
    """Return as soon as ``predicate()`` is truthy; fail after ``timeout`` seconds. The
    timeout is only a failure deadline; the pause between checks is short."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message or 'the condition'}")
        time.sleep(0.05)
