"""Batch endpoints: many registrations in one transaction with per-item answers, and
pause/resume/revoke/delete of many tasks by ids or by filter."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import TARGET, OwnerAuth, ServerFactory, client_for, register_owner

BATCH = "/v1/queues/register/batch"


def item(n: int, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"httpRequest": {"url": f"{TARGET}/{n}", "method": "POST"}}
    body["config"] = {"executionDelay": 60_000, **config}
    return body


async def listed(client: httpx.AsyncClient, owner: OwnerAuth, **params: Any) -> list[Any]:
    response = await client.get(
        "/v1/queues", params={"limit": 1000, **params}, headers=owner.headers
    )
    assert response.status_code == 200
    result: list[Any] = response.json()
    return result


async def test_a_thousand_with_three_bad_items(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    items: list[Any] = [item(n) for n in range(1000)]
    items[10] = {"httpRequest": {"url": "ftp://x", "method": "GET"}}
    items[500] = item(500, priority=1000)
    items[999] = {"httpRequest": {"url": TARGET, "method": "GET"}, "unknown": 1}
    response = await client.post(BATCH, json=items, headers=owner.headers)
    assert response.status_code == 200, response.text
    results = response.json()
    assert len(results) == 1000
    bad = {n for n, result in enumerate(results) if result["status"] != 201}
    assert bad == {10, 500, 999}
    assert all(results[n]["status"] == 400 for n in bad)
    assert results[10]["message"]["httpRequest"]["url"]["_errors"]
    assert results[500]["message"]["config"]["priority"]["_errors"]
    created = [r["task"]["id"] for r in results if r["status"] == 201]
    assert len(set(created)) == 997
    assert {t["id"] for t in await listed(client, owner)} == set(created)


async def test_items_keep_their_order_and_limit_errors_are_per_item(
    make_server: ServerFactory,
) -> None:
    server = await make_server(tasks_in_queue_limit=3)
    async with client_for(server) as client:
        owner = await register_owner(client, "owner-batch")
        items = [item(n, deduplicationId="same" if n in (1, 2) else None) for n in range(5)]
        for body in items:
            if body["config"]["deduplicationId"] is None:
                del body["config"]["deduplicationId"]
        response = await client.post(BATCH, json=items, headers=owner.headers)
        results = response.json()
        assert [r["status"] for r in results] == [201, 201, 200, 201, 422]
        assert results[2]["deduplicated"] and results[2]["task"]["id"] == results[1]["task"]["id"]
        assert results[4]["message"] == (
            "Tasks in queue has reached its limit of 3 (the owner's tasksInQueueLimit)"
        )


async def test_a_bad_batch_is_400_and_changes_nothing(
    client: httpx.AsyncClient, owner: OwnerAuth, make_server: ServerFactory
) -> None:
    headers = {**owner.headers, "Content-Type": "application/json"}
    for body in ("{}", "[]", "not json", json.dumps([item(n) for n in range(1001)])):
        response = await client.post(BATCH, content=body, headers=headers)
        assert response.status_code == 400, body[:20]
    assert await listed(client, owner) == []
    small = await make_server(max_size_body_batch=1024)
    async with client_for(small) as other:
        someone = await register_owner(other, "owner-small")
        too_big = await other.post(
            BATCH, json=[item(n) for n in range(50)], headers=someone.headers
        )
        assert too_big.status_code == 413


async def test_batch_actions_by_ids_and_by_filter(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    results = await client.post(BATCH, json=[item(n) for n in range(6)], headers=owner.headers)
    ids = [r["task"]["id"] for r in results.json()]
    foreign = (await client.post(BATCH, json=[item(9)], headers=other_owner.headers)).json()
    foreign_id = foreign[0]["task"]["id"]

    paused = await client.post(
        "/v1/queues/batch/pause", json={"ids": [*ids[:3], foreign_id]}, headers=owner.headers
    )
    assert paused.status_code == 200
    body = paused.json()
    assert (body["matched"], body["done"]) == (4, 3)
    assert [(f["id"], f["status"]) for f in body["failed"]] == [(foreign_id, 404)]
    assert {t["id"] for t in await listed(client, owner, state="PAUSED")} == set(ids[:3])

    again = await client.post(
        "/v1/queues/batch/pause", json={"ids": ids[:1]}, headers=owner.headers
    )
    assert again.json()["failed"][0]["status"] == 422  # already paused

    resumed = await client.post(
        "/v1/queues/batch/resume", json={"filter": {"state": "PAUSED"}}, headers=owner.headers
    )
    assert resumed.json() == {"matched": 3, "done": 3, "failed": []}
    revoked = await client.post(
        "/v1/queues/batch/revoke", json={"ids": ids[4:]}, headers=owner.headers
    )
    assert revoked.json()["done"] == 2
    deleted = await client.post(
        "/v1/queues/batch/delete", json={"filter": {"state": "REVOKED"}}, headers=owner.headers
    )
    assert deleted.json()["done"] == 2
    assert {t["id"] for t in await listed(client, owner)} == set(ids[:4])
    foreign_task = await client.get(f"/v1/queues/{foreign_id}", headers=other_owner.headers)
    assert foreign_task.json()["state"] == "RUNNING"


async def test_bad_batch_actions(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    url = "/v1/queues/batch/pause"
    for body in ({}, {"ids": [], "filter": {}}, {"ids": ["short"]}, {"filter": {"state": "X"}}):
        response = await client.post(url, json=body, headers=owner.headers)
        assert response.status_code == 400, body
    unknown = await client.post("/v1/queues/batch/explode", json={"ids": []}, headers=owner.headers)
    assert unknown.status_code == 404


async def test_the_answer_is_json_in_utf8_and_pretty_on_request(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    items = [{**item(1), "metadata": {"name": "café ✓"}}, {"httpRequest": {"url": "ftp://x"}}]
    response = await client.post(BATCH, json=items, headers=owner.headers)
    assert response.headers["content-type"] == "application/json"
    assert "café ✓".encode() in response.content  # UTF-8, not \u escapes
    first, bad = response.json()
    assert first["task"]["metadata"] == {"name": "café ✓"} and first["status"] == 201
    assert bad["status"] == 400
    pretty = await client.post(BATCH, params={"pretty": ""}, json=items, headers=owner.headers)
    assert pretty.text.startswith("[\n    {")
