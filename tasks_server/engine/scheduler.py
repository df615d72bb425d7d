"""Scheduler: turns due tasks into calls and outcomes into state, durably and on time.

It keeps only the near future (a horizon) in memory, refilled from the store's due-time
index; claims due tasks in one transaction before their calls leave; hands calls to the
dispatcher; and writes finished attempts in batches. It is the only object that holds both
the store and the dispatcher.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..clock import Backoff, Clock, sleep_or_wake
from ..dispatch import Dispatcher, Prepared
from ..errors import StorageUnavailable
from ..models import Attempt, Call, DueTask, FlowControl, FlowRef, Outcome, Result, TaskState
from ..store import Store
from ..store.ids import new_task_id
from ..timing import attempt_timeout_ms
from .callbacks import callback_for
from .history import cap_headers
from .leases import LeaseKeeper
from .limits import FlowGate
from .owner_security import OwnerSecurityCache
from .retry import DEFAULT_RETRY_AFTER_MAX_MS, decide
from .timers import BUCKET_MS, DueTimers
from .waiters import FinalWaiters

logger = logging.getLogger(__name__)
task_logger = logging.getLogger("tasks_server.tasks")

MAX_NAP_S = 1.0  # a wall-clock jump is noticed within this
MAX_CLAIM_AHEAD_MS = 5_000  # a burst is never claimed further ahead than this
# claiming time per task (ms) assumed until one is measured: a busy machine's, so that
# the first burst after a start is claimed in time too (claiming early costs nothing)
CLAIM_MS_PRIOR = 0.5
_REFILL_LIMIT = 200_000
CLAIM_CHUNK = 256
WAITING_FACTOR = 4  # calls claimed, running or waiting for their host, per in-flight slot
# held attempts started per pass: the loop's I/O (connecting, sending) runs between passes,
# so the first calls of a burst are on the wire while the rest are being configured
START_CHUNK = 8
# Outcomes of calls that end while others are still being started wait, decided later:
# starting goes first. They are looked at again every ANSWER_POLL_S, decided at the
# latest ANSWER_DEFER_MAX_S after the first of them, ANSWER_CHUNK per pass.
ANSWER_POLL_S = 0.005
ANSWER_DEFER_MAX_S = 1.0
ANSWER_CHUNK = 64


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    horizon_ms: int = 60_000
    max_in_flight: int = 1000
    max_response_bytes: int = 32_768
    max_header_bytes: int = 16_384  # response headers kept per attempt (0: no cap)
    log_attempts: bool = False
    # claim this long before the due time and hold the attempt until then, so the claim
    # transaction and spec decoding are done when the instant comes (more for a burst:
    # see claim_window_ms)
    lookahead_ms: int = 0
    retry_after_max_ms: int = DEFAULT_RETRY_AFTER_MAX_MS  # cap on a target's Retry-After
    seed: int | None = None  # seeds the retry jitter (tests); None: from the OS


@dataclass(slots=True)
class SchedulerStats:
    """Counters read by the metrics endpoint and the benchmarks."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    lease_lost: int = 0  # claims dropped unsent: their lease ended before their time
    on_start: Callable[[float], None] | None = None  # called with each start's lateness (ms)
    observe: Callable[[Attempt, Result], None] | None = None


def claim_window(
    due_counts: Iterable[tuple[int, int]], now_ms: int, lookahead_ms: int, claim_ms: float
) -> tuple[int, int | None]:
    """How far ahead of ``now_ms`` to claim now, and when a later burst must start being
    claimed (None: none in sight).

    ``lookahead_ms``, or more when a burst is coming, so that claiming it (``claim_ms`` per
    task, as measured) ends before it is due: ``due_counts`` are (bucket start, tasks due
    in it) in time order from now, and every task due up to a bucket must be claimed
    before that bucket is due, so its claiming starts ``lookahead_ms`` plus the claiming
    time of everything due up to it ahead of the bucket. Pure; the window is never more
    than MAX_CLAIM_AHEAD_MS.
    """
    window, claim_at_ms = lookahead_ms, None
    if lookahead_ms <= 0 or claim_ms <= 0:
        return window, claim_at_ms
    total = 0
    for start_ms, count in due_counts:
        total += count
        starts_ms = start_ms - lookahead_ms - round(total * claim_ms)
        if starts_ms <= now_ms:
            window = max(window, start_ms - now_ms + BUCKET_MS)
        elif claim_at_ms is None or starts_ms < claim_at_ms:
            claim_at_ms = starts_ms
    return min(window, MAX_CLAIM_AHEAD_MS), claim_at_ms


class StartGate(Protocol):
    """Decides whether a held attempt's call may start now (workflow runs are paced by
    one: workflows/pacing.py). An attempt it turns away stays held, claimed, until the
    gate lets it go."""

    def admit(self, attempt: Attempt, now_ms: int) -> bool:
        """Whether the call may start now; True also counts it as started."""

    def answered(self, task_id: str) -> None:
        """The attempt's call ended (its outcome is not committed yet)."""

    def recorded(self, task_ids: list[str]) -> None:
        """These attempts' outcomes are committed."""

    def reopens_at_ms(self) -> int | None:
        """When the gate may let a held attempt go without an outcome committed."""


def attempt_headers(attempt: Attempt) -> tuple[tuple[str, str], ...]:
    """Headers the server adds (docs/compatibility.md#added-headers), plus the attempt
    number for deduplication."""
    headers = [("X-Tasks-Queue-Id", attempt.task_id), ("X-Tasks-Attempt", str(attempt.number))]
    if attempt.retry_count > 0:
        headers += [
            ("X-Tasks-Retry-Count", str(attempt.retry_count)),
            ("X-Tasks-Retry-Limit", str(attempt.spec.config.retry_limit)),
            ("X-Tasks-Estimate-Next-Retry-At", str(attempt.due_at_ms)),
        ]
    return tuple(headers)


class Scheduler:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        clock: Clock,
        options: SchedulerOptions | None = None,
    ) -> None:
        self._store = store
        self._security = OwnerSecurityCache(store)
        self._dispatcher = dispatcher
        self._clock = clock
        self._options = options or SchedulerOptions()
        self._timers = DueTimers()
        self._horizon_end_ms = 0
        self._refilling: list[DueTask] | None = None
        self._wake = asyncio.Event()
        self._wake_at_ms: int | None = None
        self._starved = False  # the loop naps because every slot is taken
        # claiming time per task (claim and hold), a moving average of what was measured
        self._claim_ms = CLAIM_MS_PRIOR
        self._results: list[Result] = []
        self._results_ready = asyncio.Event()
        # calls that ended, their outcomes not decided yet (see _answered)
        # (attempt, its call, when the call ended: epoch ms)
        self._answers: deque[tuple[Attempt, asyncio.Future[Outcome], int]] = deque()
        self._answers_check: asyncio.Handle | None = None
        self._in_flight: dict[str, asyncio.Future[Outcome]] = {}
        self._rng = random.Random(self._options.seed)
        # claimed ahead: (due, -priority, seq, attempt, its call prepared for the due time)
        self._held: list[tuple[int, int, int, Attempt, Prepared]] = []
        # of the attempts in flight: what a retry is armed with again
        self._priorities: dict[str, tuple[int, FlowRef | None]] = {}
        self.flows = FlowGate()  # flow-control keys: limits and the tasks held back
        self._held_ids: dict[str, Attempt] = {}
        self.start_gate: StartGate | None = None
        self._gated: list[tuple[int, int, int, Attempt, Prepared]] = []  # turned away by it
        self._held_changed = asyncio.Event()  # wakes the starter: an earlier attempt is held
        self._claimed_at_ms: dict[str, int] = {}  # held attempts: when they were claimed
        self.leases = LeaseKeeper(
            store, clock, self.notify, lambda: [*self._in_flight, *self._held_ids]
        )
        self._loading: set[asyncio.Future[None]] = set()  # adopted, waiting for their owner
        self._sequence = itertools.count()
        self._stopping = False
        self._abandoned = False
        self._attempts: dict[tuple[str, int], Attempt] = {}  # decided, not yet recorded
        # told about every outcome once it is committed (alerts); in memory, never blocking
        self.on_recorded: Callable[[list[tuple[Attempt, Result]]], None] | None = None
        self.waiters = FinalWaiters()  # woken after a task's final outcome is committed
        self._stop_requested = asyncio.Event()
        self._stop_waiting = asyncio.Event()  # set once stop's grace period is over
        self.idle = asyncio.Event()  # set whenever the loop parks (tests wait on it)
        self.stats = SchedulerStats()
        self.alive = False

    # -- called by the API (in-memory, never blocking) ----------------------------------

    def notify(
        self, task_id: str, due_at_ms: int, priority: int = 0, flow: FlowRef | None = None
    ) -> None:
        """A task became claimable at ``due_at_ms``; arm it if it is within the horizon.
        ``flow``: the (owner, key) whose limits it waits for."""
        if self._refilling is not None:
            self._refilling.append(DueTask(task_id, due_at_ms, priority, flow))
        if due_at_ms < self._horizon_end_ms:
            self.flows.note(task_id, flow)
            self._timers.push(task_id, due_at_ms, priority)
            if self._wake_at_ms is None or due_at_ms < self._wake_at_ms:
                self._wake.set()

    def forget(self, task_id: str) -> None:
        """A task stopped being claimable (paused, revoked, deleted).

        An attempt claimed ahead of its due time is dropped unsent; its history row says so.
        """
        self._timers.discard(task_id)
        self.flows.drop(task_id)
        self.waiters.wake(task_id)  # revoked or deleted: a waiter reads the task again
        attempt = self._held_ids.pop(task_id, None)
        self._claimed_at_ms.pop(task_id, None)
        if attempt is not None:
            outcome = Outcome(status=0, error="not sent: the task was stopped before its time")
            self._results.append(
                Result(
                    task_id, attempt.number, self._clock.now_ms(), TaskState.ERROR, 0, None, outcome
                )
            )
            self._results_ready.set()

    # -- claims the store made for the scheduler (workflow steps released by an outcome) --

    def free_claims(self) -> int:
        """How many attempts may be claimed now (what ``adopt`` may be handed)."""
        return 0 if self._stopping else max(self._free_slots(), 0)

    def adopt(self, attempt: Attempt) -> None:
        """Hold an attempt the store claimed on the scheduler's behalf, in the transaction
        that released it (docs/workflows.md#durability), and start it at its due time like
        one of its own claims. Stopping, it stays claimed and runs at the next start."""
        if not self._security.knows(attempt.owner_id):
            task = asyncio.ensure_future(self._adopt_after_load(attempt))
            self._loading.add(task)
            task.add_done_callback(self._loading.discard)
            return
        now_ms = self._clock.now_ms()
        self._held_ids[attempt.task_id] = attempt
        self._claimed_at_ms[attempt.task_id] = now_ms
        self._hold(attempt, now_ms)
        if not self._stopping:
            # a released step is due now: its call leaves here, not on the starter's
            # next pass behind whatever else the loop has to do first
            self._start_held(now_ms, START_CHUNK)
        self._held_changed.set()

    async def _adopt_after_load(self, attempt: Attempt) -> None:
        await self._security.load((attempt.owner_id,), self._clock.monotonic())
        self.adopt(attempt)

    def configure_flow(self, owner_id: str, flow: FlowControl, paused: bool | None = None) -> None:
        """A registration (the last one wins) or an edit set the key's limits."""
        self.flows.limits.configure((owner_id, flow.key), flow, paused)
        self._wake.set()

    def flow_in_flight(self, flow: FlowRef) -> int:
        """Calls of the key admitted and not yet ended."""
        return self.flows.limits.in_flight(flow)

    def wait_final(self, task_id: str) -> asyncio.Future[None]:
        """A future resolved once an outcome that ends the task is committed (or the
        task is stopped); the caller reads the task again. See FinalWaiters.wait."""
        return self.waiters.wait(task_id)

    def stop_waiting(self, task_id: str, future: asyncio.Future[None]) -> None:
        self.waiters.release(task_id, future)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def armed(self) -> int:
        return len(self._timers)

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``stop``; the loop and the outcome writer share one task group."""
        self.alive = True
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.run_recorder(), name="scheduler-recorder")
                group.create_task(self._start_loop(), name="scheduler-starter")
                if self.leases.expires:
                    group.create_task(self.leases.run(), name="lease-keeper")
                await self._loop()
                self._results_ready.set()
        finally:
            self.alive = False

    async def _loop(self) -> None:
        backoff = Backoff(self._clock)
        while not self._stopping:
            now = self._clock.now_ms()
            try:
                started = await self.tick(now)
            except StorageUnavailable:
                await backoff.wait(self._stop_requested)  # claims are retried; nothing was claimed
                continue
            backoff.reset()
            if started and self._has_slots():
                await asyncio.sleep(0)  # let the dispatcher send what was just started
                continue
            # clear before reading the timers: a notify from now on wakes the nap below
            self._wake.clear()
            if self._stopping:
                break
            delay_s = self._nap_s(self._clock.now_ms())
            if delay_s <= 0:
                continue
            self.idle.set()
            await self._wait(delay_s)
            self.idle.clear()

    def _free_slots(self) -> int:
        """Attempts that may be claimed now. Calls queued behind a busy host's connection
        cap hold no slot, so a slow host never holds up the others; they are bounded
        apart, at WAITING_FACTOR times max_in_flight, so memory stays bounded."""
        claimed = len(self._in_flight) + len(self._held_ids)
        # attempts the start gate holds back hold no slot either, so the steps released
        # meanwhile are claimed beside them
        running = claimed - self._dispatcher.waiting_for_host - len(self._gated)
        limit = self._options.max_in_flight
        return min(limit - running, WAITING_FACTOR * limit - claimed)

    def _has_slots(self) -> bool:
        return self._free_slots() > 0

    def _nap_s(self, now_ms: int) -> float:
        """How long to sleep: until the next due task, the refill point, or MAX_NAP_S.
        Without a free slot, until a slot frees: a call ends (its outcome is recorded) or
        a started call queues behind its host's cap (the starter wakes the loop)."""
        wake_at = self._refill_at_ms()
        self._starved = not self._has_slots()
        next_due = self._timers.next_due()
        if next_due is not None and not self._starved:
            window, burst_at = self._claim_window(now_ms)
            wake_at = min(wake_at, next_due - window, burst_at or wake_at)
        flow_wake = self.flows.next_wake_ms(now_ms)
        if flow_wake is not None and not self._starved:
            wake_at = min(wake_at, flow_wake)
        self._wake_at_ms = wake_at
        return min(max(wake_at - now_ms, 0) / 1000, MAX_NAP_S)

    async def _wait(self, delay_s: float) -> None:
        await sleep_or_wake(self._clock, delay_s, self._wake)
        self._wake_at_ms = None

    def _refill_at_ms(self) -> int:
        return self._horizon_end_ms - self._options.horizon_ms // 2

    async def tick(self, now_ms: int) -> int:
        """One pass: refill the horizon if due, start held attempts that are due, claim
        what is due within the lookahead and start or hold it.

        Returns the number of attempts started.
        """
        if now_ms >= self._refill_at_ms():
            await self._refill(now_ms)
        started = self._start_held(now_ms)
        slots = self._free_slots()
        if slots <= 0:
            return started
        # Claim a burst in chunks: the first calls leave while the next chunk is being
        # claimed, instead of all waiting for one large transaction and spec decoding.
        lookahead, _ = self._claim_window(now_ms)
        budget = min(slots, CLAIM_CHUNK)
        entries = self._timers.pop_due_entries(now_ms + lookahead, limit=budget)
        due = self.flows.sort(entries)  # tasks of a flow-control key wait behind it
        await self._configure_flows()
        due += self.flows.admit(now_ms, budget - len(due))
        if not due:
            return started
        claim_started = self._clock.monotonic()
        try:
            # the time now, not the pass's start: a lease runs from the claim (leases.py)
            claim_at = max(now_ms, self._clock.now_ms())
            attempts = await self._store.claim_due(due, claim_at, lookahead)
        except StorageUnavailable:
            for task_id in due:  # nothing was claimed: try them again after a pause
                self.flows.release(task_id)
                self._timers.push(task_id, now_ms)
            raise
        claimed = {attempt.task_id for attempt in attempts}
        for task_id in due:
            if task_id not in claimed:
                self.flows.release(task_id)  # paused, revoked or deleted meanwhile
        await self._security.load((a.owner_id for a in attempts), self._clock.monotonic())
        await self._hold_all(attempts, now_ms)
        self._measure_claims(len(due), self._clock.monotonic() - claim_started)
        return started + self._start_held(now_ms)

    def _claim_window(self, now_ms: int) -> tuple[int, int | None]:
        lookahead = self._options.lookahead_ms
        counts = self._timers.due_counts(now_ms, now_ms + MAX_CLAIM_AHEAD_MS)
        return claim_window(counts, now_ms, lookahead, self._claim_ms)

    def _measure_claims(self, count: int, elapsed_s: float) -> None:
        """Keep a moving average of the claiming time per task (ms)."""
        if count >= CLAIM_CHUNK // 4:  # small claims are mostly fixed cost
            per_task_ms = elapsed_s * 1000 / count
            self._claim_ms = 0.7 * self._claim_ms + 0.3 * per_task_ms

    async def _hold_all(self, attempts: list[Attempt], now_ms: int) -> None:
        """Hold claimed attempts, preparing them in chunks: an attempt whose time has come
        meanwhile is started between chunks."""
        for attempt in attempts:  # known at once, so that forget() finds them all
            self._held_ids[attempt.task_id] = attempt
            self._claimed_at_ms[attempt.task_id] = now_ms
        for index, attempt in enumerate(attempts, 1):
            if self._held_ids.get(attempt.task_id) is attempt:
                self._hold(attempt, now_ms)
            if index % START_CHUNK == 0:
                self._held_changed.set()
                await asyncio.sleep(0)  # the starter goes first if an attempt is due
        self._held_changed.set()

    def _hold(self, attempt: Attempt, now_ms: int) -> None:
        """Queue a claimed attempt (already in ``_held_ids``) for its due time with its
        call prepared for that time (options, signature): at the due time only the sending
        is left to do."""
        start_ms = max(now_ms, attempt.due_at_ms)
        prepared = self._dispatcher.prepare(self._call(attempt, start_ms))
        order = (attempt.due_at_ms, -attempt.spec.config.priority, next(self._sequence))
        heapq.heappush(self._held, (*order, attempt, prepared))

    async def _start_loop(self) -> None:
        """Start held attempts at their due time, beside the claiming loop: a claim
        transaction being written never delays a call whose time has come. Calls start in
        small chunks, with a yield between them, so the first ones are on the wire while
        the rest are being configured."""
        while not self._stopping:
            now_ms = self._clock.now_ms()
            if self._start_held(now_ms, START_CHUNK):
                await asyncio.sleep(0)
                continue
            self._held_changed.clear()
            # to the due time itself, not from the whole millisecond now_ms stands for
            delay_s = self._clock.seconds_until(self._held[0][0]) if self._held else MAX_NAP_S
            reopens_at = self._gate_reopens_at_ms()
            if reopens_at is not None:
                delay_s = min(delay_s, max(reopens_at - now_ms, 0) / 1000)
            await sleep_or_wake(self._clock, min(delay_s, MAX_NAP_S), self._held_changed)

    def _start_held(self, now_ms: int, limit: int = CLAIM_CHUNK) -> int:
        """Start up to ``limit`` held attempts whose due time has come, skipping forgotten
        ones; callers yield between chunks so the first calls get going."""
        started = self._start_gated(now_ms, limit)
        gate = self.start_gate
        while self._held and self._held[0][0] <= now_ms and started < limit:
            entry = heapq.heappop(self._held)
            _, priority, sequence, attempt, prepared = entry
            if self._held_ids.get(attempt.task_id) is attempt:
                send_at_ms = self.flows.send_at_ms(attempt.task_id, now_ms)
                if send_at_ms is not None:  # its key's rate holds at the send as well
                    entry = (send_at_ms, priority, sequence, attempt, prepared)
                    heapq.heappush(self._held, entry)
                    continue
                if gate is not None and not gate.admit(attempt, now_ms):
                    heapq.heappush(self._gated, entry)
                    continue
                started += self._release(attempt, prepared, now_ms)
        if started and self._starved:
            # calls just started may wait behind their host's cap, which frees slots
            self._wake.set()
        return started

    def _start_gated(self, now_ms: int, limit: int) -> int:
        """Start the attempts the start gate held back, in their order, while it lets
        them go; forgotten ones are dropped."""
        started = 0
        while self._gated and started < limit:
            attempt, prepared = self._gated[0][3], self._gated[0][4]
            if self._held_ids.get(attempt.task_id) is not attempt:
                heapq.heappop(self._gated)
                continue
            assert self.start_gate is not None
            if not self.start_gate.admit(attempt, now_ms):
                break
            heapq.heappop(self._gated)
            started += self._release(attempt, prepared, now_ms)
        return started

    def _release(self, attempt: Attempt, prepared: Prepared, now_ms: int) -> int:
        """Start a held attempt whose lease still holds (1), or drop it (0)."""
        del self._held_ids[attempt.task_id]
        claimed_at = self._claimed_at_ms.pop(attempt.task_id, now_ms)
        if not self.leases.holds(attempt.task_id, claimed_at, now_ms):
            self._drop_lost(attempt)
            return 0
        self._start(attempt, prepared, now_ms)
        return 1

    def _gate_reopens_at_ms(self) -> int | None:
        if not self._gated or self.start_gate is None:
            return None
        return self.start_gate.reopens_at_ms()

    def _drop_lost(self, attempt: Attempt) -> None:
        """The claim's lease ended (the database was out of reach): another node may own
        the task by now, so the call is not made, and nothing can be recorded here."""
        self.stats.lease_lost += 1
        logger.warning(
            "task %s attempt %d not sent: its lease ended", attempt.task_id, attempt.number
        )

    async def _configure_flows(self) -> None:
        """Read the limits of keys met for the first time (after a start, say)."""
        for owner_id, key in self.flows.unconfigured():
            setting = await self._store.get_flow_control(owner_id, key)
            flow = FlowControl(key) if setting is None else setting.flow
            paused = False if setting is None else setting.paused
            self.flows.limits.configure((owner_id, key), flow, paused)

    async def _refill(self, now_ms: int) -> None:
        """Load every claimable task due before now + horizon into the timers."""
        until = now_ms + self._options.horizon_ms
        self._refilling = []
        try:
            rows = await self._store.due_before(until, _REFILL_LIMIT)
            if len(rows) == _REFILL_LIMIT:
                until = rows[-1].due_at_ms  # ties at the cut are loaded by the next refill
            for due in (*rows, *self._refilling):
                if due.due_at_ms >= until or due.task_id in self._in_flight:
                    continue
                if self.flows.is_known(due.task_id):
                    continue  # already waiting behind its key, or admitted
                self.flows.note(due.task_id, due.flow)
                self._timers.push(due.task_id, due.due_at_ms, due.priority)
            self._horizon_end_ms = until
        finally:
            self._refilling = None

    def _owner_fields(self, attempt: Attempt, now_ms: int) -> dict[str, Any]:
        """The owner's validated domains and the attempt's Standard Webhooks signing: the
        task id as message id (the same on every retry), the time the attempt starts."""
        security = self._security.get(attempt.owner_id)
        if security is None:
            return {}
        secrets = security.signing_secrets(now_ms)
        signing = (attempt.task_id, now_ms // 1000, secrets) if secrets else None
        return {"allowed_hosts": security.allowed_hosts, "signing": signing}

    def _call(self, attempt: Attempt, start_ms: int) -> Call:
        """The call of ``attempt`` starting at ``start_ms`` (its timeout and signature
        time are taken from then)."""
        config = attempt.spec.config
        return Call(
            request=attempt.spec.request,
            config=config,
            headers=attempt_headers(attempt),
            timeout_ms=attempt_timeout_ms(config, attempt.number, start_ms),
            max_body_bytes=self._options.max_response_bytes,
            owner_id=attempt.owner_id,
            **self._owner_fields(attempt, start_ms),
        )

    def _start(self, attempt: Attempt, prepared: Prepared, now_ms: int) -> None:
        self.stats.claimed += 1
        if self.stats.on_start is not None:
            self.stats.on_start(float(now_ms - attempt.due_at_ms))
        future = self._dispatcher.submit(prepared)
        self._in_flight[attempt.task_id] = future
        self._priorities[attempt.task_id] = (
            attempt.spec.config.priority,
            self.flows.started_flow(attempt.task_id),
        )
        future.add_done_callback(lambda done: self._answered(attempt, done))

    def _answered(self, attempt: Attempt, future: asyncio.Future[Outcome]) -> None:
        """A call ended. Its key's slot and the start gate are told at once; deciding
        the outcome and writing it wait while calls are still being started (a burst:
        attempts due and not started, or calls leaving their host's queue), so that
        the last calls of a burst leave as early as the first. Nothing is lost by the
        wait: the attempt is claimed durably, and an outcome recorded later changes no
        guarantee (docs/architecture.md)."""
        if future.cancelled():
            return  # shutting down: the claim stays durable and is retried at start-up
        if self.flows.release(attempt.task_id):
            self._wake.set()  # a slot of its key is free: a waiting task may start
        if self.start_gate is not None:
            self.start_gate.answered(attempt.task_id)
        self._answers.append((attempt, future, self._clock.now_ms()))
        if self._answers_check is None:
            self._decide_answers()

    def _starting(self) -> bool:
        """Whether calls are being started: attempts due and not started yet, or calls
        getting their slots from a host's queue as others end (a host whose calls hang
        keeps its queue still, and holds up no other task's outcome)."""
        if self._stopping:
            return False
        held_due = bool(self._held) and self._held[0][0] <= self._clock.now_ms()
        return held_due or self._dispatcher.draining_host_queues

    def _decide_answers(self) -> None:
        """Decide the outcomes put off, ANSWER_CHUNK per pass, once no call is being
        started or the oldest has waited ANSWER_DEFER_MAX_S."""
        self._answers_check = None
        if not self._answers:
            return
        loop = asyncio.get_running_loop()
        waited_ms = self._clock.now_ms() - self._answers[0][2]  # the oldest's wait
        if self._starting() and waited_ms < ANSWER_DEFER_MAX_S * 1000:
            self._answers_check = loop.call_later(ANSWER_POLL_S, self._decide_answers)
            return
        for _ in range(min(ANSWER_CHUNK, len(self._answers))):
            self._finished(*self._answers.popleft())
        if self._answers:  # the rest after the loop's I/O, in order
            self._answers_check = loop.call_soon(self._decide_answers)

    def _decide_all_answers(self) -> None:
        if self._answers_check is not None:
            self._answers_check.cancel()
            self._answers_check = None
        while self._answers:
            self._finished(*self._answers.popleft())

    def _finished(self, attempt: Attempt, future: asyncio.Future[Outcome], ended_ms: int) -> None:
        """Decide the outcome of a call that ended at ``ended_ms`` (its finish time and
        the base of its retry delay, however long the decision was put off)."""
        exc = future.exception()
        outcome = future.result() if exc is None else Outcome(status=0, error=repr(exc))
        outcome = cap_headers(outcome, self._options.max_header_bytes)
        options = self._options
        result = decide(
            attempt,
            outcome,
            ended_ms,
            options.max_response_bytes,
            self._rng,
            options.retry_after_max_ms,
        )
        spec = attempt.spec
        if result.next_due_at_ms is None and (spec.on_success or spec.on_failure) is not None:
            callback = callback_for(attempt, result, new_task_id(result.finished_at_ms))
            if callback is not None:
                result = dataclasses.replace(result, follow_up=callback)
        self._attempts[(result.task_id, result.attempt_number)] = attempt
        if self.stats.observe is not None:
            self.stats.observe(attempt, result)
        self._results.append(result)
        self._results_ready.set()

    async def run_recorder(self) -> None:
        """Write finished attempts to the store in batches until ``stop`` has let the calls
        in flight end. ``run`` runs it beside the loop; code that drives ``tick`` itself
        (layer-2 tests) runs it alone."""
        backoff = Backoff(self._clock)
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            if self._results:
                batch, self._results = self._results, []
                if await self._record(batch):
                    backoff.reset()
                    if self._abandoned:
                        self._results_ready.set()  # stopping: look once more, then end
                    continue
                self._results = batch + self._results  # kept in memory, written later
                if self._abandoned:
                    # stopping and the database still refuses: the claims stay durable
                    # and these attempts run again at the next start (at-least-once)
                    logger.error("%d outcomes not written at stop", len(self._results))
                    return
                await backoff.wait(self._stop_waiting)
                self._results_ready.set()
            elif self._stopping and (self._abandoned or not self._in_flight):
                return

    async def _record(self, batch: list[Result]) -> bool:
        """Write ``batch``; False when the database refused it for now."""
        try:
            updated = set(await self._store.record_outcomes(batch))
        except StorageUnavailable:
            return False
        recorded: list[tuple[Attempt, Result]] = []
        for result in batch:
            self._in_flight.pop(result.task_id, None)
            priority, flow = self._priorities.pop(result.task_id, (0, None))
            attempt = self._attempts.pop((result.task_id, result.attempt_number), None)
            if result.task_id not in updated:
                continue
            self._count(result)
            if attempt is not None:
                recorded.append((attempt, result))
            if result.next_due_at_ms is not None:
                self.notify(result.task_id, result.next_due_at_ms, priority, flow)
            elif result.state.is_terminal:
                self.waiters.wake(result.task_id)
            if result.follow_up is not None:
                self.notify(result.follow_up.task_id, result.follow_up.due_at_ms)
        if recorded and self.on_recorded is not None:
            self.on_recorded(recorded)
        self._tell_gate(batch)
        self._wake.set()
        return True

    def _tell_gate(self, batch: list[Result]) -> None:
        """Outcomes committed: the start gate may let a held attempt go now."""
        if self.start_gate is not None:
            self.start_gate.recorded([result.task_id for result in batch])
            if self._gated:
                self._held_changed.set()

    def _count(self, result: Result) -> None:
        stats = self.stats
        if result.state is TaskState.SUCCESS:
            stats.succeeded += 1
        elif result.state is TaskState.ERROR:
            stats.failed += 1
        else:
            stats.retried += 1
        if self._options.log_attempts:
            task_logger.info(
                "task %s attempt %d: %s %d%s",
                result.task_id,
                result.attempt_number,
                result.state.value,
                result.status_code,
                "" if result.outcome.error is None else f" ({result.outcome.error})",
                extra={
                    "task_id": result.task_id,
                    "attempt": result.attempt_number,
                    "state": result.state.value,
                    "status": result.status_code,
                },
            )

    async def stop(self, grace_s: float) -> None:
        """Take no new work; let calls in flight finish for up to ``grace_s`` seconds.

        Calls still running after that are abandoned: their claims stay in the store and
        are attempted again at the next start (at-least-once).
        """
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        self._held_changed.set()
        pending = list(self._in_flight.values())
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        # outcomes put off while a burst was being started: decided now, so that the
        # recorder writes them before it ends (else those calls would be made again)
        self._decide_all_answers()
        self.leases.stop()  # renewed until here: the calls in flight kept their claims
        self._abandoned = True
        self._stop_waiting.set()
        self._results_ready.set()
