"""Whole process: a real server killed with SIGKILL loses nothing and shifts nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import ServerProcess
from tests.support.targets import Arrival, Reply, TargetServer
from tests.support.waiting import wait_until


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def register(http: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]) -> str:
    response = await http.post("/v1/queues/register", json=body, headers=headers)
    assert response.status_code == 201, response.text
    task_id: str = response.json()["id"]
    return task_id


@pytest.mark.slow  # a real server killed and restarted: ~10 s
async def test_kill_9_loses_and_shifts_nothing(tmp_path: Path) -> None:
    hang_first = {"count": 0}

    def hang_once(arrival: Arrival) -> Reply:
        hang_first["count"] += 1
        return Reply(hang=True) if hang_first["count"] == 1 else Reply(200, b"again")

    async with TargetServer() as target:
        target.route("/soon", Reply(200, b"ok"))
        target.route("/later", Reply(200, b"ok"))
        target.route("/inflight", hang_once)
        server = ServerProcess(tmp_path).start()
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                owner = (await http.post("/v1/owners/register", json={"name": "crash"})).json()
                headers = {
                    "Authorization": f"Bearer {owner['key']}",
                    "X-Tasks-Owner-Id": owner["id"],
                }
                start = now_ms()
                soon_at, later_at = start + 1500, start + 4500
                soon = [
                    await register(
                        http,
                        headers,
                        {
                            "httpRequest": {"url": target.url("/soon"), "method": "GET"},
                            "config": {"executeAt": soon_at},
                        },
                    )
                    for _ in range(10)
                ]
                later = [
                    await register(
                        http,
                        headers,
                        {
                            "httpRequest": {"url": target.url("/later"), "method": "GET"},
                            "config": {"executeAt": later_at},
                        },
                    )
                    for _ in range(10)
                ]
                inflight = await register(
                    http,
                    headers,
                    {
                        "httpRequest": {"url": target.url("/inflight"), "method": "GET"},
                        "config": {"executionDelay": 0},
                    },
                )
                await wait_until(lambda: len(target.arrivals_at("/inflight")) == 1)
            server.kill()  # down before /soon is due; back after it, before /later
            await wait_until(lambda: now_ms() >= soon_at + 300, timeout=10)
            assert target.arrivals_at("/soon") == []
            server.start()
            restarted = time.monotonic()
            await wait_until(lambda: len(target.arrivals_at("/soon")) == 10, timeout=10)
            # overdue: at once after the restart, not shifted by the downtime
            assert all(a.arrived_at - restarted < 1.0 for a in target.arrivals_at("/soon"))
            await wait_until(lambda: len(target.arrivals_at("/later")) == 10, timeout=10)
            lateness = [
                a.arrived_at - (restarted + (later_at - now_ms()) / 1000)
                for a in target.arrivals_at("/later")
            ]
            await wait_until(lambda: len(target.arrivals_at("/inflight")) == 2, timeout=10)
            async with httpx.AsyncClient(base_url=server.url) as http:
                states = {}
                for task_id in [*soon, *later, inflight]:
                    body = (await http.get(f"/v1/queues/{task_id}", headers=headers)).json()
                    states[task_id] = body["state"]
                assert set(states.values()) == {"SUCCESS"}
                history = (
                    await http.get(f"/v1/queues/{inflight}/attempts", headers=headers)
                ).json()
                assert [a["attempt"] for a in history] == [1, 2]
                assert "interrupted" in history[0]["error"]
            # exactly once for everything that was not in flight at the kill
            ids = [a.header("X-Tasks-Queue-Id") for a in target.arrivals]
            assert sorted(i for i in ids if i != inflight) == sorted([*soon, *later])
            # on time at the original executeAt: no earlier, and not much later
            first_later = min(a.arrived_at for a in target.arrivals_at("/later"))
            assert first_later >= restarted, lateness
            wall_arrival_ms = [
                now_ms() - (time.monotonic() - a.arrived_at) * 1000
                for a in target.arrivals_at("/later")
            ]
            assert all(later_at - 5 <= t <= later_at + 500 for t in wall_arrival_ms), [
                t - later_at for t in wall_arrival_ms
            ]
        finally:
            if server.process and server.process.poll() is None:
                server.kill()


async def test_sigterm_lets_in_flight_calls_finish(tmp_path: Path) -> None:
    async with TargetServer() as target:
        target.route("/slow", Reply(200, b"done", delay_s=0.8))
        with ServerProcess(tmp_path, SHUTDOWN_GRACE_S="5") as server:
            async with httpx.AsyncClient(base_url=server.url) as http:
                owner = (await http.post("/v1/owners/register", json={"name": "graceful"})).json()
                headers = {
                    "Authorization": f"Bearer {owner['key']}",
                    "X-Tasks-Owner-Id": owner["id"],
                }
                task_id = await register(
                    http,
                    headers,
                    {
                        "httpRequest": {"url": target.url("/slow"), "method": "GET"},
                        "config": {"executionDelay": 0},
                    },
                )
                await wait_until(lambda: len(target.arrivals) == 1)
            # in a thread: the target runs on this event loop and must keep answering
            assert await asyncio.to_thread(server.terminate) == 0
            server.start()
            async with httpx.AsyncClient(base_url=server.url) as http:
                body = (await http.get(f"/v1/queues/{task_id}", headers=headers)).json()
            assert body["state"] == "SUCCESS" and body["statusCode"] == 200
            assert len(target.arrivals) == 1  # finished before exit: not sent again
