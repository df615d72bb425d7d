"""A workflow step's rendered request as a task: validated as a registration, its
destinations checked as at registration, and armed in the scheduler once the store has
created it (docs/workflows.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import ValidationError

from ..config import Settings
from ..dispatch.egress import EgressPolicy
from ..errors import ValidationFailed
from ..models import Attempt, HttpRequest, NewTask, TaskConfig
from ..workflows.model import StepStart
from ..workflows.pacing import StepPacer
from ..workflows.steps import StepBuilder
from .convert import to_new_task
from .outgoing import refuse_outgoing
from .schemas import TaskIn
from .services import Notifier

Unsupported = Callable[[HttpRequest, TaskConfig], list[str]]
_MESSAGE = re.compile(r"\s+")


def step_validator(
    settings: Settings, unsupported: Unsupported
) -> Callable[[dict[str, Any], int], NewTask]:
    """A rendered step (or callback) as a task: the registration's own validation, with
    its errors flattened into one ValueError message."""
    context = {"tz": settings.tz, "cert_dir": settings.cert_dir}

    def validate(request: dict[str, Any], now_ms: int) -> NewTask:
        try:
            body = TaskIn.model_validate(request, context=context)
            new = to_new_task(body, now_ms)
        except ValidationError as exc:
            raise ValueError(_describe_pydantic(exc)) from exc
        except ValidationFailed as exc:
            raise ValueError(_describe_tree(exc.tree or {}, "") or exc.message) from exc
        missing = unsupported(new.spec.request, new.spec.config)
        if missing:
            raise ValueError(f"not supported by this server's libcurl: {', '.join(missing)}")
        return new

    return validate


def step_builder(settings: Settings, unsupported: Unsupported, egress: EgressPolicy) -> StepBuilder:
    """What the store calls to turn a rendered step into a task: validated as a
    registration, and its destinations checked by the egress policy and the owner's
    validated domains exactly as at registration (api/outgoing.py). A refusal is a
    ValueError naming the field, which fails the step with that message."""
    validate = step_validator(settings, unsupported)

    def build(request: dict[str, Any], now_ms: int, allowed: tuple[str, ...] | None) -> NewTask:
        new = validate(request, now_ms)
        try:
            refuse_outgoing(egress, new.spec, allowed)
        except ValidationFailed as exc:
            raise ValueError(_describe_tree(exc.tree or {}, "") or exc.message) from exc
        return new

    return build


def _describe_pydantic(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {_MESSAGE.sub(' ', first['msg'])}"


def _describe_tree(tree: dict[str, Any], path: str) -> str:
    for message in tree.get("_errors", []):
        return f"{path or 'request'}: {message}"
    for key, value in tree.items():
        if key != "_errors" and isinstance(value, dict):
            found = _describe_tree(value, f"{path}.{key}" if path else key)
            if found:
                return found
    return ""


class StepArmer(Notifier, Protocol):
    def adopt(self, attempt: Attempt) -> None: ...


def step_arming(
    scheduler: StepArmer, pacer: StepPacer | None = None
) -> Callable[[StepStart], None]:
    """How a step's task the store created is armed: like a registered task, with its
    priority and flow-control key, whose limits the step sets (the last one wins); a
    task the store created already claimed is handed over with its attempt. A step its
    dependencies released is never paced behind new runs (workflows/pacing.py)."""

    def arm(start: StepStart) -> None:
        if pacer is not None and start.released:
            pacer.released(start.task_id, start.due_at_ms)
        if start.attempt is not None:
            scheduler.adopt(start.attempt)
            return
        if start.flow is not None and start.flow_limits is not None:
            scheduler.configure_flow(start.flow[0], start.flow_limits)
        scheduler.notify(start.task_id, start.due_at_ms, start.priority, start.flow)

    return arm
