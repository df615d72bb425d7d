"""Waiting for a result: a long poll that answers as soon as a task is final.

The scheduler wakes waiters in memory after it commits the outcome that ends a task, so a
waiting request costs no database reads beyond the one before and the one after the wait.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ..clock import Clock
from ..models import Task
from . import queues
from .errors import field_error
from .services import Services, services
from .wire import answer

T = TypeVar("T")

MAX_WAIT_S = 60.0
_SECONDS = re.compile(r"\d{1,2}(\.\d{1,3})?")


def wait_seconds(request: Request) -> float | None:
    """The ``wait`` query parameter: None when absent, else 0-60 seconds (400 otherwise)."""
    if not request.scope["query_string"]:
        return None  # most registrations: no query to parse
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    if not _SECONDS.fullmatch(raw) or float(raw) > MAX_WAIT_S:
        raise field_error(("wait",), "Expected a number of seconds from 0 to 60")
    return float(raw)


async def wait_for_final(
    clock: Clock,
    wait: Callable[[], asyncio.Future[None]],
    release: Callable[[asyncio.Future[None]], None],
    read: Callable[[], Awaitable[T]],
    is_final: Callable[[T], bool],
    wait_s: float,
) -> T:
    """``read()`` once it is final, or as it is when ``wait_s`` seconds of ``clock`` have
    passed. ``wait`` registers a future woken in memory on a change (before the read, so
    a change committed in between is not missed); ``release`` drops it."""
    deadline = clock.monotonic() + wait_s
    while True:
        woken = wait()
        try:
            found = await read()
            remaining = deadline - clock.monotonic()
            if is_final(found) or remaining <= 0:
                return found
            sleeper = asyncio.ensure_future(clock.sleep(remaining))
            try:
                await asyncio.wait((woken, sleeper), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
            if not woken.done():
                return await read()
        finally:
            release(woken)


async def wait_until_final(app: Services, owner_id: str, task_id: str, wait_s: float) -> Task:
    """The task once it is final, or as it is when ``wait_s`` seconds (of the server's
    clock) have passed. Raises TaskNotFound, also when it is deleted while waiting."""
    return await wait_for_final(
        app.clock,
        lambda: app.scheduler.wait_final(task_id),
        lambda woken: app.scheduler.stop_waiting(task_id, woken),
        lambda: app.store.get_task(owner_id, task_id),
        lambda task: task.state.is_terminal,
        wait_s,
    )


def answer_result(request: Request, task: Task, final_status: int = 200) -> Response:
    """``final_status`` with the stored outcome when the task is final, else 202 with its
    current state."""
    return answer(request, queues.record(task), final_status if task.state.is_terminal else 202)


async def result(request: Request) -> Response:
    app = services(request)
    owner_id = await app.auth.owner_id(request)
    task_id = queues.task_id_of(request)
    wait_s = wait_seconds(request) or 0.0
    return answer_result(request, await wait_until_final(app, owner_id, task_id, wait_s))
