"""Registration-time egress checks: every destination a task names (its URL and its
callbacks) is refused at once; each owner's validated domains are remembered, a change
through this server applies at once, one made behind its back within the cache's age."""

from __future__ import annotations

import dataclasses

from tasks_server.api.outgoing import Destinations
from tasks_server.app import Server, egress_policy
from tests.conftest import (
    TARGET,
    ServerFactory,
    client_for,
    register_owner,
    register_task,
)
from tests.support.clock import FakeClock

ADMIN_KEY = "admin-key-0123456789"


async def test_a_domain_change_through_the_api_applies_at_once(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN_KEY, owner_registration="open")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with client_for(server) as client:
        owner = await register_owner(client, "domains-now")
        first = await register_task(
            client, owner, {"url": "https://a.example.com/", "method": "GET"}
        )
        assert first.status_code == 201  # the owner's (empty) list is now remembered
        path = f"/v1/admin/owners/{owner.id}/domains"
        changed = await client.put(path, json={"domains": ["b.example.com"]}, headers=admin)
        assert changed.status_code == 200
        refused = await register_task(
            client, owner, {"url": "https://a.example.com/", "method": "GET"}
        )
        assert refused.status_code == 400
        assert "a.example.com is not a validated domain" in refused.text
        allowed = await register_task(
            client, owner, {"url": "https://b.example.com/", "method": "GET"}
        )
        assert allowed.status_code == 201


async def test_a_change_behind_its_back_is_seen_within_max_age(
    server: Server, clock: FakeClock
) -> None:
    async with client_for(server) as client:
        owner = await register_owner(client, "domains-later")
    destinations = Destinations(egress_policy(server.settings), server.store, clock, 5.0)
    assert await destinations.domains(owner.id) is None
    security = await server.store.owner_security(owner.id)
    limited = dataclasses.replace(security, allowed_hosts=("b.example.com",))
    await server.store.save_owner_security(owner.id, limited)  # another node, say
    clock.advance(4.9)
    assert await destinations.domains(owner.id) is None  # still the remembered list
    clock.advance(0.2)
    assert await destinations.domains(owner.id) == ("b.example.com",)


async def test_a_callback_the_policy_refuses_is_refused_at_registration(server: Server) -> None:
    async with client_for(server) as client:
        owner = await register_owner(client, "callback-private")
        get = {"url": TARGET, "method": "GET"}
        for name in ("onSuccess", "onFailure"):
            refused = await register_task(client, owner, get, **{name: {"url": "http://10.1.2.3/"}})
            assert refused.status_code == 400, refused.text
            tree = refused.json()["message"]
            assert "egress denied" in tree[name]["url"]["_errors"][0]
            metadata = await register_task(
                client, owner, get, **{name: {"url": "http://169.254.169.254/latest/"}}
            )
            assert metadata.status_code == 400
        listed = await client.get("/v1/queues", headers=owner.headers)
        assert listed.json() == []  # nothing was stored
        allowed = await register_task(client, owner, get, onSuccess={"url": TARGET})
        assert allowed.status_code == 201


async def test_a_callback_outside_the_owners_domains_is_refused(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN_KEY, owner_registration="open")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with client_for(server) as client:
        owner = await register_owner(client, "callback-domains")
        path = f"/v1/admin/owners/{owner.id}/domains"
        changed = await client.put(path, json={"domains": ["a.example.com"]}, headers=admin)
        assert changed.status_code == 200
        target = {"url": "https://a.example.com/", "method": "GET"}
        refused = await register_task(
            client, owner, target, onFailure={"url": "https://b.example.com/failed"}
        )
        assert refused.status_code == 400
        assert "b.example.com is not a validated domain" in refused.text
        assert "onFailure" in refused.json()["message"]
        allowed = await register_task(
            client, owner, target, onFailure={"url": "https://a.example.com/failed"}
        )
        assert allowed.status_code == 201


async def test_a_schedules_callback_the_policy_refuses_is_refused(server: Server) -> None:
    async with client_for(server) as client:
        owner = await register_owner(client, "schedule-callback")
        body = {
            "name": "nightly",
            "schedule": "*/5 * * * *",
            "httpRequest": {"url": TARGET, "method": "GET"},
            "onFailure": {"url": "http://10.1.2.3/failed"},
        }
        refused = await client.post("/v1/schedules", json=body, headers=owner.headers)
        assert refused.status_code == 400, refused.text
        assert "egress denied" in refused.json()["message"]["onFailure"]["url"]["_errors"][0]
        listed = await client.get("/v1/schedules", headers=owner.headers)
        assert listed.json() == []
