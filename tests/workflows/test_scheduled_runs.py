"""Schedules that start workflow runs, end to end: the running server with its schedule
runner on a fake clock, and real targets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import OwnerAuth
from tests.support.clock import START_MS, FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until
from tests.workflows.test_runs import JSON_HEADERS, post, until_state

S = 1000


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/export", Reply(200, b'{"file": "day-1.csv", "rows": 42}', JSON_HEADERS))
        server.route("/transform", Reply(200, b'{"ok": true}', JSON_HEADERS))
        server.route("/load", Reply(200, b'{"loaded": 42}', JSON_HEADERS))
        yield server


def etl(target: TargetServer, **extra: Any) -> dict[str, Any]:
    """Every night: export, transform, load; the file name passed along."""
    return {
        "name": "nightly-etl",
        "input": {"day": 1},
        "steps": [
            {"id": "export", **post(target, "/export", {"day": "{{ input.day }}"})},
            {
                "id": "transform",
                "dependsOn": ["export"],
                **post(target, "/transform", {"file": "{{ steps.export.response.body.file }}"}),
            },
            {
                "id": "load",
                "dependsOn": ["transform"],
                **post(target, "/load", {"rows": "{{ steps.export.response.body.rows }}"}),
            },
        ],
        **extra,
    }


async def create(
    client: httpx.AsyncClient, owner: OwnerAuth, body: dict[str, Any]
) -> httpx.Response:
    return await client.post("/v1/schedules", json=body, headers=owner.headers)


async def settle(server: Server, calls_in_flight: int = 0) -> None:
    """Wait until the runner and the scheduler have parked with ``calls_in_flight`` calls
    still running (a hanging target holds its call)."""
    for _ in range(5):  # let loops woken by clock.advance() run before looking
        await asyncio.sleep(0)
    runner, scheduler = server.schedules, server.scheduler
    assert runner is not None
    await wait_until(
        lambda: (
            runner.idle.is_set()
            and scheduler.idle.is_set()
            and scheduler.in_flight == calls_in_flight
        ),
        message="the runner and the scheduler to park",
    )


async def runs_of(client: httpx.AsyncClient, owner: OwnerAuth, key: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/schedules/{key}/runs", headers=owner.headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


async def test_each_slot_starts_one_run_of_the_workflow(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    response = await create(
        client, owner, {"name": "nightly", "schedule": "@every 60s", "workflow": etl(target)}
    )
    assert response.status_code == 201, response.text
    schedule = response.json()
    assert (schedule["target"], schedule["nextRunAt"]) == ("workflow", START_MS + 60 * S)
    assert [step["id"] for step in schedule["workflow"]["steps"]] == ["export", "transform", "load"]
    assert "httpRequest" not in schedule
    await settle(server)
    assert target.arrivals == []  # nothing before the first slot

    for slot in (1, 2):
        clock.advance(60)
        await settle(server)
        [latest, *_] = await runs_of(client, owner, "nightly")
        done = await until_state(client, owner, latest["id"], "SUCCESS")
        assert done["scheduleId"] == schedule["id"] and done["dueAt"] == START_MS + slot * 60 * S
    # one run per slot, each step called once per run, the data passed along
    runs = await runs_of(client, owner, "nightly")
    assert [run["dueAt"] for run in runs] == [START_MS + 120 * S, START_MS + 60 * S]
    for path in ("/export", "/transform", "/load"):
        assert len(target.arrivals_at(path)) == 2, path
    assert json.loads(target.arrivals_at("/transform")[0].body) == {"file": "day-1.csv"}
    assert json.loads(target.arrivals_at("/load")[1].body) == {"rows": 42}
    after = (await client.get("/v1/schedules/nightly", headers=owner.headers)).json()
    assert (after["runs"], after["lastRunId"], after["lastTaskId"]) == (2, runs[0]["id"], None)
    listed = (await client.get("/v1/workflows", headers=owner.headers)).json()["runs"]
    assert {run["id"] for run in listed} == {run["id"] for run in runs}


async def test_an_edit_changes_the_next_runs_and_a_skip_schedule_skips_while_a_run_is_pending(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/export", Reply(hang=True))
    body = {
        "name": "skipping",
        "schedule": "@every 60s",
        "overlapPolicy": "skip",
        "workflow": etl(target),
    }
    assert (await create(client, owner, body)).status_code == 201
    clock.advance(60)
    await wait_until(lambda: len(target.arrivals_at("/export")) == 1, message="first export")
    clock.advance(60)  # the first run is still pending: this slot is skipped
    await settle(server, calls_in_flight=1)
    assert len(await runs_of(client, owner, "skipping")) == 1
    [first] = await runs_of(client, owner, "skipping")
    cancelled = await client.post(f"/v1/workflows/{first['id']}/cancel", headers=owner.headers)
    assert cancelled.status_code == 200, cancelled.text
    target.release()

    patch = {"workflow": {"input": {"day": 2}}}
    edited = await client.patch("/v1/schedules/skipping", json=patch, headers=owner.headers)
    assert edited.status_code == 200, edited.text
    assert edited.json()["workflow"]["input"] == {"day": 2}
    target.route("/export", Reply(200, b'{"file": "day-2.csv", "rows": 7}', JSON_HEADERS))
    clock.advance(60)
    await settle(server)
    [second, _] = await runs_of(client, owner, "skipping")
    await until_state(client, owner, second["id"], "SUCCESS")
    assert json.loads(target.arrivals_at("/export")[-1].body) == {"day": 2}


def _tree(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    message: dict[str, Any] = response.json()["message"]
    return message


def _errors_at(tree: dict[str, Any], *path: str) -> list[str]:
    node = tree
    for part in path:
        node = node[part]
    found: list[str] = node["_errors"]
    return found


async def test_a_workflow_is_checked_at_schedule_creation_as_a_run_is(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    def with_workflow(workflow: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"name": "bad", "schedule": "@daily", "workflow": workflow, **extra}

    cycle = etl(target)
    cycle["steps"][0]["dependsOn"] = ["load"]
    tree = _tree(await create(client, owner, with_workflow(cycle)))
    assert "dependency cycle" in _errors_at(tree, "workflow", "steps", "0", "dependsOn")[0]

    unknown = etl(target)
    unknown["steps"][2]["httpRequest"]["data"] = {"x": "{{ steps.nope.output.x }}"}
    tree = _tree(await create(client, owner, with_workflow(unknown)))
    assert "'nope'" in _errors_at(tree, "workflow", "steps", "2", "httpRequest")[0]

    tree = _tree(await create(client, owner, with_workflow({"name": "x", "steps": []})))
    assert _errors_at(tree, "workflow", "steps")

    refused = etl(target)
    refused["steps"][1]["httpRequest"]["url"] = "http://10.9.8.7/transform"
    tree = _tree(await create(client, owner, with_workflow(refused)))
    assert _errors_at(tree, "workflow", "steps", "1", "httpRequest", "url") == [
        "egress denied: 10.9.8.7 is private (RFC 1918)"
    ]

    delayed = etl(target, config={"executionDelay": 1000})
    tree = _tree(await create(client, owner, with_workflow(delayed)))
    assert _errors_at(tree, "workflow", "config", "executionDelay")

    both = with_workflow(etl(target), httpRequest={"url": target.url("/export")})
    assert _errors_at(_tree(await create(client, owner, both))) == [
        "Unrecognized key(s) in object: 'httpRequest'"
    ]

    listed = await client.get("/v1/schedules", headers=owner.headers)
    assert listed.json() == []  # nothing was stored


async def test_a_schedule_cannot_change_between_a_task_and_a_workflow(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    body = {"name": "etl", "schedule": "@daily", "workflow": etl(target)}
    assert (await create(client, owner, body)).status_code == 201
    patch = {"workflow": None, "httpRequest": {"url": target.url("/export"), "method": "POST"}}
    response = await client.patch("/v1/schedules/etl", json=patch, headers=owner.headers)
    assert _errors_at(_tree(response), "workflow")
    stored = (await client.get("/v1/schedules/etl", headers=owner.headers)).json()
    assert stored["workflow"]["name"] == "nightly-etl"  # unchanged
