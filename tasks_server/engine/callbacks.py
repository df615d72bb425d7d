"""Callbacks: the task that reports a task's final outcome to its ``onSuccess`` or
``onFailure`` address. Pure: the scheduler calls ``callback_for`` with the attempt that
ended the task and the decided result.

A callback is an ordinary task (durable, retried, listed, subject to the same egress and
signing rules) whose body is a JSON envelope; it has no callbacks of its own, so callbacks
never recurse.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from ..models import Attempt, FollowUp, HttpRequest, Result, TaskConfig, TaskSpec, TaskState

# retried like a careful webhook sender: 3 more tries, 10 s, 20 s, 30 s apart
CALLBACK_CONFIG = TaskConfig(retry=3, retry_interval_ms=10_000, retry_exponential=True)
EVENTS = {TaskState.SUCCESS: "task.succeeded", TaskState.ERROR: "task.failed"}


def envelope(attempt: Attempt, result: Result) -> dict[str, Any]:
    """What a callback sends: the task's final state, as its owner could read it."""
    outcome = result.outcome
    metadata = attempt.spec.metadata
    return {
        "type": EVENTS[result.state],
        "taskId": attempt.task_id,
        "state": result.state.value,
        "metadata": None if metadata is None else dict(metadata),
        "attempts": attempt.number,
        "retries": attempt.retry_count,
        "statusCode": result.status_code,
        "error": outcome.error,
        "response": {
            "headers": [list(pair) for pair in outcome.headers],
            "body": None if result.response is None else base64.b64encode(result.response).decode(),
        },
        "timings": {
            "startedAt": attempt.started_at_ms,
            "finishedAt": result.finished_at_ms,
            "durationMs": round(outcome.total_ms, 3),
            "phasesMs": {name: round(value, 3) for name, value in outcome.timings.items()},
        },
    }


def callback_for(attempt: Attempt, result: Result, task_id: str) -> FollowUp | None:
    """The callback task (with id ``task_id``, due when the result finished) for a result
    that ends its task, or None when the task has no matching callback."""
    spec = attempt.spec
    if result.state is TaskState.SUCCESS:
        target, name = spec.on_success, "onSuccess"
    elif result.state is TaskState.ERROR:
        target, name = spec.on_failure, "onFailure"
    else:
        return None
    if target is None:
        return None
    body = json.dumps(envelope(attempt, result), separators=(",", ":"), ensure_ascii=False)
    request: HttpRequest = dataclasses.replace(target, data_json=body, data_text=None, form=None)
    metadata = (("callback", name), ("callbackFor", attempt.task_id))
    return FollowUp(task_id, TaskSpec(request, CALLBACK_CONFIG, metadata), result.finished_at_ms)
