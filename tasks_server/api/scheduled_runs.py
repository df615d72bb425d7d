"""Schedules that start workflow runs: the ``workflow`` of a schedule's body, checked
exactly as ``POST /v1/workflows`` checks a run (errors named under ``workflow``), its
wire form, and the runs a schedule started (docs/workflows.md#schedules-that-start-runs)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import ValidationFailed
from ..workflows.model import WorkflowDefinition
from .convert import field_error
from .errors import validation_failed
from .services import Services
from .workflow_schemas import WorkflowIn
from .workflows import to_new_run

# a run of a schedule is due at its slot: the definition carries no start time of its own
RUN_TIMING_REFUSED = ("executeAt", "executionDelay")


def _under_workflow(exc: ValidationFailed) -> ValidationFailed:
    """The same error, its paths below the schedule body's ``workflow``."""
    if exc.tree is None:
        return exc
    return ValidationFailed({"_errors": [], "workflow": exc.tree})


def workflow_definition(
    app: Services, data: Any, now_ms: int, allowed: tuple[str, ...] | None
) -> WorkflowDefinition:
    """The schedule's ``workflow`` as a definition, validated as a new run would be (the
    graph, references, every step that can be rendered now, literal destinations against
    the egress rules and ``allowed``, the owner's validated domains). Raises
    ValidationFailed with paths under ``workflow``."""
    try:
        body = WorkflowIn.model_validate(data, context={"tz": app.settings.tz})
    except ValidationError as exc:
        raise _under_workflow(validation_failed(exc, data)) from exc
    for name in RUN_TIMING_REFUSED:
        if name in body.config.model_fields_set:
            raise field_error(
                ("workflow", "config", name),
                "Not allowed in a schedule: each run is due at its slot",
            )
    try:
        run = to_new_run(app, body, now_ms, allowed)
    except ValidationFailed as exc:
        raise _under_workflow(exc) from exc
    return WorkflowDefinition(
        run.name,
        run.input,
        run.steps,
        run.timeout_ms,
        run.metadata,
        run.on_success,
        run.on_failure,
    )


def definition_to_wire(definition: WorkflowDefinition) -> dict[str, Any]:
    """The definition as a ``workflow`` body (what GET shows and PATCH merges into)."""
    steps = []
    for step in definition.steps:
        wire: dict[str, Any] = {"id": step.id, "dependsOn": list(step.depends_on)}
        wire.update(step.request)
        if step.when is not None:
            wire["when"] = step.when
        if step.output is not None:
            wire["output"] = step.output
        if step.run_if_skipped:
            wire["runIfSkipped"] = True
        steps.append(wire)
    config: dict[str, Any] = {}
    if definition.timeout_ms is not None:
        config["timeoutMs"] = definition.timeout_ms
    if definition.metadata is not None:
        config["metadata"] = dict(definition.metadata)
    body: dict[str, Any] = {"name": definition.name, "input": definition.input, "steps": steps}
    if config:
        body["config"] = config
    for name, callback in (
        ("onSuccess", definition.on_success),
        ("onFailure", definition.on_failure),
    ):
        if callback is not None:
            body[name] = callback
    return body
