"""ScheduleRunner with a real store: tick(now) with explicit times (layer 2), and the running
loop on a FakeClock (layer 3, no sleeping). Task delivery is not involved: the runner hands
tasks to a recording notifier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tasks_server.models import (
    FlowRef,
    HttpRequest,
    NewSchedule,
    OverlapPolicy,
    Schedule,
    ScheduleState,
    ScheduleTiming,
    TaskConfig,
    TaskSpec,
    TaskState,
)
from tasks_server.schedules.policy import LOOKAHEAD_MS, plan, start
from tasks_server.schedules.runner import ScheduleRunner
from tasks_server.sealing import key_digest
from tasks_server.store import Store
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S = 1_000
M = 60_000
TEMPLATE = TaskSpec(
    HttpRequest(url="http://127.0.0.1:9/hook", method="POST", data_text="tick"),
    TaskConfig(execution_delay_ms=0, retry=2),
    metadata=(("kind", "report"),),
)


class RecordingNotifier:
    def __init__(self) -> None:
        self.notified: list[tuple[str, int]] = []
        self.flows: list[tuple[int, FlowRef | None]] = []  # (priority, key) of each

    def notify(
        self, task_id: str, due_at_ms: int, priority: int = 0, flow: FlowRef | None = None
    ) -> None:
        self.notified.append((task_id, due_at_ms))
        self.flows.append((priority, flow))

    @property
    def due(self) -> list[int]:
        return [due for _, due in self.notified]


@pytest.fixture
async def owner_id(store: Store) -> str:
    return (await store.create_owner("owner-one", key_digest("k" * 64), T0, 1000)).id


@pytest.fixture
def tasks() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def runner(store: Store, tasks: RecordingNotifier, clock: FakeClock) -> ScheduleRunner:
    return ScheduleRunner(store, tasks, clock)


async def add(
    store: Store,
    owner_id: str,
    expression: str,
    now: int = T0,
    name: str = "job",
    **timing: object,
) -> Schedule:
    spec = ScheduleTiming(expression, **timing)  # type: ignore[arg-type]
    first = start(spec, now)
    return await store.create_schedule(
        owner_id,
        NewSchedule(name, spec, TEMPLATE),
        now,
        first.state,
        first.cursor_ms,
        first.next_at_ms,
    )


# -- layer 2: tick(now) ---------------------------------------------------------------------


async def test_a_slot_creates_one_task_due_at_the_slot(
    store: Store, owner_id: str, runner: ScheduleRunner, tasks: RecordingNotifier
) -> None:
    schedule = await add(store, owner_id, "* * * * *")
    assert await runner.tick(T0 + M - LOOKAHEAD_MS - 1) == 0
    assert await runner.tick(T0 + M - LOOKAHEAD_MS) == 1  # created ahead, due at the slot
    assert await runner.tick(T0 + M + 3) == 0  # nothing more for that slot
    await runner.tick(T0 + 2 * M)
    assert tasks.due == [T0 + M, T0 + 2 * M]

    created = await store.list_schedule_tasks(owner_id, schedule.id, 10, 0)
    assert [t.estimate_execution_at_ms for t in created] == [T0 + 2 * M, T0 + M]
    assert {t.state for t in created} == {TaskState.RUNNING}
    assert created[0].metadata == (("kind", "report"),)
    spec = await store.get_spec(owner_id, created[0].id)
    assert spec.request == TEMPLATE.request and spec.config.retry == 2
    after = await store.get_schedule(owner_id, schedule.id)
    assert (after.runs, after.last_run_at_ms, after.next_at_ms) == (2, T0 + 2 * M, T0 + 3 * M)
    assert after.last_task_id == created[0].id


async def test_a_plan_from_an_older_version_writes_nothing(store: Store, owner_id: str) -> None:
    schedule = await add(store, owner_id, "* * * * *")
    step = plan(schedule, T0 + M)
    assert await store.fire_schedule(step, T0 + M) is not None
    assert await store.fire_schedule(step, T0 + M) is None  # same plan twice: refused
    assert len(await store.list_schedule_tasks(owner_id, schedule.id, 10, 0)) == 1


async def test_overlap_skip_drops_slots_while_the_last_task_is_pending(
    store: Store, owner_id: str, runner: ScheduleRunner, tasks: RecordingNotifier
) -> None:
    schedule = await add(store, owner_id, "@every 10s", overlap=OverlapPolicy.SKIP)
    for second in (10, 20, 30):
        await runner.tick(T0 + second * S)
    assert tasks.due == [T0 + 10 * S]  # 20 and 30 came while the first was RUNNING
    await store.revoke_task(owner_id, tasks.notified[0][0], T0 + 35 * S)
    await runner.tick(T0 + 40 * S)
    assert tasks.due == [T0 + 10 * S, T0 + 40 * S]
    assert (await store.get_schedule(owner_id, schedule.id)).runs == 2


async def test_overlap_queue_waits_for_the_last_task_to_end(
    store: Store, owner_id: str, runner: ScheduleRunner, tasks: RecordingNotifier
) -> None:
    await add(store, owner_id, "@every 10s", overlap=OverlapPolicy.QUEUE)
    await runner.tick(T0 + 10 * S)
    assert await runner.tick(T0 + 20 * S) == 0  # not even due while the task is pending
    assert await store.next_schedule_at(LOOKAHEAD_MS) is None
    await store.revoke_task(owner_id, tasks.notified[0][0], T0 + 21 * S)
    assert await store.next_schedule_at(LOOKAHEAD_MS) == T0 + 20 * S  # no lookahead
    await runner.tick(T0 + 21 * S)
    assert tasks.due == [T0 + 10 * S, T0 + 20 * S]  # the queued slot, due at its time


async def test_max_runs_and_end_finish_the_schedule(
    store: Store, owner_id: str, runner: ScheduleRunner, tasks: RecordingNotifier
) -> None:
    counted = await add(store, owner_id, "@every 10s", name="counted", max_runs=2)
    ending = await add(store, owner_id, "@every 10s", name="ending", end_at_ms=T0 + 15 * S)
    for second in range(10, 60, 10):
        await runner.tick(T0 + second * S)
    assert sorted(tasks.due) == [T0 + 10 * S, T0 + 10 * S, T0 + 20 * S]
    for schedule in (counted, ending):
        after = await store.get_schedule(owner_id, schedule.id)
        assert (after.state, after.next_at_ms) == (ScheduleState.FINISHED, None)


async def test_a_run_over_the_owner_limit_is_skipped_and_the_schedule_goes_on(
    store: Store, runner: ScheduleRunner, tasks: RecordingNotifier
) -> None:
    owner = await store.create_owner("owner-lim", key_digest("x" * 64), T0, 1)
    schedule = await add(store, owner.id, "@every 10s")
    await runner.tick(T0 + 10 * S)
    await runner.tick(T0 + 20 * S)  # the first task still counts against the limit of 1
    assert tasks.due == [T0 + 10 * S]
    after = await store.get_schedule(owner.id, schedule.id)
    assert (after.cursor_ms, after.next_at_ms) == (T0 + 20 * S, T0 + 30 * S)


async def test_deleting_a_schedule_keeps_its_tasks(
    store: Store, owner_id: str, runner: ScheduleRunner, tasks: RecordingNotifier
) -> None:
    schedule = await add(store, owner_id, "@every 10s")
    await runner.tick(T0 + 10 * S)
    await store.delete_schedule(owner_id, schedule.id)
    task = await store.get_task(owner_id, tasks.notified[0][0])
    assert task.state is TaskState.RUNNING
    assert await runner.tick(T0 + 20 * S) == 0


# -- layer 3: the loop on a fake clock ------------------------------------------------------


@pytest.fixture
async def running(runner: ScheduleRunner) -> AsyncIterator[ScheduleRunner]:
    loop = asyncio.create_task(runner.run())
    await parked(runner)
    yield runner
    await runner.stop()
    await loop


async def parked(runner: ScheduleRunner) -> None:
    for _ in range(5):  # let a loop woken by clock.advance() run before looking
        await asyncio.sleep(0)
    await wait_until(runner.idle.is_set, message="the runner to park")


async def advance(clock: FakeClock, runner: ScheduleRunner, seconds: float, step: float) -> None:
    """Move the fake clock in steps, letting the runner park after each."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        await parked(runner)


async def test_the_loop_fires_the_right_number_of_times(
    store: Store,
    owner_id: str,
    running: ScheduleRunner,
    clock: FakeClock,
    tasks: RecordingNotifier,
) -> None:
    await add(store, owner_id, "*/15 * * * * *", name="quarter")
    await add(store, owner_id, "@every 40s", name="forty", max_runs=2)
    running.notify(T0)
    await parked(running)
    await advance(clock, running, 120, step=0.5)
    quarter = [T0 + k * 15 * S for k in range(1, 9)]
    assert sorted(tasks.due) == sorted([*quarter, T0 + 40 * S, T0 + 80 * S])
    assert running.stats.stale == 0


async def test_a_nap_is_cut_short_by_a_new_schedule(
    store: Store,
    owner_id: str,
    running: ScheduleRunner,
    clock: FakeClock,
    tasks: RecordingNotifier,
) -> None:
    # parked with nothing to do: it naps for MAX_NAP_S of fake time; a `skip` schedule
    # is not planned ahead, so the run comes exactly at its slot
    schedule = await add(
        store, owner_id, "@every 1h", start_at_ms=T0 + 300, overlap=OverlapPolicy.SKIP
    )
    running.notify(schedule.next_at_ms)
    await parked(running)
    assert tasks.due == []
    clock.advance(0.3)
    await wait_until(lambda: tasks.due == [T0 + 300], message="the run at 300 ms")


async def test_the_loop_sleeps_through_long_gaps_in_capped_naps(
    store: Store,
    owner_id: str,
    running: ScheduleRunner,
    clock: FakeClock,
    tasks: RecordingNotifier,
) -> None:
    await add(store, owner_id, "@hourly")
    running.notify(T0 + 3_600 * S)
    await parked(running)
    await advance(clock, running, 3_540, step=60)
    await advance(clock, running, 58, step=1)
    assert tasks.due == []
    clock.advance(1)  # a lookahead before the slot: the run is created, due at the slot
    await wait_until(lambda: tasks.due == [T0 + 3_600 * S], message="the hourly run")
