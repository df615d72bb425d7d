"""The dispatcher: pure option mapping, and real transfers to real targets on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pycurl
import pytest

from tasks_server.dispatch import (
    DOH_SSL_VERIFYHOST,
    DOH_SSL_VERIFYPEER,
    HTTP_AND_HTTPS,
    CurlDispatcher,
    CurlSettings,
    Dispatcher,
    HstsEntry,
    HstsPreload,
    MimeForm,
    PrivateDnsCache,
    cookie_file_lines,
    curl_capabilities,
    curl_options,
    parse_hsts_cache,
    request_url,
    unsupported_fields,
)
from tasks_server.dispatch import curl as curl_module
from tasks_server.dispatch.egress import EgressPolicy
from tasks_server.models import (
    DEFAULT_USER_AGENT,
    AwsSigv4,
    Call,
    ClientCert,
    Cookie,
    Credentials,
    FormField,
    HttpRequest,
    Outcome,
    Pem,
    Proxy,
    ResolveEntry,
    TaskConfig,
)
from tests.support.targets import (
    ForwardProxy,
    Reply,
    TargetServer,
    TlsMaterial,
    basic_auth,
    digest_auth,
    redirect,
    refused_port,
)
from tests.support.waiting import wait_until

CAPABILITIES = curl_capabilities()
# the targets run on loopback, which the egress policy refuses unless allowed
LOOPBACK = EgressPolicy.parse(allow="127.0.0.1/32", proxies="127.0.0.1/32")
SETTINGS = CurlSettings(cert_dir="/etc/tasks/certs", egress=LOOPBACK)
OWNER = "01OWNER0000000000000000000"  # certificate paths are taken inside CERT_DIR/<owner>/


def make_call(
    url: str = "http://127.0.0.1:9/hook",
    method: str = "GET",
    *,
    config: TaskConfig | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    timeout_ms: int = 5_000,
    max_body_bytes: int = 1 << 20,
    owner_id: str = OWNER,
    **request: Any,
) -> Call:
    return Call(
        request=HttpRequest(url=url, method=method, **request),
        config=config or TaskConfig(),
        headers=headers,
        timeout_ms=timeout_ms,
        max_body_bytes=max_body_bytes,
        owner_id=owner_id,
    )


def values(options: list[tuple[int, object]], option: int) -> list[object]:
    return [value for key, value in options if key == option]


def value(options: list[tuple[int, object]], option: int) -> object:
    """The effective value of ``option``: the last one set wins in libcurl."""
    found = values(options, option)
    assert found, f"option {option} not set"
    return found[-1]


# ---------------------------------------------------------------------------------------
# Pure mapping


@pytest.mark.parametrize(
    ("url", "query", "expected"),
    [
        ("http://h.test/p", (), "http://h.test/p"),
        ("http://h.test/p", (("a b", "c&d"),), "http://h.test/p?a+b=c%26d"),
        ("http://h.test/p?x=1", (("y", "2"), ("z", "é")), "http://h.test/p?x=1&y=2&z=%C3%A9"),
        ("http://h.test/p#frag", (("y", "2"),), "http://h.test/p?y=2#frag"),
    ],
)
def test_query_is_form_encoded_and_appended_with_the_right_separator(
    url: str, query: tuple[tuple[str, str], ...], expected: str
) -> None:
    assert request_url(HttpRequest(url=url, method="GET", query=query)) == expected


def test_defaults_speak_only_http_and_follow_eight_redirects() -> None:
    options = curl_options(make_call(timeout_ms=30_000), SETTINGS)
    assert value(options, pycurl.HTTPGET) == 1
    assert values(options, pycurl.CUSTOMREQUEST) == []
    assert value(options, pycurl.PROTOCOLS) == HTTP_AND_HTTPS
    assert value(options, pycurl.REDIR_PROTOCOLS) == HTTP_AND_HTTPS
    assert value(options, pycurl.FOLLOWLOCATION) == 1
    assert value(options, pycurl.MAXREDIRS) == 8
    assert value(options, pycurl.USERAGENT) == DEFAULT_USER_AGENT.encode()
    assert value(options, pycurl.PROXY) == ""  # never the environment's proxy
    assert value(options, pycurl.HTTP_VERSION) == pycurl.CURL_HTTP_VERSION_1_1
    assert value(options, pycurl.IPRESOLVE) == pycurl.IPRESOLVE_V4
    assert value(options, pycurl.NOSIGNAL) == 1
    assert value(options, pycurl.TIMEOUT_MS) == 30_000
    assert value(options, pycurl.CONNECTTIMEOUT_MS) == SETTINGS.connect_timeout_ms
    assert (value(options, pycurl.TCP_KEEPIDLE), value(options, pycurl.TCP_KEEPINTVL)) == (30, 30)
    assert values(options, pycurl.ACCEPT_ENCODING) == []  # bodies are stored as sent


def test_connect_timeout_never_exceeds_the_call_timeout() -> None:
    options = curl_options(make_call(timeout_ms=1_500), SETTINGS)
    assert value(options, pycurl.CONNECTTIMEOUT_MS) == 1_500


@pytest.mark.parametrize(
    ("method", "body", "expected_body", "content_type", "custom"),
    [
        ("POST", {"data_json": '{"a":1}'}, b'{"a":1}', b"Content-Type: application/json", None),
        ("PUT", {"data_text": "hé"}, "hé".encode(), b"Content-Type: plain/text", "PUT"),
        ("PATCH", {}, None, None, "PATCH"),
        ("POST", {}, b"", None, None),
        ("DELETE", {"data_text": "dropped"}, None, None, "DELETE"),
    ],
)
def test_method_and_body(
    method: str,
    body: dict[str, Any],
    expected_body: bytes | None,
    content_type: bytes | None,
    custom: str | None,
) -> None:
    options = curl_options(make_call(method=method, **body), SETTINGS)
    assert values(options, pycurl.CUSTOMREQUEST) == ([custom] if custom else [])
    assert values(options, pycurl.POSTFIELDS) == ([] if expected_body is None else [expected_body])
    header_lines = value(options, pycurl.HTTPHEADER)
    assert isinstance(header_lines, list)
    typed = [line for line in header_lines if line.lower().startswith(b"content-type")]
    assert typed == ([content_type] if content_type else [])


def test_a_task_content_type_wins_over_the_implied_one() -> None:
    call = make_call(method="POST", data_text="x")
    call = replace(call, request=replace(call.request, headers=(("content-type", "text/csv"),)))
    lines = value(curl_options(call, SETTINGS), pycurl.HTTPHEADER)
    assert lines == [b"content-type: text/csv", b"Expect:"]


def test_form_becomes_a_multipart_of_plain_strings() -> None:
    call = make_call(method="POST", form=(FormField("a", "@/etc/passwd"), FormField("b", "2")))
    options = curl_options(call, SETTINGS)
    assert value(options, pycurl.MIMEPOST) == MimeForm(((b"a", b"@/etc/passwd"), (b"b", b"2")))
    assert values(options, pycurl.POSTFIELDS) == []


def test_headers_drop_user_agent_names_and_end_with_the_server_headers() -> None:
    call = make_call(headers=(("X-Tasks-Queue-Id", "Q1"),))
    call = replace(
        call,
        request=replace(
            call.request,
            headers=(("User-Agent", "evil"), ("X-My-user-agent-id", "7"), ("X-A", "1")),
        ),
    )
    lines = value(curl_options(call, SETTINGS), pycurl.HTTPHEADER)
    assert lines == [b"X-A: 1", b"Expect:", b"X-Tasks-Queue-Id: Q1"]


@pytest.mark.parametrize(
    ("config", "expected", "absent"),
    [
        (TaskConfig(keep_alive_duration_s=0), {pycurl.TCP_KEEPALIVE: 0}, [pycurl.TCP_KEEPIDLE]),
        (
            TaskConfig(keep_alive_duration_s=5),
            {pycurl.TCP_KEEPALIVE: 1, pycurl.TCP_KEEPIDLE: 5},
            [],
        ),
        (TaskConfig(redirect_attempts=0), {pycurl.FOLLOWLOCATION: 1, pycurl.MAXREDIRS: 0}, []),
        (TaskConfig(location=False), {pycurl.FOLLOWLOCATION: 0}, [pycurl.MAXREDIRS]),
        (
            TaskConfig(proto="HTTPS"),
            {pycurl.PROTOCOLS: pycurl.PROTO_HTTPS, pycurl.REDIR_PROTOCOLS: pycurl.PROTO_HTTPS},
            [],
        ),
        (
            TaskConfig(proto_redirect="https"),
            {pycurl.PROTOCOLS: HTTP_AND_HTTPS, pycurl.REDIR_PROTOCOLS: pycurl.PROTO_HTTPS},
            [],
        ),
        (
            TaskConfig(proxy=Proxy("http", "proxy.test", 3128), proxy_http_version="1.0"),
            {
                pycurl.PROXY: "http://proxy.test:3128",
                pycurl.PROXYTYPE: pycurl.PROXYTYPE_HTTP_1_0,
                pycurl.HEADEROPT: pycurl.HEADER_SEPARATE,
            },
            [],
        ),
        (
            TaskConfig(
                proxy=Proxy("HTTPS", "proxy.test"),
                proxy_headers=(("X-P", "1"),),
                proxy_insecure=True,
                proxy_auth_digest=Credentials("pu", "pp"),
            ),
            {
                pycurl.PROXY: "https://proxy.test",
                pycurl.PROXYTYPE: pycurl.PROXYTYPE_HTTP,
                pycurl.PROXYHEADER: [b"X-P: 1"],
                pycurl.PROXY_SSL_VERIFYPEER: 0,
                pycurl.PROXY_SSL_VERIFYHOST: 0,
                pycurl.PROXYAUTH: pycurl.HTTPAUTH_DIGEST,
                pycurl.PROXYUSERNAME: b"pu",
                pycurl.PROXYPASSWORD: b"pp",
            },
            [],
        ),
        (TaskConfig(http_version="0.9"), {pycurl.HTTP09_ALLOWED: 1}, [pycurl.HTTP_VERSION]),
        (TaskConfig(http_version="1.0"), {pycurl.HTTP_VERSION: pycurl.CURL_HTTP_VERSION_1_0}, []),
        (TaskConfig(http_version="2"), {pycurl.HTTP_VERSION: pycurl.CURL_HTTP_VERSION_2_0}, []),
        (
            TaskConfig(http_version="2-prior-knowledge"),
            {pycurl.HTTP_VERSION: pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE},
            [],
        ),
        (TaskConfig(ip_version=6), {pycurl.IPRESOLVE: pycurl.IPRESOLVE_V6}, []),
        (TaskConfig(referer_url="auto"), {pycurl.AUTOREFERER: 1}, [pycurl.REFERER]),
        (TaskConfig(referer_url="http://r.test/x"), {pycurl.REFERER: "http://r.test/x"}, []),
        (
            TaskConfig(resolve=(ResolveEntry("a.test", 443, ("127.0.0.1", "::1")),)),
            {
                pycurl.RESOLVE: ["a.test:443:127.0.0.1,[::1]"],
                pycurl.SHARE: PrivateDnsCache(),
                pycurl.FRESH_CONNECT: 1,
                pycurl.FORBID_REUSE: 1,
            },
            [],
        ),
        (
            TaskConfig(doh_url="https://doh.test/q", doh_insecure=True),
            {pycurl.DOH_URL: "https://doh.test/q", DOH_SSL_VERIFYPEER: 0, DOH_SSL_VERIFYHOST: 0},
            [],
        ),
        (
            TaskConfig(dns_server=("1.1.1.1", "9.9.9.9")),
            {pycurl.DNS_SERVERS: "1.1.1.1,9.9.9.9"},
            [],
        ),
        (
            TaskConfig(tls_version="1.2", tls_max_version="1.3"),
            {pycurl.SSLVERSION: pycurl.SSLVERSION_TLSv1_2 | pycurl.SSLVERSION_MAX_TLSv1_3},
            [],
        ),
        (
            TaskConfig(tls_max_version="1.2"),
            {pycurl.SSLVERSION: pycurl.SSLVERSION_DEFAULT | pycurl.SSLVERSION_MAX_TLSv1_2},
            [],
        ),
        (
            TaskConfig(insecure=True, session_id=False, cert_status=True),
            {
                pycurl.SSL_VERIFYPEER: 0,
                pycurl.SSL_VERIFYHOST: 0,
                pycurl.SSL_SESSIONID_CACHE: 0,
                pycurl.SSL_VERIFYSTATUS: 1,
            },
            [],
        ),
        (
            TaskConfig(ca=Pem(content=b"PEM")),
            {pycurl.CAINFO_BLOB: b"PEM", pycurl.CAINFO: None, pycurl.CAPATH: None},
            [],
        ),
        (
            TaskConfig(
                ca=Pem(path=f"/etc/tasks/certs/{OWNER}/ca.pem"),
                cert=ClientCert(Pem(path=f"/etc/tasks/certs/{OWNER}/c.pem"), password="pw"),
                cert_type="pem",
                key=Pem(content=b"KEY"),
                key_type="pem",
            ),
            {
                pycurl.CAINFO: f"/etc/tasks/certs/{OWNER}/ca.pem",
                pycurl.SSLCERT: f"/etc/tasks/certs/{OWNER}/c.pem",
                pycurl.KEYPASSWD: b"pw",
                pycurl.SSLCERTTYPE: "PEM",
                pycurl.SSLKEY_BLOB: b"KEY",
                pycurl.SSLKEYTYPE: "PEM",
            },
            [pycurl.CAINFO_BLOB],
        ),
        (TaskConfig(hsts=True), {pycurl.HSTS_CTRL: pycurl.CURLHSTS_ENABLE}, []),
        (TaskConfig(hsts=False), {}, [pycurl.HSTS_CTRL]),
        (
            TaskConfig(hsts='.a.test "unlimited"\n'),
            {
                pycurl.HSTS_CTRL: pycurl.CURLHSTS_ENABLE,
                pycurl.HSTSREADFUNCTION: HstsPreload((HstsEntry("a.test", None, True),)),
            },
            [],
        ),
        (
            TaskConfig(ha_proxy_protocol=True),
            {pycurl.HAPROXYPROTOCOL: 1, pycurl.FRESH_CONNECT: 1, pycurl.FORBID_REUSE: 1},
            [],
        ),
        (
            TaskConfig(location_trusted=Credentials("lu", "lp")),
            {pycurl.UNRESTRICTED_AUTH: 1, pycurl.USERNAME: b"lu", pycurl.PASSWORD: b"lp"},
            [],
        ),
        (
            TaskConfig(location=False, location_trusted=Credentials("lu", "lp")),
            {},
            [pycurl.UNRESTRICTED_AUTH, pycurl.USERNAME],
        ),
    ],
)
def test_config_mapping(config: TaskConfig, expected: dict[int, object], absent: list[int]) -> None:
    options = curl_options(make_call(config=config), SETTINGS)
    assert {option: value(options, option) for option in expected} == expected
    assert [option for option in absent if values(options, option)] == []


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        (
            {"auth_basic": Credentials("u:1", "p")},
            {
                pycurl.HTTPAUTH: pycurl.HTTPAUTH_BASIC,
                pycurl.USERNAME: b"u:1",
                pycurl.PASSWORD: b"p",
            },
        ),
        ({"auth_digest": Credentials("u", "p")}, {pycurl.HTTPAUTH: pycurl.HTTPAUTH_DIGEST}),
        ({"auth_ntlm": Credentials("u", "p")}, {pycurl.HTTPAUTH: pycurl.HTTPAUTH_NTLM}),
        (
            {"auth_aws_sigv4": AwsSigv4("aws", "amz", "eu-west-1", "s3", "AKID", "SECRET")},
            {
                pycurl.AWS_SIGV4: b"aws:amz:eu-west-1:s3",
                pycurl.USERNAME: b"AKID",
                pycurl.PASSWORD: b"SECRET",
            },
        ),
        (
            {"cookies": (Cookie("a", "1"), Cookie("b", "2"))},
            {pycurl.COOKIE: b"a=1; b=2"},
        ),
    ],
)
def test_request_mapping(request_fields: dict[str, Any], expected: dict[int, object]) -> None:
    options = curl_options(make_call(**request_fields), SETTINGS)
    assert {option: value(options, option) for option in expected} == expected


def test_explicit_auth_wins_over_location_trusted_credentials() -> None:
    call = make_call(
        config=TaskConfig(location_trusted=Credentials("lu", "lp")),
        auth_basic=Credentials("u", "p"),
    )
    options = curl_options(call, SETTINGS)
    assert (value(options, pycurl.USERNAME), value(options, pycurl.PASSWORD)) == (b"u", b"p")


def test_cookie_file_feeds_the_cookie_engine_without_a_file() -> None:
    text = "# Netscape HTTP Cookie File\n\n.a.test\tTRUE\t/\tFALSE\t0\tsid\tabc\nALL\n"
    options = curl_options(make_call(cookie_file=text), SETTINGS)
    assert value(options, pycurl.COOKIEFILE) == ""
    assert values(options, pycurl.COOKIELIST) == [
        b"# Netscape HTTP Cookie File",
        b".a.test\tTRUE\t/\tFALSE\t0\tsid\tabc",
    ]
    assert cookie_file_lines("FLUSH\r\nx\ty\r\n") == ("x\ty",)


def test_parse_hsts_cache() -> None:
    text = '# comment\n.a.test "20300102 03:04:05"\nb.test "unlimited"\nbad.test "soon"\n\nc\n'
    assert parse_hsts_cache(text) == (
        HstsEntry("a.test", dt.datetime(2030, 1, 2, 3, 4, 5), True),
        HstsEntry("b.test", None, False),
    )


@pytest.mark.parametrize(
    ("cert_dir", "path"),
    [
        (None, f"/etc/tasks/certs/{OWNER}/ca.pem"),
        ("/etc/tasks/certs", "/etc/passwd"),
        ("/etc/tasks/certs", "/etc/tasks/certs/../../passwd"),
        ("/etc/tasks/certs", "../ca.pem"),
        ("/etc/tasks/certs", f"/etc/tasks/certs/{OWNER}"),
        ("/etc/tasks/certs", "/etc/tasks/certs/ca.pem"),
        ("/etc/tasks/certs", "/etc/tasks/certs/01OTHER000000000000000000/client.key"),
        ("/etc/tasks/certs", "../01OTHER000000000000000000/client.key"),
        ("/etc/tasks/certs", f"/etc/tasks/certs/{OWNER}-evil/ca.pem"),
    ],
)
def test_certificate_paths_must_stay_inside_the_owners_cert_dir(
    cert_dir: str | None, path: str
) -> None:
    call = make_call(config=TaskConfig(ca=Pem(path=path)))
    with pytest.raises(ValueError, match=r"^config\.ca: ") as caught:
        curl_options(call, CurlSettings(cert_dir=cert_dir))
    assert "/etc" not in str(caught.value)  # the message names the option, not a path


def test_relative_certificate_paths_are_taken_inside_the_owners_cert_dir() -> None:
    call = make_call(config=TaskConfig(ca=Pem(path="sub/ca.pem")))
    options = curl_options(call, CurlSettings(cert_dir="/etc/tasks/certs/"))
    assert value(options, pycurl.CAINFO) == f"/etc/tasks/certs/{OWNER}/sub/ca.pem"


def test_curl_options_is_pure() -> None:
    call = make_call(
        method="POST",
        form=(FormField("a", "1"),),
        config=TaskConfig(
            hsts='a.test "unlimited"', resolve=(ResolveEntry("a", 80, ("1.1.1.1",)),)
        ),
    )
    assert curl_options(call, SETTINGS) == curl_options(call, SETTINGS)


# ---------------------------------------------------------------------------------------
# Capabilities


def test_this_build_cannot_choose_dns_servers_and_says_so() -> None:
    # This libcurl uses the threaded resolver, not c-ares (the DNS_SERVERS option needs c-ares).
    config = TaskConfig(dns_server=("9.9.9.9",))
    fields = unsupported_fields(HttpRequest("http://h.test/x", "GET"), config, CAPABILITIES)
    if "dns_servers" in CAPABILITIES:
        assert fields == []
    else:
        assert fields == ["config.dnsServer"]


def test_unsupported_fields_lists_every_field_a_bare_build_cannot_do() -> None:
    request = HttpRequest(
        "http://h.test/x",
        "GET",
        auth_ntlm=Credentials("u", "p"),
        auth_aws_sigv4=AwsSigv4("aws", "amz", "r", "s", "k", "s"),
    )
    config = TaskConfig(
        http_version="2",
        dns_server=("1.1.1.1",),
        proxy=Proxy("https", "p.test", 8080),
        proxy_auth_ntlm=Credentials("u", "p"),
        ha_proxy_client_ip="10.0.0.1",
        doh_url="https://doh.test/q",
        ca=Pem(content=b"x"),
    )
    assert unsupported_fields(request, config, frozenset()) == [
        "config.dnsServer",
        "config.httpVersion",
        "httpRequest.authNtlm",
        "config.proxyAuthNtlm",
        "httpRequest.authAwsSigv4",
        "config.haProxyClientIp",
        "config.dohUrl",
        "config.proxy",
        "config.ca",
    ]
    full = frozenset({"http2", "ntlm", "aws_sigv4", "doh", "https_proxy", "pem_content", "tls"})
    assert unsupported_fields(request, config, full) == [
        "config.dnsServer",
        "config.haProxyClientIp",
    ]


def test_capabilities_of_this_build() -> None:
    assert {"tls", "http2", "ntlm", "hsts", "pem_content", "aws_sigv4"} <= CAPABILITIES


@pytest.mark.skipif("haproxy_client_ip" in CAPABILITIES, reason="this build can do it")
def test_ha_proxy_client_ip_is_refused_when_unsupported() -> None:
    with pytest.raises(ValueError, match="haProxyClientIp"):
        curl_options(make_call(config=TaskConfig(ha_proxy_client_ip="10.0.0.1")), SETTINGS)


# ---------------------------------------------------------------------------------------
# Real transfers


@pytest.fixture
async def dispatcher() -> AsyncIterator[CurlDispatcher]:
    dispatcher = CurlDispatcher(
        CurlSettings(egress=LOOPBACK), max_connections=64, close_grace_s=0.5
    )
    await dispatcher.start()
    yield dispatcher
    await dispatcher.close()


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


@pytest.fixture(scope="module")
def tls() -> TlsMaterial:
    return TlsMaterial()


@pytest.fixture
async def tls_target(tls: TlsMaterial) -> AsyncIterator[TargetServer]:
    async with TargetServer(tls.server_context()) as server:
        yield server


async def send(dispatcher: Dispatcher, call: Call) -> Outcome:
    return await asyncio.wait_for(dispatcher.submit(call), timeout=10)


def test_curl_dispatcher_is_a_dispatcher() -> None:
    dispatcher: Dispatcher = CurlDispatcher(CurlSettings(egress=LOOPBACK))
    assert dispatcher.in_flight == 0


async def test_get_arrives_with_headers_and_default_user_agent(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    target.route("/hook", Reply(201, b"created", (("X-Reply", "yes"),)))
    call = make_call(target.url("/hook"), headers=(("X-Tasks-Queue-Id", "Q1"),))
    call = replace(
        call, request=replace(call.request, headers=(("X-A", "1"), ("user-agent", "nope")))
    )

    outcome = await send(dispatcher, call)

    assert (outcome.status, outcome.body, outcome.error, outcome.curl_code) == (
        201,
        b"created",
        None,
        0,
    )
    assert ("X-Reply", "yes") in outcome.headers
    assert set(outcome.timings) == {"namelookup", "connect", "appconnect", "starttransfer", "total"}
    assert outcome.total_ms == outcome.timings["total"] > 0
    [arrival] = target.arrivals
    assert (arrival.method, arrival.path) == ("GET", "/hook")
    assert arrival.headers_named("user-agent") == [DEFAULT_USER_AGENT]
    assert (arrival.header("x-a"), arrival.header("x-tasks-queue-id")) == ("1", "Q1")
    assert arrival.header("expect") is None
    assert arrival.header("accept-encoding") is None
    assert dispatcher.in_flight == 0


async def test_query_arrives_appended_to_an_existing_one(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    call = make_call(target.url("/hook?x=1"), query=(("a b", "c&d"),))
    await send(dispatcher, call)
    assert target.arrivals[0].query == [("x", "1"), ("a b", "c&d")]


@pytest.mark.parametrize(
    ("method", "body", "content_type", "expected"),
    [
        ("POST", {"data_json": '{"a": 1}'}, "application/json", b'{"a": 1}'),
        ("PUT", {"data_text": "héllo"}, "plain/text", "héllo".encode()),
        ("PATCH", {"data_text": "x" * 5000}, "plain/text", b"x" * 5000),
    ],
)
async def test_bodies_arrive_with_their_content_type(
    dispatcher: CurlDispatcher,
    target: TargetServer,
    method: str,
    body: dict[str, Any],
    content_type: str,
    expected: bytes,
) -> None:
    outcome = await send(dispatcher, make_call(target.url("/hook"), method, **body))
    assert outcome.status == 404  # unknown route; only the arrival matters
    [arrival] = target.arrivals
    assert (arrival.method, arrival.body) == (method, expected)
    assert arrival.header("content-type") == content_type
    assert arrival.header("expect") is None  # no 100-continue stall


async def test_form_arrives_as_multipart_with_literal_values(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    form = (FormField("name", "value one"), FormField("file", "@/etc/passwd"))
    await send(dispatcher, make_call(target.url("/hook"), "POST", form=form))
    [arrival] = target.arrivals
    assert (arrival.header("content-type") or "").startswith("multipart/form-data; boundary=")
    assert b'name="name"\r\n\r\nvalue one\r\n' in arrival.body
    assert b'name="file"\r\n\r\n@/etc/passwd\r\n' in arrival.body  # a string, never a file


async def test_cookies_arrive(dispatcher: CurlDispatcher, target: TargetServer) -> None:
    cookies = (Cookie("a", "1"), Cookie("b", "2"))
    await send(dispatcher, make_call(target.url("/hook"), cookies=cookies))
    jar = "127.0.0.1\tFALSE\t/\tFALSE\t0\tsid\tabc\n"
    await send(dispatcher, make_call(target.url("/hook"), cookie_file=jar))
    await send(dispatcher, make_call(target.url("/hook")))
    assert [a.header("cookie") for a in target.arrivals] == ["a=1; b=2", "sid=abc", None]


async def test_sequential_calls_reuse_the_connection(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    for _ in range(3):
        await send(dispatcher, make_call(target.url("/hook")))
    assert len({a.peer_port for a in target.arrivals}) == 1


async def test_a_reused_handle_sends_its_own_call_and_nothing_of_the_last(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    """Calls one after another run on the same handle, which keeps the options of the
    last call: a call with the same options sends its own values, and one with other
    options sends none of the last call's."""
    url = target.url("/hook")
    auth = Credentials("ann", "one")
    calls = [
        make_call(url, "POST", headers=(("X-N", "1"),), data_json='{"n":1}', auth_basic=auth),
        make_call(url, "POST", headers=(("X-N", "2"),), data_json='{"n":2}', auth_basic=auth),
        make_call(url, "PUT", data_text="put"),
        make_call(url, "POST", data_json='{"n":3}'),
        make_call(url),
    ]
    for call in calls:
        await send(dispatcher, call)
    seen = [
        (a.method, a.body, a.header("x-n"), a.header("authorization") is not None)
        for a in target.arrivals
    ]
    assert seen == [
        ("POST", b'{"n":1}', "1", True),
        ("POST", b'{"n":2}', "2", True),
        ("PUT", b"put", None, False),
        ("POST", b'{"n":3}', None, False),
        ("GET", b"", None, False),
    ]
    assert len({a.peer_port for a in target.arrivals}) == 1  # one connection, one handle


async def test_https_with_an_inline_ca(
    dispatcher: CurlDispatcher, tls_target: TargetServer, tls: TlsMaterial
) -> None:
    config = TaskConfig(ca=Pem(content=tls.ca_pem))
    outcome = await send(dispatcher, make_call(tls_target.url("/hook"), config=config))
    assert (outcome.status, outcome.error) == (404, None)
    assert outcome.timings["appconnect"] > 0


async def test_https_with_ca_and_client_cert_files_inside_the_cert_dir(
    tls: TlsMaterial, tmp_path: Path
) -> None:
    client = tls.client_cert("files.test")
    own = tmp_path / OWNER
    own.mkdir()
    (own / "ca.pem").write_bytes(tls.ca_pem)
    (own / "client.pem").write_bytes(client.cert)
    (own / "client.key").write_bytes(client.key)
    config = TaskConfig(
        ca=Pem(path="ca.pem"),
        cert=ClientCert(Pem(path=str(own / "client.pem"))),
        key=Pem(path="client.key"),
    )
    dispatcher = CurlDispatcher(
        CurlSettings(cert_dir=str(tmp_path), egress=LOOPBACK), close_grace_s=0.5
    )
    await dispatcher.start()
    try:
        async with TargetServer(tls.server_context(require_client_cert=True)) as server:
            outcome = await send(dispatcher, make_call(server.url("/hook"), config=config))
            outside = replace(config, ca=Pem(path="/etc/ssl/certs/ca-certificates.crt"))
            refused = await send(dispatcher, make_call(server.url("/hook"), config=outside))
    finally:
        await dispatcher.close()
    assert (outcome.status, outcome.error) == (404, None)
    assert server.arrivals[0].client_cert is not None
    assert (
        refused.error
        == "option refused: config.ca: the path is outside this owner's certificate directory"
    )
    assert len(server.arrivals) == 1


async def test_unreadable_certificate_files_are_named_by_option_not_by_path(
    tls: TlsMaterial, tmp_path: Path
) -> None:
    """libcurl's own text names the file it failed to read, a path on this server; the
    attempt's error names the task's option instead."""
    own = tmp_path / OWNER
    own.mkdir()
    (own / "ca.pem").write_bytes(b"not a certificate")
    (own / "client.pem").write_bytes(b"not a certificate either")
    (own / "client.key").write_bytes(b"nor a key")
    dispatcher = CurlDispatcher(
        CurlSettings(cert_dir=str(tmp_path), egress=LOOPBACK), close_grace_s=0.5
    )
    await dispatcher.start()
    try:
        async with TargetServer(tls.server_context(require_client_cert=True)) as server:
            bad_ca = TaskConfig(ca=Pem(path="missing-ca.pem"))
            no_ca = await send(dispatcher, make_call(server.url("/hook"), config=bad_ca))
            client = TaskConfig(
                ca=Pem(content=tls.ca_pem),
                cert=ClientCert(Pem(path="client.pem")),
                key=Pem(path="client.key"),
            )
            no_client = await send(dispatcher, make_call(server.url("/hook"), config=client))
    finally:
        await dispatcher.close()
    assert no_ca.curl_code == pycurl.E_SSL_CACERT_BADFILE
    assert no_ca.error == (
        f"config.ca: the CA certificates could not be read "
        f"(libcurl error {pycurl.E_SSL_CACERT_BADFILE})"
    )
    assert no_client.curl_code == pycurl.E_SSL_CERTPROBLEM
    assert no_client.error is not None and no_client.error.startswith(
        "config.cert / config.key: the client certificate or key could not be used"
    )
    for outcome in (no_ca, no_client):
        error = outcome.error or ""
        assert str(tmp_path) not in error and ".pem" not in error and "client.key" not in error
    assert server.arrivals == []


async def test_https_insecure_accepts_an_untrusted_certificate(
    dispatcher: CurlDispatcher, tls_target: TargetServer
) -> None:
    config = TaskConfig(insecure=True)
    outcome = await send(dispatcher, make_call(tls_target.url("/hook"), config=config))
    assert (outcome.status, outcome.error) == (404, None)


async def test_https_without_the_ca_fails_verification(
    dispatcher: CurlDispatcher, tls_target: TargetServer
) -> None:
    outcome = await send(dispatcher, make_call(tls_target.url("/hook")))
    assert outcome.status == 0
    assert outcome.curl_code == pycurl.E_PEER_FAILED_VERIFICATION
    assert outcome.error and "certificate" in outcome.error
    assert tls_target.arrivals == []


async def test_https_with_the_wrong_inline_ca_fails_verification(
    dispatcher: CurlDispatcher, tls_target: TargetServer
) -> None:
    config = TaskConfig(ca=Pem(content=TlsMaterial().ca_pem))
    outcome = await send(dispatcher, make_call(tls_target.url("/hook"), config=config))
    assert outcome.curl_code == pycurl.E_PEER_FAILED_VERIFICATION


@pytest.mark.parametrize("password", [None, "s3cret"])
async def test_mutual_tls_with_inline_client_cert_and_key(
    dispatcher: CurlDispatcher, tls: TlsMaterial, password: str | None
) -> None:
    client = tls.client_cert("client.test", password.encode() if password else None)
    config = TaskConfig(
        ca=Pem(content=tls.ca_pem),
        cert=ClientCert(Pem(content=client.cert), password=password),
        key=Pem(content=client.key),
    )
    async with TargetServer(tls.server_context(require_client_cert=True)) as server:
        outcome = await send(dispatcher, make_call(server.url("/hook"), config=config))
        refused = await send(
            dispatcher, make_call(server.url("/hook"), config=replace(config, cert=None, key=None))
        )
    assert (outcome.status, outcome.error) == (404, None)
    [arrival] = server.arrivals
    assert arrival.client_cert is not None
    assert ("DNS", "client.test") in arrival.client_cert["subjectAltName"]
    assert refused.status == 0 and refused.error


async def test_redirect_chain_is_followed_and_the_last_headers_kept(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    target.route("/r1", redirect("/r2"))
    target.route("/r2", redirect(target.url("/r3"), 301))
    target.route("/r3", redirect("/final", 303))
    target.route("/final", Reply(200, b"done", (("X-Final", "1"),)))

    outcome = await send(dispatcher, make_call(target.url("/r1"), "POST", data_text="x"))

    assert (outcome.status, outcome.body, outcome.error) == (200, b"done", None)
    assert ("X-Final", "1") in outcome.headers
    assert not any(name.lower() == "location" for name, _ in outcome.headers)
    assert [a.path for a in target.arrivals] == ["/r1", "/r2", "/r3", "/final"]
    assert target.arrivals[-1].method == "GET"  # 303 after POST
    assert target.arrivals[1].header("referer") is None  # no AUTO referer unless asked


async def test_auto_referer_on_redirect(dispatcher: CurlDispatcher, target: TargetServer) -> None:
    target.route("/r1", redirect("/final"))
    target.route("/final", Reply())
    await send(dispatcher, make_call(target.url("/r1"), config=TaskConfig(referer_url="AUTO")))
    assert target.arrivals[-1].header("referer") == target.url("/r1")


async def test_redirect_attempts_limit_the_chain(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    for n in range(1, 4):
        target.route(f"/r{n}", redirect(f"/r{n + 1}"))
    config = TaskConfig(redirect_attempts=2)
    outcome = await send(dispatcher, make_call(target.url("/r1"), config=config))
    assert outcome.curl_code == pycurl.E_TOO_MANY_REDIRECTS
    assert outcome.status == 302 and outcome.error
    assert [a.path for a in target.arrivals] == ["/r1", "/r2", "/r3"]


async def test_zero_redirect_attempts_follow_nothing(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    target.route("/r1", redirect("/r2"))
    outcome = await send(
        dispatcher, make_call(target.url("/r1"), config=TaskConfig(redirect_attempts=0))
    )
    assert outcome.curl_code == pycurl.E_TOO_MANY_REDIRECTS
    assert [a.path for a in target.arrivals] == ["/r1"]


async def test_location_false_returns_the_redirect_itself(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    target.route("/r1", redirect("/r2"))
    outcome = await send(
        dispatcher, make_call(target.url("/r1"), config=TaskConfig(location=False))
    )
    assert (outcome.status, outcome.error) == (302, None)
    assert ("Location", "/r2") in outcome.headers
    assert [a.path for a in target.arrivals] == ["/r1"]


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "gopher://127.0.0.1:9/x", "dict://127.0.0.1:9/d"]
)
async def test_redirects_to_other_protocols_are_refused(
    dispatcher: CurlDispatcher, target: TargetServer, location: str
) -> None:
    target.route("/r1", redirect(location))
    outcome = await send(dispatcher, make_call(target.url("/r1")))
    assert outcome.curl_code == pycurl.E_UNSUPPORTED_PROTOCOL
    assert outcome.body == b"" and outcome.error


async def test_only_http_and_https_urls_are_spoken(dispatcher: CurlDispatcher) -> None:
    outcome = await send(dispatcher, make_call("file:///etc/passwd"))
    assert (outcome.status, outcome.curl_code, outcome.body) == (
        0,
        pycurl.E_UNSUPPORTED_PROTOCOL,
        b"",
    )


async def test_proto_https_refuses_a_redirect_to_http(
    dispatcher: CurlDispatcher, tls_target: TargetServer, target: TargetServer, tls: TlsMaterial
) -> None:
    tls_target.route("/r1", redirect(target.url("/plain")))
    config = TaskConfig(ca=Pem(content=tls.ca_pem), proto="https")
    outcome = await send(dispatcher, make_call(tls_target.url("/r1"), config=config))
    assert outcome.curl_code == pycurl.E_UNSUPPORTED_PROTOCOL
    assert target.arrivals == []


async def test_basic_auth(dispatcher: CurlDispatcher, target: TargetServer) -> None:
    target.route("/private", basic_auth("ann", "pa:ss"))
    good = make_call(target.url("/private"), auth_basic=Credentials("ann", "pa:ss"))
    bad = make_call(target.url("/private"), auth_basic=Credentials("ann", "wrong"))
    assert (await send(dispatcher, good)).status == 200
    assert (await send(dispatcher, bad)).status == 401


async def test_digest_auth(dispatcher: CurlDispatcher, target: TargetServer) -> None:
    target.route("/private", digest_auth("ann", "secret"))
    outcome = await send(
        dispatcher, make_call(target.url("/private"), auth_digest=Credentials("ann", "secret"))
    )
    assert (outcome.status, outcome.body) == (200, b"welcome")
    assert [a.header("authorization") is None for a in target.arrivals] == [True, False]


async def test_aws_sigv4_signs_the_request(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    sigv4 = AwsSigv4("aws", "amz", "eu-west-1", "s3", "AKIDEXAMPLE", "secret")
    await send(dispatcher, make_call(target.url("/bucket/key"), auth_aws_sigv4=sigv4))
    authorization = target.arrivals[0].header("authorization") or ""
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/s3/aws4_request" in authorization
    assert target.arrivals[0].header("x-amz-date")


async def test_forward_proxy_relays_with_proxy_headers_and_auth(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    target.route("/hook", Reply(200, b"via proxy"))
    async with ForwardProxy(credentials=("pu", "pp")) as proxy:
        config = TaskConfig(
            proxy=Proxy("http", proxy.host, proxy.port),
            proxy_headers=(("X-Proxy-Note", "hi"),),
            proxy_auth_basic=Credentials("pu", "pp"),
        )
        outcome = await send(dispatcher, make_call(target.url("/hook"), config=config))
        denied = await send(
            dispatcher,
            make_call(target.url("/hook"), config=replace(config, proxy_auth_basic=None)),
        )
    assert (outcome.status, outcome.body) == (200, b"via proxy")
    assert denied.status == 407
    at_proxy = proxy.arrivals[0]
    assert at_proxy.target == target.url("/hook")  # absolute form: it went through the proxy
    assert at_proxy.header("x-proxy-note") == "hi"
    assert [a.path for a in target.arrivals] == ["/hook"]


async def test_proxy_variables_in_the_environment_are_ignored(
    dispatcher: CurlDispatcher, target: TargetServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ForwardProxy() as proxy:
        for name in ("http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://{proxy.host}:{proxy.port}")
        outcome = await send(dispatcher, make_call(target.url("/hook")))
    assert outcome.status == 404
    assert proxy.arrivals == [] and len(target.arrivals) == 1


async def test_http_1_0_proxy_keeps_its_port_and_tunnels_with_http_1_0(
    dispatcher: CurlDispatcher, target: TargetServer, tls_target: TargetServer
) -> None:
    # PROXYTYPE_HTTP_1_0 (curl --proxy1.0) changes only the CONNECT request's version.
    async with ForwardProxy() as proxy:
        config = TaskConfig(proxy=Proxy("http", proxy.host, proxy.port), proxy_http_version="1.0")
        plain = await send(dispatcher, make_call(target.url("/hook"), config=config))
        tunnel = await send(dispatcher, make_call(tls_target.url("/hook"), config=config))
    assert plain.status == 404 and [a.path for a in target.arrivals] == ["/hook"]
    assert tunnel.error and tls_target.arrivals == []
    connect = proxy.arrivals[-1]
    assert (connect.method, connect.target, connect.version) == (
        "CONNECT",
        f"127.0.0.1:{tls_target.port}",
        "HTTP/1.0",
    )


async def test_resolve_pins_a_fake_hostname(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    config = TaskConfig(resolve=(ResolveEntry("pinned.test", target.port, ("127.0.0.1",)),))
    outcome = await send(
        dispatcher, make_call(target.url("/hook", host="pinned.test"), config=config)
    )
    assert outcome.error is None
    assert target.arrivals[0].header("host") == f"pinned.test:{target.port}"
    # The pin was private to that call: the same name now fails to resolve.
    unpinned = await send(dispatcher, make_call(target.url("/hook", host="pinned.test")))
    assert unpinned.curl_code == pycurl.E_COULDNT_RESOLVE_HOST
    assert len(target.arrivals) == 1


async def test_hsts_preload_upgrades_http_to_https(
    dispatcher: CurlDispatcher, tls: TlsMaterial
) -> None:
    async with TargetServer(tls.server_context("hsts.test")) as server:
        config = TaskConfig(
            hsts='hsts.test "unlimited"\n',
            ca=Pem(content=tls.ca_pem),
            resolve=(ResolveEntry("hsts.test", server.port, ("127.0.0.1",)),),
        )
        plain_url = server.url("/hook", host="hsts.test").replace("https://", "http://")
        outcome = await send(dispatcher, make_call(plain_url, config=config))
    assert (outcome.status, outcome.error) == (404, None)  # answered over TLS
    assert [a.path for a in server.arrivals] == ["/hook"]


async def test_hsts_learned_in_memory_upgrades_the_redirect_to_http(
    dispatcher: CurlDispatcher, tls: TlsMaterial
) -> None:
    async with TargetServer(tls.server_context("hsts.test")) as server:
        plain_next = server.url("/next", host="hsts.test").replace("https://", "http://")
        sts = ("Strict-Transport-Security", "max-age=600")
        server.route("/start", Reply(302, b"", (sts, ("Location", plain_next))))
        server.route("/next", Reply(200, b"secure"))
        config = TaskConfig(
            ca=Pem(content=tls.ca_pem),
            resolve=(ResolveEntry("hsts.test", server.port, ("127.0.0.1",)),),
        )
        url = server.url("/start", host="hsts.test")
        with_hsts = await send(dispatcher, make_call(url, config=replace(config, hsts=True)))
        without = await send(dispatcher, make_call(url, config=config))
    assert (with_hsts.status, with_hsts.body) == (200, b"secure")
    assert without.error  # plain HTTP to a TLS port
    assert [a.path for a in server.arrivals] == ["/start", "/next", "/start"]


async def test_ha_proxy_protocol_preamble_arrives(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    config = TaskConfig(ha_proxy_protocol=True)
    await send(dispatcher, make_call(target.url("/hook"), config=config))
    preamble = target.arrivals[0].proxy_preamble or ""
    assert preamble.startswith("PROXY TCP4 127.0.0.1 127.0.0.1 ")


async def test_http_1_0_is_spoken_when_asked(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    await send(dispatcher, make_call(target.url("/hook"), config=TaskConfig(http_version="1.0")))
    assert target.arrivals[0].version == "HTTP/1.0"


@pytest.mark.skipif("http2" not in CAPABILITIES, reason="this libcurl has no HTTP/2")
async def test_http2_prior_knowledge_opens_with_the_http2_preface(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    # No HTTP/2 server is installed here; the HTTP/1.1 target records the preface instead,
    # which is exactly what prior knowledge means.
    config = TaskConfig(http_version="2-prior-knowledge")
    outcome = await send(dispatcher, make_call(target.url("/hook"), config=config))
    assert [(a.method, a.version) for a in target.arrivals] == [("PRI", "HTTP/2.0")]
    assert outcome.error


@pytest.mark.skipif("http2" not in CAPABILITIES, reason="this libcurl has no HTTP/2")
async def test_http2_falls_back_to_http_1_1_on_a_plain_http_1_1_target(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    outcome = await send(
        dispatcher, make_call(target.url("/hook"), config=TaskConfig(http_version="2"))
    )
    assert (outcome.status, outcome.error) == (404, None)
    assert target.arrivals[0].header("upgrade") == "h2c"


async def test_timeout_against_a_hanging_target(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    target.route("/hang", Reply(hang=True))
    started = time.monotonic()
    outcome = await send(dispatcher, make_call(target.url("/hang"), timeout_ms=400))
    elapsed = time.monotonic() - started
    assert outcome.timed_out and outcome.curl_code == pycurl.E_OPERATION_TIMEDOUT
    assert (outcome.status, outcome.body) == (0, b"")
    assert 0.35 <= elapsed < 3.0


async def test_a_body_over_the_cap_is_kept_up_to_it_and_the_rest_is_not_downloaded(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    total = 64 * 1024 * 1024
    target.route("/huge", Reply(stream_bytes=total))
    outcome = await send(dispatcher, make_call(target.url("/huge"), max_body_bytes=32_768))
    assert outcome.truncated and (outcome.curl_code, outcome.error) == (0, None)
    assert (outcome.status, outcome.body) == (200, b"x" * 32_768)
    await wait_until(lambda: target.sent_bytes.get("/huge", 0) > 0)
    assert target.sent_bytes["/huge"] < total  # the rest was never downloaded


async def test_without_redirects_a_body_over_the_cap_is_cut_the_same_way(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    """A call that follows no redirect reads its headers at the end (no Python callback
    per line); its body is still kept up to the cap and the rest not downloaded."""
    total = 64 * 1024 * 1024
    target.route("/huge", Reply(stream_bytes=total, headers=(("X-Size", "huge"),)))
    call = make_call(target.url("/huge"), max_body_bytes=32_768, config=TaskConfig(location=False))
    outcome = await send(dispatcher, call)
    assert outcome.truncated and (outcome.curl_code, outcome.error) == (0, None)
    assert (outcome.status, outcome.body) == (200, b"x" * 32_768)
    assert ("X-Size", "huge") in outcome.headers
    await wait_until(lambda: target.sent_bytes.get("/huge", 0) > 0)
    assert target.sent_bytes["/huge"] < total


async def test_headers_read_at_the_end_are_those_read_line_by_line(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    reply = Reply(203, b"same", (("X-One", "1"), ("X-Two", " spaced "), ("Set-Cookie", "a=b")))
    target.route("/same", reply)
    outcomes = [
        await send(dispatcher, make_call(target.url("/same"), config=TaskConfig(location=follow)))
        for follow in (True, False)
    ]
    kept = [replace(outcome, timings={}, total_ms=0.0) for outcome in outcomes]
    assert kept[0] == kept[1]
    assert ("X-Two", "spaced") in kept[1].headers and kept[1].status == 203


@pytest.mark.parametrize(
    "lines",
    [
        [b"HTTP/1.1 200 OK\r\n", b"A: 1\r\n", b"B:2\r\n", b"\r\n"],
        # an interim answer, then the real one: only the last answer's headers stay
        [b"HTTP/1.1 100 Continue\r\n", b"\r\n", b"HTTP/1.1 201 Created\r\n", b"X: y\r\n"],
        # a redirect not followed, a folded line, a line without a colon, an empty value
        [
            *(b"HTTP/1.1 302 Found\r\n", b"Location: /next\r\n", b" folded\r\n"),
            *(b"junk\r\n", b"Empty:\r\n", b"HTTP/2 200\n", b"last: one\n", b"\r\n"),
        ],
        # trailers of a chunked body come after the blank line
        [b"HTTP/1.1 200 OK\r\n", b"T: 1\r\n", b"\r\n", b"Trailer: x\r\n"],
        [],
    ],
)
def test_collected_header_lines_read_as_the_line_callback_reads_them(lines: list[bytes]) -> None:
    loop = asyncio.new_event_loop()
    try:
        transfers = [
            curl_module._Transfer(
                make_call(config=TaskConfig(location=False)),
                curl_module._CallFuture(loop=loop),
                curl_module._Host("h:80"),
                curl_module._Plan("http://h/", "h:80", None),
            )
            for _ in range(2)
        ]
    finally:
        loop.close()
    by_line, at_end = transfers
    for line in lines:
        assert by_line.write_header(line) is None
    at_end.header_lines = list(lines)
    assert at_end.response_headers() == by_line.response_headers()


async def test_an_exact_fit_body_is_kept(dispatcher: CurlDispatcher, target: TargetServer) -> None:
    target.route("/fit", Reply(body=b"y" * 100))
    outcome = await send(dispatcher, make_call(target.url("/fit"), max_body_bytes=100))
    assert (outcome.truncated, outcome.body) == (False, b"y" * 100)


async def test_untraced_bodies_are_discarded_within_the_cap(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    target.route("/small", Reply(stream_bytes=1_000))
    config = TaskConfig(trace_response_data=False)
    outcome = await send(
        dispatcher, make_call(target.url("/small"), config=config, max_body_bytes=1_000)
    )
    assert (outcome.status, outcome.body, outcome.truncated, outcome.error) == (
        200,
        b"",
        False,
        None,
    )


async def test_untraced_bodies_also_stop_downloading_at_the_cap(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    total = 64 * 1024 * 1024
    target.route("/big", Reply(stream_bytes=total))
    config = TaskConfig(trace_response_data=False)
    outcome = await send(
        dispatcher, make_call(target.url("/big"), config=config, max_body_bytes=1_000)
    )
    assert (outcome.status, outcome.body, outcome.truncated, outcome.error) == (
        200,
        b"",
        True,
        None,
    )
    await wait_until(lambda: target.sent_bytes.get("/big", 0) > 0)
    assert target.sent_bytes["/big"] < total


async def test_connection_refused_is_an_error_outcome(dispatcher: CurlDispatcher) -> None:
    with refused_port() as port:
        outcome = await send(dispatcher, make_call(f"http://127.0.0.1:{port}/hook"))
    assert (outcome.status, outcome.curl_code) == (0, pycurl.E_COULDNT_CONNECT)
    assert outcome.error and not outcome.timed_out


async def test_an_option_this_build_lacks_becomes_an_error_outcome(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    config = TaskConfig(dns_server=("127.0.0.1",))
    outcome = await send(dispatcher, make_call(target.url("/hook"), config=config))
    if "dns_servers" in CAPABILITIES:
        pytest.skip("this build has c-ares")
    assert outcome.status == 0 and outcome.error and "option refused" in outcome.error
    assert target.arrivals == []
    assert dispatcher.in_flight == 0
    assert (await send(dispatcher, make_call(target.url("/hook")))).status == 404


async def test_a_slow_target_does_not_delay_fast_ones(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    target.route("/slow", Reply(hang=True))
    target.route("/fast", Reply(200, b"quick"))
    slow = dispatcher.submit(make_call(target.url("/slow"), timeout_ms=20_000))
    fast = [dispatcher.submit(make_call(target.url("/fast"))) for _ in range(40)]

    outcomes = await asyncio.wait_for(asyncio.gather(*fast), timeout=10)

    assert {(o.status, o.body) for o in outcomes} == {(200, b"quick")}
    assert not slow.done() and dispatcher.in_flight == 1
    target.release()  # the hanging request's connection closes without an answer
    assert (await asyncio.wait_for(slow, timeout=10)).error


async def test_max_connections_queues_later_calls(target: TargetServer) -> None:
    target.route("/slow", Reply(hang=True))
    target.route("/fast", Reply())
    dispatcher = CurlDispatcher(CurlSettings(egress=LOOPBACK), max_connections=1, close_grace_s=0.5)
    await dispatcher.start()
    try:
        slow = dispatcher.submit(make_call(target.url("/slow")))
        fast = dispatcher.submit(make_call(target.url("/fast")))
        await wait_until(lambda: len(target.arrivals) == 1)
        assert dispatcher.in_flight == 2 and not fast.done()
        target.release()
        await asyncio.wait_for(asyncio.gather(slow, fast), timeout=10)
        assert [a.path for a in target.arrivals] == ["/slow", "/fast"]
        assert fast.result().status == 200
    finally:
        await dispatcher.close()


async def test_cancelling_a_future_aborts_its_transfer(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    target.route("/hang", Reply(hang=True))
    future = dispatcher.submit(make_call(target.url("/hang"), timeout_ms=20_000))
    await wait_until(lambda: len(target.arrivals) == 1)
    future.cancel()
    await wait_until(lambda: dispatcher.in_flight == 0)
    target.route("/hang", Reply())
    assert (await send(dispatcher, make_call(target.url("/hang")))).status == 200


async def test_cancelling_the_task_awaiting_a_call_aborts_its_transfer(
    dispatcher: CurlDispatcher, target: TargetServer
) -> None:
    """A task cancelled while it awaits the call cancels the call's future for it, as
    asyncio.wait_for and gather do: the transfer is dropped all the same."""
    target.route("/hang", Reply(hang=True))
    waiter = asyncio.ensure_future(
        send(dispatcher, make_call(target.url("/hang"), timeout_ms=20_000))
    )
    await wait_until(lambda: len(target.arrivals) == 1)
    waiter.cancel()
    await wait_until(lambda: dispatcher.in_flight == 0)
    assert waiter.cancelled()


@pytest.mark.parametrize("cancel", [False, True])
async def test_ended_calls_leave_nothing_to_the_cycle_collector(
    dispatcher: CurlDispatcher, target: TargetServer, cancel: bool
) -> None:
    """A call's future and its transfer refer to each other while it runs; once it ends
    (answered or cancelled) and the next call takes its handle, reference counting
    alone frees them. (A burst would otherwise leave every call to the collector.)"""
    target.route("/ok", Reply())
    target.route("/hang", Reply(hang=True))
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
    try:
        for number in range(1, 6):  # one after another: each takes the previous handle
            future = dispatcher.submit(make_call(target.url("/hang" if cancel else "/ok")))
            if cancel:

                def arrived(count: int = number) -> bool:
                    return len(target.arrivals) == count

                await wait_until(arrived)
                future.cancel()
                await wait_until(lambda: dispatcher.in_flight == 0)
            else:
                assert (await future).status == 200
        del future
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, curl_module._CallFuture)]
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_close_aborts_what_is_still_running(target: TargetServer) -> None:
    target.route("/hang", Reply(hang=True))
    dispatcher = CurlDispatcher(CurlSettings(egress=LOOPBACK), close_grace_s=0.1)
    await dispatcher.start()
    future = dispatcher.submit(make_call(target.url("/hang"), timeout_ms=20_000))
    await wait_until(lambda: len(target.arrivals) == 1)

    await dispatcher.close()

    outcome = future.result()
    assert outcome.status == 0 and outcome.error and "closed" in outcome.error
    late = dispatcher.submit(make_call(target.url("/hang")))
    assert late.done() and late.result().error == "dispatcher is closed"
    assert dispatcher.in_flight == 0


async def test_close_lets_in_flight_calls_finish_within_the_grace(target: TargetServer) -> None:
    target.route("/slowish", Reply(200, b"made it", delay_s=0.2))
    dispatcher = CurlDispatcher(CurlSettings(egress=LOOPBACK), close_grace_s=5.0)
    await dispatcher.start()
    future = dispatcher.submit(make_call(target.url("/slowish")))
    await dispatcher.close()
    assert future.result().body == b"made it"


async def test_submit_before_start_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        CurlDispatcher(CurlSettings(egress=LOOPBACK)).submit(make_call())
