"""Batch endpoints: many registrations in one transaction with per-item answers, and
pause/resume/revoke/delete of many tasks by ids or by filter."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tasks_server.api.schemas import BatchHttpRequestIn, HttpRequestIn
from tests.conftest import TARGET, OwnerAuth, ServerFactory, client_for, register_owner
from tests.support.clock import START_MS

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


# -- a batch answers each item as a registration of its own would ----------------------

NOW_MS = START_MS  # the fake clock's time, which these tests do not move


def varied_items() -> list[dict[str, Any]]:
    """Valid registrations that exercise every rule checked after validation: each
    configuration (and several items sharing one) with its transport, body and
    destination."""
    get = {"url": TARGET, "method": "GET"}
    post = {"url": TARGET, "method": "POST", "data": {"n": 1, "text": "é"}}
    curl = {**get, "transport": "curl"}
    shared = {"executionDelay": 60_000, "priority": 5}
    both_bodies = {**post, "json": [1, 2]}
    return [
        {"httpRequest": get},
        {"httpRequest": post, "config": {}},
        {"httpRequest": post, "config": shared},
        {"httpRequest": curl, "config": shared},  # the same configuration, another transport
        {"httpRequest": get, "config": shared, "metadata": {"team": "mail"}},
        {"httpRequest": {**get, "url": "http://10.1.2.3/x"}, "config": shared},  # egress
        {"httpRequest": get, "config": {"executeAt": NOW_MS - 1}},
        {"httpRequest": both_bodies, "config": {"executeAt": NOW_MS - 1}},  # executeAt first
        {"httpRequest": both_bodies, "config": shared},
        {"httpRequest": get, "config": {"retry": 3, "retryPolicy": {"maxAttempts": 5}}},
        {"httpRequest": get, "config": {"retryPolicy": {"maxAttempts": 5}}},
        {"httpRequest": curl, "config": {"referrerPolicy": "origin"}},
        {"httpRequest": get, "config": {"referrerPolicy": "origin"}},
        {"httpRequest": get, "config": {"retryAt": NOW_MS + 500}},
        {"httpRequest": get, "config": {"timeoutAt": NOW_MS + 500}},
        {"httpRequest": get, "config": {"timeoutAt": NOW_MS + 5_000, "priority": -3}},
        {"httpRequest": get, "config": {"deduplicationId": "once"}},
        {"httpRequest": post, "config": {"deduplicationId": "once"}},  # the same task again
        {"httpRequest": get, "config": {"flowControl": {"key": "mail", "rate": 5}}},
        {"httpRequest": get, "config": {"flowControl": {"key": "mail", "rate": 7}}},
        {"httpRequest": get, "config": {"priority": 1}, "onSuccess": {"url": TARGET}},
        {"httpRequest": get, "onFailure": {"url": "http://10.1.2.3/cb"}},  # egress, later
        {"httpRequest": get, "config": {"ignoreStatusCode": [404], "retry": 2}},
        {"httpRequest": {**post, "data": "plain text"}, "config": shared},
        {"httpRequest": {**post, "data": [{"name": "f", "value": "v"}]}, "config": shared},
        {"httpRequest": {**post, "data": None, "json": ["a", 1]}, "config": shared},
    ]


async def answers_of_one_by_one(
    client: httpx.AsyncClient, owner: OwnerAuth, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each item registered with POST /v1/queues/register, answered in the batch's shape."""
    answers = []
    for body in items:
        response = await client.post("/v1/queues/register", json=body, headers=owner.headers)
        if response.status_code in (200, 201):
            answer: dict[str, Any] = {"status": response.status_code, "task": response.json()}
            if response.headers.get("X-Tasks-Deduplicated") == "true":
                answer["deduplicated"] = True
        else:
            answer = {"status": response.status_code, **response.json()}
        answers.append(answer)
    return answers


async def comparable(
    client: httpx.AsyncClient, owner: OwnerAuth, answers: list[dict[str, Any]]
) -> list[Any]:
    """The answers without what differs between two registrations of the same body (the
    task ids), each created task with its stored registration."""
    shown = []
    for answer in answers:
        if "task" not in answer:
            shown.append(answer)
            continue
        task_id = answer["task"]["id"]
        config = await client.get(f"/v1/queues/{task_id}/config", headers=owner.headers)
        assert config.status_code == 200
        task = {key: value for key, value in answer["task"].items() if key != "id"}
        shown.append({**answer, "task": task, "stored": config.json()})
    return shown


async def test_each_item_is_answered_as_its_own_registration_would_be(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    items = varied_items()
    alone = await answers_of_one_by_one(client, owner, items)
    response = await client.post(BATCH, json=items, headers=other_owner.headers)
    assert response.status_code == 200, response.text
    together = response.json()
    assert [a["status"] for a in together] == [a["status"] for a in alone]
    assert {a["status"] for a in together} == {200, 201, 400}  # each kind of answer is here
    assert await comparable(client, other_owner, together) == await comparable(client, owner, alone)
    assert together[17]["task"]["id"] == together[16]["task"]["id"]  # deduplicated
    assert "10.1.2.3" in json.dumps(together[5]["message"])  # the egress policy's refusal
    keys = [
        (await client.get("/v1/flow-control/mail", headers=someone.headers)).json()
        for someone in (owner, other_owner)
    ]
    assert keys[0]["rate"] == keys[1]["rate"] == 7  # the last registration set the limits


async def test_items_sharing_a_refused_configuration_are_each_refused(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    past = {"executeAt": NOW_MS - 1}
    items = [item(n, **(past if n % 2 else {})) for n in range(100)]
    response = await client.post(BATCH, json=items, headers=owner.headers)
    results = response.json()
    assert [r["status"] for r in results] == [400 if n % 2 else 201 for n in range(100)]
    for result in results[1::2]:
        assert result["message"]["config"]["executeAt"]["_errors"] == [
            "Execution date must be greater than today"
        ]
    assert len(await listed(client, owner)) == 50


async def test_configurations_equal_in_python_but_not_in_json_are_told_apart(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    """1 == True in Python, but a priority must be a JSON number: the second item is
    refused however the first was answered."""
    items = [item(0, priority=1), item(1, priority=True), item(2, retry=1), item(3, retry=True)]
    response = await client.post(BATCH, json=items, headers=owner.headers)
    results = response.json()
    assert [r["status"] for r in results] == [201, 400, 201, 400]
    assert results[1]["message"]["config"]["priority"]["_errors"]
    assert results[3]["message"]["config"]["retry"]["_errors"]


async def test_one_invalid_configuration_names_its_fields_and_spares_the_rest(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    items = [item(n) for n in range(20)]
    items[7]["config"]["httpVersion"] = "4"
    items[12]["config"] = "fast"
    response = await client.post(BATCH, json=items, headers=owner.headers)
    results = response.json()
    assert {n for n, r in enumerate(results) if r["status"] != 201} == {7, 12}
    assert results[7]["message"]["config"]["httpVersion"]["_errors"]
    assert results[12]["message"]["config"]["_errors"]
    assert len(await listed(client, owner)) == 18


BODIES = [
    "text",
    "",
    [{"name": "a", "value": "b"}],
    [{"name": "a", "value": "b"}] * 65,
    [],
    [{"name": "a"}],
    [1],
    {"n": 1, "deep": [1, {"x": None}]},
    {},
    None,
    0,
    1.5,
    True,
]


@pytest.mark.parametrize("data", BODIES, ids=[json.dumps(body)[:20] for body in BODIES])
def test_a_batch_item_takes_the_bodies_a_registration_takes(data: Any) -> None:
    text = json.dumps({"url": TARGET, "method": "POST", "data": data})
    try:
        expected: dict[str, Any] | None = HttpRequestIn.model_validate_json(text).model_dump()
    except ValidationError:
        expected = None
    try:
        got: dict[str, Any] | None = BatchHttpRequestIn.model_validate_json(text).model_dump()
    except ValidationError:
        got = None
    assert got == expected


async def test_items_with_bad_bodies_are_answered_as_alone(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    items = [{"httpRequest": {"url": TARGET, "method": "POST", "data": body}} for body in BODIES]
    alone = await answers_of_one_by_one(client, owner, items)
    response = await client.post(BATCH, json=items, headers=other_owner.headers)
    together = response.json()
    assert {a["status"] for a in together} == {201, 400}
    assert await comparable(client, other_owner, together) == await comparable(client, owner, alone)
