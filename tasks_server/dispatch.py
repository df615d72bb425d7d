"""Outgoing HTTP calls: the ``Dispatcher`` seam and its libcurl implementation.

``curl_options`` decides (a pure map from a ``Call`` to pycurl options); ``CurlDispatcher``
acts: one ``CurlMulti`` driven by the running asyncio loop, as tornado's curl client does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os.path
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol
from urllib.parse import urlencode

import pycurl

from tasks_server.models import Call, Credentials, HttpRequest, Outcome, Pem, TaskConfig

logger = logging.getLogger(__name__)

Option = tuple[int, object]

# Option numbers from curl/curl.h for libcurl options this pycurl does not name. pycurl
# passes unknown *long* options through, so these work wherever libcurl has them (7.76+).
DOH_SSL_VERIFYPEER: int = getattr(pycurl, "DOH_SSL_VERIFYPEER", 306)
DOH_SSL_VERIFYHOST: int = getattr(pycurl, "DOH_SSL_VERIFYHOST", 307)
# HAPROXY_CLIENT_IP (10323, libcurl 8.2+) is a string option: pycurl rejects unknown
# string options, so it exists only when pycurl names it.
HAPROXY_CLIENT_IP: int | None = getattr(pycurl, "HAPROXY_CLIENT_IP", None)

HTTP_AND_HTTPS: int = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
_PROTOCOL_BITS: dict[str, int] = {"http": pycurl.PROTO_HTTP, "https": pycurl.PROTO_HTTPS}
_HTTP_VERSIONS: dict[str, int] = {
    "1.0": pycurl.CURL_HTTP_VERSION_1_0,
    "1.1": pycurl.CURL_HTTP_VERSION_1_1,
    "2": pycurl.CURL_HTTP_VERSION_2_0,
    "2-prior-knowledge": pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE,
}
_TLS_MIN: dict[str, int] = {
    "1.0": pycurl.SSLVERSION_TLSv1_0,
    "1.1": pycurl.SSLVERSION_TLSv1_1,
    "1.2": pycurl.SSLVERSION_TLSv1_2,
    "1.3": pycurl.SSLVERSION_TLSv1_3,
}
_TLS_MAX: dict[str, int] = {
    "1.0": pycurl.SSLVERSION_MAX_TLSv1_0,
    "1.1": pycurl.SSLVERSION_MAX_TLSv1_1,
    "1.2": pycurl.SSLVERSION_MAX_TLSv1_2,
    "1.3": pycurl.SSLVERSION_MAX_TLSv1_3,
}
_AUTH_SCHEMES = (
    ("auth_basic", pycurl.HTTPAUTH_BASIC),
    ("auth_digest", pycurl.HTTPAUTH_DIGEST),
    ("auth_ntlm", pycurl.HTTPAUTH_NTLM),
)
_PROXY_AUTH_SCHEMES = (
    ("proxy_auth_basic", pycurl.HTTPAUTH_BASIC),
    ("proxy_auth_digest", pycurl.HTTPAUTH_DIGEST),
    ("proxy_auth_ntlm", pycurl.HTTPAUTH_NTLM),
)
# Words COOKIELIST treats as commands rather than cookies.
_COOKIELIST_COMMANDS = frozenset({"ALL", "SESS", "FLUSH", "RELOAD"})
_TIMINGS = (
    ("namelookup", pycurl.NAMELOOKUP_TIME_T),
    ("connect", pycurl.CONNECT_TIME_T),
    ("appconnect", pycurl.APPCONNECT_TIME_T),
    ("starttransfer", pycurl.STARTTRANSFER_TIME_T),
    ("total", pycurl.TOTAL_TIME_T),
)


class Dispatcher(Protocol):
    """Sends calls and reports what came back; knows nothing of tasks, retries or storage."""

    async def start(self) -> None:
        """Bind to the running event loop; ``submit`` may be called afterwards."""

    async def close(self) -> None:
        """Stop taking calls, let in-flight ones finish for a grace period, abort the rest.

        Every future handed out by ``submit`` is resolved when this returns (aborted calls
        with an error Outcome) and every libcurl handle is freed. Calling it twice is safe.
        """

    def submit(self, call: Call) -> asyncio.Future[Outcome]:
        """Start ``call`` (or queue it behind the connection cap) and return its outcome.

        Never raises for transfer problems: refused connections, timeouts, TLS failures,
        options this build cannot apply and oversized bodies all resolve the future with an
        Outcome whose ``error`` is set. Cancelling the future aborts the transfer.
        """

    @property
    def in_flight(self) -> int:
        """Calls submitted and not yet resolved, queued ones included."""


@dataclass(frozen=True, slots=True)
class CurlSettings:
    """What the dispatcher needs from the server settings.

    ``cert_dir``: the only directory certificate and key *paths* may point into (None: paths
    are refused, inline PEM content still works). ``connect_timeout_ms`` caps the connect
    phase (TCP, TLS, proxy) below the whole-call timeout. HSTS cache text is fed through
    HSTSREADFUNCTION, so no temporary file is ever written.
    """

    cert_dir: str | None = None
    connect_timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class MimeForm:
    """A multipart body of plain string fields (``--form-string``); built per handle."""

    fields: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class HstsEntry:
    host: str
    expire: dt.datetime | None  # naive UTC; None means it never expires
    include_subdomains: bool


@dataclass(frozen=True, slots=True)
class HstsPreload:
    """HSTS entries to load into the transfer's in-memory cache through a read callback."""

    entries: tuple[HstsEntry, ...]


@dataclass(frozen=True, slots=True)
class PrivateDnsCache:
    """Give the transfer a DNS cache of its own.

    RESOLVE entries and DoH answers otherwise land in the multi handle's shared cache (RESOLVE
    ones never expire), where they would steer other tasks' calls to the same host.
    """


# ---------------------------------------------------------------------------------------
# Deciding: pure functions from a call to libcurl options.


def curl_options(call: Call, settings: CurlSettings) -> list[Option]:
    """The (option, value) pairs that make a reset easy handle perform ``call``.

    Pure: no I/O. Values are plain data, except ``MimeForm``, ``HstsPreload`` and
    ``PrivateDnsCache``, which describe objects the dispatcher builds per handle. Later pairs
    override earlier ones (explicit auth wins over ``location_trusted`` credentials).
    Raises ValueError for a certificate path outside ``settings.cert_dir`` or an option this
    pycurl cannot express (see ``unsupported_fields``, which the API checks first).
    """
    request, config = call.request, call.config
    return [
        *_transfer_options(call, settings),
        *_method_and_body_options(request),
        (pycurl.HTTPHEADER, _header_lines(call)),
        *_cookie_options(request),
        *_redirect_options(config),
        *_auth_options(request),
        *_http_options(config),
        *_network_options(config),
        *_trust_options(config, settings),
        *_client_cert_options(config, settings),
        *_tls_version_options(config),
        *_hsts_options(config),
        *_proxy_options(config),
    ]


def request_url(request: HttpRequest) -> str:
    """The URL with ``query`` form-encoded onto it (space → ``+``).

    Uses ``&`` when the URL already has a query, which the original did not (W20).
    """
    if not request.query:
        return request.url
    base, hash_mark, fragment = request.url.partition("#")
    separator = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        separator = ""
    return f"{base}{separator}{urlencode(request.query)}{hash_mark}{fragment}"


def _transfer_options(call: Call, settings: CurlSettings) -> list[Option]:
    return [
        (pycurl.URL, request_url(call.request)),
        (pycurl.NOSIGNAL, 1),
        (pycurl.TIMEOUT_MS, call.timeout_ms),
        (pycurl.CONNECTTIMEOUT_MS, min(call.timeout_ms, settings.connect_timeout_ms)),
        (pycurl.USERAGENT, call.config.user_agent.encode()),
    ]


def _request_body(request: HttpRequest) -> bytes | MimeForm | None:
    # The API drops bodies of GET and DELETE (spec 7.6); do the same if one slips through.
    if request.method.upper() in ("GET", "DELETE", "HEAD"):
        return None
    if request.form is not None:
        return MimeForm(tuple((f.name.encode(), f.value.encode()) for f in request.form))
    if request.data_json is not None:
        return request.data_json.encode()
    if request.data_text is not None:
        return request.data_text.encode()
    return None


def _method_and_body_options(request: HttpRequest) -> list[Option]:
    # GET and POST use libcurl's own methods so a 303 after a POST turns into a GET as
    # RFC 9110 says; CUSTOMREQUEST would repeat "POST" on every redirect.
    method = request.method.upper()
    if method == "GET":
        return [(pycurl.HTTPGET, 1)]
    if method == "HEAD":
        return [(pycurl.NOBODY, 1)]
    options: list[Option] = [] if method == "POST" else [(pycurl.CUSTOMREQUEST, method)]
    body = _request_body(request)
    if isinstance(body, MimeForm):
        options.append((pycurl.MIMEPOST, body))
    elif body is not None:
        options.append((pycurl.POSTFIELDS, body))
    elif method == "POST":
        options.append((pycurl.POSTFIELDS, b""))
    return options


def _implied_content_type(request: HttpRequest) -> str | None:
    body = _request_body(request)
    if body is None or isinstance(body, MimeForm):
        return None
    # "plain/text" (sic) is the original's content type for text bodies; kept for targets
    # that match on it.
    return "application/json" if request.data_json is not None else "plain/text"


def _header_lines(call: Call) -> list[bytes]:
    """Task headers (without user-agent ones), implied headers, then the server's headers."""
    own = [(n, v) for n, v in call.request.headers if "user-agent" not in n.lower()]
    names = {n.lower() for n, _ in own}
    lines = [f"{name}: {value}" for name, value in own]
    content_type = _implied_content_type(call.request)
    if content_type is not None and "content-type" not in names:
        lines.append(f"Content-Type: {content_type}")
    if "expect" not in names:
        # An empty value removes libcurl's "Expect: 100-continue", which stalls a second
        # against targets that never send "100 Continue".
        lines.append("Expect:")
    lines.extend(f"{name}: {value}" for name, value in call.headers)
    return [line.encode() for line in lines]


def cookie_file_lines(text: str) -> tuple[str, ...]:
    """Lines of a Netscape cookie file to feed to COOKIELIST, one cookie each.

    Blank lines and COOKIELIST command words are dropped; comments are passed on because
    libcurl itself skips them but keeps ``#HttpOnly_`` lines.
    """
    lines = (line.strip("\r") for line in text.split("\n"))
    return tuple(
        line for line in lines if line.strip() and line.strip() not in _COOKIELIST_COMMANDS
    )


def _cookie_options(request: HttpRequest) -> list[Option]:
    options: list[Option] = []
    if request.cookies:
        joined = "; ".join(f"{cookie.name}={cookie.value}" for cookie in request.cookies)
        options.append((pycurl.COOKIE, joined.encode()))
    if request.cookie_file is not None:
        # COOKIEFILE "" switches the cookie engine on without reading any file.
        options.append((pycurl.COOKIEFILE, ""))
        options.extend(
            (pycurl.COOKIELIST, line.encode()) for line in cookie_file_lines(request.cookie_file)
        )
    return options


def _credentials(credentials: Credentials, username: int, password: int) -> list[Option]:
    # USERNAME and PASSWORD rather than USERPWD: a ":" inside a username stays intact.
    return [(username, credentials.username.encode()), (password, credentials.password.encode())]


def _auth_options(request: HttpRequest) -> list[Option]:
    options: list[Option] = []
    for name, scheme in _AUTH_SCHEMES:
        credentials: Credentials | None = getattr(request, name)
        if credentials is not None:
            options += _credentials(credentials, pycurl.USERNAME, pycurl.PASSWORD)
            options.append((pycurl.HTTPAUTH, scheme))
    sigv4 = request.auth_aws_sigv4
    if sigv4 is not None:
        provider = f"{sigv4.provider1}:{sigv4.provider2}:{sigv4.region}:{sigv4.service}"
        options += [
            (pycurl.AWS_SIGV4, provider.encode()),
            (pycurl.USERNAME, sigv4.key.encode()),
            (pycurl.PASSWORD, sigv4.secret.encode()),
        ]
    return options


def _protocol_mask(name: str | None) -> int:
    if name is None:
        return HTTP_AND_HTTPS
    try:
        return _PROTOCOL_BITS[name.lower()]
    except KeyError:
        raise ValueError(f"protocol {name!r} is not http or https") from None


def _redirect_options(config: TaskConfig) -> list[Option]:
    # Both masks are always set: this libcurl also speaks file, gopher, dict, smtp and more,
    # and only http and https may ever leave the server, first request and redirects alike.
    first = _protocol_mask(config.proto)
    options: list[Option] = [
        (pycurl.PROTOCOLS, first),
        (pycurl.REDIR_PROTOCOLS, first & _protocol_mask(config.proto_redirect)),
    ]
    if not config.location:
        return [*options, (pycurl.FOLLOWLOCATION, 0)]
    # redirect_attempts 0 means what it says (the original turned it into 8, W25).
    options += [(pycurl.FOLLOWLOCATION, 1), (pycurl.MAXREDIRS, config.redirect_attempts)]
    if config.location_trusted is not None:
        options.append((pycurl.UNRESTRICTED_AUTH, 1))
        options += _credentials(config.location_trusted, pycurl.USERNAME, pycurl.PASSWORD)
    return options


def _http_options(config: TaskConfig) -> list[Option]:
    options: list[Option] = []
    if config.http_version == "0.9":
        options.append((pycurl.HTTP09_ALLOWED, 1))
    elif config.http_version in _HTTP_VERSIONS:
        options.append((pycurl.HTTP_VERSION, _HTTP_VERSIONS[config.http_version]))
    else:
        raise ValueError(f"HTTP version {config.http_version!r} is unknown")
    if config.referer_url is not None:
        if config.referer_url.upper() == "AUTO":
            options.append((pycurl.AUTOREFERER, 1))
        else:
            options.append((pycurl.REFERER, config.referer_url))
    return options


def _resolve_line(host: str, port: int, addresses: tuple[str, ...]) -> str:
    bracketed = (f"[{a}]" if ":" in a else a for a in addresses)
    return f"{host}:{port}:{','.join(bracketed)}"


def _network_options(config: TaskConfig) -> list[Option]:
    options: list[Option] = [
        (pycurl.IPRESOLVE, pycurl.IPRESOLVE_V6 if config.ip_version == 6 else pycurl.IPRESOLVE_V4)
    ]
    keep_alive_s = config.keep_alive_duration_s
    if keep_alive_s > 0:
        options += [
            (pycurl.TCP_KEEPALIVE, 1),
            (pycurl.TCP_KEEPIDLE, keep_alive_s),
            (pycurl.TCP_KEEPINTVL, keep_alive_s),
        ]
    else:
        options.append((pycurl.TCP_KEEPALIVE, 0))
    return options + _name_resolution_options(config) + _haproxy_options(config)


def _name_resolution_options(config: TaskConfig) -> list[Option]:
    options: list[Option] = []
    if config.resolve:
        lines = [_resolve_line(e.host, e.port, e.addresses) for e in config.resolve]
        options.append((pycurl.RESOLVE, lines))
    if config.dns_server:
        options.append((pycurl.DNS_SERVERS, ",".join(config.dns_server)))
    if config.doh_url is not None:
        options.append((pycurl.DOH_URL, config.doh_url))
        if config.doh_insecure:
            options += [(DOH_SSL_VERIFYPEER, 0), (DOH_SSL_VERIFYHOST, 0)]
    if options:
        # A connection made to a pinned address must not serve another task's call to the
        # same host name, nor may this call reuse one made with the ordinary resolver.
        options += [
            (pycurl.SHARE, PrivateDnsCache()),
            (pycurl.FRESH_CONNECT, 1),
            (pycurl.FORBID_REUSE, 1),
        ]
    return options


def _haproxy_options(config: TaskConfig) -> list[Option]:
    options: list[Option] = []
    if config.ha_proxy_protocol:
        options.append((pycurl.HAPROXYPROTOCOL, 1))
    if config.ha_proxy_client_ip is not None:
        if HAPROXY_CLIENT_IP is None:
            raise ValueError("haProxyClientIp needs libcurl 8.2 and a pycurl that names it")
        options += [(pycurl.HAPROXYPROTOCOL, 1), (HAPROXY_CLIENT_IP, config.ha_proxy_client_ip)]
    if options:
        # The PROXY preamble is sent once per connection, so it needs a connection of its own.
        options += [(pycurl.FRESH_CONNECT, 1), (pycurl.FORBID_REUSE, 1)]
    return options


def _allowed_path(path: str, cert_dir: str | None) -> str:
    """The absolute form of ``path`` (relative ones are taken inside ``cert_dir``).

    The check is lexical; the API already resolved links when it accepted the path.
    """
    if cert_dir is None:
        raise ValueError("certificate paths are disabled: no certificate directory is set")
    root = os.path.normpath(cert_dir)
    candidate = os.path.normpath(os.path.join(root, path))
    if os.path.commonpath([root, candidate]) != root or candidate == root:
        raise ValueError(f"certificate path {path!r} is outside {cert_dir!r}")
    return candidate


def _pem_options(pem: Pem, blob: int, path: int, settings: CurlSettings) -> list[Option]:
    if pem.content is not None:
        return [(blob, pem.content)]
    if pem.path is not None:
        return [(path, _allowed_path(pem.path, settings.cert_dir))]
    return []


def _trust_options(config: TaskConfig, settings: CurlSettings) -> list[Option]:
    options: list[Option] = []
    if config.insecure:
        options += [(pycurl.SSL_VERIFYPEER, 0), (pycurl.SSL_VERIFYHOST, 0)]
    if config.ca is not None:
        options += _pem_options(config.ca, pycurl.CAINFO_BLOB, pycurl.CAINFO, settings)
        if config.ca.content is not None:
            # Like curl --cacert: the given CA replaces the system bundle instead of adding
            # to it.
            options += [(pycurl.CAINFO, None), (pycurl.CAPATH, None)]
    if config.cert_status is not None:
        options.append((pycurl.SSL_VERIFYSTATUS, int(config.cert_status)))
    if not config.session_id:
        options.append((pycurl.SSL_SESSIONID_CACHE, 0))
    return options


def _client_cert_options(config: TaskConfig, settings: CurlSettings) -> list[Option]:
    options: list[Option] = []
    if config.cert is not None:
        options += _pem_options(config.cert.value, pycurl.SSLCERT_BLOB, pycurl.SSLCERT, settings)
        if config.cert.password is not None:
            options.append((pycurl.KEYPASSWD, config.cert.password.encode()))
    if config.cert_type is not None:
        options.append((pycurl.SSLCERTTYPE, config.cert_type.upper()))
    if config.key is not None:
        options += _pem_options(config.key, pycurl.SSLKEY_BLOB, pycurl.SSLKEY, settings)
    if config.key_type is not None:
        options.append((pycurl.SSLKEYTYPE, config.key_type.upper()))
    return options


def _tls_version_options(config: TaskConfig) -> list[Option]:
    low, high = config.tls_version, config.tls_max_version
    if low is None and high is None:
        return []
    try:
        value = (_TLS_MIN[low] if low else pycurl.SSLVERSION_DEFAULT) | (
            _TLS_MAX[high] if high else 0
        )
    except KeyError as exc:
        raise ValueError(f"TLS version {exc.args[0]!r} is unknown") from None
    return [(pycurl.SSLVERSION, value)]


def parse_hsts_cache(text: str) -> tuple[HstsEntry, ...]:
    """Entries of a curl HSTS cache file: ``[.]host "YYYYMMDD HH:MM:SS"|"unlimited"``.

    A leading dot means include subdomains; times are UTC. Comments, blank and malformed
    lines are skipped, as curl's own loader does.
    """
    entries = (_hsts_entry(line.strip()) for line in text.splitlines())
    return tuple(entry for entry in entries if entry is not None)


def _hsts_entry(line: str) -> HstsEntry | None:
    host, _, stamp = line.partition(" ")
    stamp = stamp.strip().strip('"')
    if not host or host.startswith("#") or not stamp:
        return None
    expire = None
    if stamp != "unlimited":
        try:
            expire = dt.datetime.strptime(stamp, "%Y%m%d %H:%M:%S")
        except ValueError:
            return None
    return HstsEntry(host.lstrip("."), expire, host.startswith("."))


def _hsts_options(config: TaskConfig) -> list[Option]:
    if config.hsts is None or config.hsts is False:
        return []
    # HSTS_CTRL without an HSTS file keeps the cache in memory for this transfer only.
    options: list[Option] = [(pycurl.HSTS_CTRL, pycurl.CURLHSTS_ENABLE)]
    if isinstance(config.hsts, str):
        options.append((pycurl.HSTSREADFUNCTION, HstsPreload(parse_hsts_cache(config.hsts))))
    return options


def _proxy_options(config: TaskConfig) -> list[Option]:
    proxy = config.proxy
    if proxy is None:
        # An empty PROXY also stops libcurl from reading http_proxy & co. from the
        # environment, as the original's empty-environment curl did.
        return [(pycurl.PROXY, "")]
    port = f":{proxy.port}" if proxy.port else ""
    version_1_0 = config.proxy_http_version == "1.0"
    options: list[Option] = [
        # The port is kept with HTTP/1.0 too (the original dropped it, W25). An https://
        # scheme makes libcurl talk TLS to the proxy whatever PROXYTYPE says.
        (pycurl.PROXY, f"{proxy.protocol.lower()}://{proxy.host}{port}"),
        (pycurl.PROXYTYPE, pycurl.PROXYTYPE_HTTP_1_0 if version_1_0 else pycurl.PROXYTYPE_HTTP),
        (pycurl.HEADEROPT, pycurl.HEADER_SEPARATE),
    ]
    if config.proxy_headers:
        lines = [f"{name}: {value}".encode() for name, value in config.proxy_headers]
        options.append((pycurl.PROXYHEADER, lines))
    if config.proxy_insecure:
        options += [(pycurl.PROXY_SSL_VERIFYPEER, 0), (pycurl.PROXY_SSL_VERIFYHOST, 0)]
    for name, scheme in _PROXY_AUTH_SCHEMES:
        credentials: Credentials | None = getattr(config, name)
        if credentials is not None:
            options += _credentials(credentials, pycurl.PROXYUSERNAME, pycurl.PROXYPASSWORD)
            options.append((pycurl.PROXYAUTH, scheme))
    return options


# ---------------------------------------------------------------------------------------
# What this libcurl build can do.


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
    names: list[str] = []
    for name, needed, is_used in _FIELD_NEEDS:
        if needed not in capabilities and name not in names and is_used(request, config):
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------
# Acting: one CurlMulti on the asyncio loop.

# Options whose effect outlives curl_easy_reset (cookie jar, HSTS cache, attached share):
# a handle that used one is closed instead of going back to the pool.
_STATEFUL_OPTIONS = frozenset(
    {pycurl.COOKIEFILE, pycurl.COOKIELIST, pycurl.HSTS_CTRL, pycurl.SHARE}
)


@dataclass(slots=True, eq=False)
class _Transfer:
    """One call's mutable state while libcurl works on it."""

    call: Call
    future: asyncio.Future[Outcome]
    curl: Any = None
    body: bytearray = field(default_factory=bytearray)
    headers: list[tuple[str, str]] = field(default_factory=list)
    too_large: bool = False
    keeps_state: bool = False
    resources: list[Any] = field(default_factory=list)  # CurlMime / CurlShare to close

    def write_body(self, chunk: bytes) -> int | None:
        """WRITEFUNCTION: keep the body up to the cap; returning 0 makes libcurl abort."""
        if not self.call.config.trace_response_data:
            return None
        if len(self.body) + len(chunk) > self.call.max_body_bytes:
            self.too_large = True
            return 0
        self.body += chunk
        return None

    def write_header(self, line: bytes) -> None:
        """HEADERFUNCTION: keep only the last response's headers (redirects, 100, CONNECT)."""
        text = line.decode("latin-1").rstrip("\r\n")
        if text.startswith("HTTP/"):
            self.headers.clear()
            return
        name, colon, value = text.partition(":")
        if colon and name and not name[0].isspace():
            self.headers.append((name.strip(), value.strip()))


def _hsts_reader(entries: tuple[HstsEntry, ...]) -> Callable[[], object]:
    pending: Iterator[HstsEntry] = iter(entries)

    def read() -> tuple[str, dt.datetime | None, bool] | None:
        entry = next(pending, None)
        if entry is None:
            return None
        return (entry.host, entry.expire, entry.include_subdomains)

    return read


def _failure(message: str, curl_code: int = 0) -> Outcome:
    return Outcome(status=0, error=message, curl_code=curl_code)


def _setup_failure(exc: Exception) -> Outcome:
    if isinstance(exc, pycurl.error) and len(exc.args) == 2:
        code, message = exc.args
        return _failure(f"option refused by libcurl: {message}", int(code))
    return _failure(f"option refused: {exc}")


def _outcome(transfer: _Transfer, curl_code: int, message: str | None) -> Outcome:
    curl = transfer.curl
    timings = {name: int(curl.getinfo(info)) / 1000 for name, info in _TIMINGS}
    error = None
    if transfer.too_large:
        error = f"response body exceeds {transfer.call.max_body_bytes} bytes"
    elif curl_code:
        error = message or f"curl error {curl_code}"
    return Outcome(
        status=int(curl.getinfo(pycurl.RESPONSE_CODE)),
        body=bytes(transfer.body) if curl_code == 0 else b"",
        headers=tuple(transfer.headers),
        error=error,
        curl_code=curl_code,
        timed_out=curl_code == pycurl.E_OPERATION_TIMEDOUT,
        too_large=transfer.too_large,
        total_ms=timings["total"],
        timings=timings,
    )


def _resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


class CurlDispatcher:
    """The libcurl ``Dispatcher``: one CurlMulti driven by the loop, no thread per call.

    libcurl tells the loop which sockets to watch (M_SOCKETFUNCTION → add_reader/add_writer)
    and when to wake it (M_TIMERFUNCTION → call_later); each event becomes a
    ``socket_action`` and finished transfers are drained with ``info_read``. At most
    ``max_connections`` transfers run at once; later calls wait in FIFO order. Easy handles
    are pooled and reset between calls; connections are reused through the multi's cache.
    ``close`` waits ``close_grace_s`` seconds for in-flight calls before aborting them.
    """

    def __init__(
        self, settings: CurlSettings, max_connections: int = 1000, *, close_grace_s: float = 10.0
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._settings = settings
        self._max_connections = max_connections
        self._close_grace_s = close_grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._multi: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._watched: set[int] = set()
        self._idle: list[Any] = []
        self._waiting: deque[_Transfer] = deque()
        self._active: dict[Any, _Transfer] = {}
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._active)

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("CurlDispatcher is already started")
        self._loop = asyncio.get_running_loop()
        multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, self._max_connections)
        multi.setopt(pycurl.M_MAXCONNECTS, self._max_connections)
        self._multi = multi

    def submit(self, call: Call) -> asyncio.Future[Outcome]:
        if self._loop is None:
            raise RuntimeError("CurlDispatcher.start() has not been awaited")
        future: asyncio.Future[Outcome] = self._loop.create_future()
        if self._closed:
            future.set_result(_failure("dispatcher is closed"))
            return future
        transfer = _Transfer(call, future)
        future.add_done_callback(partial(self._on_future_done, transfer))
        self._waiting.append(transfer)
        self._start_waiting()
        return future

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pending = [t.future for t in (*self._waiting, *self._active.values())]
        if pending:
            await asyncio.wait(pending, timeout=self._close_grace_s)
        aborted = _failure("aborted: the dispatcher was closed")
        while self._waiting:
            _resolve(self._waiting.popleft().future, aborted)
        for transfer in list(self._active.values()):
            self._detach(transfer)
            _resolve(transfer.future, aborted)
        self._free_handles()

    # -- starting and finishing transfers -------------------------------------------------

    def _start_waiting(self) -> None:
        while self._waiting and len(self._active) < self._max_connections:
            self._begin(self._waiting.popleft())

    def _begin(self, transfer: _Transfer) -> None:
        transfer.curl = self._idle.pop() if self._idle else pycurl.Curl()
        try:
            self._configure(transfer)
            self._multi.add_handle(transfer.curl)
        except (pycurl.error, ValueError, TypeError) as exc:
            self._release(transfer)
            _resolve(transfer.future, _setup_failure(exc))
            return
        self._active[transfer.curl] = transfer

    def _configure(self, transfer: _Transfer) -> None:
        curl = transfer.curl
        for option, value in curl_options(transfer.call, self._settings):
            curl.setopt(option, self._live_value(transfer, value))
            if option in _STATEFUL_OPTIONS:
                transfer.keeps_state = True
        curl.setopt(pycurl.WRITEFUNCTION, transfer.write_body)
        curl.setopt(pycurl.HEADERFUNCTION, transfer.write_header)

    def _live_value(self, transfer: _Transfer, value: object) -> object:
        """Build the per-handle object a descriptive option value stands for."""
        if isinstance(value, MimeForm):
            mime = pycurl.CurlMime(transfer.curl)
            for name, data in value.fields:
                mime.add_field(name, data)
            transfer.resources.append(mime)
            return mime
        if isinstance(value, HstsPreload):
            return _hsts_reader(value.entries)
        if isinstance(value, PrivateDnsCache):
            share = pycurl.CurlShare()
            share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_DNS)
            transfer.resources.append(share)
            return share
        return value

    def _finish(self, curl: Any, curl_code: int, message: str | None) -> None:
        transfer = self._active.get(curl)
        if transfer is None:
            return
        outcome = _outcome(transfer, curl_code, message)
        self._detach(transfer)
        _resolve(transfer.future, outcome)

    def _detach(self, transfer: _Transfer) -> None:
        """Take an active transfer out of the multi and give its handle back."""
        del self._active[transfer.curl]
        self._multi.remove_handle(transfer.curl)
        self._release(transfer)

    def _release(self, transfer: _Transfer) -> None:
        curl, transfer.curl = transfer.curl, None
        if transfer.keeps_state or self._closed or len(self._idle) >= self._max_connections:
            curl.close()
        else:
            curl.reset()
            self._idle.append(curl)
        # Closed after the handle lets go of them: a share or mime must outlive its user.
        for resource in transfer.resources:
            resource.close()

    def _on_future_done(self, transfer: _Transfer, future: asyncio.Future[Outcome]) -> None:
        """A caller cancelled the future: drop the call, queued or running."""
        if not future.cancelled():
            return
        if self._multi is None:
            return
        if transfer.curl is not None and self._active.get(transfer.curl) is transfer:
            self._detach(transfer)
            self._start_waiting()
        elif transfer in self._waiting:
            self._waiting.remove(transfer)

    def _free_handles(self) -> None:
        for curl in self._idle:
            curl.close()
        self._idle.clear()
        if self._multi is not None:
            self._multi.close()
            self._multi = None
        # libcurl may call back while closing its connection cache; forget it all afterwards.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fd in list(self._watched):
            self._unwatch(fd)

    # -- libcurl ↔ event loop --------------------------------------------------------------

    def _on_socket(self, event: int, fd: int, multi: Any, data: Any) -> None:
        """M_SOCKETFUNCTION: mirror libcurl's interest in ``fd`` onto the loop."""
        assert self._loop is not None
        # Always remove before adding: libcurl can close a socket and get the same fd number
        # back without a POLL_REMOVE in between, which would confuse epoll (tornado's note).
        self._unwatch(fd)
        if event == pycurl.POLL_REMOVE:
            return
        if event & pycurl.POLL_IN:
            self._loop.add_reader(fd, self._on_ready, fd, pycurl.CSELECT_IN)
        if event & pycurl.POLL_OUT:
            self._loop.add_writer(fd, self._on_ready, fd, pycurl.CSELECT_OUT)
        if event & pycurl.POLL_INOUT:
            self._watched.add(fd)

    def _unwatch(self, fd: int) -> None:
        if fd in self._watched and self._loop is not None:
            self._watched.discard(fd)
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _on_timer(self, timeout_ms: int) -> None:
        """M_TIMERFUNCTION: libcurl wants ``socket_action(SOCKET_TIMEOUT)`` in ``timeout_ms``."""
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_ms >= 0:
            self._timer = self._loop.call_later(timeout_ms / 1000, self._on_timeout)

    def _on_timeout(self) -> None:
        self._timer = None
        self._drive(pycurl.SOCKET_TIMEOUT, 0)
        if self._multi is None:
            return
        # The loop may fire a hair before libcurl's own clock says the timeout is due; then
        # libcurl does nothing and never asks again, so re-arm from its current view.
        pending_ms = int(self._multi.timeout())
        if pending_ms >= 0 and self._timer is None:
            self._on_timer(pending_ms)

    def _on_ready(self, fd: int, action: int) -> None:
        self._drive(fd, action)

    def _drive(self, fd: int, action: int) -> None:
        if self._multi is None:
            return
        try:
            self._multi.socket_action(fd, action)
        except pycurl.error:
            logger.exception("curl socket_action failed for fd %s", fd)
        self._collect_finished()

    def _collect_finished(self) -> None:
        while True:
            queued, succeeded, failed = self._multi.info_read()
            for curl in succeeded:
                self._finish(curl, 0, None)
            for curl, code, message in failed:
                self._finish(curl, int(code), message)
            if queued == 0:
                break
        self._start_waiting()
