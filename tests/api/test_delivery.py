"""Delivery options through the API: retry policy, retry statuses, priority and
deduplication (the ``Idempotency-Key`` header and ``config.deduplicationId``)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import (
    TARGET,
    OwnerAuth,
    ServerFactory,
    client_for,
    register_owner,
    register_task,
)
from tests.support.clock import FakeClock

POLICY = {
    "maxAttempts": 5,
    "maxRetryDurationMs": 60_000,
    "minBackoffMs": 10_000,
    "maxBackoffMs": 300_000,
    "maxDoublings": 3,
    "jitter": "equal",
}


async def stored_config(client: httpx.AsyncClient, owner: OwnerAuth, task_id: str) -> Any:
    response = await client.get(f"/v1/queues/{task_id}/config", headers=owner.headers)
    assert response.status_code == 200
    return response.json()["config"]


async def test_retry_policy_and_statuses_are_stored(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    config = {"retryPolicy": POLICY, "retryOn": [404], "noRetryOn": [503], "priority": 7}
    response = await register_task(client, owner, config=config)
    assert response.status_code == 201, response.text
    stored = await stored_config(client, owner, response.json()["id"])
    assert stored["retryPolicy"] == POLICY
    assert (stored["retryOn"], stored["noRetryOn"], stored["priority"]) == ([404], [503], 7)
    assert not {"retry", "retryInterval", "retryExponential", "retryAt"} & set(stored)


async def test_retry_policy_defaults_are_cloud_tasks(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    response = await register_task(client, owner, config={"retryPolicy": {}})
    stored = await stored_config(client, owner, response.json()["id"])
    assert stored["retryPolicy"] == {
        "maxAttempts": 100,
        "maxRetryDurationMs": 0,
        "minBackoffMs": 100,
        "maxBackoffMs": 3_600_000,
        "maxDoublings": 16,
        "jitter": "none",
    }


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"retryPolicy": {}, "retry": 3}, ("config", "retryPolicy")),
        ({"retryPolicy": {}, "retryInterval": 1000}, ("config", "retryPolicy")),
        ({"retryPolicy": {}, "retryExponential": False}, ("config", "retryPolicy")),
        ({"retryPolicy": {"maxAttempts": 0}}, ("config", "retryPolicy", "maxAttempts")),
        ({"retryPolicy": {"maxAttempts": -2}}, ("config", "retryPolicy", "maxAttempts")),
        ({"retryPolicy": {"jitter": "some"}}, ("config", "retryPolicy", "jitter")),
        ({"retryPolicy": {"unknown": 1}}, ("config", "retryPolicy")),
        (
            {"retryPolicy": {"minBackoffMs": 5000, "maxBackoffMs": 1000}},
            ("config", "retryPolicy", "maxBackoffMs"),
        ),
        ({"retryOn": [200]}, ("config", "retryOn", "0")),
        ({"noRetryOn": ["500"]}, ("config", "noRetryOn", "0")),
        ({"priority": 101}, ("config", "priority")),
        ({"priority": -101}, ("config", "priority")),
        ({"priority": 1.5}, ("config", "priority")),
        ({"deduplicationId": ""}, ("config", "deduplicationId")),
        ({"deduplicationId": "x" * 129}, ("config", "deduplicationId")),
    ],
)
async def test_bad_delivery_options_are_400_and_change_nothing(
    client: httpx.AsyncClient, owner: OwnerAuth, config: dict[str, Any], path: tuple[str, ...]
) -> None:
    response = await register_task(client, owner, config=config)
    assert response.status_code == 400, response.text
    node = response.json()["message"]
    for part in path:
        node = node[part]
    assert node["_errors"], response.text
    assert (await client.get("/v1/queues", headers=owner.headers)).json() == []


async def test_idempotency_key_returns_the_existing_task(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    body = {"httpRequest": {"url": TARGET, "method": "GET"}}
    headers = {**owner.headers, "Idempotency-Key": "order-42"}
    first = await client.post("/v1/queues/register", json=body, headers=headers)
    assert first.status_code == 201 and "X-Tasks-Deduplicated" not in first.headers
    again = await client.post("/v1/queues/register", json=body, headers=headers)
    assert again.status_code == 200 and again.headers["X-Tasks-Deduplicated"] == "true"
    assert again.json() == first.json()
    by_config = await register_task(client, owner, config={"deduplicationId": "order-42"})
    assert by_config.status_code == 200 and by_config.json()["id"] == first.json()["id"]
    other = await register_task(client, owner, config={"deduplicationId": "order-43"})
    assert other.status_code == 201
    listed = (await client.get("/v1/queues", headers=owner.headers)).json()
    assert len(listed) == 2


async def test_header_and_config_must_agree(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    body = {"httpRequest": {"url": TARGET, "method": "GET"}, "config": {"deduplicationId": "a"}}
    headers = {**owner.headers, "Idempotency-Key": "b"}
    response = await client.post("/v1/queues/register", json=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["message"]["config"]["deduplicationId"]["_errors"]


async def test_dedup_window_is_a_setting(make_server: ServerFactory, clock: FakeClock) -> None:
    server = await make_server(dedup_window_s=10)
    async with client_for(server) as client:
        owner = await register_owner(client, "owner-dedup")
        config = {"deduplicationId": "k"}
        first = (await register_task(client, owner, config=config)).json()["id"]
        clock.advance(9.999)
        assert (await register_task(client, owner, config=config)).json()["id"] == first
        clock.advance(0.001)
        later = await register_task(client, owner, config=config)
        assert later.status_code == 201 and later.json()["id"] != first


async def test_fifty_concurrent_registrations_create_one_task(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    body = {"httpRequest": {"url": TARGET, "method": "POST", "data": "x"}}
    headers = {**owner.headers, "Idempotency-Key": "one-key"}
    responses = await asyncio.gather(
        *(client.post("/v1/queues/register", json=body, headers=headers) for _ in range(50))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    listed = (await client.get("/v1/queues", headers=owner.headers)).json()
    assert len(listed) == 1
