"""Whole process: calls held at a host whose circuit is open are claimed attempts, durable
in the store; a crash loses none of them, and the next start sends them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.process import ServerProcess
from tests.support.targets import Arrival, Reply, TargetServer
from tests.support.waiting import wait_until

ADMIN = {"Authorization": "Bearer admin-key-0123456789abcdef"}


async def test_calls_held_by_an_open_circuit_survive_a_crash(tmp_path: Path) -> None:
    answers = {"count": 0}

    def fail_first(arrival: Arrival) -> Reply:
        answers["count"] += 1
        return Reply(500, b"down") if answers["count"] == 1 else Reply(200, b"back")

    async with TargetServer() as target:
        target.route("/hook", fail_first)
        host = f"127.0.0.1:{target.port}"
        body = {
            "httpRequest": {"url": target.url("/hook"), "method": "POST", "data": "x"},
            "config": {"executionDelay": 0, "retry": 0},
        }
        server = ServerProcess(
            tmp_path,
            ADMIN_KEY=ADMIN["Authorization"].split()[1],
            OWNER_REGISTRATION="open",
            HOST_CIRCUIT_FAILURES="1",
            HOST_CIRCUIT_COOLDOWN_S="3600",  # never within this process's life
        ).start()
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                created = await http.post("/v1/owners/register", json={"name": "held-calls"})
                assert created.status_code == 201, created.text
                owner = created.json()
                headers = {
                    "Authorization": f"Bearer {owner['key']}",
                    "X-Tasks-Owner-Id": owner["id"],
                }

                async def view() -> dict[str, Any]:
                    found: dict[str, Any] = (
                        await http.get(f"/v1/hosts/{host}", headers=ADMIN)
                    ).json()
                    return found

                await http.post("/v1/queues/register", json=body, headers=headers)
                await wait_until(
                    lambda: view_is(view, circuit="open"), message="the circuit to open"
                )
                held = []
                for _ in range(3):
                    response = await http.post("/v1/queues/register", json=body, headers=headers)
                    held.append(response.json()["id"])
                await wait_until(lambda: view_is(view, waiting=3), message="three calls held")
                assert len(target.arrivals) == 1
        finally:
            server.kill()
        server.start()  # the circuit was in memory; the claims are in the database
        try:
            await wait_until(lambda: len(target.arrivals) == 4, timeout=15, message="held calls")
            assert {a.header("X-Tasks-Queue-Id") for a in target.arrivals[1:]} == set(held)
            async with httpx.AsyncClient(base_url=server.url) as http:

                async def all_succeeded() -> bool:
                    states = [
                        (await http.get(f"/v1/queues/{task_id}", headers=headers)).json()["state"]
                        for task_id in held
                    ]
                    return states == ["SUCCESS"] * 3

                await wait_until(all_succeeded, timeout=10, message="the held tasks to succeed")
        finally:
            server.terminate()


async def view_is(view: Any, **expected: object) -> bool:
    found = await view()
    return all(found[name] == value for name, value in expected.items())
