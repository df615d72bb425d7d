"""Deciding: a pure map from a ``Call`` to the libcurl options that perform it.

Nothing here does I/O or touches a curl handle. Values are plain data, except three small
descriptions (``MimeForm``, ``HstsPreload``, ``PrivateDnsCache``) of objects the dispatcher
builds per handle.
"""

from __future__ import annotations

import datetime as dt
import os.path
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pycurl

from tasks_server.models import Call, Credentials, HttpRequest, Pem, TaskConfig

from .egress import EgressPolicy
from .signing import Signing, signature_headers

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


@dataclass(frozen=True, slots=True)
class CurlSettings:
    """What the dispatcher needs from the server settings.

    ``cert_dir``: the only directory certificate and key *paths* may point into (None: paths
    are refused, inline PEM content still works). ``connect_timeout_ms`` caps the connect
    phase (TCP, TLS, proxy) below the whole-call timeout. ``max_host_connections`` caps
    the calls running at once to one host and port (0: no cap); calls beyond it wait in
    the dispatcher's queue for that host, up to ``host_wait_s`` seconds, and their
    timeout starts when they leave it. HSTS cache text is fed through HSTSREADFUNCTION,
    so no temporary file is ever written. ``egress`` decides which connections may open.
    """

    cert_dir: str | None = None
    connect_timeout_ms: int = 10_000
    max_host_connections: int = 256
    host_wait_s: float = 300.0
    egress: EgressPolicy = field(default_factory=EgressPolicy)


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
        *_method_and_body_options(call),
        (pycurl.HTTPHEADER, _header_lines(call)),
        *_cookie_options(request),
        *_redirect_options(config),
        *_auth_options(request),
        *_http_options(config),
        *_network_options(config),
        *_trust_options(call, settings),
        *_client_cert_options(call, settings),
        *_tls_version_options(config),
        *_hsts_options(config),
        *_proxy_options(config),
    ]


def request_url(request: HttpRequest) -> str:
    """The URL with ``query`` form-encoded onto it (space → ``+``).

    Uses ``&`` when the URL already has a query, which the original did not
    (docs/compatibility.md#transfer-options).
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
    # The API drops bodies of GET and DELETE (docs/compatibility.md#normalisation); do the
    # same if one slips through.
    if request.method.upper() in ("GET", "DELETE", "HEAD"):
        return None
    if request.form is not None:
        return MimeForm(tuple((f.name.encode(), f.value.encode()) for f in request.form))
    if request.data_json is not None:
        return request.data_json.encode()
    if request.data_text is not None:
        return request.data_text.encode()
    return None


def _wire_body(call: Call) -> bytes | MimeForm | None:
    """The body as sent. A signed form is encoded here rather than by libcurl, whose
    random boundary would leave the signature nothing fixed to cover."""
    body = _request_body(call.request)
    if isinstance(body, MimeForm) and call.signing is not None:
        return multipart_body(body, _boundary(call.signing[0]))
    return body


def _boundary(message_id: str) -> str:
    return f"------------------------tasks{message_id}"


def multipart_body(form: MimeForm, boundary: str) -> bytes:
    """multipart/form-data of plain string fields, as libcurl's --form-string writes it."""
    parts = [
        b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        % (boundary.encode(), name, value)
        for name, value in form.fields
    ]
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode()


def _method_and_body_options(call: Call) -> list[Option]:
    # GET and POST use libcurl's own methods so a 303 after a POST turns into a GET as
    # RFC 9110 says; CUSTOMREQUEST would repeat "POST" on every redirect.
    request = call.request
    method = request.method.upper()
    if method == "GET":
        return [(pycurl.HTTPGET, 1)]
    if method == "HEAD":
        return [(pycurl.NOBODY, 1)]
    options: list[Option] = [] if method == "POST" else [(pycurl.CUSTOMREQUEST, method)]
    body = _wire_body(call)
    if isinstance(body, MimeForm):
        options.append((pycurl.MIMEPOST, body))
    elif body is not None:
        options.append((pycurl.POSTFIELDS, body))
    elif method == "POST":
        options.append((pycurl.POSTFIELDS, b""))
    return options


def _implied_content_type(call: Call) -> str | None:
    request = call.request
    body = _request_body(request)
    if isinstance(body, MimeForm) and call.signing is not None:
        return f"multipart/form-data; boundary={_boundary(call.signing[0])}"
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
    content_type = _implied_content_type(call)
    if content_type is not None and "content-type" not in names:
        lines.append(f"Content-Type: {content_type}")
    if "expect" not in names:
        # An empty value removes libcurl's "Expect: 100-continue", which stalls a second
        # against targets that never send "100 Continue".
        lines.append("Expect:")
    lines.extend(f"{name}: {value}" for name, value in call.headers)
    if call.signing is not None:
        body = _wire_body(call)
        signed = body if isinstance(body, bytes) else b""
        message_id, timestamp_s, secrets = call.signing
        headers = signature_headers(Signing(message_id, timestamp_s, secrets), signed)
        lines.extend(f"{name}: {value}" for name, value in headers)
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
    # redirect_attempts 0 means what it says (the original turned it into 8).
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


def owner_cert_dir(cert_dir: str | None, owner_id: str) -> str | None:
    """The one directory an owner's certificate and key paths may point into:
    ``CERT_DIR/<owner id>/``, so no owner can name another's client key."""
    if cert_dir is None or not owner_id:
        return None
    return os.path.join(cert_dir, owner_id)


def _allowed_path(path: str, cert_dir: str | None, option: str) -> str:
    """The absolute form of ``path`` (relative ones are taken inside ``cert_dir``).

    The check is lexical; the API already resolved links when it accepted the path.
    Messages name the option, never a server path.
    """
    if cert_dir is None:
        raise ValueError(f"{option}: certificate paths are disabled on this server")
    root = os.path.normpath(cert_dir)
    candidate = os.path.normpath(os.path.join(root, path))
    if os.path.commonpath([root, candidate]) != root or candidate == root:
        raise ValueError(f"{option}: the path is outside this owner's certificate directory")
    return candidate


def _pem_options(
    pem: Pem, blob: int, path: int, call: Call, settings: CurlSettings, option: str
) -> list[Option]:
    if pem.content is not None:
        return [(blob, pem.content)]
    if pem.path is not None:
        root = owner_cert_dir(settings.cert_dir, call.owner_id)
        return [(path, _allowed_path(pem.path, root, option))]
    return []


def _trust_options(call: Call, settings: CurlSettings) -> list[Option]:
    config = call.config
    options: list[Option] = []
    if config.insecure:
        options += [(pycurl.SSL_VERIFYPEER, 0), (pycurl.SSL_VERIFYHOST, 0)]
    if config.ca is not None:
        options += _pem_options(
            config.ca, pycurl.CAINFO_BLOB, pycurl.CAINFO, call, settings, "config.ca"
        )
        if config.ca.content is not None:
            # Like curl --cacert: the given CA replaces the system bundle instead of adding
            # to it.
            options += [(pycurl.CAINFO, None), (pycurl.CAPATH, None)]
    if config.cert_status is not None:
        options.append((pycurl.SSL_VERIFYSTATUS, int(config.cert_status)))
    if not config.session_id:
        options.append((pycurl.SSL_SESSIONID_CACHE, 0))
    return options


def _client_cert_options(call: Call, settings: CurlSettings) -> list[Option]:
    config = call.config
    options: list[Option] = []
    if config.cert is not None:
        options += _pem_options(
            config.cert.value, pycurl.SSLCERT_BLOB, pycurl.SSLCERT, call, settings, "config.cert"
        )
        if config.cert.password is not None:
            options.append((pycurl.KEYPASSWD, config.cert.password.encode()))
    if config.cert_type is not None:
        options.append((pycurl.SSLCERTTYPE, config.cert_type.upper()))
    if config.key is not None:
        options += _pem_options(
            config.key, pycurl.SSLKEY_BLOB, pycurl.SSLKEY, call, settings, "config.key"
        )
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
        # The port is kept with HTTP/1.0 too (the original dropped it). An https://
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
