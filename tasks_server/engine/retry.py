"""Outcome classification and the retry policy of the original; pure.

The rules are in docs/compatibility.md#outcomes and #retry-formula.
"""

from __future__ import annotations

from ..models import Attempt, Outcome, Result, TaskState

TIMEOUT_STATUS = 408
NETWORK_ERROR_STATUS = 500
TIMEOUT_TEXT = b"TimeoutError: Timeout has occurred"


def retry_delay_ms(interval_ms: int, retry_number: int, exponential: bool) -> int:
    """Wait before retry ``retry_number`` (1-based): ``interval x n`` when exponential.

    The original calls its linear growth "exponential"; we keep the formula for
    compatibility (docs/compatibility.md#retry-formula): interval 1000 gives 1 s, 2 s, 3 s.
    """
    return interval_ms * retry_number if exponential else interval_ms


def classify(outcome: Outcome, max_response_bytes: int) -> tuple[bool, int, bytes | None]:
    """Return (failed, status code to show, response to show) for one outcome.

    A body cut at ``max_response_bytes`` is kept as far as the cap and the outcome
    follows the status code (the original failed the call with 422 and retried it:
    docs/compatibility.md#outcomes)."""
    if outcome.timed_out:
        return True, TIMEOUT_STATUS, TIMEOUT_TEXT
    if outcome.error is not None:
        return True, NETWORK_ERROR_STATUS, outcome.error.encode()
    failed = 400 <= outcome.status <= 599
    return failed, outcome.status, outcome.body or None


def decide(attempt: Attempt, outcome: Outcome, now_ms: int, max_response_bytes: int) -> Result:
    """Turn an attempt's outcome into the task's next state (success, retry or error)."""
    config = attempt.spec.config
    failed, status, response = classify(outcome, max_response_bytes)
    if not failed:
        shown = response if config.trace_response_data else None
        return _result(attempt, outcome, now_ms, TaskState.SUCCESS, status, shown)
    # A call the egress policy refused never reached its target: retrying cannot help.
    terminal = outcome.denied or attempt.retry_count >= config.retry_limit
    if status in config.ignore_status_code or terminal:
        return _result(attempt, outcome, now_ms, TaskState.ERROR, status, response)
    if config.retry_at_ms is not None:
        next_due = config.retry_at_ms
    else:
        number = attempt.retry_count + 1
        delay = retry_delay_ms(config.retry_interval_ms, number, config.retry_exponential)
        next_due = now_ms + delay
    return _result(attempt, outcome, now_ms, TaskState.RUNNING, status, response, next_due)


def _result(
    attempt: Attempt,
    outcome: Outcome,
    now_ms: int,
    state: TaskState,
    status: int,
    response: bytes | None,
    next_due_at_ms: int | None = None,
) -> Result:
    return Result(
        task_id=attempt.task_id,
        attempt_number=attempt.number,
        finished_at_ms=now_ms,
        state=state,
        status_code=status,
        response=response,
        outcome=outcome,
        next_due_at_ms=next_due_at_ms,
    )
