"""Registration-time checks of where a task's calls would go (the egress policy).

What can be decided from the text alone is refused here with a 400 naming the field and
the host: written-out addresses in any spelling, ``localhost`` names, ports, proxies not
listed by the admin, hosts outside the owner's validated domains. Host names that need DNS
are decided again at connect time by the dispatcher, on the address libcurl resolved.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from ..clock import Clock
from ..dispatch.egress import EgressPolicy, normalize_host, owner_allows
from ..models import TaskSpec
from ..store import Store
from .errors import field_error

Verdict = Callable[[str, int], str | None]  # (host, port) → refusal reason or None
_MEMORY_LIMIT = 10_000  # entries per cache; beyond it the cache starts afresh


class Destinations:
    """The registration-time checks of where calls go, with what they can remember: the
    policy's verdict per host and port (the policy is fixed for the life of the process)
    and each owner's validated domains.

    Domains are read once per owner and kept ``max_age_s`` seconds: a change made through
    this server applies at once (``forget``), one made through another node of a shared
    database within ``max_age_s`` (the dispatcher checks every connection anyway).
    """

    def __init__(
        self, policy: EgressPolicy, store: Store, clock: Clock, max_age_s: float = 5.0
    ) -> None:
        self.policy = policy
        self._store = store
        self._clock = clock
        self._max_age_s = max_age_s
        self._domains: dict[str, tuple[float, tuple[str, ...] | None]] = {}
        self._verdicts: dict[tuple[str, int], str | None] = {}  # (host, port) → refusal

    async def check(self, owner_id: str, spec: TaskSpec, prefix: tuple[str, ...] = ()) -> None:
        """``refuse_outgoing`` with this policy and the owner's validated domains."""
        self.refuse(spec, await self.domains(owner_id), prefix)

    def refuse(
        self, spec: TaskSpec, domains: tuple[str, ...] | None, prefix: tuple[str, ...] = ()
    ) -> None:
        """``refuse_outgoing`` with this policy and the given validated domains."""
        refuse_outgoing(self.policy, spec, domains, prefix, self._verdict)

    async def domains(self, owner_id: str) -> tuple[str, ...] | None:
        """The owner's validated domains (None: no list). Raises OwnerNotFound."""
        now_s = self._clock.monotonic()
        seen = self._domains.get(owner_id)
        if seen is not None and now_s - seen[0] < self._max_age_s:
            return seen[1]
        hosts = (await self._store.owner_security(owner_id)).allowed_hosts
        if len(self._domains) >= _MEMORY_LIMIT:
            self._domains.clear()
        self._domains[owner_id] = (now_s, hosts)
        return hosts

    def forget(self, owner_id: str) -> None:
        """The owner's domains changed (or it is gone): read them again next time."""
        self._domains.pop(owner_id, None)

    def _verdict(self, host: str, port: int) -> str | None:
        key = (host, port)
        if key in self._verdicts:
            return self._verdicts[key]
        if len(self._verdicts) >= _MEMORY_LIMIT:
            self._verdicts.clear()
        verdict = self._verdicts[key] = self.policy.host(host, port)
        return verdict


def url_refusal(
    policy: EgressPolicy, url: str, allowed_hosts: tuple[str, ...] | None
) -> str | None:
    """Why the policy (or the owner's validated domains) refuses ``url``; None: allowed."""
    return _url_refusal(policy.host, url, allowed_hosts)


def _url_refusal(verdict: Verdict, url: str, allowed_hosts: tuple[str, ...] | None) -> str | None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return verdict(host, port) or owner_allows(allowed_hosts, host)


def refuse_outgoing(
    policy: EgressPolicy,
    spec: TaskSpec,
    allowed_hosts: tuple[str, ...] | None,
    prefix: tuple[str, ...] = (),
    verdict: Verdict | None = None,
) -> None:
    """Raise ValidationFailed (400) for the first destination the policy refuses.

    ``allowed_hosts`` are the owner's validated domains (None: no list). ``prefix`` is
    where the task sits in the request body (empty for a task, for a schedule too).
    ``verdict`` answers ``policy.host`` (a memory of it, see ``Destinations``).
    """
    request, config = spec.request, spec.config
    verdict = verdict or policy.host
    reason = _url_refusal(verdict, request.url, allowed_hosts)
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
        reason = _url_refusal(verdict, config.doh_url, None)
        if reason is not None:
            raise field_error((*prefix, "config", "dohUrl"), reason)
    for index, server in enumerate(config.dns_server or ()):
        reason = policy.connection(server, 53, None)
        if reason is not None:
            raise field_error((*prefix, "config", "dnsServer", str(index)), reason)
    _refuse_callbacks(verdict, spec, allowed_hosts, prefix)


def _refuse_callbacks(
    verdict: Verdict,
    spec: TaskSpec,
    allowed_hosts: tuple[str, ...] | None,
    prefix: tuple[str, ...],
) -> None:
    """A callback is a call to the owner's URL as well, made later with the server's body:
    refused now rather than when the task ends."""
    for name, callback in (("onSuccess", spec.on_success), ("onFailure", spec.on_failure)):
        if callback is not None:
            reason = _url_refusal(verdict, callback.url, allowed_hosts)
            if reason is not None:
                raise field_error((*prefix, name, "url"), reason)


class _WithDestinations(Protocol):  # the API's Services (services.py imports this module)
    @property
    def destinations(self) -> Destinations: ...


async def check_outgoing(app: _WithDestinations, owner_id: str, spec: TaskSpec) -> None:
    """``refuse_outgoing`` with the server's policy and the owner's validated domains."""
    await app.destinations.check(owner_id, spec)
