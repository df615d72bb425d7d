"""Pacing new workflow runs against the steps already in progress, so that runs started
together finish one after another instead of all starting and then waiting for each
other: a step released by its dependencies starts at once, and a run's first step
starts only while the workflow calls in progress leave room. Pure: times are passed in.
"""

from __future__ import annotations

from ..models import Attempt

# workflow calls in progress (started, outcome not yet committed) beyond which no new
# run starts. Each answer costs the server a few tenths of a millisecond before its
# dependants' calls leave, and a run's first call releases several: a few in progress
# keep the server busy, more only make each step wait for the others' outcomes
# (measured with bench/bench_workflows.py: 5 gave the lowest latency at full rate)
WINDOW = 5
# a call that has not answered within this long stops counting: a slow target then
# never holds new runs back, only a backlog of answers to record does
YOUNG_MS = 25
# a step marked as released that never started (its run was cancelled meanwhile) is
# forgotten after this long
FORGET_MS = 600_000


def is_step(attempt: Attempt) -> bool:
    """Whether ``attempt`` is a workflow step's call: the store labels a step's task with
    its run and step last in its metadata (a run's callback is labelled otherwise)."""
    metadata = attempt.spec.metadata
    return bool(metadata) and metadata[-1][0] == "workflowStep"  # type: ignore[index]


class StepPacer:
    """Decides whether a workflow step's call may start now (the scheduler asks just
    before it starts a call): steps the store released because their dependencies
    succeeded always may; other steps (a run's first ones, a retry after a pause) only
    while fewer than ``window`` workflow calls are in progress. A call is in progress
    from its start until its outcome is committed, except while it waits for its answer
    longer than ``young_ms``. Calls that are not workflow steps always may start."""

    def __init__(self, window: int = WINDOW, young_ms: int = YOUNG_MS) -> None:
        self._window = window
        self._young_ms = young_ms
        self._released: dict[str, int] = {}  # task → when its dependencies released it
        # calls started and not answered yet: task → start (ms), oldest first; the ones
        # waiting longer than young_ms are dropped
        self._waiting: dict[str, int] = {}
        self._answered: set[str] = set()  # calls answered, outcome not yet committed

    def released(self, task_id: str, at_ms: int) -> None:
        """The store released this step's task: its run is under way, it never waits."""
        self._released[task_id] = at_ms
        first = next(iter(self._released.items()))
        if at_ms - first[1] > FORGET_MS:
            del self._released[first[0]]

    def admit(self, attempt: Attempt, now_ms: int) -> bool:
        """Whether ``attempt``'s call may start now; if it may, it is in progress."""
        if not is_step(attempt):
            return True
        task_id = attempt.task_id
        if self._released.pop(task_id, None) is None:
            self._expire(now_ms)
            if self.in_progress >= self._window:
                return False
        self._waiting.pop(task_id, None)  # insertion order stays the order of the starts
        self._waiting[task_id] = now_ms
        return True

    def answered(self, task_id: str) -> None:
        """The call ended; its outcome is on its way to the store."""
        if self._waiting.pop(task_id, None) is not None:
            self._answered.add(task_id)

    def recorded(self, task_ids: list[str]) -> None:
        """These calls' outcomes are committed (their dependants released)."""
        for task_id in task_ids:
            self._waiting.pop(task_id, None)
            self._answered.discard(task_id)

    def reopens_at_ms(self) -> int | None:
        """When the oldest call waiting for its answer stops counting (None: none does)."""
        oldest = next(iter(self._waiting.values()), None)
        return None if oldest is None else oldest + self._young_ms

    @property
    def in_progress(self) -> int:
        return len(self._waiting) + len(self._answered)

    def _expire(self, now_ms: int) -> None:
        while self._waiting:
            task_id, started_ms = next(iter(self._waiting.items()))
            if now_ms - started_ms < self._young_ms:
                return
            del self._waiting[task_id]
