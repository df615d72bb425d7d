"""Workflow runs end to end: the API, the real engine and real targets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner, register_task
from tests.support.clock import FakeClock
from tests.support.targets import Arrival, Reply, TargetServer
from tests.support.waiting import wait_until

JSON_HEADERS = (("Content-Type", "application/json"),)


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


def post(target: TargetServer, path: str, data: Any = None, **config: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"url": target.url(path), "method": "POST"}
    if data is not None:
        request["data"] = data
    return {"httpRequest": request, **({"config": config} if config else {})}


async def start(
    client: httpx.AsyncClient, owner: OwnerAuth, body: dict[str, Any]
) -> dict[str, Any]:
    response = await client.post("/v1/workflows", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


async def read(client: httpx.AsyncClient, owner: OwnerAuth, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/workflows/{run_id}", headers=owner.headers)
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


async def until_state(
    client: httpx.AsyncClient, owner: OwnerAuth, run_id: str, state: str
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await read(client, owner, run_id))
        return found["state"] == state

    await wait_until(reached, message=f"run {state}")
    return found


async def idle(server: Server) -> None:
    """Wait until the scheduler has parked with nothing in flight or left to record."""
    for _ in range(3):
        await asyncio.sleep(0)
    scheduler = server.scheduler
    await wait_until(
        lambda: scheduler.idle.is_set() and scheduler.in_flight == 0,
        message="the scheduler to park",
    )


def steps_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in run["steps"]}


def failing_then(ok: Reply, failures: int) -> Any:
    seen: list[Arrival] = []

    def handle(arrival: Arrival) -> Reply:
        seen.append(arrival)
        return Reply(503, b"warehouse busy") if len(seen) <= failures else ok

    return handle


async def test_the_order_example_passes_the_tax_total_along(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/tax", Reply(200, b'{"total": 48.5, "currency": "EUR"}', JSON_HEADERS))
    target.route("/store", Reply(201, b'{"stored": true}', JSON_HEADERS))
    target.route("/warehouse", failing_then(Reply(200, b"synced"), failures=2))
    body = {
        "name": "order-shipped",
        "input": {"order": {"id": "A-1", "amount": 40}},
        "steps": [
            {
                "id": "tax",
                **post(
                    target,
                    "/tax",
                    {"orderId": "{{ input.order.id }}", "amount": "{{ input.order.amount }}"},
                ),
                "output": {"total": "{{ response.body.total }}"},
            },
            {
                "id": "store",
                "dependsOn": ["tax"],
                **post(
                    target,
                    "/store",
                    {"orderId": "{{ input.order.id }}", "total": "{{ steps.tax.output.total }}"},
                ),
            },
            {
                "id": "warehouse",
                "dependsOn": ["store"],
                **post(
                    target,
                    "/warehouse",
                    {"total": "{{ steps.tax.output.total }}"},
                    retry=2,
                    retryInterval=1000,
                ),
            },
        ],
    }
    run = await start(client, owner, body)
    assert run["state"] == "RUNNING"
    assert [s["state"] for s in run["steps"]] == ["RUNNING", "WAITING", "WAITING"]
    await wait_until(
        lambda: len(target.arrivals_at("/warehouse")) == 1, message="first warehouse call"
    )
    for count in (2, 3):
        await idle(server)  # the failed attempt is recorded: its retry is planned from then
        clock.advance(1.0 * (count - 1))
        await wait_until(
            lambda c=count: len(target.arrivals_at("/warehouse")) == c, message=f"warehouse {count}"
        )
    done = await until_state(client, owner, run["id"], "SUCCESS")
    assert json.loads(target.arrivals_at("/tax")[0].body) == {"orderId": "A-1", "amount": 40}
    assert json.loads(target.arrivals_at("/store")[0].body) == {"orderId": "A-1", "total": 48.5}
    assert len(target.arrivals_at("/tax")) == len(target.arrivals_at("/store")) == 1
    steps = steps_of(done)
    assert steps["tax"]["output"] == {"total": 48.5}
    assert [steps[s]["state"] for s in ("tax", "store", "warehouse")] == ["SUCCESS"] * 3
    assert steps["warehouse"]["attempts"] == 3
    task = await client.get(f"/v1/queues/{steps['store']['taskId']}", headers=owner.headers)
    assert task.json()["metadata"] == {"workflowRun": run["id"], "workflowStep": "store"}


async def test_fan_out_runs_in_parallel_and_fan_in_waits_for_all(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    for path in ("/a", "/b", "/c", "/d"):
        target.route(path, Reply(200, b"{}", JSON_HEADERS))
    target.route("/slow", Reply(200, b"{}", JSON_HEADERS, delay_s=0.3))
    body = {
        "name": "diamond",
        "steps": [
            {"id": "a", **post(target, "/a")},
            {"id": "b", "dependsOn": ["a"], **post(target, "/slow")},
            {"id": "c", "dependsOn": ["a"], **post(target, "/c")},
            {"id": "d", "dependsOn": ["b", "c"], **post(target, "/d")},
        ],
    }
    run = await start(client, owner, body)
    await until_state(client, owner, run["id"], "SUCCESS")
    at = {a.path: a.arrived_at for a in target.arrivals}
    assert at["/a"] < at["/slow"] and at["/a"] < at["/c"]
    assert at["/c"] < at["/slow"] + 0.25  # c did not wait for the slow b
    assert at["/d"] > max(at["/slow"], at["/c"])  # d waited for both
    assert len(target.arrivals) == 4


async def test_a_failed_step_fails_the_run_and_retry_keeps_what_succeeded(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    target.route("/first", Reply(200, b"{}", JSON_HEADERS))
    target.route("/second", Reply(200, b"{}", JSON_HEADERS))
    target.route("/broken", Reply(500, b"down"))
    target.route("/after", Reply(200, b"{}"))
    body = {
        "name": "retry-me",
        "steps": [
            {"id": "first", **post(target, "/first")},
            {"id": "second", **post(target, "/second")},
            {"id": "broken", "dependsOn": ["first"], **post(target, "/broken")},
            {"id": "after", "dependsOn": ["broken", "second"], **post(target, "/after")},
        ],
    }
    run = await start(client, owner, body)
    failed = await until_state(client, owner, run["id"], "ERROR")
    steps = steps_of(failed)
    assert steps["broken"]["state"] == "ERROR" and steps["after"]["state"] == "WAITING"
    assert "step 'broken' failed" in failed["error"]
    target.route("/broken", Reply(200, b"{}"))
    retried = await client.post(f"/v1/workflows/{run['id']}/retry", headers=owner.headers)
    assert retried.status_code == 200 and retried.json()["state"] == "RUNNING"
    done = await until_state(client, owner, run["id"], "SUCCESS")
    assert done["error"] is None
    counts = {p: len(target.arrivals_at(p)) for p in ("/first", "/second", "/broken", "/after")}
    assert counts == {"/first": 1, "/second": 1, "/broken": 2, "/after": 1}
    again = await client.post(f"/v1/workflows/{run['id']}/retry", headers=owner.headers)
    assert again.status_code == 422


async def test_cancel_mid_run_revokes_the_running_step_and_starts_nothing(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    target.route("/hang", Reply(hang=True))
    target.route("/next", Reply(200))
    body = {
        "name": "cancel-me",
        "steps": [
            {"id": "hang", **post(target, "/hang", timeout=30_000)},
            {"id": "next", "dependsOn": ["hang"], **post(target, "/next")},
        ],
    }
    run = await start(client, owner, body)
    await wait_until(lambda: len(target.arrivals_at("/hang")) == 1, message="the hanging call")
    cancelled = await client.post(f"/v1/workflows/{run['id']}/cancel", headers=owner.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "CANCELLED"
    assert [s["state"] for s in cancelled.json()["steps"]] == ["CANCELLED", "CANCELLED"]
    task = await client.get(f"/v1/queues/{run['steps'][0]['taskId']}", headers=owner.headers)
    assert task.json()["state"] == "REVOKED"
    target.release()
    assert target.arrivals_at("/next") == []
    assert (
        await client.post(f"/v1/workflows/{run['id']}/cancel", headers=owner.headers)
    ).status_code == 422
    deleted = await client.delete(f"/v1/workflows/{run['id']}", headers=owner.headers)
    assert deleted.status_code == 200
    assert (
        await client.get(f"/v1/workflows/{run['id']}", headers=owner.headers)
    ).status_code == 404


async def test_a_false_condition_skips_the_step_and_its_dependants(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    target.route("/check", Reply(200, b'{"ok": false}', JSON_HEADERS))
    for path in ("/notify", "/audit", "/always"):
        target.route(path, Reply(200))
    when = {"value": "{{ steps.check.response.body.ok }}", "equals": True}
    body = {
        "name": "conditional",
        "steps": [
            {"id": "check", **post(target, "/check")},
            {"id": "notify", "dependsOn": ["check"], "when": when, **post(target, "/notify")},
            {"id": "audit", "dependsOn": ["notify"], **post(target, "/audit")},
            {
                "id": "always",
                "dependsOn": ["notify"],
                "runIfSkipped": True,
                **post(target, "/always"),
            },
        ],
    }
    run = await start(client, owner, body)
    done = await until_state(client, owner, run["id"], "SUCCESS")
    assert [s["state"] for s in done["steps"]] == ["SUCCESS", "SKIPPED", "SKIPPED", "SUCCESS"]
    assert [a.path for a in target.arrivals] == ["/check", "/always"]


async def test_a_missing_reference_at_run_time_fails_that_step_clearly(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    target.route("/lookup", Reply(200, b'{"items": []}', JSON_HEADERS))
    target.route("/use", Reply(200))
    body = {
        "name": "missing",
        "steps": [
            {"id": "lookup", **post(target, "/lookup")},
            {
                "id": "use",
                "dependsOn": ["lookup"],
                **post(target, "/use", {"id": "{{ steps.lookup.response.body.items.0.id }}"}),
            },
        ],
    }
    run = await start(client, owner, body)
    failed = await until_state(client, owner, run["id"], "ERROR")
    use = steps_of(failed)["use"]
    assert use["state"] == "ERROR" and use["taskId"] is None
    assert "steps.lookup.response.body.items has no '0'" in use["error"]
    assert target.arrivals_at("/use") == []


@pytest.mark.parametrize(
    ("steps", "field", "message"),
    [
        ([{"id": "a", "dependsOn": ["b"]}, {"id": "b", "dependsOn": ["a"]}], "dependsOn", "cycle"),
        ([{"id": "a", "dependsOn": ["x"]}], "dependsOn", "unknown step 'x'"),
        ([{"id": "a"}, {"id": "a"}], "id", "used twice"),
        ([{"id": "a", "data": "{{ steps.b.output.x }}"}, {"id": "b"}], "httpRequest", "not one of"),
        ([{"id": "a", "data": "{{ input.nope }}"}], "httpRequest", "no 'nope'"),
    ],
)
async def test_definition_errors_are_400_naming_the_step_and_field(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    steps: list[dict[str, Any]],
    field: str,
    message: str,
) -> None:
    body_steps = []
    for step in steps:
        request = {"url": "https://example.com/", "method": "POST"}
        if "data" in step:
            request["data"] = step["data"]
        body_steps.append(
            {"id": step["id"], "dependsOn": step.get("dependsOn", []), "httpRequest": request}
        )
    response = await client.post(
        "/v1/workflows",
        json={"name": "bad", "input": {}, "steps": body_steps},
        headers=owner.headers,
    )
    assert response.status_code == 400, response.text
    text = json.dumps(response.json())
    assert message in text and field in text


async def test_a_step_that_only_uses_the_input_is_validated_at_once(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    body = {
        "name": "bad-url",
        "input": {"host": "not a host"},
        "steps": [
            {"id": "a", "httpRequest": {"url": "https://{{ input.host }}/", "method": "GET"}}
        ],
    }
    response = await client.post("/v1/workflows", json=body, headers=owner.headers)
    assert response.status_code == 400
    assert "steps" in response.text and "url" in response.text.lower()
    listed = await client.get("/v1/workflows", headers=owner.headers)
    assert listed.json() == {"runs": [], "cursor": None}  # nothing was stored


async def test_runs_are_the_owners_own_and_listed_newest_first(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    other_owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/x", Reply(200))
    ids = []
    for _ in range(3):
        ids.append(
            (
                await start(
                    client, owner, {"name": "mine", "steps": [{"id": "x", **post(target, "/x")}]}
                )
            )["id"]
        )
        clock.advance(0.001)
    page = (await client.get("/v1/workflows?limit=2", headers=owner.headers)).json()
    assert [r["id"] for r in page["runs"]] == ids[:0:-1]
    rest = (
        await client.get(f"/v1/workflows?limit=2&cursor={page['cursor']}", headers=owner.headers)
    ).json()
    assert [r["id"] for r in rest["runs"]] == ids[:1] and rest["cursor"] is None
    for method, path in (
        ("GET", ""),
        ("POST", "/retry"),
        ("POST", "/cancel"),
        ("DELETE", ""),
        ("GET", "/result"),
    ):
        response = await client.request(
            method, f"/v1/workflows/{ids[0]}{path}", headers=other_owner.headers
        )
        assert response.status_code == 404, (method, path)
    assert (await client.get("/v1/workflows", headers=other_owner.headers)).json()["runs"] == []


async def test_result_waits_until_the_run_is_final(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    target.route("/slow", Reply(200, b"{}", delay_s=0.2))
    run = await start(
        client, owner, {"name": "wait", "steps": [{"id": "s", **post(target, "/slow")}]}
    )
    quick = await client.get(f"/v1/workflows/{run['id']}/result?wait=0", headers=owner.headers)
    assert quick.status_code == 202 and quick.json()["state"] == "RUNNING"
    done = await client.get(f"/v1/workflows/{run['id']}/result?wait=10", headers=owner.headers)
    assert done.status_code == 200 and done.json()["state"] == "SUCCESS"


async def test_a_delayed_run_is_pending_until_its_time(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/later", Reply(200))
    body = {
        "name": "later",
        "config": {"executionDelay": 60_000},
        "steps": [{"id": "s", **post(target, "/later")}],
    }
    run = await start(client, owner, body)
    assert run["state"] == "PENDING" and run["dueAt"] == clock.now_ms() + 60_000
    clock.advance(59.9)
    assert target.arrivals == []
    clock.advance(0.1)
    done = await until_state(client, owner, run["id"], "SUCCESS")
    assert done["finishedAt"] is not None and len(target.arrivals) == 1


async def test_a_run_past_its_timeout_ends_in_error_and_revokes_its_steps(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/hang", Reply(hang=True))
    target.route("/next", Reply(200))
    body = {
        "name": "too-slow",
        "config": {"timeoutMs": 5_000},
        "steps": [
            {"id": "hang", **post(target, "/hang", timeout=60_000)},
            {"id": "next", "dependsOn": ["hang"], **post(target, "/next")},
        ],
    }
    run = await start(client, owner, body)
    assert run["deadlineAt"] == clock.now_ms() + 5_000
    await wait_until(lambda: len(target.arrivals_at("/hang")) == 1, message="the hanging call")
    clock.advance(4.9)
    assert (await read(client, owner, run["id"]))["state"] == "RUNNING"
    ended: dict[str, Any] = {}

    async def timed_out() -> bool:
        # the planner looks at deadlines at least once a second: move time on in small
        # steps until it has looked after the deadline
        ended.update(await read(client, owner, run["id"]))
        if ended["state"] == "RUNNING" and clock.now_ms() < run["deadlineAt"] + 3_000:
            clock.advance(0.05)
        return ended["state"] == "ERROR"

    await wait_until(timed_out, message="the run to time out")
    failed = ended
    assert failed["finishedAt"] >= run["deadlineAt"]
    assert failed["error"] == "the run timed out"
    assert [s["state"] for s in failed["steps"]] == ["CANCELLED", "CANCELLED"]
    task = await client.get(f"/v1/queues/{run['steps'][0]['taskId']}", headers=owner.headers)
    assert task.json()["state"] == "REVOKED"
    target.release()


async def test_a_run_calls_its_callback_once_with_the_envelope(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    target.route("/ok", Reply(200, b'{"n": 1}', JSON_HEADERS))
    target.route("/broken", Reply(500, b"down"))
    target.route("/done", Reply(200))
    target.route("/failed", Reply(200))
    callbacks = {
        "onSuccess": {"url": target.url("/done"), "headers": {"X-Run": "yes"}},
        "onFailure": {"url": target.url("/failed"), "method": "PUT"},
    }
    good = await start(
        client,
        owner,
        {
            "name": "good",
            "steps": [{"id": "a", **post(target, "/ok"), "output": {"n": "{{ response.body.n }}"}}],
            **callbacks,
        },
    )
    bad = await start(
        client,
        owner,
        {
            "name": "bad",
            "steps": [
                {"id": "a", **post(target, "/ok")},
                {"id": "b", "dependsOn": ["a"], **post(target, "/broken")},
            ],
            **callbacks,
        },
    )
    await until_state(client, owner, good["id"], "SUCCESS")
    await until_state(client, owner, bad["id"], "ERROR")
    await wait_until(
        lambda: len(target.arrivals_at("/done")) == 1 and len(target.arrivals_at("/failed")) == 1
    )
    done = target.arrivals_at("/done")[0]
    assert done.method == "POST" and done.header("X-Run") == "yes"
    envelope = json.loads(done.body)
    assert envelope["type"] == "workflow.run.finished"
    assert envelope["run"]["id"] == good["id"] and envelope["run"]["state"] == "SUCCESS"
    assert envelope["steps"] == [
        {
            "id": "a",
            "state": "SUCCESS",
            "taskId": good["steps"][0]["taskId"],
            "attempts": 1,
            "statusCode": 200,
            "output": {"n": 1},
            "error": None,
        }
    ]
    failed = json.loads(target.arrivals_at("/failed")[0].body)
    assert target.arrivals_at("/failed")[0].method == "PUT"
    assert failed["run"]["state"] == "ERROR"
    assert failed["run"]["error"] == "step 'b' failed: the call answered 500"
    assert [s["state"] for s in failed["steps"]] == ["SUCCESS", "ERROR"]
    listed = (await client.get("/v1/queues", headers=owner.headers)).json()
    assert len(listed) == 5  # 3 steps and 2 callbacks, each an ordinary task


@pytest.mark.parametrize(
    ("callback", "message"),
    [
        ({"url": "https://example.com/", "data": {"x": 1}}, "supplies a callback's body"),
        ({"url": "not a url"}, "url"),
    ],
)
async def test_a_bad_callback_is_refused_at_once(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    callback: dict[str, Any],
    message: str,
) -> None:
    body = {
        "name": "bad-callback",
        "steps": [{"id": "a", "httpRequest": {"url": "https://example.com/", "method": "GET"}}],
        "onFailure": callback,
    }
    response = await client.post("/v1/workflows", json=body, headers=owner.headers)
    assert response.status_code == 400 and message in response.text
    assert "onFailure" in response.text


async def test_a_runs_steps_count_against_the_owners_queue_limit(
    make_server: ServerFactory, target: TargetServer
) -> None:
    target.route("/hang", Reply(hang=True))
    server = await make_server(tasks_in_queue_limit=4)
    async with client_for(server) as client:
        owner = await register_owner(client, "limited")
        chain = {
            "name": "chain",
            "steps": [
                {"id": "a", **post(target, "/hang", timeout=30_000)},
                {"id": "b", "dependsOn": ["a"], **post(target, "/hang")},
                {"id": "c", "dependsOn": ["b"], **post(target, "/hang")},
            ],
        }
        run = await start(client, owner, chain)
        refused = await client.post("/v1/workflows", json=chain, headers=owner.headers)
        assert refused.status_code == 422
        assert refused.json()["message"] == (
            "Tasks in queue has reached its limit of 4 (the owner's tasksInQueueLimit)"
        )
        assert (await register_task(client, owner)).status_code == 201
        assert (await register_task(client, owner)).status_code == 422
        listed = await client.get("/v1/workflows", headers=owner.headers)
        assert [found["id"] for found in listed.json()["runs"]] == [run["id"]]
        cancelled = await client.post(f"/v1/workflows/{run['id']}/cancel", headers=owner.headers)
        assert cancelled.status_code == 200
        assert (
            await client.post("/v1/workflows", json=chain, headers=owner.headers)
        ).status_code == 201
        target.release()
