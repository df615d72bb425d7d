from __future__ import annotations

import random

import pytest

from tasks_server.engine.retry import (
    backoff_ms,
    classify,
    decide,
    is_retryable,
    jittered_ms,
    policy_exhausted,
    retry_after_ms,
    retry_delay_ms,
)
from tasks_server.models import (
    Attempt,
    HttpRequest,
    Jitter,
    Outcome,
    RetryPolicy,
    TaskConfig,
    TaskSpec,
    TaskState,
)

NOW = 1_000_000


def attempt(config: TaskConfig, retry_count: int = 0, number: int = 1) -> Attempt:
    spec = TaskSpec(HttpRequest(url="http://t/x", method="GET"), config)
    return Attempt("T" * 24, number, spec, retry_count, NOW - 10, NOW - 5)


@pytest.mark.parametrize(
    ("interval", "number", "exponential", "expected"),
    [(1000, 1, True, 1000), (1000, 2, True, 2000), (1000, 3, True, 3000), (500, 3, False, 500)],
)
def test_delay_is_interval_times_n_when_exponential(
    interval: int, number: int, exponential: bool, expected: int
) -> None:
    assert retry_delay_ms(interval, number, exponential) == expected


@pytest.mark.parametrize(
    ("outcome", "failed", "status", "response"),
    [
        (Outcome(status=200, body=b"ok"), False, 200, b"ok"),
        (Outcome(status=204), False, 204, None),
        (Outcome(status=302, body=b"x"), False, 302, b"x"),
        (Outcome(status=404, body=b"nf"), True, 404, b"nf"),
        (Outcome(status=599), True, 599, None),
        (Outcome(status=600, body=b"odd"), False, 600, b"odd"),
        (
            Outcome(status=0, timed_out=True, error="timeout"),
            True,
            408,
            b"TimeoutError: Timeout has occurred",
        ),
        (Outcome(status=200, body=b"0123456789", truncated=True), False, 200, b"0123456789"),
        (Outcome(status=503, body=b"0123456789", truncated=True), True, 503, b"0123456789"),
        (Outcome(status=0, error="Connection refused"), True, 500, b"Connection refused"),
    ],
)
def test_classify(outcome: Outcome, failed: bool, status: int, response: bytes | None) -> None:
    assert classify(outcome, 10) == (failed, status, response)


def test_success_ends_the_task() -> None:
    result = decide(attempt(TaskConfig()), Outcome(status=201, body=b"hi"), NOW, 100)
    assert (result.state, result.status_code, result.response) == (TaskState.SUCCESS, 201, b"hi")
    assert result.next_due_at_ms is None


def test_success_without_trace_keeps_no_body() -> None:
    config = TaskConfig(trace_response_data=False)
    result = decide(attempt(config), Outcome(status=200, body=b"hi"), NOW, 100)
    assert result.state is TaskState.SUCCESS and result.response is None


def test_failure_without_retry_is_error() -> None:
    result = decide(attempt(TaskConfig()), Outcome(status=500, body=b"no"), NOW, 100)
    assert (result.state, result.status_code, result.response) == (TaskState.ERROR, 500, b"no")


@pytest.mark.parametrize(("retry_count", "delay"), [(0, 100), (1, 200), (2, 300)])
def test_exponential_retries_grow_linearly(retry_count: int, delay: int) -> None:
    config = TaskConfig(retry=3, retry_interval_ms=100, retry_exponential=True)
    result = decide(attempt(config, retry_count), Outcome(status=503), NOW, 100)
    assert result.state is TaskState.RUNNING
    assert result.next_due_at_ms == NOW + delay


def test_fixed_interval_retries() -> None:
    config = TaskConfig(retry=3, retry_interval_ms=250, retry_exponential=False)
    result = decide(attempt(config, 2), Outcome(status=503), NOW, 100)
    assert result.next_due_at_ms == NOW + 250


def test_retry_budget_exhausted_is_error() -> None:
    config = TaskConfig(retry=2, retry_interval_ms=100)
    result = decide(attempt(config, 2), Outcome(status=503), NOW, 100)
    assert result.state is TaskState.ERROR and result.next_due_at_ms is None


def test_retry_at_plans_the_single_retry_at_that_instant() -> None:
    config = TaskConfig(retry=1, retry_at_ms=NOW + 5000, retry_interval_ms=0)
    first = decide(attempt(config, 0), Outcome(status=500), NOW, 100)
    assert first.next_due_at_ms == NOW + 5000
    second = decide(attempt(config, 1), Outcome(status=500), NOW + 5000, 100)
    assert second.state is TaskState.ERROR


def test_ignored_status_ends_without_retry() -> None:
    config = TaskConfig(retry=5, ignore_status_code=(404,))
    result = decide(attempt(config), Outcome(status=404), NOW, 100)
    assert result.state is TaskState.ERROR and result.status_code == 404


def test_connection_failure_is_retried() -> None:
    config = TaskConfig(retry=1, retry_interval_ms=10)
    result = decide(attempt(config), Outcome(status=0, error="refused"), NOW, 100)
    assert result.state is TaskState.RUNNING and result.status_code == 500


# -- Cloud Tasks' retry policy ------------------------------------------------------------

CLOUD_TASKS_EXAMPLE = RetryPolicy(
    max_attempts=20, min_backoff_ms=10_000, max_backoff_ms=300_000, max_doublings=3
)


@pytest.mark.parametrize(
    ("retry_number", "seconds"),
    # Cloud Tasks' documented example: min 10 s, max 300 s, 3 doublings
    [(1, 10), (2, 20), (3, 40), (4, 80), (5, 160), (6, 240), (7, 300), (8, 300), (15, 300)],
)
def test_backoff_matches_the_documented_example(retry_number: int, seconds: int) -> None:
    assert backoff_ms(CLOUD_TASKS_EXAMPLE, retry_number) == seconds * 1000


@pytest.mark.parametrize(
    ("policy", "expected_s"),
    [
        (RetryPolicy(min_backoff_ms=1000, max_backoff_ms=60_000, max_doublings=0), [1, 2, 3, 4]),
        (RetryPolicy(min_backoff_ms=1000, max_backoff_ms=5_000, max_doublings=16), [1, 2, 4, 5]),
        (RetryPolicy(min_backoff_ms=0, max_backoff_ms=5_000, max_doublings=16), [0, 0, 0, 0]),
    ],
)
def test_backoff_shapes(policy: RetryPolicy, expected_s: list[int]) -> None:
    assert [backoff_ms(policy, n) // 1000 for n in range(1, 5)] == expected_s


def policy_attempt(policy: RetryPolicy, retry_count: int, first_at: int = NOW - 5) -> Attempt:
    spec = TaskSpec(HttpRequest(url="http://t/x", method="GET"), TaskConfig(retry_policy=policy))
    return Attempt(
        "T" * 24,
        retry_count + 1,
        spec,
        retry_count,
        NOW - 10,
        NOW - 5,
        first_started_at_ms=first_at,
    )


def test_policy_retry_is_planned_by_the_table() -> None:
    for retry_count, seconds in enumerate([10, 20, 40, 80, 160, 240, 300]):
        attempt = policy_attempt(CLOUD_TASKS_EXAMPLE, retry_count)
        result = decide(attempt, Outcome(status=503), NOW, 100)
        assert result.state is TaskState.RUNNING
        assert result.next_due_at_ms == NOW + seconds * 1000


@pytest.mark.parametrize(
    ("max_attempts", "duration_ms", "attempts_made", "elapsed_ms", "exhausted"),
    [
        (3, 0, 2, 10**9, False),
        (3, 0, 3, 0, True),
        (3, 60_000, 3, 59_999, False),  # both must be reached
        (3, 60_000, 2, 60_000, False),
        (3, 60_000, 3, 60_000, True),
        (-1, 60_000, 500, 59_999, False),
        (-1, 60_000, 1, 60_000, True),
        (-1, 0, 10**6, 10**12, False),  # unbounded: retried until the task is removed
    ],
)
def test_max_attempts_and_duration_both_bound_retries(
    max_attempts: int, duration_ms: int, attempts_made: int, elapsed_ms: int, exhausted: bool
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, max_retry_duration_ms=duration_ms)
    assert policy_exhausted(policy, attempts_made, elapsed_ms) is exhausted


def test_policy_stops_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, min_backoff_ms=1000)
    assert decide(policy_attempt(policy, 1), Outcome(status=500), NOW, 100).next_due_at_ms
    last = decide(policy_attempt(policy, 2), Outcome(status=500), NOW, 100)
    assert last.state is TaskState.ERROR and last.next_due_at_ms is None


def test_policy_duration_counts_from_the_first_attempt() -> None:
    policy = RetryPolicy(max_attempts=1, max_retry_duration_ms=60_000, min_backoff_ms=1000)
    young = decide(policy_attempt(policy, 4, first_at=NOW - 59_000), Outcome(500), NOW, 100)
    assert young.state is TaskState.RUNNING
    old = decide(policy_attempt(policy, 4, first_at=NOW - 60_000), Outcome(500), NOW, 100)
    assert old.state is TaskState.ERROR


def test_jitter_stays_in_bounds_and_is_fixed_by_the_seed() -> None:
    rng = random.Random(7)
    full = [jittered_ms(10_000, Jitter.FULL, rng) for _ in range(500)]
    assert all(0 <= d <= 10_000 for d in full) and len(set(full)) > 100
    equal = [jittered_ms(10_000, Jitter.EQUAL, rng) for _ in range(500)]
    assert all(5_000 <= d <= 10_000 for d in equal) and min(equal) < 5_500
    assert jittered_ms(10_000, Jitter.NONE, rng) == 10_000
    again = [jittered_ms(10_000, Jitter.FULL, random.Random(7)) for _ in range(1)]
    assert again == full[:1]
    policy = RetryPolicy(min_backoff_ms=10_000, jitter=Jitter.FULL)
    first = decide(policy_attempt(policy, 0), Outcome(503), NOW, 100, random.Random(3))
    second = decide(policy_attempt(policy, 0), Outcome(503), NOW, 100, random.Random(3))
    assert first.next_due_at_ms == second.next_due_at_ms
    assert first.next_due_at_ms is not None and NOW <= first.next_due_at_ms <= NOW + 10_000


# -- which outcomes are retried -----------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "retried"),
    [
        (Outcome(status=500), True),
        (Outcome(status=503), True),
        (Outcome(status=408), True),
        (Outcome(status=429), True),
        (Outcome(status=0, error="Connection refused"), True),
        (Outcome(status=0, timed_out=True), True),
        (Outcome(status=404), False),
        (Outcome(status=400), False),
        (Outcome(status=410), False),
    ],
)
def test_policy_retries_5xx_408_429_and_connection_errors(outcome: Outcome, retried: bool) -> None:
    result = decide(policy_attempt(RetryPolicy(), 0), outcome, NOW, 100)
    assert (result.state is TaskState.RUNNING) is retried


def test_retry_on_adds_and_no_retry_on_removes_statuses() -> None:
    config = TaskConfig(retry_policy=RetryPolicy(), retry_on=(404,), no_retry_on=(503,))
    assert is_retryable(config, 404) and not is_retryable(config, 503)
    assert is_retryable(config, 500) and not is_retryable(config, 400)


def test_original_fields_retry_every_failure_but_410() -> None:
    config = TaskConfig(retry=3)
    assert is_retryable(config, 404) and is_retryable(config, 400)
    assert not is_retryable(config, 410)
    assert not is_retryable(TaskConfig(retry=3, no_retry_on=(500,)), 500)
    # retryOn switches an original-style task to the default set plus the listed ones
    assert not is_retryable(TaskConfig(retry=3, retry_on=(409,)), 404)
    assert is_retryable(TaskConfig(retry=3, retry_on=(409,)), 409)


# -- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "value", "expected"),
    [
        (429, "2", 2000),
        (503, "120", 120_000),
        (429, "99999", 3_600_000),  # capped
        (429, "Thu, 01 Jan 1970 00:16:50 GMT", 10_000),  # an HTTP date, NOW + 10 s
        (429, "Thu, 01 Jan 1970 00:00:01 GMT", 0),  # already passed
        (429, "soon", None),
        (500, "2", None),  # only 429 and 503 ask for a wait
    ],
)
def test_retry_after(status: int, value: str, expected: int | None) -> None:
    outcome = Outcome(status=status, headers=(("Retry-After", value),))
    assert retry_after_ms(outcome, NOW, 3_600_000) == expected


def test_retry_after_delays_the_retry_but_never_advances_it() -> None:
    config = TaskConfig(retry=3, retry_interval_ms=1000, retry_exponential=False)
    asked = Outcome(status=429, headers=(("retry-after", "2"),))
    assert decide(attempt(config), asked, NOW, 100).next_due_at_ms == NOW + 2000
    long = TaskConfig(retry=3, retry_interval_ms=5000, retry_exponential=False)
    assert decide(attempt(long), asked, NOW, 100).next_due_at_ms == NOW + 5000
    capped = decide(attempt(config), asked, NOW, 100, retry_after_max_ms=1500)
    assert capped.next_due_at_ms == NOW + 1500
