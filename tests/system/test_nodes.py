"""Three real server processes on one PostgreSQL database (tests/support/nodes.py): each
task delivered once when nothing fails; kill -9 of nodes while tasks are due loses
nothing and sends twice only what was in flight; a killed schedule leader neither doubles
nor drops a slot."""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.engine.test_flow_control import HoldingSink
from tests.support.nodes import Nodes, leader_pid, register_owner, register_tasks, task_states
from tests.support.proxy import CuttableProxy
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until

LEASE_MS = 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/hook", Reply(200, b"ok"))
        yield server


@pytest.fixture
async def nodes(tmp_path: Path, database_url: str) -> AsyncIterator[Nodes]:
    cluster = Nodes(tmp_path, database_url, 3, LEASE_MS=str(LEASE_MS), TASKS_IN_QUEUE_LIMIT="0")
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop_all()


def hooks(
    target: TargetServer, first_due_ms: int, count: int, spread_ms: int
) -> Callable[[int], dict[str, Any]]:
    """Bodies of tasks due evenly over ``spread_ms`` from ``first_due_ms`` (as delays, so
    the time a request waits does not matter); a task registered after its planned time
    is due 1 s after its registration instead: this machine's speed must not make a test
    fail."""

    def body(i: int) -> dict[str, Any]:
        delay = max(first_due_ms + spread_ms * i // count - now_ms(), 1000)
        return {
            "httpRequest": {"url": target.url("/hook"), "method": "POST"},
            "config": {"executionDelay": delay},
        }

    return body


def deliveries(target: TargetServer) -> dict[str, list[float]]:
    """Arrival times per task id, in order."""
    seen: dict[str, list[float]] = defaultdict(list)
    for arrival in target.arrivals_at("/hook"):
        seen[arrival.header("X-Tasks-Queue-Id") or ""].append(arrival.arrived_at)
    return seen


async def all_final(database_url: str, ids: list[str], deadline_s: float) -> dict[str, str]:
    states: dict[str, str] = {}

    async def done() -> bool:
        nonlocal states
        states = await task_states(database_url)
        return all(states.get(task_id) == "SUCCESS" for task_id in ids)

    await wait_until(done, timeout=deadline_s, interval=0.2, message="every task final")
    return states


async def test_tasks_registered_through_any_node_are_each_delivered_once(
    nodes: Nodes, target: TargetServer
) -> None:
    headers = await register_owner(nodes[0].url)
    urls = [node.url for node in nodes.nodes]
    ids = await register_tasks(urls, headers, 300, hooks(target, now_ms() + 1500, 300, 1000))
    await all_final(nodes.database_url, ids, 30)
    seen = deliveries(target)
    assert sorted(seen) == sorted(ids)
    assert Counter(len(times) for times in seen.values()) == {1: 300}
    attempts = {a.header("X-Tasks-Attempt") for a in target.arrivals_at("/hook")}
    assert attempts == {"1"}


async def kill_while_due(
    nodes: Nodes, target: TargetServer, count: int, spread_ms: int, kills: int, batch: int = 1
) -> None:
    """Register ``count`` tasks due over ``spread_ms`` through every node, kill -9 a random
    node (and start it again) ``kills`` times while they are due, then check: none lost,
    every task final, and every task sent twice was in flight at a kill."""
    target.route("/hook", Reply(200, b"ok", delay_s=0.05))  # calls stay in flight a while
    headers = await register_owner(nodes[0].url)
    urls = [node.url for node in nodes.nodes]
    first_due = now_ms() + 2000
    body = hooks(target, first_due, count, spread_ms)
    ids = await register_tasks(urls, headers, count, body, batch=batch)
    rng = random.Random(18)
    kill_times: list[float] = []
    # kill while tasks are still due: over what is left of their spread, or over the
    # second after the last registration when registering took longer than that
    window_ms = max(first_due + spread_ms, now_ms() + 1000) - now_ms()
    interval_s = max(window_ms / 1000 / (kills + 1), 0.3)
    for _ in range(kills):
        await asyncio.sleep(interval_s)  # the schedule of kills, not a wait for a result
        victim = rng.randrange(len(nodes))
        kill_times.append(time.monotonic())
        nodes.kill(victim)
        await nodes.start(victim)
    states = await all_final(nodes.database_url, ids, 60 + count / 100)
    seen = deliveries(target)
    lost = [task_id for task_id in ids if task_id not in seen]
    assert lost == []
    assert {states[task_id] for task_id in ids} == {"SUCCESS"}
    for task_id, times in seen.items():
        if len(times) > 1:  # the first call was in flight when its node was killed
            assert any(times[0] <= kill <= times[-1] for kill in kill_times), (
                task_id,
                times,
                kill_times,
            )
    doubled = sum(1 for times in seen.values() if len(times) > 1)
    print(f"{count} tasks, {kills} kills: 0 lost, {doubled} sent twice")  # noqa: T201


async def test_kill_9_of_nodes_while_tasks_are_due_loses_nothing(
    nodes: Nodes, target: TargetServer
) -> None:
    await kill_while_due(nodes, target, count=600, spread_ms=4000, kills=2)


@pytest.mark.slow
@pytest.mark.timeout(900)  # registering 10,000 tasks alone takes more than the default
async def test_repeated_kills_with_10000_tasks_lose_nothing(
    nodes: Nodes, target: TargetServer
) -> None:
    await kill_while_due(nodes, target, count=10_000, spread_ms=20_000, kills=8, batch=100)


async def schedule_slots(database_url: str, schedule_id: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (
            await conn.execute(
                "SELECT estimate_execution_at FROM task WHERE schedule_id = %s "
                "ORDER BY estimate_execution_at",
                (schedule_id,),
            )
        ).fetchall()
    return [row[0] for row in rows]


async def test_killing_the_schedule_leader_neither_doubles_nor_drops_a_slot(
    nodes: Nodes, target: TargetServer
) -> None:
    headers = await register_owner(nodes[0].url)
    body = {
        "name": "every-second",
        "schedule": "@every 1s",
        "httpRequest": {"url": target.url("/hook"), "method": "POST"},
        "misfirePolicy": "run_all",
        "catchUpLimit": 100,
    }
    async with httpx.AsyncClient(base_url=nodes[1].url) as http:
        response = await http.post("/v1/schedules", json=body, headers=headers)
        assert response.status_code == 201, response.text
        schedule_id = response.json()["id"]
    url = nodes.database_url
    await wait_until(lambda: _count_at_least(url, schedule_id, 3), timeout=15, interval=0.1)
    leader = await leader_pid(url)
    victim = next(i for i in range(len(nodes)) if nodes.pid(i) == leader)
    before = len(await schedule_slots(url, schedule_id))
    nodes.kill(victim)
    await wait_until(lambda: _other_leader(url, leader), timeout=15, interval=0.1)
    await wait_until(
        lambda: _count_at_least(url, schedule_id, before + 5), timeout=20, interval=0.1
    )
    slots = await schedule_slots(url, schedule_id)
    assert len(set(slots)) == len(slots)  # no slot twice
    assert [b - a for a, b in itertools.pairwise(slots)] == [1000] * (len(slots) - 1)


async def _count_at_least(url: str, schedule_id: str, count: int) -> bool:
    return len(await schedule_slots(url, schedule_id)) >= count


async def _other_leader(url: str, old: int | None) -> bool:
    leader = await leader_pid(url)
    return leader is not None and leader != old


async def test_a_partitioned_node_stops_dispatching_when_its_lease_ends(
    tmp_path: Path, database_url: str, target: TargetServer
) -> None:
    parts = urlsplit(database_url)
    assert parts.hostname is not None and parts.port is not None
    async with CuttableProxy(parts.hostname, parts.port) as proxy:
        via_proxy = database_url.replace(f":{parts.port}/", f":{proxy.port}/")
        # the partitioned node claims the tasks long before they are due, then is cut off
        cut_off = Nodes(
            tmp_path / "cut", via_proxy, 1, LEASE_MS=str(LEASE_MS), SCHEDULER_LOOKAHEAD_MS="8000"
        )
        healthy = Nodes(tmp_path / "healthy", database_url, 1, LEASE_MS=str(LEASE_MS))
        try:
            await cut_off.start()
            headers = await register_owner(cut_off[0].url)
            ids = await register_tasks(
                [cut_off[0].url], headers, 20, hooks(target, now_ms() + 5000, 20, 0)
            )
            await wait_until(lambda: _in_flight(database_url, 20), timeout=10, interval=0.05)
            proxy.cut()
            await healthy.start()
            await wait_until(lambda: len(target.arrivals) >= 20, timeout=30)
            log = cut_off[0].log
            await wait_until(
                lambda: log.read_text().count("not sent: its lease ended") == 20, timeout=30
            )
        finally:
            cut_off.stop_all()
            healthy.stop_all()
    seen = deliveries(target)
    assert sorted(seen) == sorted(ids) and all(len(t) == 1 for t in seen.values())
    assert {a.header("X-Tasks-Attempt") for a in target.arrivals} == {"2"}  # not the cut node's


async def _in_flight(database_url: str, count: int) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM task WHERE in_flight")).fetchone()
    return row is not None and row[0] == count


async def test_a_key_rotated_or_an_owner_disabled_on_one_node_stops_working_on_another(
    tmp_path: Path, database_url: str
) -> None:
    admin_key = secrets.token_urlsafe(32)
    admin = {"Authorization": f"Bearer {admin_key}"}
    cluster = Nodes(tmp_path, database_url, 2, ADMIN_KEY=admin_key)
    try:
        await cluster.start()
        async with (
            httpx.AsyncClient(base_url=cluster[0].url) as first,
            httpx.AsyncClient(base_url=cluster[1].url) as second,
        ):
            created = await first.post("/v1/admin/owners", json={"name": "moved"}, headers=admin)
            assert created.status_code == 201, created.text
            owner = created.json()

            def auth(key: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {key}", "X-Tasks-Owner-Id": owner["id"]}

            old = auth(owner["key"])
            assert (await second.get("/v1/queues", headers=old)).status_code == 200  # cached

            rotated = await first.post(f"/v1/admin/owners/{owner['id']}/key", headers=admin)
            assert rotated.status_code == 200, rotated.text
            new = auth(rotated.json()["key"])

            async def status_on_second(headers: dict[str, str], status: int) -> bool:
                return (await second.get("/v1/queues", headers=headers)).status_code == status

            await wait_until(lambda: status_on_second(old, 401), timeout=10, interval=0.2)
            assert (await second.get("/v1/queues", headers=new)).status_code == 200

            path = f"/v1/admin/owners/{owner['id']}"
            disabled = await first.patch(path, json={"disabled": True}, headers=admin)
            assert disabled.status_code == 200, disabled.text
            await wait_until(lambda: status_on_second(new, 403), timeout=10, interval=0.2)
    finally:
        cluster.stop_all()


def flow_hooks(url: str, flow: dict[str, Any]) -> Callable[[int], dict[str, Any]]:
    return lambda _: {
        "httpRequest": {"url": url, "method": "POST"},
        "config": {"executionDelay": 0, "flowControl": flow},
    }


async def test_a_keys_parallelism_holds_across_nodes(nodes: Nodes) -> None:
    headers = await register_owner(nodes[0].url)
    urls = [node.url for node in nodes.nodes]
    async with HoldingSink() as sink:
        flow = {"key": "shared-api", "parallelism": 2}
        await register_tasks(urls, headers, 12, flow_hooks(sink.url(), flow), parallel=3)
        await wait_until(lambda: sink.arrived == 2, timeout=15, message="two calls")
        for expected in range(3, 13):  # every node keeps trying while two are held
            sink.release()
            await wait_until(lambda n=expected: sink.arrived == n, timeout=15)
            assert sink.active <= 2
        sink.release(2)
        assert sink.most == 2  # never a third call at once, from any node


async def test_a_keys_rate_holds_across_nodes(nodes: Nodes, target: TargetServer) -> None:
    headers = await register_owner(nodes[0].url)
    urls = [node.url for node in nodes.nodes]
    flow = {"key": "rated-api", "rate": 5, "period": "1s"}
    ids = await register_tasks(urls, headers, 15, flow_hooks(target.url("/hook"), flow))
    await all_final(nodes.database_url, ids, 30)
    times = sorted(t for seen in deliveries(target).values() for t in seen)
    assert len(times) == 15
    # A bucket of 5 refilled at 5/s lets at most 5 + 5 * w calls start in w seconds: 11
    # calls need 1.2 s, all 15 need 2 s, less a margin for the way from claim to target
    # on a loaded machine. Each node on its own would let all 15 go at once.
    assert min(times[i + 10] - times[i] for i in range(5)) >= 0.8, times
    assert times[-1] - times[0] >= 1.6, times
