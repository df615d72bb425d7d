from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from tasks_server.api.auth import Authenticator
from tasks_server.api.keys import new_owner_key
from tasks_server.errors import Unauthenticated, WrongKey
from tasks_server.sealing import Sealer, key_digest
from tasks_server.store.postgres import PostgresStore
from tasks_server.store.sqlite import SqliteStore
from tests.conftest import OwnerAuth
from tests.support.clock import FakeClock

FORBIDDEN = {
    "action": "The request should not be repeated",
    "message": "The server did not accept valid authentication",
}
UNAUTHORIZED = {
    "action": "The request should not be repeated",
    "message": "The request did not include valid authentication",
}
ROUTES = [
    ("GET", "/v1/queues"),
    ("POST", "/v1/queues/register"),
    ("GET", "/v1/queues/AAAAAAAAAAAAAAAAAAAAAAAA"),
    ("GET", "/v1/queues/AAAAAAAAAAAAAAAAAAAAAAAA/config"),
    ("PATCH", "/v1/queues/AAAAAAAAAAAAAAAAAAAAAAAA"),
    ("DELETE", "/v1/queues/AAAAAAAAAAAAAAAAAAAAAAAA"),
    ("POST", "/v1/queues/AAAAAAAAAAAAAAAAAAAAAAAA/execute"),
    ("PATCH", "/v1/queues/AAAAAAAAAAAAAAAAAAAAAAAA/pause"),
    ("PATCH", "/v1/queues/AAAAAAAAAAAAAAAAAAAAAAAA/resume"),
    ("PATCH", "/v1/queues/AAAAAAAAAAAAAAAAAAAAAAAA/revoke"),
    ("GET", "/v1/owners/owner-one"),
    ("DELETE", "/v1/owners/owner-one"),
]


def bad_headers(owner: OwnerAuth) -> list[dict[str, str]]:
    return [
        {},
        {"X-Tasks-Owner-Id": owner.id},
        {"Authorization": f"Bearer {owner.key}"},
        {"Authorization": f"bearer {owner.key}", "X-Tasks-Owner-Id": owner.id},
        {"Authorization": f"Basic {owner.key}", "X-Tasks-Owner-Id": owner.id},
        {"Authorization": f"Bearer  {owner.key}", "X-Tasks-Owner-Id": owner.id},
        {"Authorization": f"Bearer {owner.key[:-1]}", "X-Tasks-Owner-Id": owner.id},
        {"Authorization": f"Bearer {owner.key}", "X-Tasks-Owner-Id": owner.id[:-1]},
        {"Authorization": f"Bearer {owner.key}", "X-Tasks-Owner-Id": "0" * 25 + "U"},
        {"Authorization": f"Bearer {owner.key}", "X-Tasks-Owner-Id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"},
    ]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_malformed_or_unknown_credentials_are_403(
    client: httpx.AsyncClient, owner: OwnerAuth, method: str, path: str
) -> None:
    for headers in bad_headers(owner):
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 403, (headers, response.text)
        assert response.json() == FORBIDDEN


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_wrong_key_is_401(
    client: httpx.AsyncClient, owner: OwnerAuth, method: str, path: str
) -> None:
    headers = {"Authorization": "Bearer " + "x" * 64, "X-Tasks-Owner-Id": owner.id}
    response = await client.request(method, path, headers=headers)
    assert response.status_code == 401 and response.json() == UNAUTHORIZED


async def test_another_owners_key_is_401(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    headers = {"Authorization": f"Bearer {other_owner.key}", "X-Tasks-Owner-Id": owner.id}
    response = await client.get("/v1/queues", headers=headers)
    assert response.status_code == 401


async def test_auth_is_checked_before_the_path(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/queues/not-an-id")
    assert response.status_code == 403


async def test_key_is_never_stored_in_clear(
    client: httpx.AsyncClient, owner: OwnerAuth, settings: object
) -> None:
    db = Path(settings.path_sqlite)  # type: ignore[attr-defined]
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert owner.key.encode() not in raw


async def test_public_routes_need_no_auth(client: httpx.AsyncClient) -> None:
    status = await client.get("/status")
    assert status.status_code == 200 and status.text == "OK"
    assert (await client.get("/healthz")).status_code == 200


async def test_security_headers_on_every_answer(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/status"), await client.get("/v1/queues")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-xss-protection"] == "0"


async def test_unknown_route_and_method_are_json_404(client: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/v1/nothing"), ("PUT", "/v1/queues/register")):
        response = await client.request(method, path)
        assert response.status_code == 404
        assert response.json()["message"] == "The requested resource was not found"


def _request(owner_id: str, key: str) -> Request:
    headers = [
        (b"authorization", f"Bearer {key}".encode()),
        (b"x-tasks-owner-id", owner_id.encode()),
    ]
    return Request({"type": "http", "method": "GET", "path": "/v1/queues", "headers": headers})


async def test_an_owner_changed_through_another_node_is_seen_within_max_age(
    database_url: str,
) -> None:
    """Two nodes on one PostgreSQL database: what one node's Authenticator cached of an
    owner gives way, after ``max_age_s``, to a key rotated or an owner disabled through
    the other node's store (which never calls this node's ``forget``)."""
    clock = FakeClock()
    here = PostgresStore(database_url, Sealer("test-key"), lease_ms=10_000, pool_size=2)
    there = PostgresStore(database_url, Sealer("test-key"), lease_ms=10_000, pool_size=2)
    await here.open()
    await there.open()
    try:
        old, new = new_owner_key(), new_owner_key()
        owner = await there.create_owner("rotated", key_digest(old), clock.now_ms(), 0)
        auth = Authenticator(here, clock, max_age_s=2.0)
        assert await auth.owner_id(_request(owner.id, old)) == owner.id  # now cached

        await there.set_owner_key(owner.id, key_digest(new))
        clock.advance(1.0)
        assert await auth.owner_id(_request(owner.id, old)) == owner.id  # not yet re-read
        clock.advance(1.0)
        with pytest.raises(WrongKey):
            await auth.owner_id(_request(owner.id, old))
        assert await auth.owner_id(_request(owner.id, new)) == owner.id

        await there.update_owner(
            owner.id, disabled=True, tasks_in_queue_limit=0, request_budget=None
        )
        clock.advance(2.0)
        with pytest.raises(Unauthenticated):
            await auth.owner_id(_request(owner.id, new))
    finally:
        await here.close()
        await there.close()


async def test_without_max_age_the_cache_lasts_until_forget(tmp_path: Path) -> None:
    """One process owns an SQLite database: every change goes through it and calls
    ``forget``, so nothing is read again on time alone."""
    clock = FakeClock()
    store = SqliteStore(tmp_path / "auth.db", Sealer("test-key"))
    await store.open()
    try:
        old, new = new_owner_key(), new_owner_key()
        owner = await store.create_owner("kept", key_digest(old), clock.now_ms(), 0)
        auth = Authenticator(store, clock)
        assert await auth.owner_id(_request(owner.id, old)) == owner.id
        await store.set_owner_key(owner.id, key_digest(new))
        clock.advance(3600)
        assert await auth.owner_id(_request(owner.id, old)) == owner.id
        auth.forget(owner.id)
        with pytest.raises(WrongKey):
            await auth.owner_id(_request(owner.id, old))
    finally:
        await store.close()
