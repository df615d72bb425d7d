"""Secrets hidden from ``GET /v1/queues/:id/config`` unless the owner asks for them with
``?reveal=true``: passwords, private keys, signing secrets, and the values of headers,
query parameters and cookies whose names say they carry a credential."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
# names of headers, query parameters and cookies that usually carry a credential
_SECRET_NAME = re.compile(r"auth|token|key|secret|pass|cookie|session|signature|credential", re.I)
_CREDENTIALS = ("authBasic", "authDigest", "authNtlm")
_PROXY_CREDENTIALS = ("locationTrusted", "proxyAuthNtlm", "proxyAuthBasic", "proxyAuthDigest")


def redact(wire: dict[str, Any]) -> dict[str, Any]:
    """A copy of a registration body (spec_to_wire's shape) with its secrets replaced by
    ``"***"``; the shape and every other value are kept."""
    return {
        **wire,
        "httpRequest": _request(dict(wire.get("httpRequest", {}))),
        "config": _config(dict(wire.get("config", {}))),
    }


def _request(request: dict[str, Any]) -> dict[str, Any]:
    if "url" in request:
        request["url"] = _url(request["url"])
    for name in ("headers", "query"):
        if name in request:
            request[name] = _named(request[name])
    if isinstance(request.get("cookie"), list):
        request["cookie"] = [{**c, "value": HIDDEN} for c in request["cookie"]]
    elif "cookie" in request:
        request["cookie"] = HIDDEN  # a cookie file
    for name in _CREDENTIALS:
        if name in request:
            request[name] = {**request[name], "password": HIDDEN}
    if "authAwsSigv4" in request:
        request["authAwsSigv4"] = {**request["authAwsSigv4"], "secret": HIDDEN}
    return request


def _config(config: dict[str, Any]) -> dict[str, Any]:
    for name in _PROXY_CREDENTIALS:
        if name in config:
            config[name] = {**config[name], "password": HIDDEN}
    if "key" in config:
        config["key"] = HIDDEN  # a private key
    if isinstance(config.get("cert"), dict) and "password" in config["cert"]:
        config["cert"] = {**config["cert"], "password": HIDDEN}
    if "proxyHeaders" in config:
        config["proxyHeaders"] = _named(config["proxyHeaders"])
    return config


def _named(values: dict[str, Any]) -> dict[str, Any]:
    return {k: HIDDEN if _SECRET_NAME.search(k) else v for k, v in values.items()}


def _url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{HIDDEN}@{host}"))
