"""The dead-letter queue against the running server: tasks that end in ERROR at a real
target are listed with filters and a cursor, replayed (one, edited, or many by filter,
each call arriving once) and deleted."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

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
        server.route("/fail", Reply(500, b"broken"))
        server.route("/busy", Reply(503, b"busy"))
        server.route("/ok", Reply(200, b"fine"))
        yield server


async def fail_now(
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    url: str,
    metadata: dict[str, str] | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Register a task and wait (long poll) until it has failed for good."""
    body: dict[str, Any] = {
        "httpRequest": {"url": url, "method": "POST", "data": "payload"},
        "config": {"executionDelay": 0, **config},
    }
    if metadata:
        body["metadata"] = metadata
    response = await client.post("/v1/queues/register?wait=30", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    assert task["state"] == "ERROR"
    return task


async def dlq(client: httpx.AsyncClient, owner: OwnerAuth, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/dlq", params=params, headers=owner.headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_failed_tasks_are_listed_newest_first_with_filters(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    first = await fail_now(client, owner, target.url("/fail"), {"team": "billing"})
    clock.advance(60)
    second = await fail_now(client, owner, target.url("/busy"), {"team": "search"})
    clock.advance(60)
    third = await fail_now(client, owner, target.url("/fail"))
    ok = (
        await client.post(
            "/v1/queues/register?wait=30",
            json={
                "httpRequest": {"url": target.url("/ok"), "method": "GET"},
                "config": {"executionDelay": 0},
            },
            headers=owner.headers,
        )
    ).json()
    assert ok["state"] == "SUCCESS"

    page = await dlq(client, owner)
    assert [item["id"] for item in page["items"]] == [third["id"], second["id"], first["id"]]
    assert page["next"] is None
    item = page["items"][2]
    assert item["statusCode"] == 500 and item["attempts"] == 1 and item["cycle"] == 1
    assert item["metadata"] == {"team": "billing"} and item["scheduleId"] is None
    assert item["failedAt"] == first["estimateEndAt"]

    by_status = await dlq(client, owner, statusCode=503)
    assert [i["id"] for i in by_status["items"]] == [second["id"]]
    by_label = await dlq(client, owner, label="team=billing")
    assert [i["id"] for i in by_label["items"]] == [first["id"]]
    by_key = await dlq(client, owner, label="team")
    assert {i["id"] for i in by_key["items"]} == {first["id"], second["id"]}
    since = await dlq(client, owner, **{"from": second["estimateEndAt"]})
    assert [i["id"] for i in since["items"]] == [third["id"], second["id"]]
    before = await dlq(client, owner, to=second["estimateEndAt"])
    assert [i["id"] for i in before["items"]] == [first["id"]]


async def test_cursor_pages_cover_everything_once(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    ids = {(await fail_now(client, owner, target.url("/fail")))["id"] for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await dlq(client, owner, **params)
        seen += [item["id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


async def test_schedule_filter(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    created = await client.post(
        "/v1/schedules",
        json={
            "name": "nightly",
            "schedule": "@every 10s",
            "httpRequest": {"url": target.url("/fail"), "method": "GET"},
        },
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    loose = await fail_now(client, owner, target.url("/fail"))
    clock.advance(10)

    async def scheduled_failed() -> bool:
        return len((await dlq(client, owner))["items"]) == 2

    await wait_until(scheduled_failed, message="the scheduled task to fail")
    page = await dlq(client, owner, schedule="nightly")
    assert len(page["items"]) == 1
    assert page["items"][0]["scheduleId"] == created.json()["id"]
    assert page["items"][0]["id"] != loose["id"]
    missing = await client.get("/v1/dlq", params={"schedule": "nope"}, headers=owner.headers)
    assert missing.status_code == 400


async def test_replay_one_runs_a_new_cycle_in_the_same_history(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    registered = await register_task(
        client,
        owner,
        {"url": target.url("/fail"), "method": "POST", "data": "payload"},
        {"executionDelay": 0, "retry": 1, "retryInterval": 1000},
    )
    task = registered.json()
    await wait_until(lambda: len(target.arrivals) == 1, message="the first attempt")
    await wait_until(lambda: server.scheduler.stats.retried == 1, message="the retry plan")
    clock.advance(1)
    failed = await client.get(f"/v1/queues/{task['id']}/result?wait=30", headers=owner.headers)
    assert failed.json()["state"] == "ERROR"
    assert len(target.arrivals_at("/fail")) == 2
    target.route("/fail", Reply(200, b"recovered"))
    response = await client.post(f"/v1/dlq/{task['id']}/replay", headers=owner.headers)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "RUNNING"
    result = await client.get(f"/v1/queues/{task['id']}/result?wait=30", headers=owner.headers)
    assert result.json()["state"] == "SUCCESS"
    assert base64.b64decode(result.json()["response"]) == b"recovered"
    arrivals = target.arrivals_at("/fail")
    assert len(arrivals) == 3
    assert arrivals[2].header("X-Tasks-Attempt") == "3"
    assert arrivals[2].header("X-Tasks-Retry-Count") is None  # retries count from zero
    assert arrivals[2].body == b"payload"
    history = (await client.get(f"/v1/queues/{task['id']}/attempts", headers=owner.headers)).json()
    assert [(a["attempt"], a["cycle"], a["statusCode"]) for a in history] == [
        (1, 1, 500),
        (2, 1, 500),
        (3, 2, 200),
    ]
    assert (await dlq(client, owner))["items"] == []
    again = await client.post(f"/v1/dlq/{task['id']}/replay", headers=owner.headers)
    assert again.status_code == 422  # not in ERROR any more


async def test_replay_with_an_edited_request(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    task = await fail_now(client, owner, target.url("/fail"), executionDelay=0)
    response = await client.post(
        f"/v1/dlq/{task['id']}/replay",
        json={"httpRequest": {"url": target.url("/ok"), "headers": {"X-Fixed": "yes"}}},
        headers=owner.headers,
    )
    assert response.status_code == 200, response.text
    result = await client.get(f"/v1/queues/{task['id']}/result?wait=30", headers=owner.headers)
    assert result.json()["state"] == "SUCCESS"
    (arrival,) = target.arrivals_at("/ok")
    assert arrival.header("X-Fixed") == "yes" and arrival.body == b"payload"
    config = (await client.get(f"/v1/queues/{task['id']}/config", headers=owner.headers)).json()
    assert config["httpRequest"]["url"] == target.url("/ok")


async def test_a_bad_edit_is_refused_and_changes_nothing(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    task = await fail_now(client, owner, target.url("/fail"))
    response = await client.post(
        f"/v1/dlq/{task['id']}/replay",
        json={"httpRequest": {"method": "FETCH"}},
        headers=owner.headers,
    )
    assert response.status_code == 400
    assert [i["id"] for i in (await dlq(client, owner))["items"]] == [task["id"]]


async def test_replay_respects_the_owner_task_limit(
    make_server: ServerFactory, target: TargetServer
) -> None:
    server = await make_server(tasks_in_queue_limit=1)
    async with client_for(server) as client:
        owner = await register_owner(client, "limited")
        task = await fail_now(client, owner, target.url("/fail"))
        blocker = await register_task(client, owner, config={"executionDelay": 600_000})
        assert blocker.status_code == 201
        response = await client.post(f"/v1/dlq/{task['id']}/replay", headers=owner.headers)
        assert response.status_code == 422
        many = await client.post("/v1/dlq/replay", headers=owner.headers)
        assert many.json()["replayed"] == 0
        assert len((await dlq(client, owner))["items"]) == 1


async def test_replay_many_by_filter_each_call_arrives_once(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    bodies = [
        {
            "httpRequest": {"url": target.url("/fail"), "method": "POST", "data": str(n)},
            "config": {"executionDelay": 0},
            "metadata": {"batch": "nightly"},
        }
        for n in range(500)
    ]
    for body in bodies:
        assert (
            await client.post("/v1/queues/register", json=body, headers=owner.headers)
        ).status_code == 201
    other = await fail_now(client, owner, target.url("/fail"), {"batch": "other"})
    await wait_until(
        lambda: server.scheduler.stats.failed == 501, timeout=30, message="500 failures"
    )
    target.arrivals.clear()
    target.route("/fail", Reply(200, b"fine now"))

    response = await client.post(
        "/v1/dlq/replay",
        params={"label": "batch=nightly", "limit": 1000, "rate": 250},
        headers=owner.headers,
    )
    assert response.status_code == 200, response.text
    replayed = response.json()
    assert replayed["replayed"] == 500 and replayed["more"] is False
    dues = sorted(t["estimateExecutionAt"] for t in replayed["tasks"])
    assert dues[0] == clock.now_ms() and dues[-1] == clock.now_ms() + 499 * 4  # 250/s
    for _ in range(3):
        clock.advance(1)
        await asyncio.sleep(0)
    await wait_until(lambda: server.scheduler.stats.succeeded == 500, timeout=30, message="replays")
    arrivals = Counter(a.header("X-Tasks-Queue-Id") for a in target.arrivals)
    assert len(arrivals) == 500 and set(arrivals.values()) == {1}
    assert other["id"] not in arrivals
    assert [i["id"] for i in (await dlq(client, owner))["items"]] == [other["id"]]


async def test_delete_one_and_many(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    one = await fail_now(client, owner, target.url("/fail"))
    busy = [(await fail_now(client, owner, target.url("/busy")))["id"] for _ in range(3)]
    keep = await fail_now(client, owner, target.url("/fail"))
    assert (await client.delete(f"/v1/dlq/{one['id']}", headers=owner.headers)).status_code == 200
    assert (await client.delete(f"/v1/dlq/{one['id']}", headers=owner.headers)).status_code == 404
    everything = await client.delete("/v1/dlq", headers=owner.headers)
    assert everything.status_code == 400  # a filter is required
    deleted = await client.delete("/v1/dlq", params={"statusCode": 503}, headers=owner.headers)
    assert deleted.json() == {"deleted": 3, "more": False}
    for task_id in busy:
        gone = await client.get(f"/v1/queues/{task_id}", headers=owner.headers)
        assert gone.status_code == 404
    assert [i["id"] for i in (await dlq(client, owner))["items"]] == [keep["id"]]
    pending = (await register_task(client, owner, config={"executionDelay": 600_000})).json()
    refused = await client.delete(f"/v1/dlq/{pending['id']}", headers=owner.headers)
    assert refused.status_code == 404  # not a dead letter
    assert (
        await client.get(f"/v1/queues/{pending['id']}", headers=owner.headers)
    ).status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"statusCode": "abc"},
        {"statusCode": "1000"},
        {"limit": "0"},
        {"cursor": "not-a-cursor"},
        {"label": ""},
        {"from": "yesterday"},
        {"unknown": "1"},
        {"rate": "0"},
    ],
)
async def test_bad_queries_are_refused(
    client: httpx.AsyncClient, owner: OwnerAuth, params: dict[str, str]
) -> None:
    for method, path in (("GET", "/v1/dlq"), ("POST", "/v1/dlq/replay"), ("DELETE", "/v1/dlq")):
        response = await client.request(method, path, params=params, headers=owner.headers)
        assert response.status_code == 400, (method, params, response.text)
    listed = await client.get("/v1/dlq", params={"rate": 5}, headers=owner.headers)
    assert listed.status_code == 400
    deleted = await client.delete("/v1/dlq", params={"from": 0, "rate": 5}, headers=owner.headers)
    assert deleted.status_code == 400


async def test_another_owners_dead_letters_look_missing(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    other_owner: OwnerAuth,
    target: TargetServer,
) -> None:
    task = await fail_now(client, owner, target.url("/fail"))
    missing = "Z" * 24
    for method, suffix in (("POST", "/replay"), ("DELETE", "")):
        foreign = await client.request(
            method, f"/v1/dlq/{task['id']}{suffix}", headers=other_owner.headers
        )
        absent = await client.request(
            method, f"/v1/dlq/{missing}{suffix}", headers=other_owner.headers
        )
        assert foreign.status_code == absent.status_code == 404
        assert foreign.json() == absent.json()
    assert (await dlq(client, other_owner))["items"] == []
    bulk = await client.post("/v1/dlq/replay", headers=other_owner.headers)
    assert bulk.json()["replayed"] == 0
    deleted = await client.delete("/v1/dlq", params={"from": 0}, headers=other_owner.headers)
    assert deleted.json()["deleted"] == 0
    assert [i["id"] for i in (await dlq(client, owner))["items"]] == [task["id"]]
