"""Definition checks: ids, dependencies, cycles and references, with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from tasks_server.workflows.graph import DefinitionError, check, topological_order
from tasks_server.workflows.model import StepTemplate


def step(step_id: str, *deps: str, body: Any = None, output: Any = None) -> StepTemplate:
    request = {"httpRequest": {"url": "https://example.com/", "method": "POST", "data": body}}
    return StepTemplate(step_id, deps, request, output=output)


def test_a_diamond_is_ordered_after_its_dependencies() -> None:
    steps = [step("d", "b", "c"), step("b", "a"), step("c", "a"), step("a")]
    order = topological_order(steps)
    assert order[0] == "a" and order[-1] == "d" and set(order[1:3]) == {"b", "c"}
    check(steps, {})


@pytest.mark.parametrize(
    ("steps", "path", "message"),
    [
        ([step("a"), step("a")], ("steps", 1, "id"), "used twice"),
        ([step("a", "zz")], ("steps", 0, "dependsOn", 0), "unknown step 'zz'"),
        ([step("a", "a")], ("steps", 0, "dependsOn", 0), "cannot depend on itself"),
        ([step("a", "c"), step("b", "a"), step("c", "b")], ("steps", 0, "dependsOn"), "cycle"),
        (
            [step("a"), step("b", body={"x": "{{ steps.c.output.v }}"}), step("c")],
            ("steps", 1, "httpRequest"),
            "step 'c' is not one of 'b''s dependencies",
        ),
        ([step("a", body={"x": "{{ input.nope }}"})], ("steps", 0, "httpRequest"), "no 'nope'"),
        ([step("a", body="{{ response.status }}")], ("steps", 0, "httpRequest"), "only in output"),
        ([step("a", output={"v": "{{ bogus.x }}"})], ("steps", 0, "output"), "starts with input"),
    ],
)
def test_definition_errors_name_the_step_and_field(
    steps: list[StepTemplate], path: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        check(steps, {"order": 1})
    assert caught.value.path == path
    assert message in caught.value.message


def test_references_to_ancestors_further_up_are_allowed() -> None:
    steps = [step("a"), step("b", "a"), step("c", "b", body="{{ steps.a.response.status }}")]
    check(steps, {})


def test_a_long_chain_is_checked_without_recursion() -> None:
    steps = [step("s0")] + [step(f"s{n}", f"s{n - 1}") for n in range(1, 1000)]
    assert topological_order(steps)[-1] == "s999"
    check(steps, {})
