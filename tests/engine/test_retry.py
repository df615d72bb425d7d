from __future__ import annotations

import pytest

from tasks_server.engine.retry import classify, decide, retry_delay_ms
from tasks_server.models import (
    Attempt,
    HttpRequest,
    Outcome,
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
