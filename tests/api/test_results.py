"""Waiting for a result: GET /v1/queues/:id/result?wait= and POST /v1/queues/register?wait=.

The server runs with the fake clock, the real dispatcher and a real target; the wait's
own deadline is on the fake clock, so a request that comes back before the test moves the
clock was woken by the scheduler, not by its timeout."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import OwnerAuth, register_task
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


async def parked(server: Server) -> None:
    for _ in range(3):
        await asyncio.sleep(0)
    await wait_until(lambda: server.scheduler.idle.is_set(), message="the scheduler to park")


async def test_long_poll_answers_when_the_task_succeeds(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/hook", Reply(201, b"made it"))
    task = (
        await register_task(
            client, owner, {"url": target.url("/hook"), "method": "GET"}, {"executionDelay": 5000}
        )
    ).json()
    reads = 0
    get_task = server.store.get_task

    async def counting_get_task(owner_id: str, task_id: str):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return await get_task(owner_id, task_id)

    server.store.get_task = counting_get_task  # type: ignore[method-assign]
    poll = asyncio.create_task(
        client.get(f"/v1/queues/{task['id']}/result?wait=30", headers=owner.headers)
    )
    await wait_until(lambda: len(server.scheduler.waiters) == 1, message="the waiter")
    await parked(server)
    assert not poll.done()
    clock.advance(5)
    await wait_until(lambda: len(target.arrivals) == 1, message="the call")
    await wait_until(poll.done, timeout=5, message="the answer")
    answered_at = time.monotonic()
    response = poll.result()
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == task["id"] and body["state"] == "SUCCESS"
    assert body["statusCode"] == 201
    assert base64.b64decode(body["response"]) == b"made it"
    # the wait read the task once before and once after: no polling in between
    assert reads == 2
    assert len(server.scheduler.waiters) == 0
    # a generous failure deadline; the figure itself is measured by bench/bench_result_wait.py
    assert answered_at - target.arrivals[0].arrived_at < 2.0


async def test_wait_ends_with_202_and_the_current_state(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 600_000})).json()
    poll = asyncio.create_task(
        client.get(f"/v1/queues/{task['id']}/result?wait=2.5", headers=owner.headers)
    )
    await wait_until(lambda: len(server.scheduler.waiters) == 1, message="the waiter")
    clock.advance(2.4)
    await parked(server)
    assert not poll.done()
    clock.advance(0.1)
    await wait_until(poll.done, message="the answer")
    response = poll.result()
    assert response.status_code == 202
    assert response.json()["state"] == "RUNNING"
    assert len(server.scheduler.waiters) == 0


async def test_a_final_task_answers_at_once(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 600_000})).json()
    await client.patch(f"/v1/queues/{task['id']}/revoke", headers=owner.headers)
    response = await client.get(f"/v1/queues/{task['id']}/result?wait=60", headers=owner.headers)
    assert response.status_code == 200 and response.json()["state"] == "REVOKED"
    pending = (await register_task(client, owner, config={"executionDelay": 600_000})).json()
    response = await client.get(f"/v1/queues/{pending['id']}/result", headers=owner.headers)
    assert response.status_code == 202 and response.json()["state"] == "RUNNING"


async def test_revoking_wakes_the_waiter(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 600_000})).json()
    poll = asyncio.create_task(
        client.get(f"/v1/queues/{task['id']}/result?wait=60", headers=owner.headers)
    )
    await wait_until(lambda: len(server.scheduler.waiters) == 1, message="the waiter")
    await client.patch(f"/v1/queues/{task['id']}/revoke", headers=owner.headers)
    await wait_until(poll.done, message="the answer")
    assert poll.result().status_code == 200
    assert poll.result().json()["state"] == "REVOKED"


async def test_pausing_keeps_the_waiter_waiting(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 600_000})).json()
    poll = asyncio.create_task(
        client.get(f"/v1/queues/{task['id']}/result?wait=10", headers=owner.headers)
    )
    await wait_until(lambda: len(server.scheduler.waiters) == 1, message="the waiter")
    await client.patch(f"/v1/queues/{task['id']}/pause", headers=owner.headers)
    await wait_until(lambda: len(server.scheduler.waiters) == 1, message="the waiter again")
    assert not poll.done()
    clock.advance(10)
    await wait_until(poll.done, message="the answer")
    assert poll.result().status_code == 202 and poll.result().json()["state"] == "PAUSED"


async def test_register_and_wait(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    target: TargetServer,
) -> None:
    target.route("/fail", Reply(500, b"broken"))
    response = await client.post(
        "/v1/queues/register?wait=30",
        json={
            "httpRequest": {"url": target.url("/fail"), "method": "POST", "data": "x"},
            "config": {"executionDelay": 0},
        },
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "ERROR" and response.json()["statusCode"] == 500
    assert len(target.arrivals) == 1


async def test_register_with_a_wait_that_ends_answers_202(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    response = await client.post(
        "/v1/queues/register?wait=0",
        json={"httpRequest": {"url": "http://127.0.0.1:9/x", "method": "GET"}, "config": {}},
        headers=owner.headers,
    )
    assert response.status_code == 202 and response.json()["state"] == "RUNNING"


@pytest.mark.parametrize("wait", ["61", "-1", "abc", "1e3", "", "60.0001"])
async def test_a_bad_wait_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, owner: OwnerAuth, wait: str
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 600_000})).json()
    response = await client.get(
        f"/v1/queues/{task['id']}/result", params={"wait": wait}, headers=owner.headers
    )
    assert response.status_code == 400
    assert response.json()["message"]["wait"]["_errors"]
    registered = await client.post(
        "/v1/queues/register",
        params={"wait": wait},
        json={"httpRequest": {"url": "http://127.0.0.1:9/x", "method": "GET"}},
        headers=owner.headers,
    )
    assert registered.status_code == 400
    listed = (await client.get("/v1/queues", headers=owner.headers)).json()
    assert [t["id"] for t in listed] == [task["id"]]
