"""Flow-control keys: a token bucket (burst = rate) and a parallelism cap per owner and
key; pure, with ``now`` passed in. The scheduler asks before it claims a task of a key and
tells it when the call ends; the tasks that wait stay durable rows in the store.

A key has two buckets of the same rate: one paces the claims, the other the sends. A claim
is a transaction that takes a varying time, so calls claimed at the rate would leave
bunched; the send bucket is asked when the call is about to leave (``try_send``) and
holds it back the few milliseconds needed for the starts themselves to keep the rate."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from ..models import FlowControl, FlowRef


@dataclass(slots=True)
class Bucket:
    """One key's limits and its live state. ``rate``/``parallelism`` None: no limit.

    Tokens are counted in ``1 / period_ms`` units (one token = ``period_ms`` credit, the
    bucket earns ``rate`` credit per ms), so the arithmetic is exact in integers.
    """

    rate: int | None
    period_ms: int
    parallelism: int | None
    paused: bool = False
    credit: int = 0
    updated_ms: int | None = None
    in_flight: int = 0
    send_credit: int = 0  # the send bucket, in the same units
    send_updated_ms: int | None = None

    @property
    def capacity(self) -> int:
        return (self.rate or 0) * self.period_ms  # a burst of ``rate`` tokens

    def refill(self, now_ms: int) -> None:
        if self.rate is None:
            return
        if self.updated_ms is None:
            self.credit = self.capacity  # a new key starts with a full burst
        else:
            earned = max(now_ms - self.updated_ms, 0) * self.rate
            self.credit = min(self.capacity, self.credit + earned)
        self.updated_ms = now_ms

    def send_wait_ms(self, now_ms: int) -> int:
        """Take a send token if there is one (0), else how long until there is (ms)."""
        if self.rate is None:
            return 0
        if self.send_updated_ms is None:
            self.send_credit = self.capacity  # a new key starts with a full burst
        else:
            earned = max(now_ms - self.send_updated_ms, 0) * self.rate
            self.send_credit = min(self.capacity, self.send_credit + earned)
        self.send_updated_ms = now_ms
        if self.send_credit >= self.period_ms:
            self.send_credit -= self.period_ms
            return 0
        return -(-(self.period_ms - self.send_credit) // self.rate)

    def can_start(self, now_ms: int) -> bool:
        self.refill(now_ms)
        if self.paused:
            return False
        if self.parallelism is not None and self.in_flight >= self.parallelism:
            return False
        return self.rate is None or self.credit >= self.period_ms

    def take(self) -> None:
        if self.rate is not None:
            self.credit -= self.period_ms
        self.in_flight += 1

    def next_start_ms(self, now_ms: int) -> int | None:
        """When a start may be allowed next without a call ending first; None when only
        a call ending (or a resume) can allow it."""
        self.refill(now_ms)
        if self.paused:
            return None
        if self.parallelism is not None and self.in_flight >= self.parallelism:
            return None
        if self.rate is None or self.credit >= self.period_ms:
            return now_ms
        return now_ms + -(-(self.period_ms - self.credit) // self.rate)


class FlowLimits:
    """Every known key's bucket. Keys are (owner id, key): an owner's keys are its own."""

    def __init__(self) -> None:
        self._buckets: dict[FlowRef, Bucket] = {}

    def __contains__(self, ref: FlowRef) -> bool:
        return ref in self._buckets

    def configure(self, ref: FlowRef, flow: FlowControl, paused: bool | None = None) -> None:
        """Set a key's limits (the last registration wins); its live state is kept, and
        so is its paused flag unless ``paused`` is given."""
        bucket = self._buckets.get(ref)
        if bucket is None:
            self._buckets[ref] = Bucket(flow.rate, flow.period.ms, flow.parallelism, bool(paused))
            return
        if (bucket.rate, bucket.period_ms) != (flow.rate, flow.period.ms):
            bucket.updated_ms = None  # a new rate starts with its own full burst
            bucket.send_updated_ms = None
        bucket.rate, bucket.period_ms = flow.rate, flow.period.ms
        bucket.parallelism = flow.parallelism
        if paused is not None:
            bucket.paused = paused

    def try_start(self, ref: FlowRef, now_ms: int) -> bool:
        """Take a token and a parallelism slot if both are free."""
        bucket = self._buckets[ref]
        if not bucket.can_start(now_ms):
            return False
        bucket.take()
        return True

    def try_send(self, ref: FlowRef, now_ms: int) -> int:
        """A claimed call of the key is about to leave: 0 when it may (a send token is
        taken), else the ms to wait for one."""
        bucket = self._buckets.get(ref)
        return 0 if bucket is None else bucket.send_wait_ms(now_ms)

    def finish(self, ref: FlowRef) -> None:
        """A call of the key ended (or a start was not claimed after all)."""
        bucket = self._buckets.get(ref)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def next_start_ms(self, ref: FlowRef, now_ms: int) -> int | None:
        return self._buckets[ref].next_start_ms(now_ms)

    def in_flight(self, ref: FlowRef) -> int:
        bucket = self._buckets.get(ref)
        return 0 if bucket is None else bucket.in_flight


class FlowGate:
    """The scheduler's view of flow control: which armed tasks belong to a key, the
    tasks held back by their key's limits (an in-memory index of durable rows, ordered by
    due time, then priority, like the due-time heap), and which admitted tasks hold a
    slot of their key until their call ends."""

    def __init__(self) -> None:
        self.limits = FlowLimits()
        self._flow_of: dict[str, FlowRef] = {}  # armed tasks of a key
        self._waiting: dict[FlowRef, list[tuple[int, int, int, str]]] = {}
        self._waiting_ids: dict[str, tuple[FlowRef, int]] = {}  # id → (key, sequence)
        self._started: dict[str, FlowRef] = {}  # admitted: claiming, held or in flight
        self._sequence = itertools.count()

    def note(self, task_id: str, flow: FlowRef | None) -> None:
        """The task (armed or re-armed) counts against ``flow``."""
        self._waiting_ids.pop(task_id, None)
        if flow is not None:
            self._flow_of[task_id] = flow

    def is_known(self, task_id: str) -> bool:
        return task_id in self._waiting_ids or task_id in self._started

    def drop(self, task_id: str) -> None:
        """The task stopped being claimable; a slot it held is freed."""
        self._flow_of.pop(task_id, None)
        self._waiting_ids.pop(task_id, None)
        self.release(task_id)

    def sort(self, entries: list[tuple[int, int, str]]) -> list[str]:
        """Of popped (due, priority, id) entries, the ids free of any key; the others
        wait behind their key."""
        free = []
        for due_ms, priority, task_id in entries:
            ref = self._flow_of.pop(task_id, None)
            if ref is None:
                free.append(task_id)
                continue
            sequence = next(self._sequence)
            self._waiting_ids[task_id] = (ref, sequence)
            heapq.heappush(
                self._waiting.setdefault(ref, []), (due_ms, -priority, sequence, task_id)
            )
        return free

    def unconfigured(self) -> list[FlowRef]:
        return [ref for ref in self._waiting if ref not in self.limits]

    def admit(self, now_ms: int, budget: int) -> list[str]:
        """Waiting tasks that are due and that their key lets start now, in order."""
        admitted: list[str] = []
        for ref in list(self._waiting):
            heap = self._waiting[ref]
            while heap and len(admitted) < budget:
                due_ms, _, sequence, task_id = heap[0]
                if self._waiting_ids.get(task_id) != (ref, sequence):
                    heapq.heappop(heap)  # forgotten or re-armed since
                    continue
                if due_ms > now_ms or not self.limits.try_start(ref, now_ms):
                    break
                heapq.heappop(heap)
                del self._waiting_ids[task_id]
                self._started[task_id] = ref
                admitted.append(task_id)
            if not heap:
                del self._waiting[ref]
        return admitted

    def started_flow(self, task_id: str) -> FlowRef | None:
        return self._started.get(task_id)

    def send_at_ms(self, task_id: str, now_ms: int) -> int | None:
        """None when the admitted task's call may leave now (free of any key, or its key
        gave a send token); else when to ask again."""
        ref = self._started.get(task_id)
        wait_ms = 0 if ref is None else self.limits.try_send(ref, now_ms)
        return None if wait_ms == 0 else now_ms + wait_ms

    def release(self, task_id: str) -> bool:
        """The admitted task's call ended (or it was not claimed): free its slot."""
        ref = self._started.pop(task_id, None)
        if ref is None:
            return False
        self.limits.finish(ref)
        return True

    def next_wake_ms(self, now_ms: int) -> int | None:
        """When a waiting task may be admitted next without a call ending first."""
        wake: int | None = None
        for ref, heap in self._waiting.items():
            if not heap or ref not in self.limits:
                continue
            ready = self.limits.next_start_ms(ref, now_ms)
            if ready is not None:
                at = max(ready, heap[0][0])
                wake = at if wake is None else min(wake, at)
        return wake

    def waiting(self, ref: FlowRef) -> int:
        return sum(1 for key, _ in self._waiting_ids.values() if key == ref)
