"""The wake-ups between API processes (processes.py): two Relays on one set of socket
pairs, in one process, stand for the process running the engine and another one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tasks_server.engine.waiters import FinalWaiters
from tasks_server.models import FlowControl, FlowPeriod
from tasks_server.processes import Channels, Relay
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

HORIZON_MS = 60_000


class FakeScheduler:
    """Records the in-memory calls a Relay makes, as the scheduler would receive them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.waiters = FinalWaiters()

    def notify(self, task_id: str, due_at_ms: int, priority: int = 0, flow: Any = None) -> None:
        self.calls.append(("notify", task_id, due_at_ms, priority, flow))

    def forget(self, task_id: str) -> None:
        self.calls.append(("forget", task_id))

    def configure_flow(self, owner_id: str, flow: FlowControl, paused: bool | None = None) -> None:
        self.calls.append(("configure_flow", owner_id, flow, paused))

    def free_claims(self) -> int:
        return 7

    def wait_final(self, task_id: str) -> asyncio.Future[None]:
        return self.waiters.wait(task_id)


class FakeSchedules:
    def __init__(self) -> None:
        self.moved: list[int | None] = []

    def notify(self, next_at_ms: int | None) -> None:
        self.moved.append(next_at_ms)


@pytest.fixture
def channels() -> Iterator[Channels]:
    made = Channels.make(2)
    yield made
    for read, send in (made.engine, *made.processes):
        read.close()
        send.close()


def relay(channels: Channels, index: int) -> tuple[Relay, FakeScheduler, FakeSchedules]:
    scheduler = FakeScheduler()
    schedules = FakeSchedules()
    made = Relay(
        scheduler,  # type: ignore[arg-type]
        FinalWaiters(),
        channels.of_process(index),
        FakeClock(now_ms=0),
        HORIZON_MS,
    )
    made.schedules = schedules  # type: ignore[assignment]
    return made, scheduler, schedules


@contextlib.contextmanager
def engine_and_other(
    channels: Channels,
) -> Iterator[tuple[Relay, FakeScheduler, FakeSchedules, Relay, FakeScheduler]]:
    """Process 0 runs the engine, process 1 serves the API only: both relays started,
    closed after the test (the engine's relay, its scheduler and schedules, then the
    other's relay and scheduler)."""
    engine, engine_scheduler, engine_schedules = relay(channels, 0)
    other, other_scheduler, _ = relay(channels, 1)
    engine.start()
    other.start()
    engine.lead()
    try:
        yield engine, engine_scheduler, engine_schedules, other, other_scheduler
    finally:
        engine.close()
        other.close()


async def test_calls_in_another_process_reach_the_engine_as_the_same_calls(
    channels: Channels,
) -> None:
    with engine_and_other(channels) as (
        engine,
        engine_scheduler,
        engine_schedules,
        other,
        other_scheduler,
    ):
        limits = FlowControl("k", rate=5, period=FlowPeriod.MINUTE, parallelism=2)
        other.notify("t1", 1_000, 3, ("owner", "k"))
        other.notify("t2", 2_000)
        other.notify("far", HORIZON_MS)  # beyond the horizon: read when it nears, not sent
        other.forget("t1")
        other.configure_flow("owner", limits, True)
        other.schedule_wakeups.notify(5_000)
        await wait_until(lambda: len(engine_scheduler.calls) == 4)
        assert engine_scheduler.calls == [
            ("notify", "t1", 1_000, 3, ("owner", "k")),
            ("notify", "t2", 2_000, 0, None),
            ("forget", "t1"),
            ("configure_flow", "owner", limits, True),
        ]
        await wait_until(lambda: engine_schedules.moved == [5_000])
        assert other_scheduler.calls == []  # nothing ran in the process that sent them
        # in the engine's process a call goes straight to its scheduler
        engine.notify("t3", 3_000)
        assert engine_scheduler.calls[-1] == ("notify", "t3", 3_000, 0, None)
        # only the engine's process lets the store claim for its scheduler
        assert (engine.free_claims(), other.free_claims()) == (7, 0)


async def test_a_wake_in_one_process_wakes_the_waiters_of_the_others(
    channels: Channels,
) -> None:
    with engine_and_other(channels) as (engine, engine_scheduler, _, other, other_scheduler):
        task_waiter = other.wait_final("t1")
        run_waiter = engine.runs.wait("run-1")
        engine_scheduler.waiters.wake("t1")  # the engine committed t1's final outcome
        other.runs.wake("run-1")  # a run ended through the other process's API
        await asyncio.wait_for(asyncio.gather(task_waiter, run_waiter), timeout=5)
        assert not other_scheduler.waiters.wait("t2").done()


async def test_adopting_an_attempt_outside_the_engine_is_refused(channels: Channels) -> None:
    other, _, _ = relay(channels, 1)
    with pytest.raises(RuntimeError):
        other.adopt(SimpleNamespace(task_id="t1"))  # type: ignore[arg-type]


async def test_a_process_asked_to_stop_does_not_take_the_scheduler_over(tmp_path: Any) -> None:
    """Elected while it drains its requests after SIGTERM (the scheduler's process ended
    first): the process leaves the engine alone, so no call starts after the stop."""
    from tasks_server.app import _engine_once_elected
    from tasks_server.processes import Election

    election = Election(tmp_path / "tasks.db")
    asked: list[bool] = []
    election.stopping = lambda: asked.append(True) is None  # True, once elected
    led: list[bool] = []
    server = SimpleNamespace(
        election=election, relay=SimpleNamespace(lead=lambda: led.append(True))
    )
    waiting = asyncio.create_task(_engine_once_elected(server))  # type: ignore[arg-type]
    await wait_until(lambda: asked == [True], message="the election won")
    for _ in range(10):
        await asyncio.sleep(0)
    assert led == [] and not waiting.done()  # it waits, as a loop of the server, to end
    waiting.cancel()
    assert election._file is not None
    election._file.close()  # the process would hold the lock until it ends
