"""How the recorder cuts a burst of outcomes into transactions (engine/scheduler.py,
RECORD_BUDGET): plain outcomes go many to a transaction, workflow steps' fewer, because
finishing a step also starts its dependants."""

from __future__ import annotations

from tasks_server.engine.scheduler import RECORD_BUDGET, STEP_WEIGHT, outcomes_to_write
from tasks_server.models import HttpRequest, TaskConfig, TaskSpec
from tasks_server.workflows.steps import is_step


def test_plain_outcomes_fill_the_budget_and_steps_weigh_more() -> None:
    assert outcomes_to_write([1] * 5000, RECORD_BUDGET) == RECORD_BUDGET
    assert outcomes_to_write([STEP_WEIGHT] * 500, RECORD_BUDGET) == RECORD_BUDGET // STEP_WEIGHT
    assert outcomes_to_write([1] * 10, RECORD_BUDGET) == 10  # fewer than the budget: all
    assert outcomes_to_write([1, 1, 30, 1], 16) == 3  # up to the one that reaches it
    assert outcomes_to_write([100], 16) == 1  # one heavier than the budget still goes


def test_a_step_is_known_by_its_label() -> None:
    request = HttpRequest("https://example.com", "POST")
    step = TaskSpec(request, TaskConfig(), (("workflowRun", "r"), ("workflowStep", "a")))
    assert is_step(step)
    assert not is_step(TaskSpec(request, TaskConfig(), (("team", "ops"),)))
    assert not is_step(TaskSpec(request, TaskConfig()))
