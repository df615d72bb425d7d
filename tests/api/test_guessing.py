"""Guessing limits: failed authentications drain a token bucket per client address and
per owner id (429 with Retry-After when empty), and an owner's request budget."""

from __future__ import annotations

import httpx

from tasks_server.app import Server
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner
from tests.support.clock import FakeClock

ADMIN = "admin-key-0123456789abcdef"


def from_address(server: Server, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=server.asgi, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://tasks.test")


def wrong(owner: OwnerAuth) -> dict[str, str]:
    return {"Authorization": "Bearer " + "x" * 64, "X-Tasks-Owner-Id": owner.id}


async def test_wrong_owner_keys_from_one_address_get_429_after_the_budget(
    make_server: ServerFactory, clock: FakeClock
) -> None:
    server = await make_server(auth_failures_per_minute=5)
    async with client_for(server) as client:
        owner = await register_owner(client, "guessed-owner")
        other = await register_owner(client, "other-owner")
        statuses = [
            (await client.get(f"/v1/owners/{other.name}", headers=wrong(other))).status_code
            for _ in range(5)
        ]
        assert statuses == [401] * 5
        refused = await client.get(f"/v1/owners/{owner.name}", headers=owner.headers)
        assert refused.status_code == 429  # the address is out of tries, whatever the key
        assert refused.headers["Retry-After"] == "12"  # 5 per minute: one every 12 s
        clock.advance(12.0)
        assert (await client.get(f"/v1/owners/{owner.name}", headers=owner.headers)).is_success


async def test_one_owner_id_guessed_from_many_addresses_gets_429(
    make_server: ServerFactory,
) -> None:
    server = await make_server(auth_failures_per_minute=5)
    async with client_for(server) as client:
        owner = await register_owner(client, "targeted-owner")
    statuses = []
    for n in range(7):
        async with from_address(server, f"10.0.0.{n + 1}") as attacker:
            response = await attacker.get(f"/v1/owners/{owner.name}", headers=wrong(owner))
            statuses.append(response.status_code)
    assert statuses == [401] * 5 + [429] * 2
    async with from_address(server, "10.0.1.1") as fresh:
        # a fresh address naming another owner id is not held back
        response = await fresh.get("/v1/owners/someone", headers=wrong(OwnerAuth("0" * 26, "", "")))
        assert response.status_code == 403


async def test_admin_key_guesses_get_429(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN, auth_failures_per_minute=3)
    async with client_for(server) as client:
        headers = {"Authorization": "Bearer not-the-admin-key-at-all"}
        statuses = [
            (await client.get("/v1/admin/owners", headers=headers)).status_code for _ in range(5)
        ]
    assert statuses == [401, 401, 401, 429, 429]


async def test_the_limit_is_on_by_default_and_can_be_turned_off(
    make_server: ServerFactory,
) -> None:
    default = await make_server()
    assert default.settings.auth_failures_per_minute == 60
    off = await make_server(auth_failures_per_minute=0)
    async with client_for(off) as client:
        statuses = {
            (
                await client.get(
                    "/v1/owners/nobody-here", headers=wrong(OwnerAuth("0" * 26, "", ""))
                )
            ).status_code
            for _ in range(100)
        }
    assert statuses == {403}


async def test_an_owners_request_budget_is_enforced(
    make_server: ServerFactory, clock: FakeClock
) -> None:
    server = await make_server(admin_key=ADMIN, owner_registration="open", request_budget=100)
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    async with client_for(server) as client:
        owner = await register_owner(client, "budget-owner")
        changed = await client.patch(
            f"/v1/admin/owners/{owner.id}", json={"requestBudget": 3}, headers=bearer
        )
        assert changed.json()["requestBudget"] == 3
        statuses = [
            (await client.get("/v1/queues", headers=owner.headers)).status_code for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
        last = await client.get("/v1/queues", headers=owner.headers)
        assert last.headers["Retry-After"] == "20"  # 3 per minute: one every 20 s
        clock.advance(20.0)
        assert (await client.get("/v1/queues", headers=owner.headers)).status_code == 200
        # others keep the server's default budget
        other = await register_owner(client, "default-owner")
        codes = {
            (await client.get("/v1/queues", headers=other.headers)).status_code for _ in range(10)
        }
        assert codes == {200}
