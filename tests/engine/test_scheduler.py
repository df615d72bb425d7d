"""Layer 2: the scheduler's tick(now) with a real store and a recording dispatcher.

No loop runs here: each test calls tick() with explicit times and asserts what was
claimed and what the store recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tasks_server.dispatch import Prepared
from tasks_server.engine import scheduler as scheduler_module
from tasks_server.engine.retry import retry_delay_ms
from tasks_server.engine.scheduler import (
    MAX_CLAIM_AHEAD_MS,
    Scheduler,
    SchedulerOptions,
    claim_window,
)
from tasks_server.models import (
    Call,
    HttpRequest,
    NewTask,
    Outcome,
    Result,
    RetryPolicy,
    TaskConfig,
    TaskSpec,
    TaskState,
)
from tasks_server.sealing import key_digest
from tasks_server.store import Store
from tests.support.clock import FakeClock
from tests.support.recording import RecordingDispatcher
from tests.support.waiting import wait_until

T0 = 1_767_225_600_000


@pytest.fixture
async def owner_id(store: Store) -> str:
    return (await store.create_owner("owner-one", key_digest("k" * 64), T0, 0)).id


def spec(**config: object) -> TaskSpec:
    return TaskSpec(HttpRequest(url="http://t/x", method="GET"), TaskConfig(**config))  # type: ignore[arg-type]


async def settle(scheduler: Scheduler) -> None:
    """Let the recorder write every finished attempt."""
    await wait_until(lambda: scheduler.in_flight == 0, message="outcomes recorded")


async def add(store: Store, owner_id: str, scheduler: Scheduler, due: int, **config: object) -> str:
    task = await store.create_task(owner_id, NewTask(spec(**config), due), T0)
    scheduler.notify(task.id, due)
    return task.id


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def scheduler(
    store: Store, dispatcher: RecordingDispatcher, clock: FakeClock
) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(store, dispatcher, clock, SchedulerOptions(horizon_ms=60_000))
    recorder = asyncio.create_task(scheduler.run_recorder())
    yield scheduler
    await scheduler.stop(0.1)
    await recorder


async def test_only_due_tasks_are_claimed(
    store: Store, owner_id: str, scheduler: Scheduler, dispatcher: RecordingDispatcher
) -> None:
    await scheduler.tick(T0)
    now_id = await add(store, owner_id, scheduler, T0)
    soon_id = await add(store, owner_id, scheduler, T0 + 5_000)
    late_id = await add(store, owner_id, scheduler, T0 + 60_000)
    assert await scheduler.tick(T0) == 1
    assert [c.headers[0] for c in dispatcher.calls] == [("X-Tasks-Queue-Id", now_id)]
    assert await scheduler.tick(T0 + 4_999) == 0
    assert await scheduler.tick(T0 + 5_000) == 1
    assert dispatcher.calls[-1].headers[0] == ("X-Tasks-Queue-Id", soon_id)
    # beyond the first horizon: loaded by a later refill
    assert await scheduler.tick(T0 + 59_999) == 0
    assert await scheduler.tick(T0 + 60_000) == 1
    assert dispatcher.calls[-1].headers[0] == ("X-Tasks-Queue-Id", late_id)
    await settle(scheduler)
    for task_id in (now_id, soon_id, late_id):
        assert (await store.get_task(owner_id, task_id)).state is TaskState.SUCCESS


async def test_far_future_tasks_stay_out_of_memory(
    store: Store, owner_id: str, scheduler: Scheduler
) -> None:
    await scheduler.tick(T0)
    for index in range(100):
        await add(store, owner_id, scheduler, T0 + 3_600_000 + index)
    await add(store, owner_id, scheduler, T0 + 10_000)
    assert scheduler.armed == 1


async def test_retries_follow_the_formula(
    store: Store,
    owner_id: str,
    scheduler: Scheduler,
    dispatcher: RecordingDispatcher,
    clock: FakeClock,
) -> None:
    dispatcher.script = lambda call: Outcome(status=503, body=b"busy")
    await scheduler.tick(T0)
    task_id = await add(
        store, owner_id, scheduler, T0, retry=3, retry_interval_ms=1000, retry_exponential=True
    )
    starts = []
    now = T0
    for _ in range(40):
        if await scheduler.tick(now):
            starts.append(now - T0)
            clock.set_wall(now)
            await settle(scheduler)
        now += 250
    assert starts == [0, 1000, 3000, 6000]
    task = await store.get_task(owner_id, task_id)
    assert (task.state, task.status_code, task.retry_count) == (TaskState.ERROR, 503, 3)
    retry_headers = [dict(c.headers) for c in dispatcher.calls[1:]]
    assert [h["X-Tasks-Retry-Count"] for h in retry_headers] == ["1", "2", "3"]
    assert {h["X-Tasks-Retry-Limit"] for h in retry_headers} == {"3"}
    assert [h["X-Tasks-Attempt"] for h in retry_headers] == ["2", "3", "4"]


async def test_paused_task_is_not_claimed(
    store: Store, owner_id: str, scheduler: Scheduler
) -> None:
    await scheduler.tick(T0)
    task_id = await add(store, owner_id, scheduler, T0 + 1000)
    await store.pause_task(owner_id, task_id, T0 + 10)
    # the API forgets it too, but even a stale timer must not start an attempt
    assert await scheduler.tick(T0 + 1000) == 0


async def test_in_flight_cap_defers_the_rest(
    store: Store, owner_id: str, dispatcher: RecordingDispatcher
) -> None:
    scheduler = Scheduler(store, dispatcher, FakeClock(T0), SchedulerOptions(max_in_flight=3))
    recorder = asyncio.create_task(scheduler.run_recorder())
    dispatcher.hold = True
    await scheduler.tick(T0)
    for _ in range(5):
        await add(store, owner_id, scheduler, T0)
    assert await scheduler.tick(T0) == 3
    assert await scheduler.tick(T0) == 0
    dispatcher.release()
    await settle(scheduler)
    assert await scheduler.tick(T0) == 2
    dispatcher.release()
    await settle(scheduler)
    await scheduler.stop(0.1)
    await recorder


async def test_timeout_at_limits_the_first_attempt(
    store: Store, owner_id: str, scheduler: Scheduler, dispatcher: RecordingDispatcher
) -> None:
    await scheduler.tick(T0)
    await add(store, owner_id, scheduler, T0, timeout_at_ms=T0 + 2500)
    await scheduler.tick(T0)
    call: Call = dispatcher.calls[0]
    assert call.timeout_ms == 2500


async def test_equal_due_times_start_by_priority(
    store: Store, owner_id: str, scheduler: Scheduler, dispatcher: RecordingDispatcher
) -> None:
    await scheduler.tick(T0)
    ids = {}
    for priority in (0, -100, 50, 100, -5):
        task = await store.create_task(owner_id, NewTask(spec(priority=priority), T0 + 1000), T0)
        scheduler.notify(task.id, T0 + 1000, priority)
        ids[task.id] = priority
    assert await scheduler.tick(T0 + 1000) == 5
    started = [ids[c.headers[0][1]] for c in dispatcher.calls]
    assert started == [100, 50, 0, -5, -100]


async def test_refill_keeps_priority_order(
    store: Store, owner_id: str, scheduler: Scheduler, dispatcher: RecordingDispatcher
) -> None:
    """Tasks loaded from the store (not notified) keep their priority order too."""
    ids = {}
    for priority in (-1, 7, 3):
        task = await store.create_task(owner_id, NewTask(spec(priority=priority), T0), T0)
        ids[task.id] = priority
    assert await scheduler.tick(T0) == 3
    assert [ids[c.headers[0][1]] for c in dispatcher.calls] == [7, 3, -1]


async def test_retry_policy_plans_cloud_tasks_backoff(
    store: Store, owner_id: str, dispatcher: RecordingDispatcher
) -> None:
    dispatcher.script = lambda call: Outcome(status=503)
    policy = RetryPolicy(max_attempts=4, min_backoff_ms=1000, max_backoff_ms=60_000)
    scheduler = Scheduler(store, dispatcher, FakeClock(T0), SchedulerOptions())
    recorder = asyncio.create_task(scheduler.run_recorder())
    task_id = await add(store, owner_id, scheduler, T0, retry_policy=policy)
    now = T0
    planned = []
    for _ in range(4):
        assert await scheduler.tick(now) == 1
        await settle(scheduler)
        task = await store.get_task(owner_id, task_id)
        if task.state is not TaskState.RUNNING:
            break
        assert task.due_at_ms is not None
        planned.append(task.due_at_ms - T0)  # the clock stands still at T0
        now = task.due_at_ms
    assert planned == [1000, 2000, 4000]
    assert (await store.get_task(owner_id, task_id)).state is TaskState.ERROR
    headers = dict(dispatcher.calls[1].headers)
    assert headers["X-Tasks-Retry-Limit"] == "3"
    await scheduler.stop(0.1)
    await recorder


class BusyHostDispatcher(RecordingDispatcher):
    """Holds every call; calls to ``http://busy/`` beyond the first wait for their host,
    as CurlDispatcher's per-host queue makes them. Records when each call was submitted."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.hold = True
        self.clock = clock
        self.submitted_at: list[int] = []

    @property
    def waiting_for_host(self) -> int:
        busy = sum(1 for call in self.calls if call.request.url.startswith("http://busy/"))
        return max(busy - 1, 0)

    def submit(self, call: Call | Prepared) -> asyncio.Future[Outcome]:
        self.submitted_at.append(self.clock.now_ms())
        return super().submit(call)


async def test_calls_queued_behind_a_busy_host_free_their_slots_at_once(
    store: Store, owner_id: str, clock: FakeClock
) -> None:
    """Claimed ahead, two calls fill both in-flight slots, so the loop naps; when they
    start and one queues behind its host's cap, a slot is free again and the next task
    due is claimed and started at once, not after the loop's longest nap."""
    dispatcher = BusyHostDispatcher(clock)
    options = SchedulerOptions(max_in_flight=2, lookahead_ms=100)
    scheduler = Scheduler(store, dispatcher, clock, options)
    busy = TaskSpec(HttpRequest(url="http://busy/x", method="GET"), TaskConfig())
    ids = []
    for _ in range(3):
        task = await store.create_task(owner_id, NewTask(busy, T0 + 1000), T0)
        ids.append(task.id)
    running = asyncio.create_task(scheduler.run())
    await wait_until(scheduler.idle.is_set, message="the loop naps until the lookahead")

    async def claimed_two() -> bool:
        tasks = [await store.get_task(owner_id, task_id) for task_id in ids]
        return sum(t.attempts for t in tasks) == 2 and scheduler.idle.is_set()

    clock.advance(0.9)
    await wait_until(claimed_two, message="two claimed ahead, then the loop naps")
    clock.advance(0.1)
    await wait_until(lambda: len(dispatcher.calls) == 3, message="the third call")
    assert dispatcher.submitted_at == [T0 + 1000] * 3
    await scheduler.stop(0.1)
    await running


class FractionalClock(FakeClock):
    """A FakeClock whose wall time moves by fractions of a millisecond, as a real one
    does: ``now_ms`` drops the fraction."""

    def __init__(self, now_ms: int) -> None:
        super().__init__(now_ms)
        self.wall = float(now_ms)

    def now_ms(self) -> int:
        return int(self.wall)

    def seconds_until(self, at_ms: int) -> float:
        return (at_ms - self.wall) / 1000

    def advance(self, seconds: float) -> None:
        self.wall += seconds * 1000
        super().advance(seconds)


async def test_a_held_call_starts_at_its_due_time_not_up_to_a_millisecond_later(
    store: Store, owner_id: str
) -> None:
    """Claimed ahead and held, a call starts when the wall clock reaches its due time;
    a sleep measured from the whole millisecond would end up to a millisecond late."""
    clock, dispatcher = FractionalClock(T0), RecordingDispatcher()
    scheduler = Scheduler(store, dispatcher, clock, SchedulerOptions(lookahead_ms=100))
    task = await store.create_task(owner_id, NewTask(spec(), T0 + 1000), T0)
    running = asyncio.create_task(scheduler.run())
    await wait_until(scheduler.idle.is_set, message="the loop naps until the lookahead")
    clock.advance(0.9991)  # claimed and held; its due time is 0.9 ms away

    async def claimed_and_napping() -> bool:
        claimed = (await store.get_task(owner_id, task.id)).attempts == 1
        return claimed and scheduler.idle.is_set()

    await wait_until(claimed_and_napping, message="claimed ahead, held")
    assert dispatcher.calls == []
    clock.advance(0.0009)
    await wait_until(lambda: len(dispatcher.calls) == 1, message="started on time")
    assert dispatcher.calls[0].headers[0] == ("X-Tasks-Queue-Id", task.id)
    await scheduler.stop(0.1)
    await running


def test_claim_window_is_the_lookahead_without_a_burst() -> None:
    assert claim_window([(T0 + 2_000, 10)], T0, 250, 0.1) == (250, T0 + 2_000 - 250 - 1)
    assert claim_window([], T0, 250, 0.1) == (250, None)
    assert claim_window([(T0 + 100, 5_000)], T0, 0, 0.1) == (0, None)  # no lookahead at all


def test_claim_window_opens_early_enough_to_claim_a_burst_before_it_is_due() -> None:
    """3,000 tasks due in 0.5 s at 0.1 ms each: claiming must start 550 ms ahead, so the
    burst is in the window now; a later burst is due to start claiming at its own time."""
    counts = [(T0 + 500, 3_000), (T0 + 4_000, 10_000)]
    window, later = claim_window(counts, T0, 250, 0.1)
    assert window == 600  # the whole bucket of the burst, which starts 500 ms ahead
    assert later == T0 + 4_000 - 250 - 1_300  # everything due up to it is claimed first
    # a burst too large to claim in time is in the window at once, up to the cap
    assert claim_window([(T0 + 4_000, 1_000_000)], T0, 250, 0.1) == (4_100, None)
    assert claim_window([(T0 + 9_000, 1_000_000)], T0, 250, 0.1) == (MAX_CLAIM_AHEAD_MS, None)


class QueueingDispatcher(RecordingDispatcher):
    """Holds every call and reports ``queued`` calls waiting for their host's cap, their
    queue moving (``moving``: a burst going through its host's slots) or not (a host whose
    calls hang), as CurlDispatcher does."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = True
        self.queued = 0
        self.moving = True

    @property
    def waiting_for_host(self) -> int:
        return self.queued

    @property
    def draining_host_queues(self) -> bool:
        return self.queued > 0 and self.moving


async def test_outcomes_wait_while_calls_are_started_and_are_all_recorded_after(
    store: Store, owner_id: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls that end while others still wait to be started are decided and written only
    once the starting is done; none of them is lost."""
    monkeypatch.setattr(scheduler_module, "ANSWER_DEFER_MAX_S", 3600.0)
    dispatcher = QueueingDispatcher()
    scheduler = Scheduler(store, dispatcher, clock, SchedulerOptions(horizon_ms=60_000))
    decided: list[str] = []
    scheduler.stats.observe = lambda attempt, result: decided.append(result.task_id)
    recorder = asyncio.create_task(scheduler.run_recorder())
    await scheduler.tick(T0)
    ids = [await add(store, owner_id, scheduler, T0) for _ in range(70)]
    assert await scheduler.tick(T0) == 70
    dispatcher.queued = 5
    dispatcher.release()
    for _ in range(20):
        await asyncio.sleep(0)
    assert decided == [] and scheduler.in_flight == 70
    dispatcher.queued = 0
    await settle(scheduler)
    assert sorted(decided) == sorted(ids)
    assert {(await store.get_task(owner_id, i)).state for i in ids} == {TaskState.SUCCESS}
    await scheduler.stop(0.1)
    await recorder


async def test_outcomes_are_decided_at_once_when_nothing_waits_to_start(
    store: Store, owner_id: str, scheduler: Scheduler, dispatcher: RecordingDispatcher
) -> None:
    dispatcher.hold = True
    await scheduler.tick(T0)
    task_id = await add(store, owner_id, scheduler, T0)
    assert await scheduler.tick(T0) == 1
    decided: list[str] = []
    scheduler.stats.observe = lambda attempt, result: decided.append(result.task_id)
    dispatcher.release()
    await asyncio.sleep(0)  # the future's callback runs
    assert decided == [task_id]
    await settle(scheduler)
    assert (await store.get_task(owner_id, task_id)).state is TaskState.SUCCESS


async def test_an_outcome_decided_late_keeps_the_time_its_call_ended(
    store: Store, owner_id: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Putting off the decision moves neither the finish time nor the retry's base."""
    monkeypatch.setattr(scheduler_module, "ANSWER_DEFER_MAX_S", 3600.0)
    dispatcher = QueueingDispatcher()
    dispatcher.script = lambda call: Outcome(status=500)
    scheduler = Scheduler(store, dispatcher, clock, SchedulerOptions(horizon_ms=60_000))
    decided: list[Result] = []
    scheduler.stats.observe = lambda attempt, result: decided.append(result)
    recorder = asyncio.create_task(scheduler.run_recorder())
    await scheduler.tick(T0)
    task_id = await add(store, owner_id, scheduler, T0, retry=1, retry_interval_ms=100)
    assert await scheduler.tick(T0) == 1
    dispatcher.queued = 1
    ended_ms = clock.now_ms()
    dispatcher.release()
    for _ in range(20):
        await asyncio.sleep(0)
    assert decided == []
    clock.advance(0.5)  # the decision waits half a second
    dispatcher.queued = 0
    await settle(scheduler)
    [result] = decided
    assert result.task_id == task_id and result.finished_at_ms == ended_ms
    assert result.next_due_at_ms == ended_ms + retry_delay_ms(100, 1, False)
    await scheduler.stop(0.1)
    await recorder


async def test_a_host_queue_that_does_not_move_holds_up_no_outcome(
    store: Store, owner_id: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls queued behind a host whose calls hang are not a burst being started: the
    outcomes of other calls are decided at once."""
    monkeypatch.setattr(scheduler_module, "ANSWER_DEFER_MAX_S", 3600.0)
    dispatcher = QueueingDispatcher()
    dispatcher.queued, dispatcher.moving = 5, False
    scheduler = Scheduler(store, dispatcher, clock, SchedulerOptions(horizon_ms=60_000))
    decided: list[str] = []
    scheduler.stats.observe = lambda attempt, result: decided.append(result.task_id)
    recorder = asyncio.create_task(scheduler.run_recorder())
    await scheduler.tick(T0)
    task_id = await add(store, owner_id, scheduler, T0)
    assert await scheduler.tick(T0) == 1
    dispatcher.release()
    await wait_until(lambda: decided == [task_id], message="the outcome decided")
    await settle(scheduler)
    await scheduler.stop(0.1)
    await recorder


async def test_outcomes_put_off_when_the_scheduler_stops_are_written_before_it_ends(
    store: Store, owner_id: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop during a burst: the calls that ended are recorded, not left claimed to be
    made again at the next start, and the recorder ends."""
    monkeypatch.setattr(scheduler_module, "ANSWER_DEFER_MAX_S", 3600.0)
    dispatcher = QueueingDispatcher()
    scheduler = Scheduler(store, dispatcher, clock, SchedulerOptions(horizon_ms=60_000))
    recorder = asyncio.create_task(scheduler.run_recorder())
    await scheduler.tick(T0)
    ids = [await add(store, owner_id, scheduler, T0) for _ in range(10)]
    assert await scheduler.tick(T0) == 10
    dispatcher.queued = 5  # a burst still draining: the outcomes are put off
    dispatcher.release()
    for _ in range(20):
        await asyncio.sleep(0)
    assert scheduler.in_flight == 10
    await scheduler.stop(0.1)
    await asyncio.wait_for(recorder, timeout=10)
    assert {(await store.get_task(owner_id, i)).state for i in ids} == {TaskState.SUCCESS}
