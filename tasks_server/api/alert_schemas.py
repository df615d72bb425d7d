"""Wire models of the alert API: a rule, its scope, its expectation and its channel."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from .schemas import CallbackIn, Strict, query_int

_ADDRESS = re.compile(r"[^@\s,<>\"]+@[^@\s,<>\"]+\.[^@\s,<>\"]+")


def _address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise PydanticCustomError("email", "Expected an e-mail address like ops@example.com")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise PydanticCustomError(
            "regex", "Invalid regular expression: {reason}", {"reason": str(exc)}
        ) from None
    return value


def _label(value: str) -> str:
    if value.startswith("="):
        raise PydanticCustomError("label", "Expected key or key=value")
    return value


Address = Annotated[str, StringConstraints(max_length=254), AfterValidator(_address)]


class ScopeIn(Strict):
    schedule: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    label: (
        Annotated[str, StringConstraints(min_length=1, max_length=600), AfterValidator(_label)]
        | None
    ) = None

    @model_validator(mode="after")
    def _one(self) -> ScopeIn:
        if self.schedule is not None and self.label is not None:
            raise ValueError("Give a schedule or a label, not both")
        return self


class ExpectIn(Strict):
    statusCodes: (
        Annotated[list[Annotated[int, Field(ge=100, le=599)]], Field(min_length=1, max_length=50)]
        | None
    ) = None
    bodyContains: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = None
    bodyRegex: (
        Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_regex)]
        | None
    ) = None

    @model_validator(mode="after")
    def _something(self) -> ExpectIn:
        if self.statusCodes is None and self.bodyContains is None and self.bodyRegex is None:
            raise ValueError("Expect statusCodes, bodyContains or bodyRegex")
        return self


class EmailIn(Strict):
    to: Annotated[list[Address], Field(min_length=1, max_length=10)]


class ChannelIn(Strict):
    email: EmailIn | None = None
    webhook: CallbackIn | None = None

    @model_validator(mode="after")
    def _one(self) -> ChannelIn:
        if (self.email is None) == (self.webhook is None):
            raise ValueError("Give exactly one channel: email or webhook")
        return self


Event = Literal["task.failed", "attempt.failed", "schedule.failed", "response.unexpected"]


class AlertIn(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    on: Event
    channel: ChannelIn
    scope: ScopeIn | None = None
    consecutive: Annotated[int, Field(ge=1, le=1000)] = 1
    expect: ExpectIn | None = None

    @model_validator(mode="after")
    def _expectation(self) -> AlertIn:
        if (self.on == "response.unexpected") != (self.expect is not None):
            raise ValueError("response.unexpected needs expect; other rules take none")
        return self


class DeliveryQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    limit: Annotated[int, AfterValidator(lambda v: v)] = 100

    @model_validator(mode="before")
    @classmethod
    def _limit(cls, data: Any) -> Any:
        if isinstance(data, dict) and "limit" in data:
            data = {**data, "limit": query_int(data["limit"], 1, 1000)}
        return data
