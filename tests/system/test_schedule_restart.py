"""Whole process: schedules across a SIGKILL and a restart fire no slot twice and handle the
slots missed during the downtime as their misfire policy says."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks_server.schedules.policy import LOOKAHEAD_MS
from tests.support.process import ServerProcess
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until

POLICIES = ("skip", "run_once", "run_all")
DOWN_MS = 5_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def slots(http: httpx.AsyncClient, headers: dict[str, str], name: str) -> list[int]:
    response = await http.get(f"/v1/schedules/{name}/tasks?limit=1000", headers=headers)
    assert response.status_code == 200, response.text
    return sorted(task["estimateExecutionAt"] for task in response.json())


def gaps(fired: list[int]) -> list[tuple[int, int]]:
    """(last slot before, first slot after) of every hole in a run of 1 s slots."""
    return [(a, b) for a, b in itertools.pairwise(fired) if b - a != 1_000]


@pytest.mark.slow  # a real server killed and restarted: ~10 s
async def test_kill_9_fires_no_slot_twice_and_follows_the_misfire_policy(
    tmp_path: Path,
) -> None:
    async with TargetServer() as target:
        target.route("/tick", Reply(200, b"ok"))
        server = ServerProcess(tmp_path).start()
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                owner = (
                    await http.post("/v1/owners/register", json={"name": "cron-restart"})
                ).json()
                headers = {
                    "Authorization": f"Bearer {owner['key']}",
                    "X-Tasks-Owner-Id": owner["id"],
                }
                for policy in POLICIES:
                    body: dict[str, Any] = {
                        "name": policy.replace("_", "-"),
                        "schedule": "* * * * * *",  # every second (seconds field first)
                        "httpRequest": {"url": target.url("/tick"), "method": "GET"},
                        "misfirePolicy": policy,
                        "catchUpLimit": 100,
                    }
                    created = await http.post("/v1/schedules", json=body, headers=headers)
                    assert created.status_code == 201, created.text

                async def fired_before_kill() -> bool:
                    counts = [
                        len(await slots(http, headers, p.replace("_", "-"))) for p in POLICIES
                    ]
                    return min(counts) >= 3

                await wait_until(fired_before_kill, timeout=10, message="three runs each")
            server.kill()
            killed = now_ms()
            await wait_until(lambda: now_ms() >= killed + DOWN_MS, timeout=DOWN_MS / 1000 + 5)
            server.start()
            restarted = now_ms()
            async with httpx.AsyncClient(base_url=server.url) as http:

                async def caught_up() -> bool:
                    for policy in POLICIES:
                        fired = await slots(http, headers, policy.replace("_", "-"))
                        if fired[-1] < restarted + 2_000:
                            return False
                    return True

                await wait_until(caught_up, timeout=10, message="runs after the restart")
                fired = {p: await slots(http, headers, p.replace("_", "-")) for p in POLICIES}
                states = {
                    p: (await http.get(f"/v1/schedules/{p.replace('_', '-')}", headers=headers))
                    for p in POLICIES
                }
        finally:
            server.terminate()

    for policy in POLICIES:
        assert len(set(fired[policy])) == len(fired[policy]), f"{policy}: a slot fired twice"
        assert all(slot % 1_000 == 0 for slot in fired[policy])
        assert states[policy].json()["runs"] == len(fired[policy])
    # run_all: every slot, the missed ones included
    assert gaps(fired["run_all"]) == []
    # run_once and skip: one hole each, from the same first pass after the restart;
    # run_once's hole is one slot shorter (its catch-up run), skip drops that slot too
    [(once_before, once_after)] = gaps(fired["run_once"])
    [(skip_before, skip_after)] = gaps(fired["skip"])
    assert skip_after == once_after + 1_000
    assert skip_after - skip_before >= 3_000  # at least two slots were dropped
    # runs are created up to a lookahead before their slot, so up to 1 s past the kill
    assert once_before <= killed + LOOKAHEAD_MS and once_after < restarted
    assert fired["run_all"][0] <= once_before and fired["run_all"][-1] >= skip_after
