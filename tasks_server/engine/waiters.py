"""Waiters for a task's final state: futures the scheduler resolves in memory once the
outcome that ended a task is committed, so waiting for a result never polls the store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class FinalWaiters:
    """Futures keyed by task id. ``wake`` resolves (and drops) every future of a task;
    a future that is abandoned (its waiter timed out) is dropped by ``release``.
    ``on_wake``, when set, hears of every ``wake``: with API_PROCESSES > 1 it passes the
    wake to the server's other processes, whose waiters are woken by ``wake_here``."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self.on_wake: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

    def wait(self, task_id: str) -> asyncio.Future[None]:
        """A future resolved at the next ``wake(task_id)``. Register it before reading the
        task, so a change committed between the read and the wait is not missed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_id, []).append(future)
        return future

    def release(self, task_id: str, future: asyncio.Future[None]) -> None:
        futures = self._waiting.get(task_id)
        if futures is None:
            return
        if future in futures:
            futures.remove(future)
        if not futures:
            del self._waiting[task_id]

    def wake(self, task_id: str) -> None:
        self.wake_here(task_id)
        if self.on_wake is not None:
            self.on_wake(task_id)

    def wake_here(self, task_id: str) -> None:
        for future in self._waiting.pop(task_id, ()):
            if not future.done():
                future.set_result(None)
