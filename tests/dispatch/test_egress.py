"""The egress policy: pure decisions, and the dispatcher's hooks against real sockets."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator

import pytest

from tasks_server.dispatch import CurlDispatcher, CurlSettings
from tasks_server.dispatch.egress import (
    EgressError,
    EgressPolicy,
    host_address,
    host_matches,
    owner_allows,
    parse_ipv4_number,
)
from tasks_server.models import Call, HttpRequest, Outcome, Proxy, ResolveEntry, TaskConfig
from tests.support.targets import Reply, TargetServer

DEFAULT = EgressPolicy()


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("169.254.43518", "169.254.169.254"),
        ("127.0.0.1.", "127.0.0.1"),
    ],
)
def test_every_ipv4_spelling_is_read_as_its_address(spelling: str, address: str) -> None:
    assert parse_ipv4_number(spelling) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", ["example.com", "1.2.3.4.5", "256.1.1.1", "1e3", "08.1"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ipv4_number(host) is None


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "127.0.0.1 is loopback"),
        ("0x7f000001", "127.0.0.1 is loopback"),
        ("[::1]", "::1 is loopback"),
        ("[::ffff:7f00:1]", "::ffff:7f00:1 is loopback (127.0.0.1 inside an IPv6 address)"),
        ("[::ffff:169.254.169.254]", "the cloud metadata address (169.254.169.254 inside"),
        ("169.254.169.254", "169.254.169.254 is the cloud metadata address"),
        ("[fd00:ec2::254]", "fd00:ec2::254 is the cloud metadata address"),
        ("169.254.1.1", "is link-local"),
        ("[fe80::1]", "is link-local"),
        ("10.1.2.3", "private (RFC 1918)"),
        ("172.16.0.1", "private (RFC 1918)"),
        ("192.168.1.1", "private (RFC 1918)"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("0.0.0.0", "'this network'"),
        ("[::]", "unspecified"),
        ("[fc00::1]", "unique-local"),
        ("[fd12::1]", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("[ff02::1]", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.1", "documentation"),
        ("[2001:db8::1]", "documentation"),
        ("[64:ff9b::7f00:1]", "loopback (127.0.0.1 inside"),
        ("[2002:7f00:1::]", "loopback (127.0.0.1 inside"),
        ("[::127.0.0.1]", "loopback (127.0.0.1 inside"),
        ("localhost", "127.0.0.1 is loopback"),
        ("LOCALHOST.", "127.0.0.1 is loopback"),
        ("a.b.localhost", "127.0.0.1 is loopback"),
    ],
)
def test_special_addresses_are_refused_by_default(host: str, reason: str) -> None:
    refusal = DEFAULT.host(host)
    assert refusal is not None and refusal.startswith("egress denied: ")
    assert reason in refusal


@pytest.mark.parametrize("host", ["93.184.216.34", "[2606:4700::1111]", "example.com", "8.8.8.8"])
def test_public_addresses_and_names_pass(host: str) -> None:
    assert DEFAULT.host(host) is None


def test_allow_list_opens_exactly_what_it_names() -> None:
    policy = EgressPolicy.parse(allow="127.0.0.1/32, intranet.example")
    assert policy.host("127.0.0.1") is None
    assert policy.host("0x7f000001") is None  # the same address, spelled otherwise
    assert policy.host("[::ffff:127.0.0.1]") is None
    assert policy.host("127.0.0.2") == "egress denied: 127.0.0.2 is loopback"
    assert policy.host("[::1]") == "egress denied: ::1 is loopback"
    assert policy.connection("10.0.0.5", 80, "intranet.example") is None
    assert policy.connection("10.0.0.5", 80, "other.example") is not None


def test_deny_list_wins_over_allow_and_covers_public_addresses() -> None:
    policy = EgressPolicy.parse(allow="10.0.0.0/8", deny="10.9.0.0/16, *.blocked.example")
    assert policy.connection("10.1.0.1", 443, None) is None
    assert policy.connection("10.9.0.1", 443, None) == "egress denied: 10.9.0.1 is in EGRESS_DENY"
    refusal = policy.connection("93.184.216.34", 443, "a.blocked.example")
    assert refusal == "egress denied: a.blocked.example is in EGRESS_DENY"
    assert policy.host("x.blocked.example") == "egress denied: x.blocked.example is in EGRESS_DENY"


def test_port_list_limits_destination_ports() -> None:
    policy = EgressPolicy.parse(ports="80,443")
    assert policy.host("example.com", 443) is None
    assert policy.host("example.com", 8080) == "egress denied: port 8080 is not in EGRESS_PORTS"
    assert policy.connection("93.184.216.34", 22, None) is not None


def test_only_listed_proxies_are_allowed_and_may_be_private() -> None:
    policy = EgressPolicy.parse(proxies="proxy.internal, 10.8.0.0/16")
    assert policy.is_listed_proxy("PROXY.internal.")
    assert policy.is_listed_proxy("10.8.1.1")
    assert not policy.is_listed_proxy("evil.example")
    assert policy.proxy_connection("10.8.1.1", "10.8.1.1") is None
    assert policy.proxy_connection("10.0.0.1", "evil.example") is not None


@pytest.mark.parametrize("setting", ["EGRESS_ALLOW", "EGRESS_DENY", "EGRESS_PROXIES"])
def test_bad_entries_are_named(setting: str) -> None:
    keyword = {"EGRESS_ALLOW": "allow", "EGRESS_DENY": "deny", "EGRESS_PROXIES": "proxies"}
    with pytest.raises(EgressError, match=f"{setting}: 'not a host!'"):
        EgressPolicy.parse(**{keyword[setting]: "10.0.0.0/8,not a host!"})
    with pytest.raises(EgressError, match="EGRESS_PORTS"):
        EgressPolicy.parse(ports="80,0")


def test_host_patterns_match_the_name_or_names_under_it() -> None:
    assert host_matches("example.com", "EXAMPLE.com.")
    assert not host_matches("example.com", "a.example.com")
    assert host_matches("*.example.com", "a.b.example.com")
    assert not host_matches("*.example.com", "example.com")
    assert not host_matches("*.example.com", "badexample.com")
    assert owner_allows(None, "anything.example") is None
    assert owner_allows(("*.example.com",), "x.example.com") is None
    refusal = owner_allows(("example.com",), "evil.example")
    assert refusal == "egress denied: evil.example is not a validated domain of this owner"


def test_host_address_reads_ipv6_literals_with_and_without_brackets() -> None:
    assert host_address("[::1]") == ipaddress.IPv6Address("::1")
    assert host_address("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert host_address("example.com") is None


# -- the dispatcher's hooks, against real sockets on loopback -----------------------------


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


def call(url: str, config: TaskConfig | None = None, **fields: object) -> Call:
    return Call(
        HttpRequest(url=url, method="GET"),
        config or TaskConfig(),
        (),
        5_000,
        1 << 16,
        **fields,  # type: ignore[arg-type]
    )


async def send(policy: EgressPolicy, *calls: Call) -> list[Outcome]:
    dispatcher = CurlDispatcher(CurlSettings(egress=policy), close_grace_s=0.5)
    await dispatcher.start()
    try:
        futures = [dispatcher.submit(c) for c in calls]
        return list(await asyncio.wait_for(asyncio.gather(*futures), timeout=10))
    finally:
        await dispatcher.close()


async def test_a_name_pinned_to_loopback_is_refused_at_connect_time(target: TargetServer) -> None:
    pin = ResolveEntry("canary.test", target.port, ("127.0.0.1",))
    [outcome] = await send(
        DEFAULT, call(f"http://canary.test:{target.port}/x", TaskConfig(resolve=(pin,)))
    )
    assert outcome.denied and outcome.error == "egress denied: 127.0.0.1 is loopback"
    assert target.arrivals == []


async def test_a_redirect_to_a_refused_host_is_not_followed(target: TargetServer) -> None:
    policy = EgressPolicy.parse(allow="127.0.0.1/32")
    target.route("/start", Reply(302, b"", (("Location", "http://127.0.0.2:1/steal"),)))
    target.route("/ok", Reply(302, b"", (("Location", "/end"),)))
    target.route("/end", Reply(200, b"end"))
    refused, followed = await send(
        policy, call(target.url("/start")), call(target.url("/ok"), owner_id="o")
    )
    assert refused.denied and refused.error == "egress denied: 127.0.0.2 is loopback"
    assert (followed.status, followed.body, followed.denied) == (200, b"end", False)


async def test_redirect_hops_outside_the_owners_domains_are_refused(target: TargetServer) -> None:
    policy = EgressPolicy.parse(allow="127.0.0.1/32, elsewhere.test")
    target.route("/start", Reply(302, b"", (("Location", "http://elsewhere.test/"),)))
    [outcome] = await send(policy, call(target.url("/start"), allowed_hosts=("127.0.0.1",)))
    assert outcome.error == "egress denied: elsewhere.test is not a validated domain of this owner"
    assert [a.path for a in target.arrivals] == ["/start"]


async def test_a_proxy_not_listed_is_refused_before_any_socket(target: TargetServer) -> None:
    policy = EgressPolicy.parse(allow="127.0.0.1/32")
    config = TaskConfig(proxy=Proxy("http", "127.0.0.1", target.port))
    [outcome] = await send(policy, call("http://93.184.216.34/x", config))
    assert outcome.denied and outcome.error == (
        "egress denied: proxy 127.0.0.1 is not in EGRESS_PROXIES"
    )
    assert target.arrivals == []


async def test_a_doh_server_whose_name_resolves_to_loopback_is_refused() -> None:
    hits: list[object] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    loop = asyncio.get_running_loop()
    loop.add_reader(listener.fileno(), lambda: hits.append(listener.accept()[0].close()))
    try:
        # this machine's own name is no written-out address: only the lookup shows where
        # it goes (on most systems /etc/hosts points it at loopback)
        name = socket.gethostname()
        if not await _resolves_to_loopback(name):
            pytest.skip(f"{name} does not resolve to 127.0.0.1 here")
        config = TaskConfig(doh_url=f"https://{name}:{port}/dns-query")
        [outcome] = await send(DEFAULT, call("http://example.com/x", config))
        assert outcome.denied and "127.0.0.1 is loopback" in (outcome.error or "")
        assert hits == []
    finally:
        loop.remove_reader(listener.fileno())
        listener.close()


async def _resolves_to_loopback(name: str) -> bool:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return any(info[4][0] == "127.0.0.1" for info in infos)
