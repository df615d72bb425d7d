"""``GET /v1/admin/owners``: the owner list behind ADMIN_KEY (used by ``owner list``)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tasks_server.cli.main import startup_warnings
from tasks_server.config import Settings, load
from tasks_server.errors import ConfigError
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner
from tests.support.process import ServerProcess


async def test_owner_list_needs_the_admin_key(
    make_server: ServerFactory, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    assert (await client.get("/v1/admin/owners")).status_code == 404  # ADMIN_KEY unset
    server = await make_server(admin_key="admin-key-0123456789abcdef")
    async with client_for(server) as admin:
        # with ADMIN_KEY set, registration needs it (OWNER_REGISTRATION defaults to admin)
        bearer = {"Authorization": "Bearer admin-key-0123456789abcdef"}
        await register_owner(admin, "listed-owner", headers=bearer)
        assert (await admin.get("/v1/admin/owners")).status_code == 401
        listed = await admin.get(
            "/v1/admin/owners", headers={"Authorization": "Bearer admin-key-0123456789abcdef"}
        )
    assert listed.status_code == 200
    assert {o["name"] for o in listed.json()} == {"owner-one", "listed-owner"}
    assert set(listed.json()[0]) == {
        "id",
        "name",
        "createdAt",
        "tasksInQueue",
        "tasksInQueueLimit",
        "disabled",
        "requestBudget",
    }


BEARER = {"Authorization": "Bearer admin-key-0123456789abcdef"}
ADMIN = "admin-key-0123456789abcdef"


async def _register(client: httpx.AsyncClient, name: str, **headers: str) -> httpx.Response:
    return await client.post("/v1/owners/register", json={"name": name}, headers=headers)


async def test_registration_open_lets_anyone_register(make_server: ServerFactory) -> None:
    for name, overrides in (
        ("anyone-at-all", {}),
        ("anyone-again", {"owner_registration": "open", "admin_key": ADMIN}),
    ):
        server = await make_server(**overrides)
        assert server.settings.registration_mode == "open"
        async with client_for(server) as client:
            assert (await _register(client, name)).status_code == 201


async def test_registration_admin_needs_the_admin_key(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN)  # the default mode with an ADMIN_KEY
    assert server.settings.registration_mode == "admin"
    async with client_for(server) as client:
        assert (await _register(client, "no-key-owner")).status_code == 401
        wrong = await _register(client, "no-key-owner", Authorization="Bearer " + "x" * 26)
        assert wrong.status_code == 401
        made = await _register(client, "with-key-owner", **BEARER)
        assert made.status_code == 201 and set(made.json()) == {"id", "key"}
        listed = await client.get("/v1/admin/owners", headers=BEARER)
    assert [o["name"] for o in listed.json()] == ["with-key-owner"]


async def test_registration_closed_refuses_everyone(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN, owner_registration="closed")
    async with client_for(server) as client:
        for headers in ({}, BEARER):
            refused = await client.post(
                "/v1/owners/register", json={"name": "closed-owner"}, headers=headers
            )
            assert refused.status_code == 403
            assert "closed" in refused.json()["message"]
        # the administrator still creates owners through the admin API
        made = await client.post("/v1/admin/owners", json={"name": "made-owner"}, headers=BEARER)
        assert made.status_code == 201
        listed = await client.get("/v1/admin/owners", headers=BEARER)
    assert [o["name"] for o in listed.json()] == ["made-owner"]


async def test_admin_creates_disables_rekeys_and_deletes_owners(
    make_server: ServerFactory,
) -> None:
    server = await make_server(admin_key=ADMIN, owner_registration="closed")
    async with client_for(server) as client:
        made = await client.post(
            "/v1/admin/owners",
            json={"name": "managed-owner", "tasksInQueueLimit": 7, "requestBudget": 600},
            headers=BEARER,
        )
        assert made.status_code == 201, made.text
        body = made.json()
        assert (body["tasksInQueueLimit"], body["requestBudget"], body["disabled"]) == (
            7,
            600,
            False,
        )
        owner = OwnerAuth(body["id"], body["key"], "managed-owner")
        assert (await client.get("/v1/owners/managed-owner", headers=owner.headers)).is_success

        path = f"/v1/admin/owners/{owner.id}"
        off = await client.patch(path, json={"disabled": True}, headers=BEARER)
        assert off.status_code == 200 and off.json()["disabled"] is True
        assert off.json()["requestBudget"] == 600  # fields left out keep their value
        refused = await client.get("/v1/owners/managed-owner", headers=owner.headers)
        assert refused.status_code == 403
        on = await client.patch(
            path, json={"disabled": False, "requestBudget": None}, headers=BEARER
        )
        assert on.json()["disabled"] is False and on.json()["requestBudget"] is None
        assert (await client.get("/v1/owners/managed-owner", headers=owner.headers)).is_success

        rotated = await client.post(f"{path}/key", headers=BEARER)
        assert rotated.status_code == 200 and rotated.json()["id"] == owner.id
        stale = await client.get("/v1/owners/managed-owner", headers=owner.headers)
        assert stale.status_code == 401
        fresh = OwnerAuth(owner.id, rotated.json()["key"], owner.name)
        assert (await client.get("/v1/owners/managed-owner", headers=fresh.headers)).is_success

        bad = await client.patch(path, json={"disabled": "yes"}, headers=BEARER)
        assert bad.status_code == 400
        assert (await client.patch(path, json={}, headers={})).status_code == 401
        assert (await client.delete(path, headers=BEARER)).json() == {"status": "Done"}
        assert (await client.delete(path, headers=BEARER)).status_code == 404
        assert (await client.post(f"{path}/key", headers=BEARER)).status_code == 404
        unknown = await client.patch("/v1/admin/owners/nope", json={}, headers=BEARER)
        assert unknown.status_code == 404


async def test_admin_routes_do_not_exist_without_an_admin_key(client: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/v1/admin/owners"),
        ("POST", "/v1/admin/owners"),
        ("PATCH", "/v1/admin/owners/" + "0" * 26),
        ("DELETE", "/v1/admin/owners/" + "0" * 26),
        ("POST", "/v1/admin/owners/" + "0" * 26 + "/key"),
    ):
        assert (await client.request(method, path, headers=BEARER)).status_code == 404


def test_open_registration_by_default_warns_at_start_up(tmp_path: Path) -> None:
    assert startup_warnings(Settings(admin_key=ADMIN)) == []
    assert startup_warnings(Settings(owner_registration="open")) == []
    [warning] = startup_warnings(Settings())
    assert "OWNER_REGISTRATION is open" in warning and "anyone" in warning
    with pytest.raises(ConfigError, match="OWNER_REGISTRATION"):
        load({"OWNER_REGISTRATION": "admin"})
    with pytest.raises(ConfigError, match="OWNER_REGISTRATION"):
        load({"OWNER_REGISTRATION": "sometimes"})
    with ServerProcess(tmp_path, LOG_LEVEL="WARNING") as process:
        assert process.terminate() == 0
    assert "OWNER_REGISTRATION is open" in process.log.read_text()
