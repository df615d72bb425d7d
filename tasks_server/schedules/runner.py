"""ScheduleRunner: turns due schedule slots into ordinary tasks (or workflow runs), durably
and exactly once.

Each pass reads the due schedules from the store, lets policy.plan decide, and
writes each plan in one store transaction (the tasks and the schedule's new cursor
together), then hands the new tasks to the task scheduler. It sleeps until the next
schedule is due, a wake-up, or at most MAX_NAP_S. Being the server's planner loop, each
pass also ends workflow runs past their deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from ..clock import Backoff, Clock, sleep_or_wake
from ..errors import StorageUnavailable
from ..models import DueTask, FlowRef, Schedule, ScheduleTarget
from ..store import Store
from .policy import LOOKAHEAD_MS, plan

# a wall-clock jump, a `queue` schedule's task ending, or the death of the leader (another
# node then takes over) is seen within this
MAX_NAP_S = 1.0
PASS_LIMIT = 512  # schedules read per pass; a full pass is followed by another at once
# Wake when an `allow` slot is half a lookahead away, then plan a whole lookahead: in a
# steady stream of slots each pass (and each commit) serves about half a second of them.
WAKE_AHEAD_MS = LOOKAHEAD_MS // 2


class TaskNotifier(Protocol):
    def notify(
        self, task_id: str, due_at_ms: int, priority: int = 0, flow: FlowRef | None = None
    ) -> None: ...

    def forget(self, task_id: str) -> None: ...


@dataclass(slots=True)
class RunnerStats:
    """Counters for tests, metrics and the benchmark."""

    passes: int = 0
    fired: int = 0  # tasks created, or workflow runs started
    stale: int = 0  # plans refused because the schedule changed meanwhile


class ScheduleRunner:
    def __init__(self, store: Store, tasks: TaskNotifier, clock: Clock) -> None:
        self._store = store
        self._tasks = tasks
        self._clock = clock
        self._wake = asyncio.Event()
        self._wake_at_ms: int | None = None
        self._stopping = False
        self.idle = asyncio.Event()  # set whenever the loop parks (tests wait on it)
        self.stats = RunnerStats()
        self.alive = False
        self.leading = False  # whether this node planned the last pass (one node at a time)

    def notify(self, next_at_ms: int | None) -> None:
        """A schedule was created or changed and is next due at ``next_at_ms``: wake the
        loop if that is earlier than it planned to wake. In memory, never blocking."""
        if next_at_ms is None:
            return
        if self._wake_at_ms is None or next_at_ms - WAKE_AHEAD_MS < self._wake_at_ms:
            self._wake.set()

    async def run(self) -> None:
        """Run passes until ``stop``. A pass the database refuses (disk full, locked) is
        tried again after a growing pause: plans are written whole or not at all."""
        self.alive = True
        backoff = Backoff(self._clock)
        try:
            while not self._stopping:
                try:
                    await self._pass()
                except StorageUnavailable:
                    await backoff.wait(self._wake)
                    continue
                backoff.reset()
        finally:
            self.alive = False

    async def _pass(self) -> None:
        handled = await self.tick(self._clock.now_ms())
        if handled >= PASS_LIMIT:
            return
        # clear before reading the next due time: a notify from now on ends the nap
        self._wake.clear()
        delay_s = await self._nap_s()
        if self._stopping or delay_s <= 0:
            return
        self.idle.set()
        await self._wait(delay_s)
        self.idle.clear()

    async def _nap_s(self) -> float:
        if not self.leading:
            return MAX_NAP_S  # ask for the leadership again after this
        next_at = await self._store.next_schedule_at(WAKE_AHEAD_MS)
        now = self._clock.now_ms()
        wake_at = now + int(MAX_NAP_S * 1000) if next_at is None else next_at
        self._wake_at_ms = wake_at
        return min(max(wake_at - now, 0) / 1000, MAX_NAP_S)

    async def _wait(self, delay_s: float) -> None:
        await sleep_or_wake(self._clock, delay_s, self._wake)
        self._wake_at_ms = None

    async def tick(self, now_ms: int) -> int:
        """One pass at ``now_ms``: plan every due schedule and write the plans (their
        transactions share commits). ``allow`` schedules are planned up to LOOKAHEAD_MS
        ahead. Returns the number of schedules looked at.

        Where several nodes share the database only the leader plans (the store elects
        it); the others look at nothing and ask again at their next pass."""
        self.leading = await self._store.lead_schedules()
        if not self.leading:
            return 0
        # the planner loop also ends workflow runs past their deadline (config.timeoutMs)
        for task_id in await self._store.expire_runs(now_ms):
            self._tasks.forget(task_id)
        due = await self._store.due_schedules(now_ms, LOOKAHEAD_MS, PASS_LIMIT)
        if not due:
            return 0
        self.stats.passes += 1
        plans = [plan(schedule, now_ms) for schedule in due]
        results = await asyncio.gather(*(self._store.fire_schedule(p, now_ms) for p in plans))
        for schedule, created in zip(due, results, strict=True):
            self._hand_over(schedule, created)
        return len(due)

    def _hand_over(self, schedule: Schedule, created: list[DueTask] | None) -> None:
        if created is None:
            self.stats.stale += 1  # edited meanwhile: the next pass reads it again
            return
        if schedule.target is ScheduleTarget.TASK:
            for due in created:  # with its priority and flow-control key
                self._tasks.notify(due.task_id, due.due_at_ms, due.priority, due.flow)
        # a workflow schedule's runs: the store has told the scheduler about their steps
        self.stats.fired += len(created)

    async def stop(self) -> None:
        """Finish the current pass and return; plans written so far stay written."""
        self._stopping = True
        self._wake.set()
