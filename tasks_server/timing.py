"""When a task runs: first due time, resume after a pause; pure functions of ``now``."""

from __future__ import annotations

from .models import TaskConfig

RESUME_IMMEDIATE_MS = 1


def first_due_ms(config: TaskConfig, now_ms: int) -> int:
    """The planned first attempt: ``executeAt`` exactly, else now + ``executionDelay``."""
    if config.execute_at_ms is not None:
        return config.execute_at_ms
    return now_ms + config.execution_delay_ms


def resume_due_ms(config: TaskConfig, due_at_ms: int, paused_at_ms: int, now_ms: int) -> int:
    """Due time after a resume: the clock stood still while paused.

    See docs/compatibility.md#resume.

    The time that was left at the pause is kept. ``executeImmediately`` with an
    ``executeAt`` already in the past fires at once instead. A task that was already
    overdue when paused (the original took the absolute value here) runs at once.
    """
    if (
        config.execute_immediately
        and config.execute_at_ms is not None
        and config.execute_at_ms <= now_ms
    ):
        return now_ms + RESUME_IMMEDIATE_MS
    remaining = max(due_at_ms - paused_at_ms, 0)
    return now_ms + remaining


def attempt_timeout_ms(config: TaskConfig, attempt_number: int, started_at_ms: int) -> int:
    """Per-attempt limit: ``timeoutAt`` replaces ``timeout`` for the first attempt only."""
    if attempt_number == 1 and config.timeout_at_ms is not None:
        return max(config.timeout_at_ms - started_at_ms, 1)
    return config.timeout_ms
