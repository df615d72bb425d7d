"""Placeholders in step templates: ``{{ input.<path> }}``, ``{{ steps.<id>.response.status }}``,
``{{ steps.<id>.response.headers.<name> }}``, ``{{ steps.<id>.response.body.<path> }}``,
``{{ steps.<id>.output.<path> }}`` and, inside a step's ``output``, ``{{ response.… }}`` for
the step's own response. A path is object keys and array indexes (``items.0.id``).

A string that is exactly one placeholder becomes the referenced JSON value (a number stays
a number, an object an object); placeholders inside a longer string are replaced by their
text. Values are never pasted into JSON text, so they cannot change its structure. Pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
STEP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STEP_PARTS = ("response", "output")
_RESPONSE_PARTS = ("status", "headers", "body")


class TemplateError(ValueError):
    """A placeholder that is malformed, or that names something that does not exist."""


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed placeholder: ``root`` is input, steps or response; ``step`` the step id."""

    text: str
    root: str
    step: str | None
    path: tuple[str, ...]


def parse(text: str) -> Reference:
    """Raise TemplateError naming the rule a placeholder breaks."""
    parts = tuple(text.split("."))
    if any(not part for part in parts):
        raise TemplateError(f"{{{{ {text} }}}}: empty path segment")
    root = parts[0]
    if root == "input":
        return Reference(text, root, None, parts[1:])
    if root == "response":
        _check_response(text, parts[1:])
        return Reference(text, root, None, parts[1:])
    if root == "steps":
        if len(parts) < 3 or not STEP_ID.fullmatch(parts[1]) or parts[2] not in _STEP_PARTS:
            raise TemplateError(
                f"{{{{ {text} }}}}: expected steps.<id>.response… or steps.<id>.output…"
            )
        if parts[2] == "response":
            _check_response(text, parts[3:])
        return Reference(text, root, parts[1], parts[2:])
    raise TemplateError(f"{{{{ {text} }}}}: a placeholder starts with input, steps or response")


def _check_response(text: str, rest: tuple[str, ...]) -> None:
    if not rest or rest[0] not in _RESPONSE_PARTS:
        raise TemplateError(f"{{{{ {text} }}}}: expected response.status, .headers or .body")
    if rest[0] == "status" and len(rest) > 1:
        raise TemplateError(f"{{{{ {text} }}}}: response.status has no fields")
    if rest[0] == "headers" and len(rest) != 2:
        raise TemplateError(f"{{{{ {text} }}}}: name one header, response.headers.<name>")


def references(template: Any) -> Iterator[Reference]:
    """Every placeholder in ``template`` (strings inside objects and arrays, not keys)."""
    if isinstance(template, str):
        for match in PLACEHOLDER.finditer(template):
            yield parse(match[1])
    elif isinstance(template, Mapping):
        for value in template.values():
            yield from references(value)
    elif isinstance(template, list):
        for value in template:
            yield from references(value)


def lookup(context: Mapping[str, Any], ref: Reference) -> Any:
    """The value ``ref`` names in ``context`` ({"input", "steps", "response"}), or
    TemplateError saying which part is missing."""
    if ref.root == "steps":
        steps = context.get("steps", {})
        if ref.step not in steps:
            raise TemplateError(f"{{{{ {ref.text} }}}}: step {ref.step!r} has no result")
        value: Any = steps[ref.step]
    else:
        if ref.root not in context:
            raise TemplateError(f"{{{{ {ref.text} }}}}: no {ref.root} here")
        value = context[ref.root]
    walked = [ref.root] + ([ref.step] if ref.step else [])
    for index, part in enumerate(ref.path):
        if walked[-1:] == ["headers"] and isinstance(value, Mapping):
            part = part.lower()  # header names are case-insensitive
        value = _step_into(value, part, ref, ".".join(walked))
        walked.append(ref.path[index])
    return value


def _step_into(value: Any, part: str, ref: Reference, where: str) -> Any:
    if isinstance(value, Mapping):
        if part in value:
            return value[part]
    elif isinstance(value, list) and part.isdigit():
        if int(part) < len(value):
            return value[int(part)]
    raise TemplateError(f"{{{{ {ref.text} }}}}: {where} has no {part!r}")


def render(template: Any, context: Mapping[str, Any]) -> Any:
    """``template`` with every placeholder replaced from ``context``; raises TemplateError."""
    if isinstance(template, str):
        whole = PLACEHOLDER.fullmatch(template.strip())
        if whole is not None and template.strip() == template:
            return lookup(context, parse(whole[1]))
        return PLACEHOLDER.sub(lambda m: _as_text(lookup(context, parse(m[1]))), template)
    if isinstance(template, Mapping):
        return {key: render(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [render(value, context) for value in template]
    return template


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


# -- conditions ------------------------------------------------------------------------------

OPERATORS = ("equals", "notEquals", "in", "exists", "gt", "gte", "lt", "lte")


def holds(condition: Any, context: Mapping[str, Any]) -> bool:
    """Whether a step's ``when`` holds. A condition is ``{"value": <template>, <op>: x}``
    with one operator of OPERATORS, or a list of conditions that must all hold. With
    ``exists`` a missing reference is false (or true for ``exists: false``); otherwise a
    missing reference raises TemplateError."""
    if isinstance(condition, list):
        return all(holds(item, context) for item in condition)
    operator = next(name for name in OPERATORS if name in condition)
    expected = condition[operator]
    if operator == "exists":
        try:
            render(condition["value"], context)
        except TemplateError:
            return not expected
        return bool(expected)
    actual = render(condition["value"], context)
    return _compare(operator, actual, expected)


def _compare(operator: str, actual: Any, expected: Any) -> bool:
    if operator == "equals":
        return bool(actual == expected)
    if operator == "notEquals":
        return bool(actual != expected)
    if operator == "in":
        return bool(actual in expected)
    if not isinstance(actual, int | float) or isinstance(actual, bool):
        raise TemplateError(f"{operator} needs a number, got {json.dumps(actual)[:80]}")
    return bool(
        {
            "gt": actual > expected,
            "gte": actual >= expected,
            "lt": actual < expected,
            "lte": actual <= expected,
        }[operator]
    )


def response_context(status: int, headers: Any, body: bytes | None) -> dict[str, Any]:
    """The ``response`` a placeholder sees: status, headers by lower-case name (the last
    value of a repeated header), and the body as JSON when it parses, else as text."""
    text = (body or b"").decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return {
        "status": status,
        "headers": {name.lower(): value for name, value in headers},
        "body": parsed,
    }
