"""Outcome classification and retry decisions; pure (time and randomness are arguments).

Two policies: the original's (``retry`` x ``retryInterval``, docs/compatibility.md#outcomes
and #retry-formula) and Cloud Tasks' shape (``retryPolicy``: doubling, then linear growth,
capped). Both honour ``Retry-After`` on 429 and 503. README.md ("Delivery: retries,
priority, deduplication") documents the rules.
"""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

from ..models import Attempt, Jitter, Outcome, Result, RetryPolicy, TaskConfig, TaskState

TIMEOUT_STATUS = 408
NETWORK_ERROR_STATUS = 500
TIMEOUT_TEXT = b"TimeoutError: Timeout has occurred"
NEVER_RETRIED = frozenset({410})  # Gone: the target says the resource will not come back
RETRIED_4XX = frozenset({408, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
DEFAULT_RETRY_AFTER_MAX_MS = 3_600_000


def retry_delay_ms(interval_ms: int, retry_number: int, exponential: bool) -> int:
    """Wait before retry ``retry_number`` (1-based): ``interval x n`` when exponential.

    The original calls its linear growth "exponential"; we keep the formula for
    compatibility (docs/compatibility.md#retry-formula): interval 1000 gives 1 s, 2 s, 3 s.
    """
    return interval_ms * retry_number if exponential else interval_ms


def backoff_ms(policy: RetryPolicy, retry_number: int) -> int:
    """Cloud Tasks' interval before retry ``retry_number`` (1-based), without jitter.

    It starts at ``min_backoff_ms``, doubles ``max_doublings`` times, then grows by the
    last doubled interval per retry, capped at ``max_backoff_ms``: with 10 s, 300 s and 3
    doublings, 10, 20, 40, 80, 160, 240, 300, 300 s.
    """
    doublings = min(retry_number - 1, policy.max_doublings)
    step: int = policy.min_backoff_ms << doublings
    linear = max(retry_number - 1 - policy.max_doublings, 0)
    return min(step + linear * step, policy.max_backoff_ms)


def jittered_ms(delay_ms: int, jitter: Jitter, rng: random.Random) -> int:
    if jitter is Jitter.FULL:
        return round(rng.uniform(0, delay_ms))
    if jitter is Jitter.EQUAL:
        return delay_ms // 2 + round(rng.uniform(0, delay_ms - delay_ms // 2))
    return delay_ms


def policy_exhausted(policy: RetryPolicy, attempts_made: int, elapsed_ms: int) -> bool:
    """Cloud Tasks stops when both ``max_attempts`` and ``max_retry_duration`` are reached;
    an unbounded one (-1, 0) counts as reached unless both are unbounded."""
    by_count = policy.max_attempts >= 0
    by_time = policy.max_retry_duration_ms > 0
    if not by_count and not by_time:
        return False
    count_reached = not by_count or attempts_made >= policy.max_attempts
    time_reached = not by_time or elapsed_ms >= policy.max_retry_duration_ms
    return count_reached and time_reached


def retry_after_ms(outcome: Outcome, now_ms: int, cap_ms: int) -> int | None:
    """The wait a 429 or 503 asks for in ``Retry-After`` (seconds or an HTTP date),
    capped at ``cap_ms``; None when absent or unreadable."""
    if outcome.status not in RETRY_AFTER_STATUSES:
        return None
    value = next((v for k, v in outcome.headers if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        wait = int(value) * 1000
    else:
        try:
            wait = int(parsedate_to_datetime(value).timestamp() * 1000) - now_ms
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(wait, 0), cap_ms)


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


def is_retryable(config: TaskConfig, status: int) -> bool:
    """Whether a failure with this shown status may be retried at all.

    With ``retryPolicy`` or ``retryOn``: 5xx (connection errors show 500), 408, 429 and the
    ``retryOn`` statuses. Otherwise every failure, as the original. ``noRetryOn``,
    ``ignoreStatusCode`` and 410 are never retried.
    """
    if status in NEVER_RETRIED or status in config.no_retry_on:
        return False
    if status in config.ignore_status_code:
        return False
    if config.retry_policy is None and not config.retry_on:
        return True
    return status >= 500 or status in RETRIED_4XX or status in config.retry_on


def decide(
    attempt: Attempt,
    outcome: Outcome,
    now_ms: int,
    max_response_bytes: int,
    rng: random.Random | None = None,
    retry_after_max_ms: int = DEFAULT_RETRY_AFTER_MAX_MS,
) -> Result:
    """Turn an attempt's outcome into the task's next state (success, retry or error).

    ``rng`` draws the jitter of a retry policy (a fixed seed gives fixed delays).
    """
    config = attempt.spec.config
    failed, status, response = classify(outcome, max_response_bytes)
    if not failed:
        shown = response if config.trace_response_data else None
        return _result(attempt, outcome, now_ms, TaskState.SUCCESS, status, shown)
    next_due = None
    # A call the egress policy refused never reached its target: retrying cannot help.
    if not outcome.denied and is_retryable(config, status):
        next_due = _next_due(attempt, now_ms, rng or random.Random())
    if next_due is None:
        return _result(attempt, outcome, now_ms, TaskState.ERROR, status, response)
    asked = retry_after_ms(outcome, now_ms, retry_after_max_ms)
    if asked is not None:
        next_due = max(next_due, now_ms + asked)
    return _result(attempt, outcome, now_ms, TaskState.RUNNING, status, response, next_due)


def _next_due(attempt: Attempt, now_ms: int, rng: random.Random) -> int | None:
    """When the next retry is due, or None when the budget is spent."""
    config = attempt.spec.config
    number = attempt.retry_count + 1
    policy = config.retry_policy
    if policy is not None:
        first = attempt.first_started_at_ms or attempt.started_at_ms
        if policy_exhausted(policy, number, now_ms - first):
            return None
        return now_ms + jittered_ms(backoff_ms(policy, number), policy.jitter, rng)
    if attempt.retry_count >= config.retry_limit:
        return None
    if config.retry_at_ms is not None:
        return config.retry_at_ms
    return now_ms + retry_delay_ms(config.retry_interval_ms, number, config.retry_exponential)


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
