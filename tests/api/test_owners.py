from __future__ import annotations

import httpx
import pytest

from tests.conftest import OwnerAuth, register_owner, register_task


async def test_register_returns_id_and_key_once(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/owners/register", json={"name": "acme-corp"})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "key"}
    assert len(body["id"]) == 26 and len(body["key"]) == 64 and body["key"].isalnum()


async def test_duplicate_name_is_409(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    response = await client.post("/v1/owners/register", json={"name": owner.name})
    assert response.status_code == 409
    assert response.json() == {
        "action": "Do not retry without fixing the problem",
        "message": "Owner has already registered",
    }


@pytest.mark.parametrize(
    "name",
    ["abc", "a" * 33, "1abcde", "-abcde", "abcde-", "ab--cd", "Abcde", "ab_cd", "ab cd"],
)
async def test_invalid_names_are_400(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post("/v1/owners/register", json={"name": name})
    assert response.status_code == 400
    assert response.json()["message"]["name"]["_errors"]


async def test_register_is_strict(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/owners/register", json={"name": "abcde", "x": 1})
    assert response.status_code == 400
    assert response.json()["message"]["_errors"] == ["Unrecognized key(s) in object: 'x'"]


async def test_get_own_record(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    await register_task(client, owner)
    response = await client.get(f"/v1/owners/{owner.name}", headers=owner.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == owner.id and body["name"] == owner.name
    assert body["tasksInQueue"] == 1 and body["tasksInQueueLimit"] == 1000
    assert isinstance(body["createdAt"], int) and "key" not in body


async def test_get_other_owner_is_404(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    response = await client.get(f"/v1/owners/{other_owner.name}", headers=owner.headers)
    assert response.status_code == 404
    assert response.json()["message"] == "The requested resource was not found"


async def test_get_with_invalid_name_is_400(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    response = await client.get("/v1/owners/1bad", headers=owner.headers)
    assert response.status_code == 400


async def test_delete_needs_empty_queue(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task = (await register_task(client, owner)).json()
    response = await client.delete(f"/v1/owners/{owner.name}", headers=owner.headers)
    assert response.status_code == 422
    await client.delete(f"/v1/queues/{task['id']}", headers=owner.headers)
    response = await client.delete(f"/v1/owners/{owner.name}", headers=owner.headers)
    assert response.status_code == 200 and response.json() == {"status": "Done"}
    again = await client.get(f"/v1/owners/{owner.name}", headers=owner.headers)
    assert again.status_code == 403  # the owner is gone: unknown owner id


async def test_delete_other_owner_is_422(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    response = await client.delete(f"/v1/owners/{other_owner.name}", headers=owner.headers)
    assert response.status_code == 422
    still = await client.get(f"/v1/owners/{other_owner.name}", headers=other_owner.headers)
    assert still.status_code == 200


async def test_name_is_reusable_after_delete(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    await client.delete(f"/v1/owners/{owner.name}", headers=owner.headers)
    again = await register_owner(client, owner.name)
    assert again.id != owner.id


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("My-Owner", "Use only lowercase letters a-z, digits and hyphens (found 'M', 'O')"),
        ("owner_one", "Use only lowercase letters a-z, digits and hyphens (found '_')"),
        ("1owner", "String cannot begin with a number"),
        ("-owner", "String cannot start or end with a hyphen"),
        ("owner-", "String cannot start or end with a hyphen"),
        ("own--er", "String cannot contain consecutive hyphens"),
    ],
)
async def test_the_owner_name_error_names_the_rule_broken(
    client: httpx.AsyncClient, name: str, message: str
) -> None:
    response = await client.post("/v1/owners/register", json={"name": name})
    assert response.status_code == 400
    assert response.json()["message"]["name"]["_errors"] == [message]
