"""Checking a workflow definition before anything is stored: unique step ids, known
dependencies, no cycles, and placeholders that can be resolved. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import StepTemplate
from .template import Reference, TemplateError, lookup, references


@dataclass(frozen=True, slots=True)
class DefinitionError(Exception):
    """What is wrong, at which step and field (``path`` as in the request body)."""

    path: tuple[str | int, ...]
    message: str


def check(steps: Sequence[StepTemplate], run_input: Any) -> None:
    """Raise DefinitionError for the first problem found, in the order a reader would:
    ids, dependencies, cycles, then each step's placeholders."""
    index = _check_ids(steps)
    for position, step in enumerate(steps):
        for dep_position, dep in enumerate(step.depends_on):
            if dep not in index:
                raise DefinitionError(
                    ("steps", position, "dependsOn", dep_position), f"unknown step {dep!r}"
                )
            if dep == step.id:
                raise DefinitionError(
                    ("steps", position, "dependsOn", dep_position), "a step cannot depend on itself"
                )
    order = topological_order(steps)
    ancestors = _ancestors(steps, order)
    for position, step in enumerate(steps):
        _check_references(step, position, ancestors[step.id], run_input)


def _check_ids(steps: Sequence[StepTemplate]) -> dict[str, int]:
    index: dict[str, int] = {}
    for position, step in enumerate(steps):
        if step.id in index:
            raise DefinitionError(("steps", position, "id"), f"step id {step.id!r} is used twice")
        index[step.id] = position
    return index


def topological_order(steps: Sequence[StepTemplate]) -> list[str]:
    """Step ids with every step after its dependencies (Kahn's algorithm, stable in
    declaration order); DefinitionError naming a step on a cycle if there is one."""
    unmet = {step.id: len(set(step.depends_on)) for step in steps}
    dependants = dependants_of(steps)
    ready = [step.id for step in steps if unmet[step.id] == 0]
    order: list[str] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for dependant in dependants[current]:
            unmet[dependant] -= 1
            if unmet[dependant] == 0:
                ready.append(dependant)
    if len(order) < len(steps):
        position, step = next((i, s) for i, s in enumerate(steps) if unmet[s.id] > 0)
        raise DefinitionError(
            ("steps", position, "dependsOn"), f"step {step.id!r} is part of a dependency cycle"
        )
    return order


def dependants_of(steps: Sequence[StepTemplate]) -> dict[str, list[str]]:
    dependants: dict[str, list[str]] = {step.id: [] for step in steps}
    for step in steps:
        for dep in dict.fromkeys(step.depends_on):
            if dep in dependants:
                dependants[dep].append(step.id)
    return dependants


def _ancestors(steps: Sequence[StepTemplate], order: list[str]) -> dict[str, set[str]]:
    by_id = {step.id: step for step in steps}
    ancestors: dict[str, set[str]] = {}
    for step_id in order:
        found: set[str] = set()
        for dep in by_id[step_id].depends_on:
            found.add(dep)
            found |= ancestors[dep]
        ancestors[step_id] = found
    return ancestors


def _check_references(
    step: StepTemplate, position: int, ancestors: set[str], run_input: Any
) -> None:
    parts: Mapping[str, Any] = {
        "httpRequest": step.request.get("httpRequest"),
        "config": step.request.get("config"),
        "metadata": step.request.get("metadata"),
        "when": step.when,
        "output": step.output,
    }
    for field, template in parts.items():
        try:
            for ref in references(template):
                _check_reference(ref, field, step, ancestors, run_input)
        except TemplateError as exc:
            raise DefinitionError(("steps", position, field), str(exc)) from exc


def _check_reference(
    ref: Reference, field: str, step: StepTemplate, ancestors: set[str], run_input: Any
) -> None:
    if ref.root == "input":
        lookup({"input": run_input}, ref)  # the input is known now: check the path exists
    elif ref.root == "response" and field != "output":
        raise TemplateError(
            f"{{{{ {ref.text} }}}}: response.… is the step's own response, only in output"
        )
    elif ref.root == "steps" and ref.step not in ancestors:
        raise TemplateError(
            f"{{{{ {ref.text} }}}}: step {ref.step!r} is not one of {step.id!r}'s dependencies"
        )
