"""Wire models of the schedule API: the body of a schedule and its queries.

The task template reuses the queue registration's ``httpRequest`` and ``config`` models;
the cron expression and the time zone are checked here, by the cron module.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from .. import cron
from .schemas import (
    MAX_SAFE_INTEGER,
    CallbackIn,
    ConfigIn,
    DateMs,
    HttpRequestIn,
    Metadata,
    Strict,
    query_int,
)

SCHEDULE_NAME = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
SCHEDULE_ID = re.compile(r"[0-9A-Z]{24}")


def _name(value: str) -> str:
    if not SCHEDULE_NAME.fullmatch(value):
        # names never look like ids (those are upper case), so a path can hold either
        raise PydanticCustomError(
            "schedule_name",
            "Must start with a lowercase letter, followed by at most 63 of a-z 0-9 . _ -",
        )
    return value


def _expression(value: str) -> str:
    try:
        cron.parse(value)
    except ValueError as exc:
        raise PydanticCustomError("schedule", "{reason}", {"reason": str(exc)}) from exc
    return " ".join(value.split())


def _zone(value: str) -> str:
    try:
        return cron.check_zone(value)
    except ValueError as exc:
        raise PydanticCustomError("timezone", "{reason}", {"reason": str(exc)}) from exc


ScheduleName = Annotated[str, AfterValidator(_name)]
Expression = Annotated[
    str, Field(max_length=cron.MAX_EXPRESSION_CHARS), AfterValidator(_expression)
]
Zone = Annotated[str, Field(max_length=64), AfterValidator(_zone)]


class ScheduleIn(Strict):
    name: ScheduleName
    schedule: Expression
    timezone: Zone = "UTC"
    httpRequest: HttpRequestIn
    config: ConfigIn = Field(default_factory=ConfigIn)
    metadata: Metadata | None = None
    onSuccess: CallbackIn | None = None
    onFailure: CallbackIn | None = None
    startAt: DateMs | None = None
    endAt: DateMs | None = None
    maxRuns: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)] | None = None
    misfirePolicy: Literal["skip", "run_once", "run_all"] = "run_once"
    overlapPolicy: Literal["allow", "skip", "queue"] = "allow"
    catchUpLimit: Annotated[int, Field(ge=1, le=1000)] = 10


class WorkflowScheduleIn(Strict):
    """A schedule whose slots start workflow runs: ScheduleIn's timing, and ``workflow``,
    the body of POST /v1/workflows (checked as that is, by api/scheduled_runs.py), in
    place of the task template. A body with ``workflow`` is read as this."""

    name: ScheduleName
    schedule: Expression
    timezone: Zone = "UTC"
    workflow: dict[str, Any]
    startAt: DateMs | None = None
    endAt: DateMs | None = None
    maxRuns: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)] | None = None
    misfirePolicy: Literal["skip", "run_once", "run_all"] = "run_once"
    overlapPolicy: Literal["allow", "skip", "queue"] = "allow"
    catchUpLimit: Annotated[int, Field(ge=1, le=1000)] = 10


# config options a template may not set: every run is due at its slot
TEMPLATE_REFUSED = ("executeAt", "executionDelay", "executeImmediately", "retryAt", "timeoutAt")


def _page(low: int, high: int) -> Any:
    return Annotated[int, BeforeValidator(lambda v: query_int(v, low, high))]


class PageQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    limit: _page(1, 1000) = 100  # type: ignore[valid-type]
    offset: _page(0, 1_000_000) = 0  # type: ignore[valid-type]


class NextQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    n: _page(1, 100) = 5  # type: ignore[valid-type]
