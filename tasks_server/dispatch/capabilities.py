"""What this pycurl and libcurl build can do, and which set fields it cannot honour.

The API checks ``unsupported_fields`` when it accepts a task, so a field this build cannot
honour is refused up front rather than turned into a different request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pycurl

from tasks_server.models import HttpRequest, Pem, TaskConfig

from .options import HAPROXY_CLIENT_IP


def _feature(name: str) -> Callable[[Any], bool]:
    bit = getattr(pycurl, name, 0)
    return lambda info: bool(bit) and bool(info[4] & bit)


def _at_least(version: int, *option_names: str) -> Callable[[Any], bool]:
    return lambda info: info[2] >= version and all(hasattr(pycurl, n) for n in option_names)


_CAPABILITY_CHECKS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("tls", _feature("VERSION_SSL")),
    ("http2", _feature("VERSION_HTTP2")),
    ("ntlm", _feature("VERSION_NTLM")),
    ("ipv6", _feature("VERSION_IPV6")),
    ("hsts", lambda info: _feature("VERSION_HSTS")(info) and hasattr(pycurl, "HSTSREADFUNCTION")),
    ("https_proxy", _feature("VERSION_HTTPS_PROXY")),
    # DNS_SERVERS works only with the c-ares resolver; version_info()[9] is its version.
    ("dns_servers", lambda info: info[9] is not None),
    ("http09", _at_least(0x074000, "HTTP09_ALLOWED")),
    ("doh", _at_least(0x073E00, "DOH_URL")),
    ("doh_insecure", _at_least(0x074C00, "DOH_URL")),
    ("aws_sigv4", _at_least(0x074B00, "AWS_SIGV4")),
    ("pem_content", _at_least(0x074D00, "CAINFO_BLOB", "SSLCERT_BLOB", "SSLKEY_BLOB")),
    ("haproxy_protocol", _at_least(0x073C00, "HAPROXYPROTOCOL")),
    ("haproxy_client_ip", lambda info: HAPROXY_CLIENT_IP is not None and info[2] >= 0x080200),
)


def curl_capabilities() -> frozenset[str]:
    """Names of the optional features this pycurl and libcurl build supports."""
    info = pycurl.version_info()
    return frozenset(name for name, check in _CAPABILITY_CHECKS if check(info))


def _has_content(pem: Pem | None) -> bool:
    return pem is not None and pem.content is not None


_FIELD_NEEDS: tuple[tuple[str, str, Callable[[HttpRequest, TaskConfig], bool]], ...] = (
    ("config.dnsServer", "dns_servers", lambda r, c: bool(c.dns_server)),
    ("config.httpVersion", "http2", lambda r, c: c.http_version in ("2", "2-prior-knowledge")),
    ("config.httpVersion", "http09", lambda r, c: c.http_version == "0.9"),
    ("httpRequest.authNtlm", "ntlm", lambda r, c: r.auth_ntlm is not None),
    ("config.proxyAuthNtlm", "ntlm", lambda r, c: c.proxy_auth_ntlm is not None),
    ("httpRequest.authAwsSigv4", "aws_sigv4", lambda r, c: r.auth_aws_sigv4 is not None),
    ("config.haProxyClientIp", "haproxy_client_ip", lambda r, c: c.ha_proxy_client_ip is not None),
    ("config.haProxyProtocol", "haproxy_protocol", lambda r, c: bool(c.ha_proxy_protocol)),
    ("config.dohUrl", "doh", lambda r, c: c.doh_url is not None),
    ("config.dohInsecure", "doh_insecure", lambda r, c: bool(c.doh_insecure)),
    ("config.hsts", "hsts", lambda r, c: c.hsts not in (None, False)),
    ("config.ipVersion", "ipv6", lambda r, c: c.ip_version == 6),
    ("config.proxy", "https_proxy", lambda r, c: _is_https_proxy(c)),
    ("config.ca", "pem_content", lambda r, c: _has_content(c.ca)),
    ("config.cert", "pem_content", lambda r, c: c.cert is not None and _has_content(c.cert.value)),
    ("config.key", "pem_content", lambda r, c: _has_content(c.key)),
    ("config.ca", "tls", lambda r, c: c.ca is not None),
    ("config.cert", "tls", lambda r, c: c.cert is not None),
    ("config.key", "tls", lambda r, c: c.key is not None),
    ("config.certStatus", "tls", lambda r, c: bool(c.cert_status)),
    ("config.tlsVersion", "tls", lambda r, c: c.tls_version is not None),
    ("config.tlsMaxVersion", "tls", lambda r, c: c.tls_max_version is not None),
)


def _is_https_proxy(config: TaskConfig) -> bool:
    return config.proxy is not None and config.proxy.protocol.lower() == "https"


def unsupported_fields(
    request: HttpRequest, config: TaskConfig, capabilities: frozenset[str]
) -> list[str]:
    """Wire names (``config.dnsServer``...) of the set fields this build cannot honour.

    The API answers 422 for them instead of silently sending a different request. Each name
    appears once, in a stable order.
    """
    return fields_checker(capabilities)(request, config)


def fields_checker(
    capabilities: frozenset[str],
) -> Callable[[HttpRequest, TaskConfig], list[str]]:
    """``unsupported_fields`` for one build, checking only the fields it lacks something
    for (with a full libcurl, none: every registration is checked against this)."""
    checks = [
        (name, is_used) for name, needed, is_used in _FIELD_NEEDS if needed not in capabilities
    ]

    def unsupported(request: HttpRequest, config: TaskConfig) -> list[str]:
        names: list[str] = []
        for name, is_used in checks:
            if name not in names and is_used(request, config):
                names.append(name)
        return names

    return unsupported
