"""Tenant isolation: another owner's task looks exactly like a missing one, everywhere."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import OwnerAuth, register_task

MISSING = "Z" * 24


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("GET", "/config", None),
        ("GET", "/attempts", None),
        ("GET", "/result", None),
        ("PATCH", "", {"config": {"retry": 1}}),
        ("DELETE", "", None),
        ("POST", "/execute", None),
        ("PATCH", "/pause", None),
        ("PATCH", "/resume", None),
        ("PATCH", "/revoke", None),
    ],
)
async def test_foreign_task_answers_like_a_missing_one(
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    other_owner: OwnerAuth,
    method: str,
    suffix: str,
    body: dict[str, object] | None,
) -> None:
    task = (await register_task(client, owner)).json()
    if suffix == "/resume":
        await client.patch(f"/v1/queues/{task['id']}/pause", headers=owner.headers)
    before = await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)

    foreign = await client.request(
        method, f"/v1/queues/{task['id']}{suffix}", json=body, headers=other_owner.headers
    )
    missing = await client.request(
        method, f"/v1/queues/{MISSING}{suffix}", json=body, headers=other_owner.headers
    )
    assert foreign.status_code == missing.status_code
    assert foreign.status_code in (404, 422)
    assert foreign.json() == missing.json()
    after = await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)
    assert after.json() == before.json()


async def test_list_shows_only_own_tasks(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    mine = (await register_task(client, owner)).json()
    theirs = (await register_task(client, other_owner)).json()
    assert [t["id"] for t in (await client.get("/v1/queues", headers=owner.headers)).json()] == [
        mine["id"]
    ]
    listed = (await client.get("/v1/queues", headers=other_owner.headers)).json()
    assert [t["id"] for t in listed] == [theirs["id"]]
