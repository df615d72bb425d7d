"""DueTimers: the in-memory index of tasks due in the near future; pure, no I/O.

A binary heap of (due ms, -priority, sequence, task id) with lazy deletion: ``push`` of a known id
supersedes its earlier entry, ``discard`` forgets it, and stale heap entries are skipped
when they surface. A heap rather than a hashed wheel: for the sizes a horizon holds, pop
and push are O(log n) in C (``heapq``), and a wheel's buckets would cost more in Python.
Beside the heap, a count of live tasks per BUCKET_MS of due time says how much is due
soon (``due_counts``) without walking the heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

BUCKET_MS = 100


class DueTimers:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, str]] = []
        self._due: dict[str, int] = {}  # task id → its live due time
        self._counts: dict[int, int] = {}  # due_ms // BUCKET_MS → live tasks due then
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._due

    def push(self, task_id: str, due_ms: int, priority: int = 0) -> None:
        """Arm (or re-arm) a task; the latest push for an id wins. Among equal due
        times the higher priority pops first, then the earlier push."""
        self.discard(task_id)
        self._due[task_id] = due_ms
        bucket = due_ms // BUCKET_MS
        self._counts[bucket] = self._counts.get(bucket, 0) + 1
        heapq.heappush(self._heap, (due_ms, -priority, next(self._sequence), task_id))
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._compact()

    def discard(self, task_id: str) -> None:
        due_ms = self._due.pop(task_id, None)
        if due_ms is not None:
            self._uncount(due_ms)

    def _uncount(self, due_ms: int) -> None:
        bucket = due_ms // BUCKET_MS
        left = self._counts[bucket] - 1
        if left:
            self._counts[bucket] = left
        else:
            del self._counts[bucket]

    def due_counts(self, from_ms: int, until_ms: int) -> Iterator[tuple[int, int]]:
        """(bucket start ms, live tasks due in it) for the buckets from the one holding
        ``from_ms`` to the one holding ``until_ms``, in time order; empty ones skipped."""
        counts = self._counts
        for bucket in range(from_ms // BUCKET_MS, until_ms // BUCKET_MS + 1):
            count = counts.get(bucket)
            if count:
                yield bucket * BUCKET_MS, count

    def pop_due(self, now_ms: int, limit: int | None = None) -> list[str]:
        """Ids due at or before ``now_ms``, earliest first, at most ``limit`` of them."""
        return [task_id for _, _, task_id in self.pop_due_entries(now_ms, limit)]

    def pop_due_entries(self, now_ms: int, limit: int | None = None) -> list[tuple[int, int, str]]:
        """Like pop_due, as (due ms, priority, id)."""
        heap, due = self._heap, self._due
        popped: list[tuple[int, int, str]] = []
        while heap and heap[0][0] <= now_ms and (limit is None or len(popped) < limit):
            due_ms, negative_priority, _, task_id = heapq.heappop(heap)
            if due.get(task_id) == due_ms:
                del due[task_id]
                self._uncount(due_ms)
                popped.append((due_ms, -negative_priority, task_id))
        return popped

    def next_due(self) -> int | None:
        """The earliest live due time, or None when empty."""
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][3]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._due.get(entry[3]) == entry[0]]
        heapq.heapify(self._heap)
