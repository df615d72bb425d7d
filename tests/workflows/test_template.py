"""Placeholders and conditions: pure, with explicit contexts."""

from __future__ import annotations

from typing import Any

import pytest

from tasks_server.workflows.template import (
    TemplateError,
    holds,
    parse,
    references,
    render,
    response_context,
)

CONTEXT: dict[str, Any] = {
    "input": {"order": {"id": "A-1", "amount": 40, "lines": [{"sku": "x"}, {"sku": "y"}]}},
    "steps": {
        "tax": {
            "response": {"status": 200, "headers": {"x-rate": "0.2"}, "body": {"total": 48.0}},
            "output": {"total": 48.0},
        }
    },
}


def test_a_whole_placeholder_is_replaced_by_the_json_value() -> None:
    template = {
        "amount": "{{ input.order.amount }}",
        "order": "{{input.order}}",
        "sku": "{{ input.order.lines.1.sku }}",
        "total": "{{ steps.tax.output.total }}",
        "status": "{{ steps.tax.response.status }}",
    }
    assert render(template, CONTEXT) == {
        "amount": 40,
        "order": CONTEXT["input"]["order"],
        "sku": "y",
        "total": 48.0,
        "status": 200,
    }


def test_placeholders_inside_text_are_replaced_by_their_text() -> None:
    assert render("/orders/{{ input.order.id }}/tax?t={{ steps.tax.output.total }}", CONTEXT) == (
        "/orders/A-1/tax?t=48.0"
    )
    assert render("rate {{ steps.tax.response.headers.X-Rate }}", CONTEXT) == "rate 0.2"


def test_a_value_cannot_change_the_structure_it_lands_in() -> None:
    context = {"input": {"evil": '", "admin": true, "x": "'}}
    rendered = render({"name": "{{ input.evil }}"}, context)
    assert rendered == {"name": context["input"]["evil"]}  # one string value, no new keys


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ input.order.missing }}", "input.order has no 'missing'"),
        ("{{ input.order.lines.5.sku }}", "input.order.lines has no '5'"),
        ("{{ steps.ship.output.id }}", "step 'ship' has no result"),
        ("{{ steps.tax.response.body.nope }}", "steps.tax.response.body has no 'nope'"),
    ],
)
def test_a_missing_reference_says_which_part_is_missing(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render(text, CONTEXT)


@pytest.mark.parametrize(
    "text",
    [
        "env.HOME",
        "steps.tax",
        "steps.tax.body",
        "steps.tax.response.code",
        "input..a",
        "steps.tax.response.headers",
        "response.status.x",
        "steps.t@x.output",
    ],
)
def test_malformed_placeholders_are_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        parse(text)


def test_references_walk_values_not_keys() -> None:
    found = [
        r.text for r in references({"{{ input.a }}": ["{{ input.b }}", {"c": "x {{ input.c }}"}]})
    ]
    assert found == ["input.b", "input.c"]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"value": "{{ steps.tax.output.total }}", "gt": 10}, True),
        ({"value": "{{ steps.tax.output.total }}", "lte": 10}, False),
        ({"value": "{{ input.order.id }}", "equals": "A-1"}, True),
        ({"value": "{{ input.order.id }}", "notEquals": "A-1"}, False),
        ({"value": "{{ steps.tax.response.status }}", "in": [200, 201]}, True),
        ({"value": "{{ input.order.coupon }}", "exists": True}, False),
        ({"value": "{{ input.order.coupon }}", "exists": False}, True),
        (
            [
                {"value": "{{ input.order.amount }}", "gte": 40},
                {"value": "{{ input.order.id }}", "equals": "B"},
            ],
            False,
        ),
    ],
)
def test_conditions(condition: Any, expected: bool) -> None:
    assert holds(condition, CONTEXT) is expected


def test_a_comparison_needs_a_number() -> None:
    with pytest.raises(TemplateError, match="gt needs a number"):
        holds({"value": "{{ input.order.id }}", "gt": 1}, CONTEXT)


def test_response_context_parses_json_and_keeps_text() -> None:
    assert response_context(200, [("Content-Type", "a"), ("X-Id", "7")], b'{"a": [1]}') == {
        "status": 200,
        "headers": {"content-type": "a", "x-id": "7"},
        "body": {"a": [1]},
    }
    assert response_context(500, [], b"oops")["body"] == "oops"
    assert response_context(204, [], None)["body"] is None
