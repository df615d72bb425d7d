"""Step tasks are delivered like registered tasks: flow-control keys hold them back, and
the egress policy refuses their destinations, at run creation for literal addresses and
when the step is created for rendered ones. The running server, a fake clock and real
targets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until
from tests.workflows.test_runs import JSON_HEADERS, post, start, until_state


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


async def settled(server: Server) -> None:
    """The loop has parked with nothing in flight (outcomes recorded)."""
    for _ in range(5):
        await asyncio.sleep(0)
    await wait_until(
        lambda: server.scheduler.idle.is_set() and server.scheduler.in_flight == 0,
        message="the scheduler to park",
    )


async def test_a_flow_control_key_holds_back_fanned_out_steps_like_tasks(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/root", Reply(200, b"{}", JSON_HEADERS))
    target.route("/sync", Reply(200, b"{}", JSON_HEADERS))
    flow = {"key": "warehouse", "rate": 2, "period": "1s"}
    fanned = [
        {"id": f"sync-{n}", "dependsOn": ["root"], **post(target, "/sync", flowControl=flow)}
        for n in range(6)
    ]
    run = await start(
        client,
        owner,
        {"name": "fan-out", "steps": [{"id": "root", **post(target, "/root")}, *fanned]},
    )
    await wait_until(lambda: len(target.arrivals_at("/root")) == 1, message="the root step")

    def synced() -> int:
        return len(target.arrivals_at("/sync"))

    # the burst, then each second, equals the key's rate: wait for it (releasing the
    # steps takes the root's outcome commit), then nothing more until the clock moves
    for expected in (2, 4, 6):
        await wait_until(lambda n=expected: synced() >= n, message=f"{expected} syncs")
        await settled(server)
        assert synced() == expected
        clock.advance(1)
    await settled(server)
    assert synced() == 6
    await until_state(client, owner, run["id"], "SUCCESS")
    # the step set the key's limits, as a registration naming it does
    response = await client.get("/v1/flow-control/warehouse", headers=owner.headers)
    assert response.status_code == 200, response.text
    assert response.json()["rate"] == 2


async def test_a_step_with_a_literal_refused_address_is_refused_at_creation(
    client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    body = {
        "name": "refused",
        "steps": [
            {"id": "a", **post(target, "/a")},
            {
                "id": "b",
                "dependsOn": ["a"],
                "httpRequest": {
                    "url": "http://169.254.169.254/latest/meta-data",
                    "method": "POST",
                    "data": {"id": "{{ steps.a.response.body.id }}"},
                },
            },
        ],
    }
    response = await client.post("/v1/workflows", json=body, headers=owner.headers)
    assert response.status_code == 400, response.text
    tree = response.json()["message"]
    assert tree["steps"]["1"]["httpRequest"]["url"]["_errors"] == [
        "egress denied: 169.254.169.254 is the cloud metadata address"
    ]
    listed = await client.get("/v1/workflows", headers=owner.headers)
    assert listed.json()["runs"] == []  # nothing was stored


@pytest.mark.parametrize("field", ["onSuccess", "onFailure"])
async def test_a_callback_aimed_at_a_refused_address_is_refused_at_creation(
    client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer, field: str
) -> None:
    body = {
        "name": "refused-callback",
        "steps": [{"id": "a", **post(target, "/a")}],
        field: {"url": "http://10.0.0.7/hook"},
    }
    response = await client.post("/v1/workflows", json=body, headers=owner.headers)
    assert response.status_code == 400, response.text
    tree = response.json()["message"]
    assert tree[field]["url"]["_errors"] == ["egress denied: 10.0.0.7 is private (RFC 1918)"]


async def test_a_rendered_refused_address_fails_the_step_with_the_reason(
    client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    target.route("/lookup", Reply(200, b'{"next": "http://10.1.2.3/internal"}', JSON_HEADERS))
    body = {
        "name": "rendered",
        "steps": [
            {"id": "lookup", **post(target, "/lookup")},
            {
                "id": "follow",
                "dependsOn": ["lookup"],
                "httpRequest": {"url": "{{ steps.lookup.response.body.next }}", "method": "POST"},
            },
        ],
    }
    run = await start(client, owner, body)
    done = await until_state(client, owner, run["id"], "ERROR")
    follow = {step["id"]: step for step in done["steps"]}["follow"]
    assert follow["state"] == "ERROR" and follow["taskId"] is None
    assert follow["error"] == "httpRequest.url: egress denied: 10.1.2.3 is private (RFC 1918)"
    assert done["error"] == f"step 'follow' failed: {follow['error']}"


async def test_a_step_checked_at_creation_is_checked_again_if_the_owners_domains_changed(
    make_server: ServerFactory, clock: FakeClock, target: TargetServer
) -> None:
    """A step that uses only the input is built and checked when its run is created and
    kept for when it starts; the owner's validated domains narrowed meanwhile refuse it
    then, as they would a step built at that moment."""
    admin_key = "admin-key-0123456789"
    server = await make_server(
        admin_key=admin_key, egress_allow="127.0.0.1/32, localhost", owner_registration="open"
    )
    target.route("/first", Reply(200, b"{}", JSON_HEADERS))
    target.route("/second", Reply(200, b"{}", JSON_HEADERS))
    async with client_for(server) as client:
        owner = await register_owner(client, "narrowed")
        second = {"url": target.url("/second", "localhost"), "method": "POST"}
        body = {
            "name": "narrowed",
            "config": {"executeAt": clock.now_ms() + 1_000},
            "steps": [
                {"id": "first", **post(target, "/first")},
                {"id": "second", "dependsOn": ["first"], "httpRequest": second},
            ],
        }
        run = await start(client, owner, body)
        domains = await client.put(
            f"/v1/admin/owners/{owner.id}/domains",
            json={"domains": ["127.0.0.1"]},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        assert domains.status_code == 200, domains.text
        clock.advance(2)
        done = await until_state(client, owner, run["id"], "ERROR")
    step = {step["id"]: step for step in done["steps"]}["second"]
    assert step["state"] == "ERROR" and step["taskId"] is None
    assert "localhost is not a validated domain" in step["error"]
    assert [arrival.path for arrival in target.arrivals] == ["/first"]
