"""Signed outgoing requests, verified with the standardwebhooks library (not our code),
across a rotation; signing switched off; validated domains set by the administrator."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import time_machine
from standardwebhooks import Webhook, WebhookVerificationError

from tasks_server.app import Server
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner, register_task
from tests.support.clock import FakeClock
from tests.support.targets import Arrival, Reply, TargetServer
from tests.support.waiting import wait_until

ADMIN_KEY = "admin-key-0123456789"


def verify(secret: str, arrival: Arrival) -> Any:
    """Verify as a target would, on the server's (fake) clock: the library refuses
    timestamps more than five minutes from its own now."""
    headers = {name: value for name, value in arrival.headers}
    sent_at = int(arrival.header("webhook-timestamp") or 0)
    with time_machine.travel(sent_at, tick=False):
        try:
            return Webhook(secret).verify(arrival.body, headers)
        except json.JSONDecodeError:
            # verify() parses the body as JSON only after a signature matched; text and
            # form bodies are verified all the same
            return None


async def signing(client: httpx.AsyncClient, owner: OwnerAuth) -> dict[str, Any]:
    response = await client.get(f"/v1/owners/{owner.name}/signing", headers=owner.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def run(
    client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer, **request: Any
) -> Arrival:
    count = len(target.arrivals) + 1
    http_request = {"url": target.url("/hook"), "method": "POST", **request}
    response = await register_task(client, owner, http_request, {"executionDelay": 0})
    assert response.status_code == 201, response.text
    await wait_until(lambda: len(target.arrivals) >= count, message="the call")
    return target.arrivals[count - 1]


async def test_every_call_is_signed_and_verifies_across_a_rotation(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    async with TargetServer() as target:
        target.route("/hook", Reply(200, b"ok"))
        first = await signing(client, owner)
        assert first["enabled"] and first["secret"].startswith("whsec_")
        assert first["previousSecret"] is None
        json_call = await run(client, owner, target, data={"n": 1})
        text_call = await run(client, owner, target, data="plain text")
        form_call = await run(client, owner, target, data=[{"name": "a", "value": "1"}])
        for arrival in (json_call, text_call, form_call):
            verify(first["secret"], arrival)
        assert json_call.header("webhook-id") != text_call.header("webhook-id")
        rotate = f"/v1/owners/{owner.name}/signing/rotate"
        rotated = (await client.post(rotate, headers=owner.headers)).json()
        assert rotated["secret"] != first["secret"]
        assert rotated["previousSecret"] == first["secret"]
        clock.advance(6)  # the scheduler's view of the owner is refreshed
        during = await run(client, owner, target, data={"n": 2})
        verify(rotated["secret"], during)  # a target that already has the new secret
        verify(first["secret"], during)  # and one that still has the old one
        assert len(during.header("webhook-signature").split(" ")) == 2  # type: ignore[union-attr]
        clock.advance(server.settings.signing_overlap_s + 1)
        after = await run(client, owner, target, data={"n": 3})
        verify(rotated["secret"], after)
        with pytest.raises(WebhookVerificationError):
            verify(first["secret"], after)


async def test_the_message_id_is_stable_across_retries(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    async with TargetServer() as target:
        target.route("/hook", Reply(503, b"later"))
        secret = (await signing(client, owner))["secret"]
        response = await register_task(
            client,
            owner,
            {"url": target.url("/hook"), "method": "POST", "data": "x"},
            {"executionDelay": 0, "retry": 1, "retryInterval": 1000},
        )
        assert response.status_code == 201
        attempts = f"/v1/queues/{response.json()['id']}/attempts"

        async def first_recorded() -> bool:
            found = (await client.get(attempts, headers=owner.headers)).json()
            return any(a["finishedAt"] is not None for a in found)

        await wait_until(first_recorded, message="the first attempt recorded")
        clock.advance(3600)
        await wait_until(lambda: len(target.arrivals) == 2, message="the retry")
    ids = {a.header("webhook-id") for a in target.arrivals}
    assert ids == {response.json()["id"]}
    for arrival in target.arrivals:
        verify(secret, arrival)


async def test_an_owner_can_switch_signing_off(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    async with TargetServer() as target:
        target.route("/hook", Reply(200, b"ok"))
        path = f"/v1/owners/{owner.name}/signing"
        off = await client.patch(path, json={"enabled": False}, headers=owner.headers)
        assert off.status_code == 200 and off.json()["enabled"] is False
        bad = await client.patch(path, json={"enabled": "no"}, headers=owner.headers)
        assert bad.status_code == 400
        clock.advance(6)
        arrival = await run(client, owner, target, data="x")
    assert arrival.header("webhook-signature") is None
    assert arrival.header("webhook-id") is None


async def test_another_owners_signing_is_not_visible(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    response = await client.get(f"/v1/owners/{owner.name}/signing", headers=other_owner.headers)
    assert response.status_code == 404


async def test_validated_domains_refuse_other_hosts_at_registration_and_connect(
    make_server: ServerFactory, clock: FakeClock
) -> None:
    server = await make_server(
        admin_key=ADMIN_KEY, egress_allow="127.0.0.1/32, localhost", owner_registration="open"
    )
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with client_for(server) as client, TargetServer() as target:
        target.route("/hook", Reply(200, b"ok"))
        target.route("/away", Reply(302, b"", (("Location", target.url("/hook", "localhost")),)))
        owner = await register_owner(client, "domain-owner")
        path = f"/v1/admin/owners/{owner.id}/domains"
        assert (await client.put(path, json={"domains": ["127.0.0.1"]})).status_code == 401
        bad = await client.put(path, json={"domains": ["not a host"]}, headers=admin)
        assert bad.status_code == 400
        done = await client.put(
            path, json={"domains": ["127.0.0.1", "*.Example.com"]}, headers=admin
        )
        assert done.json() == {"domains": ["127.0.0.1", "*.example.com"]}
        assert (await client.get(path, headers=admin)).json() == done.json()
        refused = await register_task(
            client, owner, {"url": target.url("/hook", "localhost"), "method": "GET"}
        )
        assert refused.status_code == 400
        assert "localhost is not a validated domain" in refused.text
        clock.advance(6)
        hop = await register_task(
            client, owner, {"url": target.url("/away"), "method": "GET"}, {"executionDelay": 0}
        )
        assert hop.status_code == 201
        attempts = f"/v1/queues/{hop.json()['id']}/attempts"

        async def finished() -> list[Any]:
            found = (await client.get(attempts, headers=owner.headers)).json()
            return [a for a in found if a["finishedAt"] is not None]

        await wait_until(finished, message="the redirected call")
        error = (await finished())[0]["error"]
        assert error == "egress denied: localhost is not a validated domain of this owner"
        assert [a.path for a in target.arrivals] == ["/away"]
        cleared = await client.put(path, json={"domains": None}, headers=admin)
        assert cleared.json() == {"domains": None}
