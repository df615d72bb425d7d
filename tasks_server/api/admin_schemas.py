"""Wire models of the owner administration endpoints (``/v1/admin/owners``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .schemas import OwnerIn, Strict

_COUNT = Annotated[int, Field(ge=0, le=1_000_000_000)]
_BUDGET = Annotated[int, Field(ge=1, le=1_000_000_000)]


class OwnerCreateIn(OwnerIn):
    tasksInQueueLimit: _COUNT | None = None
    requestBudget: _BUDGET | None = None


class OwnerChangeIn(Strict):
    disabled: bool | None = None
    tasksInQueueLimit: _COUNT | None = None
    # requests per minute; null returns the owner to the server's default
    requestBudget: _BUDGET | None = None
