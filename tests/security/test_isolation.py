"""Owners never share a connection: the request-capture and mTLS-riding attacks, against
real targets, and the framing headers a tenant may not set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tasks_server.dispatch import CurlDispatcher, CurlSettings
from tasks_server.dispatch.egress import EgressPolicy
from tasks_server.dispatch.pools import pool_key
from tasks_server.models import (
    Call,
    ClientCert,
    Credentials,
    HttpRequest,
    Outcome,
    Pem,
    TaskConfig,
)
from tests.conftest import OwnerAuth, register_owner, register_task
from tests.support.targets import Reply, TargetServer, TlsMaterial
from tests.support.waiting import wait_until

LOOPBACK = EgressPolicy.parse(allow="127.0.0.1/32")  # the targets run on loopback
SMUGGLED = b"AAAAGET /capture HTTP/1.1\r\nHost: target\r\nContent-Length: 400\r\n\r\n"


def call(url: str, owner: str, config: TaskConfig | None = None, **request: object) -> Call:
    return Call(
        HttpRequest(url=url, method="GET", **request),  # type: ignore[arg-type]
        config or TaskConfig(),
        (),
        5_000,
        1 << 16,
        owner_id=owner,
    )


@pytest.fixture
async def dispatcher() -> AsyncIterator[CurlDispatcher]:
    dispatcher = CurlDispatcher(CurlSettings(egress=LOOPBACK), close_grace_s=0.5)
    await dispatcher.start()
    yield dispatcher
    await dispatcher.close()


async def send(dispatcher: CurlDispatcher, one: Call) -> Outcome:
    return await asyncio.wait_for(dispatcher.submit(one), timeout=10)


# -- request capture ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Content-Length",
        "transfer-encoding",
        "Connection",
        "Keep-Alive",
        "Upgrade",
        "TE",
        "Trailer",
        "Host",
        "Proxy-Authorization",
        "Proxy-Connection",
        "webhook-signature",
    ],
)
async def test_framing_and_hop_by_hop_headers_are_refused(
    client: httpx.AsyncClient, owner: OwnerAuth, name: str
) -> None:
    request = {"url": "http://127.0.0.1:9/x", "method": "POST", "headers": {name: "4"}}
    response = await register_task(client, owner, request)
    assert response.status_code == 400
    errors = response.json()["message"]["httpRequest"]["headers"]["_errors"]
    assert errors == [f"Header {name} is set by the server, not by a task"]


async def test_request_capture_cannot_be_registered_nor_reach_another_owner(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    # The attack: a Content-Length shorter than the body makes the target read the rest
    # as a second request, which then swallows the next request on that connection.
    async with TargetServer() as target:
        target.route("/hook", Reply(200, b"ok"))
        attack = {
            "url": target.url("/hook"),
            "method": "POST",
            "headers": {"Content-Length": "4"},
            "data": SMUGGLED.decode(),
        }
        response = await register_task(client, owner, attack)
        assert response.status_code == 400
        assert "Content-Length" in response.text
        assert target.arrivals == []


async def test_each_owner_gets_its_own_connections(
    dispatcher: CurlDispatcher,
) -> None:
    async with TargetServer() as target:
        target.route("/hook", Reply(200, b"ok"))
        body = SMUGGLED.decode()  # even a body that looks like a request stays a body
        first = await send(dispatcher, call(target.url("/hook"), "A", data_text=body))
        again = await send(dispatcher, call(target.url("/hook"), "A"))
        other = await send(dispatcher, call(target.url("/hook"), "B"))
    assert [o.status for o in (first, again, other)] == [200, 200, 200]
    ports = [arrival.peer_port for arrival in target.arrivals]
    assert [a.path for a in target.arrivals] == ["/hook", "/hook", "/hook"]
    assert ports[0] == ports[1]  # reuse within an owner: bursts stay fast
    assert ports[2] != ports[0]  # never across owners


# -- mTLS riding --------------------------------------------------------------------------


async def test_another_owners_client_certificate_does_not_ride_its_connection(
    dispatcher: CurlDispatcher,
) -> None:
    tls = TlsMaterial()
    alice = tls.client_cert("alice.test")
    mallory = tls.client_cert("mallory.test")
    ca = Pem(content=tls.ca_pem)
    own = TaskConfig(ca=ca, cert=ClientCert(Pem(content=alice.cert)), key=Pem(content=alice.key))
    async with TargetServer(tls.server_context(require_client_cert=True)) as target:
        url = target.url("/hook")
        first = await send(dispatcher, call(url, "A", own))
        # Mallory has Alice's public certificate, and no key of Alice's
        stolen = TaskConfig(ca=ca, cert=ClientCert(Pem(content=alice.cert)))
        with_own_key = TaskConfig(
            ca=ca, cert=ClientCert(Pem(content=alice.cert)), key=Pem(content=mallory.key)
        )
        riding = [
            await send(dispatcher, call(url, "B", stolen)),
            await send(dispatcher, call(url, "B", with_own_key)),
            await send(dispatcher, call(url, "A", stolen)),  # Alice's own, without the key
        ]
        again = await send(dispatcher, call(url, "A", own))
    assert first.status == 404 and again.status == 404
    assert all(outcome.status == 0 and outcome.error for outcome in riding)
    subjects = [dict(x[0] for x in a.client_cert["subject"]) for a in target.arrivals]  # type: ignore[index]
    assert len(target.arrivals) == 2  # only Alice's two calls arrived
    assert all(s.get("commonName", "") != "mallory.test" for s in subjects)
    assert target.arrivals[0].peer_port == target.arrivals[1].peer_port  # Alice reuses


def test_pool_keys_separate_owners_and_credentials() -> None:
    plain_a = call("http://h.test/", "A")
    plain_b = call("http://h.test/", "B")
    cert = TaskConfig(cert=ClientCert(Pem(content=b"CERT")), key=Pem(content=b"KEY"))
    other_key = TaskConfig(cert=ClientCert(Pem(content=b"CERT")), key=Pem(content=b"KEY2"))
    proxy_creds = TaskConfig(proxy_auth_basic=Credentials("u", "p"))
    keys = {
        pool_key(plain_a),
        pool_key(plain_b),
        pool_key(call("http://h.test/", "A", cert)),
        pool_key(call("http://h.test/", "A", other_key)),
        pool_key(call("http://h.test/", "A", proxy_creds)),
        pool_key(call("http://h.test/", "A", auth_ntlm=Credentials("u", "p"))),
    }
    assert len(keys) == 6
    assert pool_key(call("http://other.test/x", "A")) == pool_key(plain_a)


async def test_isolation_holds_through_the_api(owner: OwnerAuth, client: httpx.AsyncClient) -> None:
    other = await register_owner(client, "owner-three")
    async with TargetServer() as target:
        target.route("/hook", Reply(200, b"ok"))
        for who in (owner, owner, other):
            task = await register_task(
                client, who, {"url": target.url("/hook"), "method": "GET"}, {"executionDelay": 0}
            )
            assert task.status_code == 201, task.text
            count = len(target.arrivals) + 1
            await wait_until(lambda: len(target.arrivals) >= count, message="the call")  # noqa: B023
        ports = [a.peer_port for a in target.arrivals]
    assert len(ports) == 3
    assert ports[0] == ports[1] != ports[2]
