"""The SSRF matrix: many spellings of "this machine" against a canary on loopback.

Each case is registered through the API of a real server (real dispatcher, real sockets)
and run to its end. The canary counts TCP connections, so a case "reaches" it as soon as
a connection opens, whatever is sent. With the default settings nothing may reach it; with
``EGRESS_ALLOW=127.0.0.1/32`` exactly the cases that mean 127.0.0.1 do; a redirector that
is allowed may not lead anywhere else.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tasks_server.app import Server
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner
from tests.support.waiting import wait_until

REDIRECTOR_HOST = "127.0.0.2"  # any 127/8 address is this machine on Linux


class Canary:
    """Counts connections on 127.0.0.1 and, when possible, [::1] on the same port."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self.has_ipv6 = False
        self._servers: list[asyncio.Server] = []

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\ncanary")
        await writer.drain()
        writer.close()

    async def start(self) -> None:
        for _ in range(20):
            server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._servers = [server]
            try:
                self._servers.append(await asyncio.start_server(self._answer, "::1", self.port))
                self.has_ipv6 = True
                return
            except OSError:
                server.close()
        self._servers[0] = await asyncio.start_server(self._answer, "127.0.0.1", self.port)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()


class Redirector:
    """Answers ``/<n>`` with a 302 to the n-th location of ``locations``."""

    def __init__(self, locations: list[str]) -> None:
        self.locations = locations
        self.hits = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        index = int(line.split()[1].strip(b"/"))
        location = self.locations[index].encode()
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: " + location)
        writer.write(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, REDIRECTOR_HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[int], dict[str, Any]]  # canary port → registration body
    allowed: bool = False  # reaches the canary with EGRESS_ALLOW=127.0.0.1/32
    ipv6: bool = False  # needs the canary on [::1]


def url_case(host: str, allowed: bool = False, ipv6: bool = False, **config: Any) -> Case:
    def build(port: int) -> dict[str, Any]:
        cfg = {"timeout": 5000, "executionDelay": 0, **({"ipVersion": 6} if ipv6 else {}), **config}
        return {"httpRequest": {"url": f"http://{host}:{port}/hit", "method": "GET"}, "config": cfg}

    return Case(f"url {host}", build, allowed, ipv6)


def config_case(name: str, allowed: bool, url: str, **config: Any) -> Case:
    def build(port: int) -> dict[str, Any]:
        values = {k: v(port) if callable(v) else v for k, v in config.items()}
        return {
            "httpRequest": {"url": url.format(port=port), "method": "GET"},
            "config": {"timeout": 5000, "executionDelay": 0, **values},
        }

    return Case(name, build, allowed)


def _resolve(host: str, address: str) -> Callable[[int], list[dict[str, Any]]]:
    return lambda port: [{"host": host, "port": port, "address": [address]}]


def _proxy(host: str) -> Callable[[int], dict[str, Any]]:
    return lambda port: {"protocol": "http", "host": host, "port": port}


def _own_name_if_loopback() -> str | None:
    """This machine's name when it resolves to 127.0.0.1 (Debian's /etc/hosts does)."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return None
    return name if any(info[4][0] == "127.0.0.1" for info in infos) else None


def matrix() -> list[Case]:
    loopback_v4 = [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.0x0.0x0.0x1",
        "0177.0.0.1",
        "017700000001",
        "0x7f.1",
        "127.000.000.001",
        "localhost",
        "LocalHost",
        "sub.localhost",
        "a.b.localhost",
        "example.com@127.0.0.1",
    ]
    cases = [url_case(host, allowed=True) for host in loopback_v4]
    cases += [
        url_case(host, allowed=True, ipv6=True)
        for host in ("[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:7f00:1]")
    ]
    cases += [url_case(host) for host in ("0", "0.0.0.0", "127.0.0.2", "0x7f000002")]
    cases += [
        url_case(host, ipv6=True)
        for host in ("[::1]", "[0:0:0:0:0:0:0:1]", "[::]", "[::127.0.0.1]", "[64:ff9b::7f00:1]")
    ]
    cases += [
        url_case(host)
        for host in ("169.254.169.254", "0xa9fea9fe", "169.254.43518", "10.0.0.1", "100.64.0.1")
    ]
    cases += [url_case(host, ipv6=True) for host in ("[fd00:ec2::254]", "[::ffff:a9fe:a9fe]")]
    plain = "http://canary.test:{port}/hit"
    public = "http://example.com/hit"
    cases += [
        config_case("resolve name → 127.0.0.1", True, plain, resolve=_resolve("canary.test", "127.0.0.1")),  # noqa: E501
        config_case("resolve * → 127.0.0.1", True, "http://any.test:{port}/hit", resolve=_resolve("*", "127.0.0.1")),  # noqa: E501
        config_case("resolve name → 0.0.0.0", False, plain, resolve=_resolve("canary.test", "0.0.0.0")),  # noqa: E501
        config_case("resolve name → ::1", False, plain, resolve=_resolve("canary.test", "::1"), ipVersion=6),  # noqa: E501
        config_case("proxy 127.0.0.1", False, public, proxy=_proxy("127.0.0.1")),
        config_case("proxy localhost", False, public, proxy=_proxy("localhost")),
        config_case("proxy 0x7f000001", False, public, proxy=_proxy("0x7f000001")),
        config_case("DoH 127.0.0.1", True, plain, dohUrl=lambda p: f"https://127.0.0.1:{p}/q"),
        config_case("DoH localhost", True, plain, dohUrl=lambda p: f"https://localhost:{p}/q"),
        config_case("DoH 0x7f000001", True, plain, dohUrl=lambda p: f"https://0x7f000001:{p}/q"),
        config_case("DoH [::1]", False, plain, dohUrl=lambda p: f"https://[::1]:{p}/q"),
        config_case("dnsServer 127.0.0.1", False, plain, dnsServer=["127.0.0.1"]),
    ]  # fmt: skip
    own = _own_name_if_loopback()
    if own is not None:
        cases += [
            url_case(own, allowed=True),
            config_case(f"DoH {own}", True, plain, dohUrl=lambda p: f"https://{own}:{p}/q"),
        ]
    return cases


REDIRECT_TARGETS = [
    "http://127.0.0.1:{port}/hit",
    "http://0x7f000001:{port}/hit",
    "http://2130706433:{port}/hit",
    "http://localhost:{port}/hit",
    "http://sub.localhost:{port}/hit",
    "http://0:{port}/hit",
    "http://[::ffff:127.0.0.1]:{port}/hit",
    "http://[::1]:{port}/hit",
    "//127.0.0.1:{port}/hit",
]


@dataclass
class Tally:
    cases: int = 0
    refused_at_registration: int = 0
    refused_at_connect: int = 0
    canary_hits: int = 0
    reached: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def run_case(
    server: Server, owner: OwnerAuth, canary: Canary, name: str, body: dict[str, Any], tally: Tally
) -> None:
    tally.cases += 1
    before = canary.hits
    async with client_for(server) as client:
        response = await client.post("/v1/queues/register", json=body, headers=owner.headers)
        if 400 <= response.status_code < 500:
            tally.refused_at_registration += 1
            return
        assert response.status_code == 201, (name, response.text)
        task_id = response.json()["id"]

        async def attempts() -> list[dict[str, Any]]:
            path = f"/v1/queues/{task_id}/attempts"
            found: list[dict[str, Any]] = (await client.get(path, headers=owner.headers)).json()
            return [a for a in found if a["finishedAt"] is not None]

        await wait_until(attempts, timeout=10, message=f"{name} finished")
        error = (await attempts())[0]["error"] or ""
    if error.startswith("egress denied: "):
        tally.refused_at_connect += 1
    else:
        tally.failures.append(f"{name}: {error}")
    hits = canary.hits - before
    tally.canary_hits += hits
    if hits:
        tally.reached.append(name)


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    server = Canary()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def redirector(canary: Canary) -> AsyncIterator[Redirector]:
    server = Redirector([t.format(port=canary.port) for t in REDIRECT_TARGETS])
    await server.start()
    yield server
    await server.close()


def redirect_bodies(redirector: Redirector) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            f"redirect to {target}",
            {
                "httpRequest": {
                    "url": f"http://{REDIRECTOR_HOST}:{redirector.port}/{index}",
                    "method": "GET",
                },
                "config": {"timeout": 5000, "executionDelay": 0},
            },
        )
        for index, target in enumerate(REDIRECT_TARGETS)
    ]


async def run_matrix(
    make_server: ServerFactory,
    canary: Canary,
    redirector: Redirector,
    allow: str,
) -> tuple[Tally, list[str]]:
    server = await make_server(egress_allow=allow)
    async with client_for(server) as client:
        owner = await register_owner(client, "ssrf-probe")
    tally = Tally()
    expected_to_reach: list[str] = []
    for case in matrix():
        if case.ipv6 and not canary.has_ipv6:
            continue
        if case.allowed and allow == "127.0.0.1/32":
            expected_to_reach.append(case.name)
        await run_case(server, owner, canary, case.name, case.build(canary.port), tally)
    for name, body in redirect_bodies(redirector):
        await run_case(server, owner, canary, name, body, tally)
    return tally, expected_to_reach


def report(label: str, tally: Tally) -> None:
    print(  # noqa: T201 - the figures the security notes quote
        f"\nSSRF matrix, {label}: {tally.cases} cases, "
        f"{tally.refused_at_registration} refused at registration, "
        f"{tally.refused_at_connect} refused at connect, {tally.canary_hits} canary hits "
        f"({len(tally.reached)} cases reached it)"
    )


async def test_nothing_reaches_the_canary_with_the_default_settings(
    make_server: ServerFactory, canary: Canary, redirector: Redirector
) -> None:
    tally, _ = await run_matrix(make_server, canary, redirector, allow="")
    report("default settings", tally)
    assert tally.cases >= 40
    assert tally.canary_hits == 0 and tally.reached == []
    assert tally.failures == []  # every case was refused, none merely failed
    assert tally.refused_at_registration + tally.refused_at_connect == tally.cases
    assert redirector.hits == 0


async def test_allowing_127_0_0_1_opens_exactly_the_cases_that_mean_it(
    make_server: ServerFactory, canary: Canary, redirector: Redirector
) -> None:
    tally, expected = await run_matrix(make_server, canary, redirector, allow="127.0.0.1/32")
    report("EGRESS_ALLOW=127.0.0.1/32", tally)
    assert sorted(tally.reached) == sorted(expected)
    # every case that does not mean 127.0.0.1 is still refused, at registration or connect
    refused = tally.refused_at_registration + tally.refused_at_connect
    assert refused == tally.cases - len(expected), [
        f for f in tally.failures if f.split(":")[0] not in expected
    ]
    assert redirector.hits == 0  # 127.0.0.2 is still refused


async def test_an_allowed_redirector_cannot_lead_to_loopback(
    make_server: ServerFactory, canary: Canary, redirector: Redirector
) -> None:
    server = await make_server(egress_allow=f"{REDIRECTOR_HOST}/32")
    async with client_for(server) as client:
        owner = await register_owner(client, "ssrf-probe")
    tally = Tally()
    for name, body in redirect_bodies(redirector):
        await run_case(server, owner, canary, name, body, tally)
    report(f"EGRESS_ALLOW={REDIRECTOR_HOST}/32, redirects", tally)
    assert redirector.hits == len(REDIRECT_TARGETS)
    assert tally.canary_hits == 0 and tally.failures == []
    assert tally.refused_at_connect == len(REDIRECT_TARGETS)
