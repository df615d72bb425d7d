"""Pure helpers for the pages: times as text, secrets masked, previews of bodies."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

MASK = "••••••"
# keys whose values are secrets wherever they appear in a registration body
_SECRET_KEYS = {"password", "secret", "key", "cert", "ca", "cookie", "hsts", "value"}
_SECRET_NAMES = re.compile(
    r"auth|cookie|token|secret|passw|signature|api[-_]?key|session|credential", re.IGNORECASE
)


def when(ms: int | None) -> str:
    """Epoch ms as ``2026-11-30 21:30:05Z``; a dash for none."""
    if not ms:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(ms: int | None) -> str:
    return "" if not ms else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


def mask_names(pairs: dict[str, Any] | None) -> dict[str, Any] | None:
    """Header or query pairs with the values of secret-looking names masked."""
    if pairs is None:
        return None
    return {name: MASK if _SECRET_NAMES.search(name) else value for name, value in pairs.items()}


def mask_registration(wire: dict[str, Any]) -> dict[str, Any]:
    """A registration body (spec_to_wire) with credentials, keys, cookies and secret-named
    headers and query parameters replaced by a mask. The URL's query is masked the same."""
    return {
        **wire,
        "httpRequest": _mask_request(dict(wire.get("httpRequest", {}))),
        "config": _mask_config(dict(wire.get("config", {}))),
    }


def _mask_request(request: dict[str, Any]) -> dict[str, Any]:
    for name in ("headers", "query"):
        if name in request:
            request[name] = mask_names(request[name])
    if "url" in request:
        request["url"] = mask_url(request["url"])
    for name in ("authBasic", "authDigest", "authNtlm"):
        if name in request:
            request[name] = {**request[name], "password": MASK}
    if "authAwsSigv4" in request:
        request["authAwsSigv4"] = {**request["authAwsSigv4"], "key": MASK, "secret": MASK}
    if "cookie" in request:
        request["cookie"] = MASK
    return request


def _mask_config(config: dict[str, Any]) -> dict[str, Any]:
    for name, value in list(config.items()):
        if name in _SECRET_KEYS:
            config[name] = MASK
        elif name == "proxyHeaders":
            config[name] = mask_names(value)
        elif isinstance(value, dict) and "password" in value:
            config[name] = {**value, "password": MASK}
    return config


def mask_url(url: str) -> str:
    """The URL with a password in it and secret-named query values masked."""
    url = re.sub(r"(//[^/@:]*:)[^/@]*@", lambda m: m.group(1) + MASK + "@", url)

    def query_value(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"{name}={MASK}" if _SECRET_NAMES.search(name) else match.group(0)

    return re.sub(r"(?<=[?&])([^=&#]+)=([^&#]*)", query_value, url)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def preview(body: bytes | None, limit: int = 2048) -> tuple[str, bool]:
    """Text to show for a stored body and whether it was cut for display."""
    if not body:
        return "", False
    text = body[:limit].decode("utf-8", errors="replace")
    return text, len(body) > limit
