"""Flow-control keys with the running server, a fake clock and real targets: a rate
holds per second, parallelism caps the calls a target sees at once, and tasks held back
by a key start by due time, then priority."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

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


async def settled(server: Server) -> None:
    """The loop has parked with nothing left to start at this instant."""
    for _ in range(5):
        await asyncio.sleep(0)
    await wait_until(
        lambda: server.scheduler.idle.is_set() and server.scheduler.in_flight == 0,
        message="the scheduler to park",
    )


def body(url: str, **config: Any) -> dict[str, Any]:
    return {"httpRequest": {"url": url, "method": "POST", "data": "x"}, "config": config}


async def test_rate_ten_per_second_with_a_thousand_due_at_once(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/hook", Reply(200))
    flow = {"key": "reports", "rate": 10, "period": "1s"}
    items = [body(target.url("/hook"), executionDelay=0, flowControl=flow) for _ in range(1000)]
    response = await client.post("/v1/queues/register/batch", json=items, headers=owner.headers)
    assert [r["status"] for r in response.json()] == [201] * 1000
    counts = []
    for _ in range(6):
        await settled(server)
        counts.append(len(target.arrivals))
        clock.advance(1)
    per_second = [b - a for a, b in itertools.pairwise(counts)]
    assert counts[0] == 10  # the burst equals the rate
    assert all(9 <= n <= 11 for n in per_second), per_second
    waiting = await client.get(
        "/v1/queues", params={"state": "RUNNING", "limit": 1000}, headers=owner.headers
    )
    assert len(waiting.json()) == 1000 - counts[-1]  # the rest wait as durable rows


class HoldingSink:
    """An HTTP target that holds every request until the test lets one go, and records
    how many it held at once."""

    def __init__(self) -> None:
        self.active = 0
        self.most = 0
        self.arrived = 0
        self._gates: list[asyncio.Event] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> HoldingSink:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for gate in self._gates:
            gate.set()
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # connections the server keeps alive
            writer.close()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hold"

    def release(self, count: int = 1) -> None:
        for gate in [g for g in self._gates if not g.is_set()][:count]:
            gate.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.arrived += 1
                self.active += 1
                self.most = max(self.most, self.active)
                gate = asyncio.Event()
                self._gates.append(gate)
                await gate.wait()
                self.active -= 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def test_parallelism_three_never_sees_a_fourth_call(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    async with HoldingSink() as sink:
        flow = {"key": "slow-api", "parallelism": 3}
        items = [body(sink.url(), executionDelay=0, flowControl=flow) for _ in range(10)]
        await client.post("/v1/queues/register/batch", json=items, headers=owner.headers)
        await wait_until(lambda: sink.arrived == 3, message="three calls")
        await wait_until(lambda: server.scheduler.idle.is_set(), message="park")
        assert sink.arrived == 3 and sink.active == 3
        for expected in range(4, 11):
            sink.release()
            await wait_until(lambda n=expected: sink.arrived == n, message=f"call {expected}")
            assert sink.active <= 3
        sink.release(3)
        await wait_until(lambda: server.scheduler.stats.succeeded == 10, message="all done")
        assert sink.most == 3


async def test_held_tasks_start_by_due_time_then_priority(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/p", Reply(200))
    flow = {"key": "one-per-second", "rate": 1}
    first = await register_task(
        client,
        owner,
        {"url": target.url("/p"), "method": "GET"},
        config={"flowControl": flow, "executionDelay": 0},
    )
    assert first.status_code == 201
    due = clock.now_ms() + 500
    names = {}
    for priority, delay in ((-5, 0), (50, 0), (10, 0), (100, 200)):
        created = await register_task(
            client,
            owner,
            {"url": target.url("/p"), "method": "GET", "query": {"p": str(priority)}},
            config={"executeAt": due + delay, "priority": priority, "flowControl": flow},
        )
        names[created.json()["id"]] = priority
    await settled(server)
    assert len(target.arrivals) == 1  # the first one took the only token
    for _ in range(4):
        clock.advance(1)
        await settled(server)
    order = [names[a.header("X-Tasks-Queue-Id")] for a in target.arrivals[1:]]
    assert order == [50, 10, -5, 100]  # due first, then priority


async def test_the_flow_control_api_lists_pauses_resumes_and_changes_a_key(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    other_owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/k", Reply(200))
    flow = {"key": "emails", "rate": 2, "parallelism": 5}
    items = [body(target.url("/k"), executionDelay=0, flowControl=flow) for _ in range(6)]
    await client.post("/v1/queues/register/batch", json=items, headers=owner.headers)
    await settled(server)
    assert len(target.arrivals) == 2
    listed = (await client.get("/v1/flow-control", headers=owner.headers)).json()
    assert listed == [
        {
            "key": "emails",
            "rate": 2,
            "period": "1s",
            "parallelism": 5,
            "paused": False,
            "waiting": 4,
            "inFlight": 0,
            "waitMs": 0,
        }
    ]
    assert (await client.get("/v1/flow-control", headers=other_owner.headers)).json() == []
    url = "/v1/flow-control/emails"
    assert (await client.get(url, headers=other_owner.headers)).status_code == 404
    paused = await client.patch(url, json={"paused": True}, headers=owner.headers)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    clock.advance(5)
    await settled(server)
    assert len(target.arrivals) == 2  # a paused key holds its tasks
    assert (await client.get(url, headers=owner.headers)).json()["waitMs"] == 5000
    faster = await client.patch(url, json={"paused": False, "rate": 10}, headers=owner.headers)
    assert faster.json()["rate"] == 10 and faster.json()["parallelism"] == 5
    await settled(server)
    assert len(target.arrivals) == 6
    bad = await client.patch(url, json={"rate": 0}, headers=owner.headers)
    assert bad.status_code == 400
    missing = await client.patch("/v1/flow-control/none", json={}, headers=owner.headers)
    assert missing.status_code == 404
