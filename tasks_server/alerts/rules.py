"""What a rule makes of one observed attempt (or a scheduled workflow run's end); pure.

``judge`` turns an observation into a verdict for a rule: a failure, a sign of health
(which resolves an open incident), or nothing to say (None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from ..alerting import AlertEvent, AlertRule, Expectation, Scope
from ..models import TaskState


class Verdict(Enum):
    FAILED = "failed"
    HEALTHY = "healthy"


@dataclass(frozen=True, slots=True)
class Observation:
    """One recorded attempt as alerts see it."""

    owner_id: str
    task_id: str
    schedule_id: str | None
    metadata: tuple[tuple[str, str], ...] | None
    attempt: int  # the attempt's number within the task
    state: TaskState  # the task's state after it: SUCCESS, ERROR, or RUNNING (a retry)
    status_code: int
    error: str | None
    body: bytes
    at_ms: int
    # set when the observation is a workflow run a schedule started, not an attempt
    # (``task_id`` is then its failed step's task, or the run when none failed)
    run_id: str | None = None

    @property
    def is_final(self) -> bool:
        return self.state in (TaskState.SUCCESS, TaskState.ERROR)


def is_met(expectation: Expectation, status: int, body: bytes) -> bool:
    if expectation.statuses and status not in expectation.statuses:
        return False
    text = body.decode("utf-8", "replace")
    if expectation.body_contains is not None and expectation.body_contains not in text:
        return False
    return expectation.body_regex is None or re.search(expectation.body_regex, text) is not None


def in_scope(scope: Scope, observation: Observation) -> bool:
    if scope.schedule_id is not None and observation.schedule_id != scope.schedule_id:
        return False
    if scope.label is None:
        return True
    key, value = scope.label
    return any(k == key and (value is None or v == value) for k, v in observation.metadata or ())


def subject_of(rule: AlertRule, observation: Observation) -> str:
    """The incident key within a rule: each schedule has its own run of failures."""
    if rule.on is AlertEvent.SCHEDULE_FAILED:
        return observation.schedule_id or ""
    return ""


def _concerns(rule: AlertRule, observation: Observation) -> bool:
    """A run's end concerns schedule rules only: it says nothing of single attempts or
    responses."""
    return observation.run_id is None or rule.on is AlertEvent.SCHEDULE_FAILED


def judge(rule: AlertRule, observation: Observation) -> Verdict | None:
    """The rule's verdict on one observation, or None when it says nothing about it."""
    if not in_scope(rule.scope, observation) or not _concerns(rule, observation):
        return None
    ok = observation.state is TaskState.SUCCESS
    match rule.on:
        case AlertEvent.TASK_FAILED:
            if not observation.is_final:
                return None
            return Verdict.HEALTHY if ok else Verdict.FAILED
        case AlertEvent.SCHEDULE_FAILED:
            if observation.schedule_id is None or not observation.is_final:
                return None
            return Verdict.HEALTHY if ok else Verdict.FAILED
        case AlertEvent.ATTEMPT_FAILED:
            if ok:
                return Verdict.HEALTHY
            return Verdict.FAILED if observation.attempt >= rule.consecutive else None
        case AlertEvent.RESPONSE_UNEXPECTED:
            if observation.status_code == 0 or rule.expect is None:
                return None  # no response arrived: a failure, not a strange value
            met = is_met(rule.expect, observation.status_code, observation.body)
            return Verdict.HEALTHY if met else Verdict.FAILED
    return None


def threshold(rule: AlertRule) -> int:
    """Failures in a row that open an incident (attempt rules count within the task)."""
    return 1 if rule.on is AlertEvent.ATTEMPT_FAILED else rule.consecutive
