"""What both stores do the same way when they advance a run: how a step's template is
kept, what a finished step's result holds, and the texts of step and run errors. Pure."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..models import NewTask, Result
from .model import RunEnd, RunState, StepStart, StepTemplate, WorkflowDefinition
from .template import TemplateError, references, render, response_context

# how a rendered step becomes a task: the registration's own validation and egress
# checks, given the owner's validated domains (None: no list); raises ValueError
StepBuilder = Callable[[dict[str, Any], int, tuple[str, ...] | None], NewTask]
# who the store tells after a commit: a step's task was created; a run ended
StepStarted = Callable[[StepStart], None]
# how many released step tasks the store may create already claimed (free call slots)
ClaimBudget = Callable[[], int]
RunFinished = Callable[[str], None]
# who is told that a run a schedule started ended in SUCCESS or ERROR (alert rules)
ScheduledRunEnded = Callable[[RunEnd], None]

TIMED_OUT = "the run timed out"
CANCELLED = "cancelled"


def encode_template(step: StepTemplate) -> bytes:
    return json.dumps(
        {
            "request": step.request,
            "when": step.when,
            "output": step.output,
            "runIfSkipped": step.run_if_skipped,
        }
    ).encode()


def encode_definition(definition: WorkflowDefinition) -> bytes:
    """A schedule's workflow as stored (sealed by the store); ``decode_definition`` reads
    it back."""
    steps = [
        {
            "id": step.id,
            "dependsOn": list(step.depends_on),
            "request": step.request,
            "when": step.when,
            "output": step.output,
            "runIfSkipped": step.run_if_skipped,
        }
        for step in definition.steps
    ]
    metadata = None if definition.metadata is None else [list(p) for p in definition.metadata]
    return json.dumps(
        {
            "name": definition.name,
            "input": definition.input,
            "steps": steps,
            "timeoutMs": definition.timeout_ms,
            "metadata": metadata,
            "onSuccess": definition.on_success,
            "onFailure": definition.on_failure,
        }
    ).encode()


def decode_definition(data: bytes) -> WorkflowDefinition:
    found = json.loads(data)
    steps = tuple(
        StepTemplate(
            step["id"],
            tuple(step["dependsOn"]),
            step["request"],
            step["when"],
            step["output"],
            step["runIfSkipped"],
        )
        for step in found["steps"]
    )
    metadata = found["metadata"]
    return WorkflowDefinition(
        found["name"],
        found["input"],
        steps,
        found["timeoutMs"],
        None if metadata is None else tuple((k, v) for k, v in metadata),
        found["onSuccess"],
        found["onFailure"],
    )


def referenced_steps(template: dict[str, Any], part: str) -> set[str]:
    """The step ids whose results ``template[part]`` refers to."""
    return {ref.step for ref in references(template[part]) if ref.step is not None}


def step_response(result: Result) -> dict[str, Any]:
    """The ``response`` placeholders see for a finished attempt (the body as stored)."""
    body = result.response if result.response is not None else result.outcome.body
    return response_context(result.status_code, result.outcome.headers, body)


def step_error(result: Result) -> str:
    return result.outcome.error or f"the call answered {result.status_code}"


def run_error(step_id: str, error: str) -> str:
    return f"step {step_id!r} failed: {error}"


def step_result(
    template: dict[str, Any], context: dict[str, Any], response: dict[str, Any]
) -> bytes:
    """The stored result of a step that succeeded: its response and rendered output.
    Raises TemplateError when the output refers to something missing."""
    output = render(template["output"], {**context, "response": response})
    return json.dumps({"response": response, "output": output}).encode()


def failed_result(response: dict[str, Any] | None) -> bytes | None:
    if response is None:
        return None
    return json.dumps({"response": response, "output": None}).encode()


def step_start(task_id: str, due_at_ms: int, owner_id: str, new: NewTask) -> StepStart:
    """How the scheduler arms a step's task: its priority and flow-control key, as for a
    registered task."""
    config = new.spec.config
    flow = config.flow_control
    ref = None if flow is None else (owner_id, flow.key)
    return StepStart(task_id, due_at_ms, config.priority, ref, flow)


def labelled(new: NewTask, run_id: str, step_id: str) -> NewTask:
    """The step's task with the run and step in its metadata (as the task list shows)."""
    labels = (("workflowRun", run_id), ("workflowStep", step_id))
    spec = new.spec
    metadata = (spec.metadata or ()) + labels
    return NewTask(type(spec)(spec.request, spec.config, metadata), new.due_at_ms)


def scheduled_end(
    run: tuple[str, str, str | None],
    state: RunState,
    error: str | None,
    metadata: tuple[tuple[str, str], ...] | None,
    failed: tuple[str | None, int] | None,
    now_ms: int,
) -> RunEnd | None:
    """What alert rules are told about a run (id, owner, schedule) that just ended: only
    a schedule's run that ended in SUCCESS or ERROR, with the failed step's (task, status)."""
    run_id, owner_id, schedule_id = run
    if schedule_id is None or state is RunState.CANCELLED:
        return None
    task_id, status = failed or (None, 0)
    return RunEnd(run_id, owner_id, schedule_id, state, error, metadata, task_id, status, now_ms)


# a callback is retried like this, and never has callbacks of its own
CALLBACK_CONFIG = {"executionDelay": 0, "retry": 3, "retryInterval": 1000}


def encode_callbacks(on_success: Any, on_failure: Any) -> bytes | None:
    if on_success is None and on_failure is None:
        return None
    return json.dumps({"onSuccess": on_success, "onFailure": on_failure}).encode()


def callback_for(callbacks: dict[str, Any] | None, state: str) -> dict[str, Any] | None:
    """The callback a run that ended in ``state`` calls: onSuccess after SUCCESS,
    onFailure after ERROR (a timeout included); none after a cancel, the owner's own act."""
    if callbacks is None:
        return None
    found: dict[str, Any] | None = {
        "SUCCESS": callbacks.get("onSuccess"),
        "ERROR": callbacks.get("onFailure"),
    }.get(state)
    return found


def envelope(run: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON body of a run's callback: what ended, how, and each step's outcome."""
    return {"type": "workflow.run.finished", "run": run, "steps": steps}


def step_summary(row: Sequence[Any], result: Any) -> dict[str, Any]:
    """A step in a callback's envelope, from (id, state, task, attempts, status, _, error)
    and its opened result."""
    step_id, state, task_id, attempts, status, _, error = row
    output = None if result is None else result.get("output")
    return {
        "id": step_id,
        "state": state,
        "taskId": task_id,
        "attempts": attempts,
        "statusCode": status,
        "output": output,
        "error": error,
    }


def callback_task(new: NewTask, run_id: str, state: str) -> NewTask:
    """The callback's task, labelled with its run and which callback it is."""
    key = "onSuccess" if state == "SUCCESS" else "onFailure"
    spec = new.spec
    metadata = (spec.metadata or ()) + (("workflowRun", run_id), ("workflowCallback", key))
    return NewTask(type(spec)(spec.request, spec.config, metadata), new.due_at_ms)


def callback_request(callback: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The registration a callback becomes: its httpRequest (POST unless it says) with the
    envelope as JSON body, retried three times."""
    http = {"method": "POST", **callback, "data": body}
    return {"httpRequest": http, "config": dict(CALLBACK_CONFIG)}


__all__ = ["TemplateError"]
