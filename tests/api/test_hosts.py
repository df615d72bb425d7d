"""The destination hosts API: administrators only, overrides stored and validated, and a
host the server knows nothing of shown with the limits it would get."""

from __future__ import annotations

import httpx

from tests.conftest import ServerFactory, client_for

ADMIN = "admin-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}


async def test_hosts_need_the_admin_key_and_exist_only_with_one(
    make_server: ServerFactory,
) -> None:
    async with client_for(await make_server()) as client:
        assert (await client.get("/v1/hosts", headers=HEADERS)).status_code == 404
    async with client_for(await make_server(admin_key=ADMIN)) as client:
        assert (await client.get("/v1/hosts")).status_code == 401
        wrong = {"Authorization": "Bearer not-the-admin-key-at-all"}
        assert (await client.get("/v1/hosts/a.example:443", headers=wrong)).status_code == 401
        assert (await client.get("/v1/hosts", headers=HEADERS)).json() == []


async def test_an_unknown_host_shows_the_defaults(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN, host_max_concurrency=40, host_max_rate=12.5)
    async with client_for(server) as client:
        response = await client.get("/v1/hosts/API.example.com:443", headers=HEADERS)
    assert response.status_code == 200
    assert response.json() == {
        "host": "api.example.com:443",
        "maxConcurrency": 40,
        "maxRate": 12.5,
        "override": None,
        "concurrency": 40,
        "inFlight": 0,
        "waiting": 0,
        "circuit": "closed",
        "consecutiveFailures": 0,
        "circuitReopensAt": None,
        "lastThrottled": None,
        "throttled": 0,
        "circuitOpened": 0,
        "lastFailure": None,
        "waitingReason": None,
    }


async def test_overrides_are_set_changed_listed_and_removed(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN, max_host_connections=100)
    async with client_for(server) as client:
        url = "/v1/hosts/slow.example.com"
        first = await client.patch(url, json={"maxRate": 2}, headers=HEADERS)
        assert first.status_code == 200
        assert (first.json()["maxRate"], first.json()["maxConcurrency"]) == (2, 100)
        both = await client.patch(url, json={"maxConcurrency": 500}, headers=HEADERS)
        assert both.json()["override"]["maxRate"] == 2  # left out: kept
        assert both.json()["maxConcurrency"] == 100  # MAX_HOST_CONNECTIONS caps it
        port = await client.get("/v1/hosts/slow.example.com:8443", headers=HEADERS)
        assert port.json()["maxRate"] == 2  # a bare name covers every port
        listed = (await client.get("/v1/hosts", headers=HEADERS)).json()
        assert [h["host"] for h in listed] == ["slow.example.com"]
        cleared = await client.patch(url, json={"maxRate": None}, headers=HEADERS)
        assert cleared.json()["maxRate"] is None
        assert cleared.json()["override"]["maxConcurrency"] == 500
        assert await server.store.list_host_limits() != []
        removed = await client.delete(url, headers=HEADERS)
        assert removed.status_code == 200 and removed.json()["override"] is None
        assert (await client.delete(url, headers=HEADERS)).status_code == 404
        assert await server.store.list_host_limits() == []


async def test_bad_hosts_and_bodies_get_400_and_change_nothing(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN)
    async with client_for(server) as client:
        for host in ("bad host", "-x.example", "a.example:0", "a.example:70000", "a:b:c"):
            response = await client.patch(f"/v1/hosts/{host}", json={"maxRate": 1}, headers=HEADERS)
            assert response.status_code == 400, host
        for body in ({"maxConcurrency": 0}, {"maxRate": -1}, {"other": 1}, [1]):
            response = await client.patch("/v1/hosts/a.example", json=body, headers=HEADERS)
            assert response.status_code == 400, body
        bad_json = await client.patch(
            "/v1/hosts/a.example",
            content=b"{",
            headers={**HEADERS, "Content-Type": "application/json"},
        )
        assert bad_json.status_code == 400
        assert await server.store.list_host_limits() == []
        listed: httpx.Response = await client.get("/v1/hosts", headers=HEADERS)
        assert listed.json() == []
