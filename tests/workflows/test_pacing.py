"""Pacing new runs against the steps in progress: the pure pacer, and the running server
starting a released step ahead of runs that have not started yet (real targets on
127.0.0.1, a fake clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tasks_server.app import Server
from tasks_server.models import Attempt, HttpRequest, TaskConfig, TaskSpec
from tasks_server.workflows.pacing import StepPacer, is_step
from tests.conftest import OwnerAuth
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until
from tests.workflows.test_runs import JSON_HEADERS, post, start, until_state

STEP = (("team", "billing"), ("workflowRun", "R1"), ("workflowStep", "a"))


def attempt(task_id: str, metadata: tuple[tuple[str, str], ...] | None = STEP) -> Attempt:
    spec = TaskSpec(HttpRequest(url="http://t/x", method="POST"), TaskConfig(), metadata)
    return Attempt(task_id, 1, spec, 0, 0, 0)


def test_only_a_steps_call_is_a_workflow_step() -> None:
    assert is_step(attempt("t"))
    assert not is_step(attempt("t", None))
    assert not is_step(attempt("t", (("workflowStep", "a"), ("team", "billing"))))
    callback = (("workflowRun", "R1"), ("workflowCallback", "onSuccess"))
    assert not is_step(attempt("t", callback))


def test_new_runs_wait_while_the_window_is_full_and_start_once_outcomes_are_recorded() -> None:
    pacer = StepPacer(window=2, young_ms=25)
    assert pacer.admit(attempt("a1"), 0)
    assert pacer.admit(attempt("a2"), 0)
    assert not pacer.admit(attempt("a3"), 1)
    assert pacer.admit(attempt("plain", None), 1)  # not a step: never held back
    assert pacer.in_progress == 2
    pacer.answered("a1")
    assert not pacer.admit(attempt("a3"), 2)  # answered, not yet recorded: still counts
    pacer.recorded(["a1"])
    assert pacer.admit(attempt("a3"), 2)
    assert pacer.in_progress == 2


def test_a_released_step_starts_even_when_the_window_is_full() -> None:
    pacer = StepPacer(window=1, young_ms=25)
    assert pacer.admit(attempt("a1"), 0)
    pacer.released("b1", 0)
    assert pacer.admit(attempt("b1"), 1)
    assert pacer.in_progress == 2  # it counts once started
    assert not pacer.admit(attempt("b1-again"), 1)
    pacer.recorded(["a1", "b1"])
    assert pacer.in_progress == 0


def test_a_call_slower_than_young_ms_stops_holding_new_runs_back() -> None:
    pacer = StepPacer(window=1, young_ms=25)
    assert pacer.admit(attempt("slow"), 100)
    assert pacer.reopens_at_ms() == 125
    assert not pacer.admit(attempt("a2"), 124)
    assert pacer.admit(attempt("a2"), 125)
    assert pacer.reopens_at_ms() == 150
    pacer.answered("slow")  # answered after it stopped counting: it does not count again
    assert pacer.in_progress == 1
    pacer.recorded(["a2"])
    assert pacer.reopens_at_ms() is None


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


async def test_released_steps_start_before_runs_that_have_not_started(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/first", Reply(200, b"{}", JSON_HEADERS))
    target.route("/next", Reply(200, b"{}", JSON_HEADERS))
    runs = 30
    at = clock.now_ms() + 1_000
    ids = []
    for n in range(runs):
        body = {
            "name": "pair",
            "input": {"n": n},
            "config": {"executeAt": at},
            "steps": [
                {"id": "first", **post(target, "/first", {"n": n})},
                {"id": "next", "dependsOn": ["first"], **post(target, "/next", {"n": n})},
            ],
        }
        ids.append((await start(client, owner, body))["id"])
    clock.advance(1)  # every run's first step is due at the same instant
    await wait_until(lambda: len(target.arrivals) == 2 * runs, message="every call")
    paths = [arrival.path for arrival in sorted(target.arrivals, key=lambda a: a.arrived_at)]
    # runs under way went on while later runs waited for room, instead of every first
    # step going out before any second one
    assert paths.index("/next") < len(paths) - 1 - paths[::-1].index("/first")
    for run_id in ids:
        await until_state(client, owner, run_id, "SUCCESS")
