from __future__ import annotations

from tasks_server.models import TaskConfig
from tasks_server.timing import attempt_timeout_ms, first_due_ms, resume_due_ms


def test_first_due_uses_delay_or_execute_at() -> None:
    assert first_due_ms(TaskConfig(execution_delay_ms=500), 1000) == 1500
    assert first_due_ms(TaskConfig(execute_at_ms=9000, execution_delay_ms=0), 1000) == 9000


def test_resume_keeps_the_remaining_time() -> None:
    config = TaskConfig(execution_delay_ms=10_000)
    # due at 20 s, paused at 15 s (5 s left), resumed at 100 s → due at 105 s
    assert resume_due_ms(config, 20_000, 15_000, 100_000) == 105_000


def test_resume_of_an_overdue_task_runs_at_once() -> None:
    assert resume_due_ms(TaskConfig(), 10_000, 15_000, 100_000) == 100_000


def test_execute_immediately_fires_a_past_execute_at_on_resume() -> None:
    config = TaskConfig(execute_at_ms=20_000, execution_delay_ms=0, execute_immediately=True)
    assert resume_due_ms(config, 20_000, 15_000, 100_000) == 100_001
    late = TaskConfig(execute_at_ms=20_000, execution_delay_ms=0)
    assert resume_due_ms(late, 20_000, 15_000, 100_000) == 105_000


def test_timeout_at_replaces_timeout_for_the_first_attempt_only() -> None:
    config = TaskConfig(timeout_ms=30_000, timeout_at_ms=12_000)
    assert attempt_timeout_ms(config, 1, 10_000) == 2_000
    assert attempt_timeout_ms(config, 2, 10_000) == 30_000
    assert attempt_timeout_ms(config, 1, 13_000) == 1
