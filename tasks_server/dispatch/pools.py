"""Connection pools: one libcurl share (connections and TLS sessions) per owner and
client credentials, so no call ever rides a connection opened for someone else.

libcurl reuses a kept-alive connection for any later transfer to the same host whose TLS
settings match; a client *key* is not part of that match, and a tenant's framing tricks
would reach the next request on the connection. A share with ``LOCK_DATA_CONNECT`` has a
connection cache of its own (and ``LOCK_DATA_SSL_SESSION`` a session cache of its own,
since a resumed TLS session carries the client authentication of the first handshake),
so keeping one share per (owner, credentials) isolates owners while calls of one owner
still reuse their connections.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import pycurl

from tasks_server.models import Call


def pool_key(call: Call) -> str:
    """The pool a call's connections belong to: its owner, and a digest of everything that
    authenticates a connection rather than a request (client certificate and key, proxy
    and its credentials, NTLM, trust settings). Pure."""
    config, request = call.config, call.request
    material = (
        config.cert,
        config.key,
        config.cert_type,
        config.key_type,
        config.ca,
        config.insecure,
        config.proxy,
        config.proxy_headers,
        config.proxy_auth_basic,
        config.proxy_auth_digest,
        config.proxy_auth_ntlm,
        config.proxy_insecure,
        request.auth_ntlm,
    )
    if not any(value for value in material):
        return call.owner_id
    digest = hashlib.sha256(repr(material).encode()).hexdigest()[:32]
    return f"{call.owner_id}/{digest}"


class ConnectionPools:
    """The shares, created on first use and closed, least recently used first, when more
    than ``limit`` exist and nobody uses them (their idle connections close with them)."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._shares: OrderedDict[str, Any] = OrderedDict()
        self._users: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._shares)

    def acquire(self, key: str) -> Any:
        """The share for ``key``; call ``release(key)`` when the transfer is done."""
        share = self._shares.get(key)
        if share is None:
            share = new_share(pycurl.LOCK_DATA_CONNECT, pycurl.LOCK_DATA_SSL_SESSION)
            self._shares[key] = share
            self._evict()
        self._shares.move_to_end(key)
        self._users[key] = self._users.get(key, 0) + 1
        return share

    def release(self, key: str) -> None:
        self._users[key] -= 1

    def _evict(self) -> None:
        for key in list(self._shares):
            if len(self._shares) <= self._limit:
                return
            if self._users.get(key, 0) == 0:
                self._shares.pop(key).close()
                self._users.pop(key, None)

    def close(self) -> None:
        for share in self._shares.values():
            share.close()
        self._shares.clear()
        self._users.clear()


def new_share(*locks: int) -> Any:
    share = pycurl.CurlShare()
    for lock in locks:
        share.setopt(pycurl.SH_SHARE, lock)
    return share
