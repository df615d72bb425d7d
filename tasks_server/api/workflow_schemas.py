"""Wire models of the workflow API: the body that starts a run, and the list query.

A step's ``httpRequest``, ``config`` and ``metadata`` take the registration's shape, but
may hold ``{{ … }}`` placeholders, so they are validated as a task when the step is
rendered (at once for steps that use only the run's input)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, StringConstraints

from ..workflows.template import STEP_ID
from .schedule_schemas import SCHEDULE_NAME
from .schemas import MAX_SAFE_INTEGER, DateMs, Metadata, Strict, query_int

MAX_STEPS = 1000
RUN_ID = re.compile(r"[0-9A-Z]{24}")

StepId = Annotated[str, StringConstraints(pattern=f"^{STEP_ID.pattern}$")]
Name = Annotated[str, StringConstraints(pattern=f"^{SCHEDULE_NAME.pattern}$")]


class ConditionIn(Strict):
    """``{"value": "{{ … }}", <operator>: x}`` with exactly one operator."""

    value: Any
    equals: Any = None
    notEquals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    exists: bool | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    def operators(self) -> list[str]:
        return [name for name in self.model_fields_set if name != "value"]


class StepIn(Strict):
    id: StepId
    dependsOn: Annotated[list[StepId], Field(max_length=MAX_STEPS)] = []
    httpRequest: dict[str, Any]
    config: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    when: ConditionIn | Annotated[list[ConditionIn], Field(min_length=1, max_length=16)] | None = (
        None
    )
    output: Any = None
    runIfSkipped: bool = False


class RunConfigIn(Strict):
    executeAt: DateMs | None = None
    executionDelay: Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)] | None = None
    timeoutMs: Annotated[int, Field(ge=1000, le=MAX_SAFE_INTEGER)] | None = None
    metadata: Metadata | None = None


class WorkflowIn(Strict):
    name: Name
    input: Any = Field(default_factory=dict)
    steps: Annotated[list[StepIn], Field(min_length=1, max_length=MAX_STEPS)]
    config: RunConfigIn = Field(default_factory=RunConfigIn)
    # an httpRequest without a body: the server sends the run's envelope when it ends
    onSuccess: dict[str, Any] | None = None
    onFailure: dict[str, Any] | None = None


def _page(low: int, high: int) -> Any:
    return Annotated[int, BeforeValidator(lambda v: query_int(v, low, high))]


class RunListQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    state: Literal["PENDING", "RUNNING", "SUCCESS", "ERROR", "CANCELLED"] | None = None
    name: Name | None = None
    limit: _page(1, 1000) = 100  # type: ignore[valid-type]
    cursor: Annotated[str, StringConstraints(pattern=r"^\d{1,16}\.[0-9A-Z]{24}$")] | None = None
