"""Tasks that schedules create and that replays bring back wait behind their
flow-control key like registered ones (the running server, a fake clock, a real target)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import OwnerAuth
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until

# three starts a minute: a burst of three, then one every 20 s
FLOW = {"key": "reports", "rate": 3, "period": "1m"}


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


async def settled(server: Server) -> None:
    """The loops have parked with nothing left to start at this instant."""
    for _ in range(5):
        await asyncio.sleep(0)
    await wait_until(
        lambda: server.scheduler.idle.is_set() and server.scheduler.in_flight == 0,
        message="the scheduler to park",
    )


async def key_status(client: httpx.AsyncClient, owner: OwnerAuth) -> dict[str, Any]:
    response = await client.get("/v1/flow-control/reports", headers=owner.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_schedules_tasks_wait_behind_its_flow_key(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/tick", Reply(200))
    created = await client.post(
        "/v1/schedules",
        json={
            "name": "every-second",
            "schedule": "* * * * * *",
            "httpRequest": {"url": target.url("/tick"), "method": "POST", "data": "x"},
            "config": {"flowControl": FLOW, "priority": 5},
        },
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    assert (await key_status(client, owner))["rate"] == 3  # the template set the key
    for second in range(1, 7):
        clock.advance(1)
        await wait_until(lambda n=second: server.schedules.stats.fired >= n, message="a run")
    await settled(server)
    fired = server.schedules.stats.fired
    assert len(target.arrivals) == 3  # the burst; the other runs wait behind the key
    status = await key_status(client, owner)
    assert status["waiting"] >= fired - 3
    clock.advance(20)
    await settled(server)
    assert len(target.arrivals) == 4  # one more token after 20 s


async def fail_three(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> list[str]:
    """Three tasks of the key fail for good, using its whole burst; the target then
    answers 200."""
    target.route("/job", Reply(500))
    ids = []
    for n in range(3):
        response = await client.post(
            "/v1/queues/register",
            json={
                "httpRequest": {"url": target.url("/job"), "method": "POST", "data": str(n)},
                "config": {"executionDelay": 0, "flowControl": FLOW},
            },
            headers=owner.headers,
        )
        assert response.status_code == 201
        ids.append(response.json()["id"])
    await wait_until(lambda: server.scheduler.stats.failed == 3, message="three failures")
    target.route("/job", Reply(200))
    return ids


async def test_dead_letter_replays_wait_behind_their_flow_key(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    ids = await fail_three(server, client, owner, target)
    one = await client.post(f"/v1/dlq/{ids[0]}/replay", json={}, headers=owner.headers)
    assert one.status_code == 200, one.text
    many = await client.post("/v1/dlq/replay", params={"rate": 1000}, headers=owner.headers)
    assert many.json()["replayed"] == 2
    clock.advance(1)
    await settled(server)
    assert len(target.arrivals) == 3  # the burst was used up by the first calls
    assert (await key_status(client, owner))["waiting"] == 3
    for expected in (4, 5, 6):
        clock.advance(20)
        await settled(server)
        assert len(target.arrivals) == expected  # one token every 20 s
    await wait_until(lambda: server.scheduler.stats.succeeded == 3, message="the replays")


async def test_a_replay_with_a_new_key_waits_behind_that_key(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    ids = await fail_three(server, client, owner, target)
    slow = {"key": "slow", "rate": 1, "period": "1h"}
    blocker = await client.post(
        "/v1/queues/register",
        json={
            "httpRequest": {"url": target.url("/job"), "method": "POST"},
            "config": {"executionDelay": 0, "flowControl": slow},
        },
        headers=owner.headers,
    )
    assert blocker.status_code == 201
    await wait_until(lambda: server.scheduler.stats.succeeded == 1, message="the slow key's call")
    replay = await client.post(
        f"/v1/dlq/{ids[0]}/replay", json={"config": {"flowControl": slow}}, headers=owner.headers
    )
    assert replay.status_code == 200, replay.text
    clock.advance(60)  # the old key has tokens again; the new one has none for an hour
    await settled(server)
    assert len(target.arrivals) == 4
    slow_status = await client.get("/v1/flow-control/slow", headers=owner.headers)
    assert slow_status.json()["waiting"] == 1
