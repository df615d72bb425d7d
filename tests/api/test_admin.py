"""``GET /v1/admin/owners``: the owner list behind ADMIN_KEY (used by ``owner list``)."""

from __future__ import annotations

import httpx

from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner


async def test_owner_list_needs_the_admin_key(
    make_server: ServerFactory, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    assert (await client.get("/v1/admin/owners")).status_code == 404  # ADMIN_KEY unset
    server = await make_server(admin_key="admin-key-0123456789abcdef")
    async with client_for(server) as admin:
        await register_owner(admin, "listed-owner")
        assert (await admin.get("/v1/admin/owners")).status_code == 401
        listed = await admin.get(
            "/v1/admin/owners", headers={"Authorization": "Bearer admin-key-0123456789abcdef"}
        )
    assert listed.status_code == 200
    assert {o["name"] for o in listed.json()} == {"owner-one", "listed-owner"}
    assert set(listed.json()[0]) == {"id", "name", "createdAt", "tasksInQueue", "tasksInQueueLimit"}
