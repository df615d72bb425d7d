"""Queue endpoints through the API: records, listing and every state transition.

The clock is fake and never advanced unless a test says so, so no task runs here.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.conftest import TARGET, OwnerAuth, ServerFactory, client_for, register_task
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

RECORD = {
    "id",
    "state",
    "createdAt",
    "statusCode",
    "estimateEndAt",
    "estimateExecutionAt",
    "response",
    "metadata",
}
SUMMARY = RECORD - {"response", "metadata"}


async def test_register_answers_the_record(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    response = await register_task(
        client, owner, config={"executionDelay": 5000}, metadata={"order": "42"}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == RECORD
    assert body["state"] == "RUNNING" and body["statusCode"] == 0 and body["estimateEndAt"] == 0
    assert body["createdAt"] == clock.now_ms()
    assert body["estimateExecutionAt"] == clock.now_ms() + 5000
    assert body["response"] is None and body["metadata"] == {"order": "42"}
    assert len(body["id"]) == 24


async def test_get_and_lowercase_id(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task = (await register_task(client, owner)).json()
    for task_id in (task["id"], task["id"].lower()):
        response = await client.get(f"/v1/queues/{task_id}", headers=owner.headers)
        assert response.status_code == 200
        progress = {"retryCount": 0, "retriesLeft": 0, "nextAttemptAt": task["estimateExecutionAt"]}
        assert response.json() == {**task, **progress}


async def test_get_unknown_is_404_and_bad_id_is_400(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    missing = await client.get("/v1/queues/" + "A" * 24, headers=owner.headers)
    assert missing.status_code == 404
    bad = await client.get("/v1/queues/short", headers=owner.headers)
    assert bad.status_code == 400
    assert bad.json()["message"]["queueId"]["_errors"] == ["Invalid queue id"]


async def test_list_orders_and_filters(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    ids = []
    for delay in (3000, 1000, 2000):
        ids.append(
            (await register_task(client, owner, config={"executionDelay": delay})).json()["id"]
        )
        clock.advance(0.001)
    await client.patch(f"/v1/queues/{ids[2]}/pause", headers=owner.headers)
    listed = (await client.get("/v1/queues", headers=owner.headers)).json()
    assert [t["id"] for t in listed] == ids and all(set(t) == SUMMARY for t in listed)
    by_due = await client.get(
        "/v1/queues", params={"order": "estimateExecutionAt", "sort": "DESC"}, headers=owner.headers
    )
    assert [t["id"] for t in by_due.json()] == [ids[0], ids[2], ids[1]]
    paused = await client.get("/v1/queues", params={"state": "paused"}, headers=owner.headers)
    assert [t["id"] for t in paused.json()] == [ids[2]]
    page = await client.get(
        "/v1/queues", params={"limit": "1", "offset": "1"}, headers=owner.headers
    )
    assert [t["id"] for t in page.json()] == [ids[1]]


async def test_pause_resume_keeps_remaining_time(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 10_000})).json()
    clock.advance(4)
    pause = await client.patch(f"/v1/queues/{task['id']}/pause", headers=owner.headers)
    assert pause.status_code == 200 and pause.json() == {"status": "Done"}
    paused = (await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)).json()
    assert paused["state"] == "PAUSED" and paused["estimateEndAt"] == clock.now_ms()
    again = await client.patch(f"/v1/queues/{task['id']}/pause", headers=owner.headers)
    assert again.status_code == 422
    clock.advance(100)
    resumed = await client.patch(f"/v1/queues/{task['id']}/resume", headers=owner.headers)
    assert resumed.status_code == 200
    body = resumed.json()
    assert set(body) == RECORD and body["state"] == "RUNNING" and body["estimateEndAt"] == 0
    assert body["estimateExecutionAt"] == clock.now_ms() + 6_000
    twice = await client.patch(f"/v1/queues/{task['id']}/resume", headers=owner.headers)
    assert twice.status_code == 422


async def test_revoke_running_and_paused(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    first = (await register_task(client, owner)).json()
    second = (await register_task(client, owner)).json()
    await client.patch(f"/v1/queues/{second['id']}/pause", headers=owner.headers)
    for task in (first, second):
        response = await client.patch(f"/v1/queues/{task['id']}/revoke", headers=owner.headers)
        assert response.status_code == 200 and response.json() == {"status": "Done"}
        body = (await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)).json()
        assert body["state"] == "REVOKED" and body["estimateEndAt"] == clock.now_ms()
        assert body["statusCode"] == 0 and body["response"] is None
        again = await client.patch(f"/v1/queues/{task['id']}/revoke", headers=owner.headers)
        assert again.status_code == 422
    me = (await client.get(f"/v1/owners/{owner.name}", headers=owner.headers)).json()
    assert me["tasksInQueue"] == 0  # PAUSED → REVOKED frees its slot (the original leaked it)


async def test_delete_in_any_state(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task = (await register_task(client, owner)).json()
    await client.patch(f"/v1/queues/{task['id']}/revoke", headers=owner.headers)
    response = await client.delete(f"/v1/queues/{task['id']}", headers=owner.headers)
    assert response.status_code == 200 and response.json() == {"status": "Done"}
    assert (await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)).status_code == 404
    assert (
        await client.delete(f"/v1/queues/{task['id']}", headers=owner.headers)
    ).status_code == 422


async def test_execute_runs_the_task_now(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 60_000})).json()
    clock.advance(0.5)
    response = await client.post(f"/v1/queues/{task['id']}/execute", headers=owner.headers)
    assert response.status_code == 200 and response.json() == {"status": "Done"}

    async def finished() -> bool:
        body = (await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)).json()
        return bool(body["state"] == "ERROR")

    await wait_until(finished, message="the executed task to run (its target refuses)")
    body = (await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)).json()
    assert body["estimateExecutionAt"] == clock.now_ms() and body["statusCode"] == 500


async def test_execute_needs_a_running_task(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 60_000})).json()
    await client.patch(f"/v1/queues/{task['id']}/pause", headers=owner.headers)
    paused = await client.post(f"/v1/queues/{task['id']}/execute", headers=owner.headers)
    assert paused.status_code == 422
    unknown = await client.post("/v1/queues/" + "B" * 24 + "/execute", headers=owner.headers)
    assert unknown.status_code == 422


async def test_config_shows_effective_defaults(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task = (await register_task(client, owner)).json()
    response = await client.get(f"/v1/queues/{task['id']}/config", headers=owner.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["httpRequest"] == {"url": TARGET, "method": "GET"}
    config = body["config"]
    assert config["executionDelay"] == 1 and config["retry"] == 0
    assert config["retryExponential"] is False and config["timeout"] == 30000
    assert config["httpVersion"] == "1.1" and config["ipVersion"] == 4
    assert config["keepAliveDuration"] == 30 and config["redirectAttempts"] == 8
    assert config["userAgent"].startswith("Tasks-Server/1.0")


async def test_edit_before_the_first_attempt(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    task = (
        await register_task(
            client,
            owner,
            {"url": TARGET, "method": "POST", "headers": {"A": "1"}},
            config={"executionDelay": 5000},
        )
    ).json()
    clock.advance(1)
    response = await client.patch(
        f"/v1/queues/{task['id']}",
        json={"httpRequest": {"headers": {"B": "2"}}, "config": {"executionDelay": 9000}},
        headers=owner.headers,
    )
    assert response.status_code == 200, response.text
    # a new delay counts from the registration, not from the edit
    assert response.json()["estimateExecutionAt"] == task["createdAt"] + 9000
    config = (await client.get(f"/v1/queues/{task['id']}/config", headers=owner.headers)).json()
    assert config["httpRequest"]["headers"] == {"A": "1", "B": "2"}
    assert config["config"]["executionDelay"] == 9000


async def test_bad_edit_changes_nothing(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 5000})).json()
    before = (await client.get(f"/v1/queues/{task['id']}/config", headers=owner.headers)).json()
    for patch in ({"config": {"retry": -1}}, {"nope": 1}, {}, {"httpRequest": {"method": "HEAD"}}):
        response = await client.patch(f"/v1/queues/{task['id']}", json=patch, headers=owner.headers)
        assert response.status_code == 400, patch
    after = (await client.get(f"/v1/queues/{task['id']}/config", headers=owner.headers)).json()
    assert after == before


async def test_edit_of_a_finished_task_is_422(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task = (await register_task(client, owner)).json()
    await client.patch(f"/v1/queues/{task['id']}/revoke", headers=owner.headers)
    response = await client.patch(
        f"/v1/queues/{task['id']}", json={"config": {"retry": 1}}, headers=owner.headers
    )
    assert response.status_code == 422


async def test_queue_limit(make_server: ServerFactory) -> None:
    server = await make_server(tasks_in_queue_limit=2)
    async with client_for(server) as client:
        from tests.conftest import register_owner

        owner = await register_owner(client, "limited")
        for _ in range(2):
            assert (await register_task(client, owner)).status_code == 201
        response = await register_task(client, owner)
        assert response.status_code == 422
        assert response.json()["message"] == (
            "Tasks in queue has reached its limit of 2 (the owner's tasksInQueueLimit)"
        )
        assert len((await client.get("/v1/queues", headers=owner.headers)).json()) == 2


async def test_throttle(make_server: ServerFactory, clock: FakeClock) -> None:
    server = await make_server(max_throttle_request=2, max_throttle_time_window=60_000)
    async with client_for(server) as client:
        first = await client.get("/status")
        assert first.headers["ratelimit-limit"] == "2"
        assert first.headers["ratelimit-policy"] == "2;w=60"
        assert first.headers["ratelimit-remaining"] == "1"
        await client.get("/status")
        blocked = await client.get("/status")
        assert blocked.status_code == 429
        assert blocked.json()["action"] == "Please wait until the server restore your connection"
        assert blocked.headers["ratelimit-remaining"] == "0"
        assert blocked.headers["ratelimit-reset"] == "60"
        clock.advance(60)
        assert (await client.get("/status")).status_code == 200


async def test_pretty_output(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task = (await register_task(client, owner)).json()
    response = await client.get(f"/v1/queues/{task['id']}?pretty", headers=owner.headers)
    assert response.text.startswith('{\n    "id"')


async def test_body_over_the_limit_is_json_413(make_server: ServerFactory) -> None:
    server = await make_server(max_size_body_request=2048)
    async with client_for(server) as client:
        response = await client.post(
            "/v1/owners/register",
            content=b'{"name":"' + b"a" * 4096 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["message"] == "The request is too large"


async def test_registrations_at_once_get_distinct_ids(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    results = await asyncio.gather(*(register_task(client, owner) for _ in range(32 * 8)))
    assert [r.status_code for r in results] == [201] * 256
    assert len({r.json()["id"] for r in results}) == 256


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "-1"])
async def test_list_query_is_validated(
    client: httpx.AsyncClient, owner: OwnerAuth, limit: str
) -> None:
    response = await client.get("/v1/queues", params={"limit": limit}, headers=owner.headers)
    assert response.status_code == 400 and response.json()["message"]["limit"]["_errors"]


async def test_an_edit_that_leaves_timing_alone_keeps_the_due_time(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 5000})).json()
    clock.advance(3.1)
    response = await client.patch(
        f"/v1/queues/{task['id']}", json={"config": {"retry": 2}}, headers=owner.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["estimateExecutionAt"] == task["estimateExecutionAt"]
    view = (await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)).json()
    assert view["nextAttemptAt"] == task["estimateExecutionAt"] and view["retriesLeft"] == 2


async def test_an_edit_of_the_timing_recomputes_from_the_registration_time(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 5000})).json()
    clock.advance(3.1)
    response = await client.patch(
        f"/v1/queues/{task['id']}", json={"config": {"executionDelay": 8000}}, headers=owner.headers
    )
    assert response.json()["estimateExecutionAt"] == task["createdAt"] + 8000


async def test_an_edit_of_a_paused_task_keeps_the_time_left(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    task = (await register_task(client, owner, config={"executionDelay": 5000})).json()
    clock.advance(1)
    await client.patch(f"/v1/queues/{task['id']}/pause", headers=owner.headers)  # 4 s left
    clock.advance(10)
    edited = await client.patch(
        f"/v1/queues/{task['id']}", json={"metadata": {"k": "v"}}, headers=owner.headers
    )
    assert edited.status_code == 200, edited.text
    clock.advance(10)
    resumed = await client.patch(f"/v1/queues/{task['id']}/resume", headers=owner.headers)
    assert resumed.status_code == 200
    view = (await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)).json()
    assert view["nextAttemptAt"] == clock.now_ms() + 4000


async def test_a_refused_transition_says_the_state_and_the_rule(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    task = (await register_task(client, owner)).json()
    resumed = await client.patch(f"/v1/queues/{task['id']}/resume", headers=owner.headers)
    assert resumed.status_code == 422
    assert resumed.json()["message"] == (
        f"Task {task['id']} is RUNNING; only a PAUSED task can be resumed"
    )


async def test_config_hides_secrets_unless_the_owner_asks(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    request = {
        "url": "http://user:url-secret@127.0.0.1:9/hook?plain=1",
        "method": "POST",
        "headers": {"Authorization": "Bearer header-secret", "Accept": "text/plain"},
        "query": {"api_key": "query-secret", "page": "2"},
        "authBasic": {"username": "user", "password": "basic-secret"},
    }
    config = {"proxyAuthBasic": {"username": "p", "password": "proxy-secret"}}
    task = (await register_task(client, owner, http_request=request, config=config)).json()
    path = f"/v1/queues/{task['id']}/config"
    hidden = (await client.get(path, headers=owner.headers)).json()
    text = json.dumps(hidden)
    for secret in ("url-secret", "header-secret", "query-secret", "basic-secret", "proxy-secret"):
        assert secret not in text
    assert hidden["httpRequest"]["authBasic"] == {"username": "user", "password": "***"}
    assert hidden["httpRequest"]["headers"] == {"Authorization": "***", "Accept": "text/plain"}
    assert hidden["httpRequest"]["query"] == {"api_key": "***", "page": "2"}
    assert hidden["httpRequest"]["url"].startswith("http://user:***@127.0.0.1:9/hook")
    assert hidden["config"]["proxyAuthBasic"]["password"] == "***"
    shown = (await client.get(f"{path}?reveal=true", headers=owner.headers)).json()
    assert shown["httpRequest"]["authBasic"]["password"] == "basic-secret"
    assert shown["config"]["proxyAuthBasic"]["password"] == "proxy-secret"
