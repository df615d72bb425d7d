"""Callbacks: after a task's final outcome the server calls its ``onSuccess`` or
``onFailure`` address with a JSON envelope, as an ordinary task of its own (durable,
retried, listed) that has no callbacks itself. Real server, real target, fake clock."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tasks_server.app import Server
from tasks_server.engine.callbacks import CALLBACK_CONFIG
from tests.conftest import OwnerAuth, register_task
from tests.security.test_signing import signing, verify
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/fail", Reply(500, b"it broke", (("X-Reason", "disk full"),)))
        server.route("/ok", Reply(200, b"all good"))
        server.route("/callback", Reply(204, b""))
        yield server


async def settle(server: Server) -> None:
    for _ in range(3):
        await asyncio.sleep(0)
    await wait_until(
        lambda: server.scheduler.idle.is_set() and server.scheduler.in_flight == 0,
        message="the scheduler to park",
    )


async def test_one_failure_callback_after_the_last_retry(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    task = (
        await register_task(
            client,
            owner,
            {"url": target.url("/fail"), "method": "POST", "data": "job"},
            {"executionDelay": 0, "retry": 2, "retryInterval": 1000, "retryExponential": False},
            metadata={"job": "nightly"},
            onFailure={"url": target.url("/callback"), "headers": {"X-Hook": "failure"}},
            onSuccess={"url": target.url("/never")},
        )
    ).json()
    for attempt in (1, 2, 3):
        await wait_until(
            lambda n=attempt: len(target.arrivals_at("/fail")) == n, message=f"attempt {attempt}"
        )
        await settle(server)
        if attempt < 3:
            assert target.arrivals_at("/callback") == []  # nothing before the last attempt
            clock.advance(1)
    await wait_until(lambda: len(target.arrivals_at("/callback")) == 1, message="the callback")
    await settle(server)
    clock.advance(60)
    await settle(server)
    assert len(target.arrivals_at("/callback")) == 1 and target.arrivals_at("/never") == []

    (call,) = target.arrivals_at("/callback")
    assert call.method == "POST" and call.header("X-Hook") == "failure"
    assert call.header("Content-Type") == "application/json"
    envelope: dict[str, Any] = json.loads(call.body)
    third = target.arrivals_at("/fail")[2]
    assert envelope["type"] == "task.failed" and envelope["taskId"] == task["id"]
    assert envelope["state"] == "ERROR" and envelope["metadata"] == {"job": "nightly"}
    assert envelope["attempts"] == 3 and envelope["retries"] == 2
    assert envelope["statusCode"] == 500 and envelope["error"] is None
    assert base64.b64decode(envelope["response"]["body"]) == b"it broke"
    assert ["X-Reason", "disk full"] in envelope["response"]["headers"]
    stored = (await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)).json()
    assert envelope["timings"]["finishedAt"] == stored["estimateEndAt"]
    assert envelope["timings"]["startedAt"] <= envelope["timings"]["finishedAt"]
    assert envelope["timings"]["durationMs"] > 0
    assert third.header("X-Tasks-Attempt") == "3"
    # signed like every call, and verified as a target would (standardwebhooks)
    secret = (await signing(client, owner))["secret"]
    assert verify(secret, call) == envelope

    # the callback is a task of its own, listed and marked, and has no callbacks
    callback_id = call.header("X-Tasks-Queue-Id")
    listed = (await client.get(f"/v1/queues/{callback_id}", headers=owner.headers)).json()
    assert listed["state"] == "SUCCESS" and listed["statusCode"] == 204
    assert listed["metadata"] == {"callback": "onFailure", "callbackFor": task["id"]}
    config = (await client.get(f"/v1/queues/{callback_id}/config", headers=owner.headers)).json()
    assert "onSuccess" not in config and "onFailure" not in config
    assert config["config"]["retry"] == CALLBACK_CONFIG.retry


async def test_success_callback(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    target: TargetServer,
) -> None:
    registered = await client.post(
        "/v1/queues/register?wait=30",
        json={
            "httpRequest": {"url": target.url("/ok"), "method": "GET"},
            "config": {"executionDelay": 0},
            "onSuccess": {"url": target.url("/callback"), "method": "PUT"},
            "onFailure": {"url": target.url("/never")},
        },
        headers=owner.headers,
    )
    assert registered.json()["state"] == "SUCCESS", registered.text
    await wait_until(lambda: len(target.arrivals_at("/callback")) == 1, message="the callback")
    (call,) = target.arrivals_at("/callback")
    envelope = json.loads(call.body)
    assert call.method == "PUT" and envelope["type"] == "task.succeeded"
    assert base64.b64decode(envelope["response"]["body"]) == b"all good"
    config = (
        await client.get(f"/v1/queues/{registered.json()['id']}/config", headers=owner.headers)
    ).json()
    assert config["onSuccess"] == {"url": target.url("/callback"), "method": "PUT"}


async def test_a_failing_callback_is_retried_and_never_recurses(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    registered = await client.post(
        "/v1/queues/register?wait=30",
        json={
            "httpRequest": {"url": target.url("/fail"), "method": "GET"},
            "config": {"executionDelay": 0},
            "onFailure": {"url": target.url("/fail")},
        },
        headers=owner.headers,
    )
    assert registered.json()["state"] == "ERROR"
    await wait_until(lambda: len(target.arrivals_at("/fail")) == 2, message="the callback")
    for _ in range(CALLBACK_CONFIG.retry):
        await settle(server)
        clock.advance(CALLBACK_CONFIG.retry_interval_ms * CALLBACK_CONFIG.retry / 1000)
    await wait_until(
        lambda: len(target.arrivals_at("/fail")) == 2 + CALLBACK_CONFIG.retry,
        message="the callback's retries",
    )
    await settle(server)
    clock.advance(600)
    await settle(server)
    assert len(target.arrivals_at("/fail")) == 2 + CALLBACK_CONFIG.retry
    tasks = (await client.get("/v1/queues", headers=owner.headers)).json()
    assert len(tasks) == 2 and {t["state"] for t in tasks} == {"ERROR"}


async def test_schedules_give_their_callbacks_to_every_task(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    created = await client.post(
        "/v1/schedules",
        json={
            "name": "heartbeat",
            "schedule": "@every 10s",
            "httpRequest": {"url": target.url("/ok"), "method": "GET"},
            "onSuccess": {"url": target.url("/callback")},
        },
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["onSuccess"] == {"url": target.url("/callback"), "method": "POST"}
    for run in (1, 2):
        clock.advance(10)
        await wait_until(
            lambda n=run: len(target.arrivals_at("/callback")) == n, message=f"callback {run}"
        )
    bodies = [json.loads(a.body) for a in target.arrivals_at("/callback")]
    assert len({b["taskId"] for b in bodies}) == 2


@pytest.mark.parametrize(
    "callback",
    [
        {"url": "ftp://127.0.0.1/x"},
        {"url": "http://127.0.0.1:9/x", "data": "mine"},
        {"url": "http://127.0.0.1:9/x", "method": "FETCH"},
        {"method": "POST"},
    ],
)
async def test_bad_callbacks_are_refused(
    client: httpx.AsyncClient, owner: OwnerAuth, callback: dict[str, Any]
) -> None:
    for name in ("onSuccess", "onFailure"):
        response = await register_task(client, owner, **{name: callback})
        assert response.status_code == 400, response.text
        assert name in response.json()["message"]
    assert (await client.get("/v1/queues", headers=owner.headers)).json() == []
