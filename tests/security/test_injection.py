"""Every option that reaches the wire refuses CR, LF and NUL with a 400 naming the field,
and a canary sees no injected line."""

# ruff: noqa: E501 - the cases read as a table, one per line
from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import OwnerAuth, register_task
from tests.support.targets import Reply, TargetServer

CREDENTIAL_FIELDS = ("authBasic", "authDigest", "authNtlm")
PROXY_CREDENTIAL_FIELDS = ("proxyAuthBasic", "proxyAuthDigest", "proxyAuthNtlm", "locationTrusted")
SIGV4 = {
    "provider1": "aws",
    "provider2": "amz",
    "region": "eu-west-1",
    "service": "s3",
    "key": "AKID",
    "secret": "SECRET",
}

Case = tuple[tuple[str, ...], Callable[[str], tuple[dict[str, Any], dict[str, Any]]]]


def request_field(name: str, value: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda bad: ({name: value(bad)}, {})


def config_field(name: str, value: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda bad: ({}, {name: value(bad)})


def cases() -> list[Case]:
    found: list[Case] = [
        (("httpRequest", "headers", "X-Tag"), request_field("headers", lambda b: {"X-Tag": b})),
        (("httpRequest", "headers", "X-Tag{b}"), request_field("headers", lambda b: {f"X-Tag{b}": "v"})),
        (("httpRequest", "query", "q"), request_field("query", lambda b: {"q": b})),
        (("httpRequest", "url"), request_field("url", lambda b: f"http://127.0.0.1:9/x{b}y")),
        (("config", "userAgent"), config_field("userAgent", lambda b: f"agent/1.0{b}X-Evil: 1")),
        (("config", "refererUrl"), config_field("refererUrl", lambda b: f"http://a.test/{b}x")),
        (("config", "cert", "password"), config_field("cert", lambda b: {"value": "-----BEGIN X", "password": f"p{b}w"})),
        (("config", "proxyHeaders", "X-P"), config_field("proxyHeaders", lambda b: {"X-P": b})),
        (("httpRequest", "cookie", "0", "name"), request_field("cookie", lambda b: [{"name": f"n{b}", "value": "v"}])),
        (("httpRequest", "cookie", "0", "value"), request_field("cookie", lambda b: [{"name": "n", "value": f"v{b}"}])),
        (("httpRequest", "data", "0", "name"), request_field("data", lambda b: [{"name": f"f{b}", "value": "v"}])),
    ]  # fmt: skip
    for field in CREDENTIAL_FIELDS:
        for part in ("username", "password"):
            found.append(
                (
                    ("httpRequest", field, part),
                    request_field(field, lambda b, p=part: {"username": "u", "password": "p", p: f"x{b}y"}),
                )
            )  # fmt: skip
    for field in PROXY_CREDENTIAL_FIELDS:
        for part in ("username", "password"):
            found.append(
                (
                    ("config", field, part),
                    config_field(field, lambda b, p=part: {"username": "u", "password": "p", p: f"x{b}y"}),
                )
            )  # fmt: skip
    for part in SIGV4:
        found.append(
            (
                ("httpRequest", "authAwsSigv4", part),
                request_field("authAwsSigv4", lambda b, p=part: {**SIGV4, p: f"{SIGV4[p]}{b}x"}),
            )
        )
    return found


def error_at(tree: dict[str, Any], path: tuple[str, ...]) -> list[str]:
    node = tree
    for part in path:
        node = node.get(part, {})
    return list(node.get("_errors", []))


async def test_cr_lf_and_nul_are_refused_in_every_wire_field(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    async with TargetServer() as canary:
        canary.route("/x", Reply(200, b"ok"))
        refused = 0
        for path, build in cases():
            for bad in ("\r\nX-Injected: 1\r\n", "\nX-Injected: 1", "\x00"):
                request, config = build(bad)
                http_request = {"url": canary.url("/x"), "method": "POST", **request}
                response = await register_task(client, owner, http_request, {**config})
                named = tuple(part.replace("{b}", bad) for part in path)
                assert response.status_code == 400, (path, bad, response.text)
                assert error_at(response.json()["message"], named), (path, bad, response.text)
                refused += 1
        assert refused >= 3 * 30
        ok = await register_task(
            client, owner, {"url": canary.url("/x"), "method": "GET"}, {"executionDelay": 0}
        )
        assert ok.status_code == 201
    assert all(a.header("X-Injected") is None for a in canary.arrivals)


async def test_aws_sigv4_scope_fields_refuse_colons(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    for part in ("provider1", "provider2", "region", "service"):
        request = {
            "url": "http://127.0.0.1:9/x",
            "method": "GET",
            "authAwsSigv4": {**SIGV4, part: "a:b:c"},
        }
        response = await register_task(client, owner, request)
        assert response.status_code == 400
        assert error_at(response.json()["message"], ("httpRequest", "authAwsSigv4", part))


async def test_cookie_files_refuse_a_lone_cr_and_nul(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    for text in (
        "a.test\tFALSE\t/\tFALSE\t0\tn\tv\rX: 1\n",
        "a.test\tFALSE\t/\tFALSE\t0\tn\tv\x00\n",
    ):
        cookie = base64.b64encode(text.encode()).decode()
        request = {"url": "http://127.0.0.1:9/x", "method": "GET", "cookie": cookie}
        response = await register_task(client, owner, request)
        assert response.status_code == 400, response.text
        assert error_at(response.json()["message"], ("httpRequest", "cookie"))
