"""Whole process: a workflow run survives kill -9 and never calls a successful step again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

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
