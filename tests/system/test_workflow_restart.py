"""Whole process: a workflow run survives kill -9 and never calls a successful step again."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import ServerProcess
from tests.support.targets import Arrival, Reply, TargetServer
from tests.support.waiting import wait_until


async def test_kill_9_during_a_run_then_the_run_completes_without_repeats(tmp_path: Path) -> None:
    calls = {"count": 0}

    def hang_once(arrival: Arrival) -> Reply:
        calls["count"] += 1
        return Reply(hang=True) if calls["count"] == 1 else Reply(200, b'{"ok": true}')

    async with TargetServer() as target:
        target.route("/first", Reply(200, b'{"id": 7}', (("Content-Type", "application/json"),)))
        target.route("/second", hang_once)
        target.route("/third", Reply(200, b"done"))

        def step(step_id: str, path: str, deps: list[str], data: Any = None) -> dict[str, Any]:
            request: dict[str, Any] = {"url": target.url(path), "method": "POST"}
            if data is not None:
                request["data"] = data
            return {"id": step_id, "dependsOn": deps, "httpRequest": request}

        body = {
            "name": "crash-run",
            "steps": [
                step("first", "/first", []),
                step("second", "/second", ["first"], {"id": "{{ steps.first.response.body.id }}"}),
                step("third", "/third", ["second"], {"id": "{{ steps.first.response.body.id }}"}),
            ],
        }
        server = ServerProcess(tmp_path).start()
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                owner = (await http.post("/v1/owners/register", json={"name": "crash"})).json()
                headers = {
                    "Authorization": f"Bearer {owner['key']}",
                    "X-Tasks-Owner-Id": owner["id"],
                }
                created = await http.post("/v1/workflows", json=body, headers=headers)
                assert created.status_code == 201, created.text
                run_id = created.json()["id"]
                await wait_until(lambda: len(target.arrivals_at("/second")) == 1, timeout=10)
                server.kill()  # the second step is in flight
                target.release()
                server.start()
            async with httpx.AsyncClient(base_url=server.url) as http:

                async def finished() -> bool:
                    run = await http.get(f"/v1/workflows/{run_id}", headers=headers)
                    return bool(run.json()["state"] == "SUCCESS")

                await wait_until(finished, timeout=15, message="the run to finish")
                run = (await http.get(f"/v1/workflows/{run_id}", headers=headers)).json()
        finally:
            server.terminate()
    assert len(target.arrivals_at("/first")) == 1  # succeeded before the kill: never again
    assert len(target.arrivals_at("/second")) == 2  # in flight at the kill: sent again
    assert len(target.arrivals_at("/third")) == 1
    assert target.arrivals_at("/third")[0].body == b'{"id":7}'
    assert [s["state"] for s in run["steps"]] == ["SUCCESS"] * 3
    assert run["steps"][1]["attempts"] == 2


@pytest.mark.slow  # a real server killed and restarted: ~10 s
async def test_kill_9_starts_no_scheduled_run_twice(tmp_path: Path) -> None:
    """A schedule that starts a run every second: across a SIGKILL and a restart, no slot
    starts two runs, missed slots are caught up (run_all), and every run completes."""
    async with TargetServer() as target:
        target.route("/ping", Reply(200, b"{}"))
        body = {
            "name": "every-second",
            "schedule": "* * * * * *",  # seconds field first
            "misfirePolicy": "run_all",
            "catchUpLimit": 100,
            "workflow": {
                "name": "ping",
                "steps": [
                    {"id": "a", "httpRequest": {"url": target.url("/ping"), "method": "POST"}},
                    {
                        "id": "b",
                        "dependsOn": ["a"],
                        "httpRequest": {"url": target.url("/ping"), "method": "POST"},
                    },
                ],
            },
        }
        server = ServerProcess(tmp_path).start()
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                owner = (
                    await http.post("/v1/owners/register", json={"name": "scheduled-etl"})
                ).json()
                headers = {
                    "Authorization": f"Bearer {owner['key']}",
                    "X-Tasks-Owner-Id": owner["id"],
                }
                created = await http.post("/v1/schedules", json=body, headers=headers)
                assert created.status_code == 201, created.text

                async def runs() -> list[dict[str, Any]]:
                    found = await http.get("/v1/schedules/every-second/runs", headers=headers)
                    listed: list[dict[str, Any]] = found.json()
                    return listed

                await wait_until(lambda: _at_least(runs, 3), timeout=10, message="three runs")
            server.kill()
            killed_ms = time.time_ns() // 1_000_000
            server.start()
            async with httpx.AsyncClient(base_url=server.url) as http:

                async def after_restart() -> list[dict[str, Any]]:
                    found = await http.get(
                        "/v1/schedules/every-second/runs?limit=1000", headers=headers
                    )
                    listed: list[dict[str, Any]] = found.json()
                    return listed

                async def caught_up_and_done() -> bool:
                    listed = await after_restart()
                    newest = max(run["dueAt"] for run in listed)
                    done = all(run["state"] == "SUCCESS" for run in listed if run["dueAt"] < newest)
                    return newest >= killed_ms + 3_000 and done

                await wait_until(caught_up_and_done, timeout=20, message="runs after the restart")
                listed = await after_restart()
                schedule = (await http.get("/v1/schedules/every-second", headers=headers)).json()
        finally:
            server.terminate()
    slots = sorted(run["dueAt"] for run in listed)
    assert len(set(slots)) == len(slots), "a slot started two runs"
    assert all(b - a == 1_000 for a, b in itertools.pairwise(slots)), "a slot was lost"
    assert schedule["runs"] == len(slots)


async def _at_least(runs: Any, count: int) -> bool:
    return len(await runs()) >= count
