"""The egress policy: which addresses, hosts and ports a task's calls may reach.

Pure decisions, no I/O. ``EgressPolicy.connection`` is asked by the dispatcher's
open-socket hook for every connection libcurl opens (first request, redirect hops,
``resolve`` pins, the proxy); ``EgressPolicy.literal`` is asked when a task is registered,
for hosts that are addresses written out (``0x7f000001``, ``[::ffff:127.0.0.1]``) or names
that always mean this machine (``localhost``). A refusal is a reason in words, e.g.
``egress denied: 127.0.0.1 is loopback``; None means allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Special-purpose ranges (IANA IPv4/IPv6 special-purpose registries, RFC 6890), the most
# specific first so the reason names the narrowest one.
_SPECIAL: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "the cloud metadata address"),
    ("fd00:ec2::254/128", "the cloud metadata address"),
    ("255.255.255.255/32", "broadcast"),
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("::/128", "unspecified"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "unique-local"),
    ("fec0::/10", "site-local"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("192.0.0.0/24", "reserved for protocol assignments"),
    ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
    ("198.18.0.0/15", "reserved for benchmarking"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("100::/64", "discard-only"),
    ("2001:2::/48", "reserved for benchmarking"),
    ("2001:10::/28", "reserved (ORCHID)"),
    ("2001:20::/28", "reserved (ORCHIDv2)"),
    ("5f00::/16", "reserved (SRv6 SIDs)"),
)
_SPECIAL_NETWORKS: tuple[tuple[IpNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason) for cidr, reason in _SPECIAL
)
# IPv6 forms that carry an IPv4 address inside: the inner address decides.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
LOCAL_NAMES = ("localhost",)  # RFC 6761: it and every name under it are this machine


class EgressError(ValueError):
    """A setting of the egress policy that cannot be read; the message names the entry."""


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets: the form patterns are matched on."""
    return host.strip().strip("[]").rstrip(".").lower()


def host_matches(pattern: str, host: str) -> bool:
    """``example.com`` matches itself only; ``*.example.com`` matches names under it."""
    host = normalize_host(host)
    pattern = normalize_host(pattern)
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def is_host_pattern(text: str) -> bool:
    """A host name, or ``*.`` and a host name with at least two labels."""
    name = text[2:] if text.startswith("*.") else text
    labels = name.split(".")
    if text.startswith("*.") and len(labels) < 2:
        return False
    return 0 < len(name) <= 253 and all(_is_label(label) for label in labels)


def _is_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in label)
    )


def parse_ipv4_number(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a host spelled as numbers means (``127.1``, ``0x7f000001``,
    ``0177.0.0.1``, ``2130706433``), as inet_aton, libcurl and WHATWG URLs read it; None
    when the host is not such a spelling."""
    parts = host.rstrip(".").split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _ipv4_part(part)
        if number is None:
            return None
        numbers.append(number)
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_part(part: str) -> int | None:
    lowered = part.lower()
    try:
        if lowered.startswith("0x"):
            return int(lowered[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def host_address(host: str) -> IpAddress | None:
    """The address a URL host names literally (any IPv4 spelling, an IPv6 literal), or None
    for a host name."""
    bare = normalize_host(host)
    if ":" in bare:
        try:
            return ipaddress.IPv6Address(bare.split("%")[0])
        except ValueError:
            return None
    return parse_ipv4_number(bare)


def embedded_ipv4(address: IpAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64, 6to4 or Teredo
    IPv6 address."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64_LOCAL:
        return ipaddress.IPv4Address((int(address) >> 8) & 0xFFFFFFFF)
    return None


def special_range(address: IpAddress) -> str | None:
    """What kind of non-public address this is (``loopback``...), or None if public."""
    for network, reason in _SPECIAL_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    inner = embedded_ipv4(address)
    if inner is None:
        return None
    kind = special_range(inner)
    return None if kind is None else f"{kind} ({inner} inside an IPv6 address)"


def _entries(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _split(setting: str, text: str) -> tuple[tuple[IpNetwork, ...], tuple[str, ...]]:
    networks: list[IpNetwork] = []
    hosts: list[str] = []
    for entry in _entries(text):
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        if not is_host_pattern(normalize_host(entry)):
            raise EgressError(f"{setting}: {entry!r} is neither a CIDR nor a host name")
        hosts.append(normalize_host(entry))
    return tuple(networks), tuple(hosts)


def _ports(text: str) -> frozenset[int] | None:
    if not text.strip():
        return None
    ports: set[int] = set()
    for entry in _entries(text):
        if not entry.isdigit() or not 1 <= int(entry) <= 65535:
            raise EgressError(f"EGRESS_PORTS: {entry!r} is not a port from 1 to 65535")
        ports.add(int(entry))
    return frozenset(ports)


def _contains(networks: Iterable[IpNetwork], address: IpAddress, strict: bool = False) -> bool:
    """Whether a network holds ``address`` or the IPv4 address inside it. ``strict`` (for
    allow lists) looks inside IPv4-mapped addresses only: they are the one form that
    reaches the same IPv4 host; NAT64, 6to4 and Teredo ones go through some gateway."""
    forms = [address]
    inner = embedded_ipv4(address)
    if strict and isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped
    if inner is not None:
        forms.append(inner)
    return any(form.version == n.version and form in n for n in networks for form in forms)


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The admin's rules; the default refuses every special-purpose address.

    ``allow_*`` may be reached although special (the tests use ``127.0.0.1/32``); ``deny_*``
    are refused whatever else says; ``proxy_*`` are the only proxies a task may name (their
    own address is then allowed); ``ports``, when set, are the only destination ports.
    """

    allow_networks: tuple[IpNetwork, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    deny_networks: tuple[IpNetwork, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    proxy_networks: tuple[IpNetwork, ...] = ()
    proxy_hosts: tuple[str, ...] = ()
    ports: frozenset[int] | None = None

    @classmethod
    def parse(cls, allow: str = "", deny: str = "", proxies: str = "", ports: str = "") -> Self:
        """Build from the comma-separated settings. Raises EgressError naming the entry."""
        allow_networks, allow_hosts = _split("EGRESS_ALLOW", allow)
        deny_networks, deny_hosts = _split("EGRESS_DENY", deny)
        proxy_networks, proxy_hosts = _split("EGRESS_PROXIES", proxies)
        return cls(
            allow_networks,
            allow_hosts,
            deny_networks,
            deny_hosts,
            proxy_networks,
            proxy_hosts,
            _ports(ports),
        )

    def host(self, host: str, port: int | None = None) -> str | None:
        """Refusal reason for a host name (or literal) alone: the deny list, ``localhost``
        names, written-out addresses and the port list. Names that need DNS pass here and
        are decided at connect time."""
        if port is not None and self.ports is not None and port not in self.ports:
            return f"egress denied: port {port} is not in EGRESS_PORTS"
        bare = normalize_host(host)
        if any(host_matches(p, bare) for p in self.deny_hosts):
            return f"egress denied: {bare} is in EGRESS_DENY"
        if any(host_matches(p, bare) for p in self.allow_hosts):
            return None
        address = host_address(bare)
        if address is None and (bare in LOCAL_NAMES or bare.endswith(".localhost")):
            address = ipaddress.IPv4Address("127.0.0.1")
        return None if address is None else self.address(address)

    def address(self, address: IpAddress, host: str | None = None) -> str | None:
        """Refusal reason for connecting to ``address`` (reached by the name ``host``)."""
        if _contains(self.deny_networks, address):
            return f"egress denied: {address} is in EGRESS_DENY"
        if host is not None and any(host_matches(p, host) for p in self.deny_hosts):
            return f"egress denied: {normalize_host(host)} is in EGRESS_DENY"
        if _contains(self.allow_networks, address, strict=True):
            return None
        if host is not None and any(host_matches(p, host) for p in self.allow_hosts):
            return None
        kind = special_range(address)
        return None if kind is None else f"egress denied: {address} is {kind}"

    def connection(self, ip: str, port: int, host: str | None) -> str | None:
        """Refusal reason for a socket libcurl is about to open to ``ip``:``port``."""
        if self.ports is not None and port not in self.ports:
            return f"egress denied: port {port} is not in EGRESS_PORTS"
        try:
            address = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return f"egress denied: {ip!r} is not an IP address"
        return self.address(address, host)

    def is_listed_proxy(self, host: str) -> bool:
        """Whether ``host`` (a name or an address) is one of the admin's proxies."""
        bare = normalize_host(host)
        if any(host_matches(p, bare) for p in self.proxy_hosts):
            return True
        address = host_address(bare)
        return address is not None and _contains(self.proxy_networks, address, strict=True)

    def proxy_connection(self, ip: str, proxy_host: str) -> str | None:
        """Refusal reason for the socket to a proxy: a listed proxy may be anywhere,
        but the deny list still applies."""
        if not self.is_listed_proxy(proxy_host):
            return f"egress denied: proxy {normalize_host(proxy_host)} is not in EGRESS_PROXIES"
        try:
            address = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return f"egress denied: {ip!r} is not an IP address"
        if _contains(self.deny_networks, address):
            return f"egress denied: {address} is in EGRESS_DENY"
        return None


def owner_allows(patterns: tuple[str, ...] | None, host: str) -> str | None:
    """Refusal reason when an owner has validated domains and ``host`` is not among them."""
    if patterns is None or any(host_matches(p, host) for p in patterns):
        return None
    return f"egress denied: {normalize_host(host)} is not a validated domain of this owner"
