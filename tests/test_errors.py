"""The error tree drawn in errors.py's docstring is the real class hierarchy."""

from __future__ import annotations

import inspect
import re

from tasks_server import errors

# a tree line: the drawing, then the class name (e.g. "│   ├── QueueLimitReached")
LINE = re.compile(r"^(?P<indent>[│ ]*)(?:├── |└── )?(?P<name>[A-Z]\w+)")


def drawn_parents() -> dict[str, str | None]:
    """Each class named in the drawing, with the class drawn above it one level up."""
    doc = errors.__doc__ or ""
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in doc.split("TasksServerError\n", 1)[1].splitlines():
        if not line.strip():
            break  # the end of the drawing
        match = LINE.match(line)
        if match is None:
            continue  # a comment running on from the line above
        depth = len(match.group("indent")) // 4
        del stack[depth:]
        parents[match.group("name")] = stack[-1] if stack else "TasksServerError"
        stack.append(match.group("name"))
    return parents


def test_the_docstring_draws_every_error_under_its_real_base() -> None:
    real = {
        name: next(b.__name__ for b in cls.__bases__ if issubclass(b, errors.TasksServerError))
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.TasksServerError) and cls is not errors.TasksServerError
    }
    assert len(real) >= 15
    assert drawn_parents() == real
