"""Registration-time checks of where a task's calls would go (the egress policy).

What can be decided from the text alone is refused here with a 400 naming the field and
the host: written-out addresses in any spelling, ``localhost`` names, ports, proxies not
listed by the admin, hosts outside the owner's validated domains. Host names that need DNS
are decided again at connect time by the dispatcher, on the address libcurl resolved.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from ..dispatch.egress import EgressPolicy, normalize_host, owner_allows
from ..models import TaskSpec
from .convert import field_error
from .services import Services


def url_refusal(
    policy: EgressPolicy, url: str, allowed_hosts: tuple[str, ...] | None
) -> str | None:
    """Why the policy (or the owner's validated domains) refuses ``url``; None: allowed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return policy.host(host, port) or owner_allows(allowed_hosts, host)


def refuse_outgoing(
    policy: EgressPolicy,
    spec: TaskSpec,
    allowed_hosts: tuple[str, ...] | None,
    prefix: tuple[str, ...] = (),
) -> None:
    """Raise ValidationFailed (400) for the first destination the policy refuses.

    ``allowed_hosts`` are the owner's validated domains (None: no list). ``prefix`` is
    where the task sits in the request body (empty for a task, for a schedule too).
    """
    request, config = spec.request, spec.config
    reason = url_refusal(policy, request.url, allowed_hosts)
    if reason is not None:
        raise field_error((*prefix, "httpRequest", "url"), reason)
    for index, entry in enumerate(config.resolve or ()):
        for address in entry.addresses:
            reason = policy.address(ipaddress.ip_address(address), entry.host)
            if reason is not None:
                raise field_error((*prefix, "config", "resolve", str(index), "address"), reason)
    if config.proxy is not None and not policy.is_listed_proxy(config.proxy.host):
        host = normalize_host(config.proxy.host)
        raise field_error(
            (*prefix, "config", "proxy", "host"),
            f"egress denied: proxy {host} is not in EGRESS_PROXIES",
        )
    if config.doh_url is not None:
        reason = url_refusal(policy, config.doh_url, None)
        if reason is not None:
            raise field_error((*prefix, "config", "dohUrl"), reason)
    for index, server in enumerate(config.dns_server or ()):
        reason = policy.connection(server, 53, None)
        if reason is not None:
            raise field_error((*prefix, "config", "dnsServer", str(index)), reason)


async def check_outgoing(app: Services, owner_id: str, spec: TaskSpec) -> None:
    """``refuse_outgoing`` with the server's policy and the owner's validated domains."""
    security = await app.store.owner_security(owner_id)
    refuse_outgoing(app.egress, spec, security.allowed_hosts)
