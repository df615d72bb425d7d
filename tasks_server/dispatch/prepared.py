"""``Prepared``: a call with the work that does not depend on its start time done ahead."""

from __future__ import annotations

from dataclasses import dataclass

from tasks_server.models import Call


@dataclass(frozen=True, slots=True)
class Prepared:
    """A call and what the dispatcher that prepared it worked out ahead of its start
    (options, egress verdict, host); ``plan`` is read only by that dispatcher. It holds no
    resource, so a prepared call that is never submitted is simply dropped."""

    call: Call
    plan: object = None
