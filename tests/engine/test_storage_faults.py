"""Layer 3: the server while the database refuses writes — the disk is full (SQLite's
``max_page_count`` caps the file, as a full disk would) or another process holds the
write lock longer than the busy timeout. The server keeps serving, answers 503 with
Retry-After, reports the fault in /readyz, and catches up by itself: nothing is lost."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner, register_task
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/hook", Reply(200, b"done"))
        yield server


async def states(client: httpx.AsyncClient, owner: OwnerAuth, ids: list[str]) -> list[str]:
    answers = [await client.get(f"/v1/queues/{i}", headers=owner.headers) for i in ids]
    return [answer.json()["state"] for answer in answers]


def assert_refused_for_now(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert reason in response.json()["message"]


async def readiness(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/readyz")


async def run_until_done(
    clock: FakeClock, client: httpx.AsyncClient, owner: OwnerAuth, ids: list[str]
) -> None:
    """Move the fake clock in small steps (the scheduler's pauses between tries of a
    refused write are on it) until every task succeeded."""

    async def all_succeeded() -> bool:
        clock.advance(0.5)
        return set(await states(client, owner, ids)) == {"SUCCESS"}

    await wait_until(all_succeeded, timeout=15, message="every accepted task to succeed")


async def test_a_full_disk_answers_503_and_nothing_accepted_is_lost(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    hook = {"url": target.url("/hook"), "method": "POST", "data": "x" * 2000}
    accepted = [
        (await register_task(client, owner, hook, config={"executionDelay": 1000})).json()["id"]
        for _ in range(5)
    ]
    await server.store.set_page_limit(await server.store.page_count())

    refused = None
    for _ in range(200):  # the file's free space runs out after a few more
        response = await register_task(client, owner, hook, config={"executionDelay": 1000})
        if response.status_code != 201:
            refused = response
            break
        accepted.append(response.json()["id"])
    assert refused is not None, "the capped database never filled up"
    assert_refused_for_now(refused, "full")
    ready = await readiness(client)
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": False, "scheduler": True}
    assert "full" in ready.json()["problems"]["database"]

    clock.advance(1.5)  # tasks fall due; their claims need space too and are refused
    await wait_until(lambda: server.store.write_problem() is not None)
    assert target.arrivals == [] and server.scheduler.alive

    await server.store.set_page_limit(1 << 30)  # space returns
    await run_until_done(clock, client, owner, accepted)
    assert sorted(a.header("X-Tasks-Queue-Id") or "" for a in target.arrivals) == sorted(accepted)
    assert (await readiness(client)).status_code == 200
    again = await register_task(client, owner, hook)
    assert again.status_code == 201


async def test_a_lock_held_past_the_busy_timeout_answers_503_and_the_server_catches_up(
    make_server: ServerFactory, clock: FakeClock, target: TargetServer
) -> None:
    server = await make_server(sqlite_busy_timeout_ms=100)
    target.route("/slow", Reply(200, b"late", delay_s=0.3))
    async with client_for(server) as client:
        owner = await register_owner(client, "lock-test")
        slow = (
            await register_task(
                client,
                owner,
                {"url": target.url("/slow"), "method": "GET"},
                config={"executionDelay": 0},
            )
        ).json()["id"]
        queued = (
            await register_task(
                client,
                owner,
                {"url": target.url("/hook"), "method": "GET"},
                config={"executionDelay": 1000},
            )
        ).json()["id"]
        await wait_until(lambda: len(target.arrivals_at("/slow")) == 1, message="the slow call")

        admin = sqlite3.connect(server.settings.database_path, isolation_level=None)
        try:
            admin.execute("BEGIN IMMEDIATE")  # held far longer than the 100 ms busy timeout
            # the slow call's outcome arrives while the lock is held: kept, not lost
            await wait_until(lambda: server.scheduler.stats.claimed == 1)
            refused = await register_task(
                client, owner, {"url": target.url("/hook"), "method": "GET"}
            )
            assert_refused_for_now(refused, "locked")
            ready = await readiness(client)
            assert ready.status_code == 503 and "locked" in ready.json()["problems"]["database"]
            clock.advance(1.5)  # the queued task falls due: its claim is refused too
            await wait_until(lambda: server.store.write_problem() is not None)
            assert target.arrivals_at("/hook") == [] and server.scheduler.alive
        finally:
            admin.execute("ROLLBACK")
            admin.close()

        await run_until_done(clock, client, owner, [slow, queued])
        assert len(target.arrivals_at("/slow")) == 1  # the kept outcome was written, not re-run
        assert len(target.arrivals_at("/hook")) == 1
        assert (await readiness(client)).status_code == 200
