"""Layer 3: calls waiting for a busy host's connections hold no MAX_IN_FLIGHT slot, so
tasks for other hosts run on time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import ServerFactory, client_for, register_owner, register_task
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until


@pytest.fixture
async def stuck() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/hang", Reply(hang=True))
        yield server


async def test_tasks_for_another_host_run_while_one_host_hangs(
    make_server: ServerFactory, stuck: TargetServer
) -> None:
    server = await make_server(max_in_flight=2, max_host_connections=1)
    async with TargetServer() as healthy, client_for(server) as client:
        healthy.route("/ok", Reply(200, b"ok"))
        owner = await register_owner(client, "isolation")
        hang = {"url": stuck.url("/hang"), "method": "GET"}
        for _ in range(4):
            await register_task(client, owner, hang, config={"executionDelay": 0})
        await wait_until(lambda: server.dispatcher.waiting_for_host == 3, message="3 queued")
        ok = {"url": healthy.url("/ok"), "method": "GET"}
        task = (await register_task(client, owner, ok, config={"executionDelay": 0})).json()

        async def succeeded() -> bool:
            answer = await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)
            return bool(answer.json()["state"] == "SUCCESS")

        await wait_until(succeeded, message="the healthy host's task")
        assert len(stuck.arrivals) == 1
