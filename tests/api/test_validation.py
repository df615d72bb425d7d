"""Request validation (docs/compatibility.md, "Validation errors" to "Task body"): every
rule of the task body and the list query, the zod-like error tree of a 400, and the
normalised values that are stored."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks_server.config import Settings
from tests.conftest import (
    TARGET,
    OwnerAuth,
    ServerFactory,
    client_for,
    register_owner,
    register_task,
)
from tests.support.clock import FakeClock

REGISTER = "/v1/queues/register"
FIX = "Do not retry without fixing the problem"
URL_RULE = "URL must start with http:// or https://"
DEFAULT_USER_AGENT = "Tasks-Server/1.0 (compatible; Linux x86_64; +http://tasks-server)"
MAX_SAFE_INTEGER = 2**53 - 1
PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
PEM_B64 = base64.b64encode(PEM.encode()).decode()
COOKIE_FILE = "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsid\tabc\n"
# fields whose wire type is a union: pydantic reports every member's failure at the field
UNION_FIELDS = {("httpRequest", "data"), ("httpRequest", "cookie")}


def body(
    http: dict[str, Any] | None = None, config: dict[str, Any] | None = None, **top: Any
) -> dict[str, Any]:
    """A registration body: a valid GET of TARGET, with ``http`` merged into httpRequest."""
    out: dict[str, Any] = {"httpRequest": {"url": TARGET, "method": "GET", **(http or {})}}
    if config is not None:
        out["config"] = config
    out.update(top)
    return out


def utc_ms(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, ms: int = 0
) -> int:
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(moment.timestamp()) * 1000 + ms


def only_error(path: tuple[str, ...], *messages: str) -> dict[str, Any]:
    """The tree zod formats when everything failing is at one path."""
    tree: dict[str, Any] = {"_errors": []}
    node = tree
    for part in path:
        node[part] = {"_errors": []}
        node = node[part]
    node["_errors"].extend(messages)
    return tree


def error_paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every path of the tree whose ``_errors`` is not empty."""
    assert isinstance(tree["_errors"], list)
    found = {prefix} if tree["_errors"] else set()
    for key, child in tree.items():
        if key != "_errors":
            found |= error_paths(child, (*prefix, key))
    return found


def all_messages(tree: dict[str, Any]) -> list[str]:
    found: list[str] = list(tree["_errors"])
    for key, child in tree.items():
        if key != "_errors":
            found += all_messages(child)
    return found


def assert_mirrors_input(tree: dict[str, Any], data: Any) -> None:
    """Each error sits at a path of the input; only a "Required" names a missing key."""
    for path in error_paths(tree):
        node = data
        for index, part in enumerate(path):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                assert index == len(path) - 1, f"{path} is not in the input"
                assert errors_at(tree, *path) == ["Required"], path


def errors_at(tree: dict[str, Any], *path: str) -> list[str]:
    node = tree
    for part in path:
        node = node[part]
    messages: list[str] = node["_errors"]
    return messages


async def rejected(
    client: httpx.AsyncClient, owner: OwnerAuth, data: Any, status: int = 400
) -> Any:
    """Post a registration that must fail and return its ``message``; the owner, who has
    no tasks before, still has none after."""
    headers = {**owner.headers, "Content-Type": "application/json"}
    response = await client.post(REGISTER, content=json.dumps(data), headers=headers)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"action", "message"}
    assert payload["action"] == FIX
    if isinstance(payload["message"], dict):
        assert_mirrors_input(payload["message"], data)
    listing = await client.get("/v1/queues", headers=owner.headers)
    assert listing.status_code == 200
    assert listing.json() == []
    return payload["message"]


async def accepted(client: httpx.AsyncClient, owner: OwnerAuth, data: Any) -> dict[str, Any]:
    response = await client.post(REGISTER, json=data, headers=owner.headers)
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    return record


async def stored(client: httpx.AsyncClient, owner: OwnerAuth, data: Any) -> dict[str, Any]:
    """Register a body that must pass and read back what was stored (GET …/config)."""
    record = await accepted(client, owner, data)
    response = await client.get(
        f"/v1/queues/{record['id']}/config?reveal=true", headers=owner.headers
    )
    assert response.status_code == 200, response.text
    wire: dict[str, Any] = response.json()
    return wire


async def stored_config(
    client: httpx.AsyncClient, owner: OwnerAuth, **config: Any
) -> dict[str, Any]:
    wire = await stored(client, owner, body(config=config))
    result: dict[str, Any] = wire["config"]
    return result


# -- body handling and the error shape (docs/compatibility.md#error-body) ---------------


async def test_error_tree_matches_the_spec_example(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    message = await rejected(
        client,
        owner,
        {
            "httpRequest": {"url": "http://127.0.0.1:9/x", "method": "GET"},
            "config": {"retry": -1, "timeout": 5},
        },
    )
    assert message == {
        "_errors": [],
        "config": {
            "_errors": [],
            "retry": {"_errors": ["Number must be greater than or equal to 0"]},
            "timeout": {"_errors": ["Number must be greater than or equal to 1000"]},
        },
    }


async def test_missing_http_request(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    assert await rejected(client, owner, {}) == only_error(("httpRequest",), "Required")


async def test_missing_url_and_method(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    message = await rejected(client, owner, {"httpRequest": {}})
    assert message == {
        "_errors": [],
        "httpRequest": {
            "_errors": [],
            "url": {"_errors": ["Required"]},
            "method": {"_errors": ["Required"]},
        },
    }


@pytest.mark.parametrize(
    ("data", "kind"), [([], "array"), ("task", "string"), (None, "null"), (7, "number")]
)
async def test_body_must_be_an_object(
    client: httpx.AsyncClient, owner: OwnerAuth, data: Any, kind: str
) -> None:
    assert await rejected(client, owner, data) == {"_errors": [f"Expected object, received {kind}"]}


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "Application/JSON"]
)
async def test_a_body_without_a_json_content_type_is_refused_saying_so(
    client: httpx.AsyncClient, owner: OwnerAuth, content_type: str | None
) -> None:
    headers = dict(owner.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post(REGISTER, content=json.dumps(body()), headers=headers)
    assert response.status_code == 400
    received = "none" if content_type is None else f"'{content_type}'"
    message = f"Content-Type must be application/json (received {received})"
    assert response.json() == {"action": FIX, "message": message}


async def test_no_body_and_no_content_type_reads_as_empty_object(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    response = await client.post(REGISTER, headers=owner.headers)
    assert response.status_code == 400
    assert response.json() == {"action": FIX, "message": only_error(("httpRequest",), "Required")}


async def test_malformed_json_says_where(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    headers = {**owner.headers, "Content-Type": "application/json"}
    response = await client.post(REGISTER, content=b'{"httpRequest": ', headers=headers)
    assert response.status_code == 400
    assert response.json()["message"] == (
        "The body is not valid JSON: Expecting value at line 1 column 17"
    )


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/vnd.tasks+json"]
)
async def test_json_content_types_with_suffix_or_parameters(
    client: httpx.AsyncClient, owner: OwnerAuth, content_type: str
) -> None:
    headers = {**owner.headers, "Content-Type": content_type}
    response = await client.post(REGISTER, content=json.dumps(body()), headers=headers)
    assert response.status_code == 201, response.text


async def test_body_over_the_size_limit_is_413(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    message = await rejected(
        client, owner, body({"method": "POST", "data": "x" * 32_768}), status=413
    )
    assert message == "The request is too large"


async def test_body_of_exactly_the_size_limit_is_read(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    prefix = json.dumps(body(metadata={"a": ""}), separators=(",", ":"))
    text = prefix.replace('"a":""', '"a":"' + "x" * (32_768 - len(prefix)) + '"')
    assert len(text.encode()) == 32_768
    headers = {**owner.headers, "Content-Type": "application/json"}
    response = await client.post(REGISTER, content=text.encode(), headers=headers)
    assert response.status_code == 400  # read and validated, not refused for its size
    tree = response.json()["message"]
    assert error_paths(tree) == {("metadata", "a")}


async def test_a_rejected_body_changes_nothing(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    for data in (body({"method": "HEAD"}), body(config={"retry": "1"}), body(extra=True)):
        await rejected(client, owner, data)
    response = await client.get(f"/v1/owners/{owner.name}", headers=owner.headers)
    assert response.json()["tasksInQueue"] == 0


async def test_validation_runs_only_after_authentication(client: httpx.AsyncClient) -> None:
    response = await client.post(REGISTER, json={"httpRequest": {"method": "HEAD"}})
    assert response.status_code == 403
    assert (await client.get("/v1/queues?limit=0")).status_code == 403
    assert (await client.get("/v1/queues/not-an-id")).status_code == 403


# -- strict objects: unknown keys at every level ---------------------------------------

CREDENTIALS = {"username": "user", "password": "secret"}
AWS = {
    "provider1": "aws",
    "provider2": "amz",
    "region": "eu-west-1",
    "service": "s3",
    "key": "AKIA",
    "secret": "shh",
}


@pytest.mark.parametrize(
    ("data", "parent"),
    [
        pytest.param(body(extra=1), (), id="top"),
        pytest.param(body({"extra": 1}), ("httpRequest",), id="httpRequest"),
        pytest.param(body(config={"extra": 1}), ("config",), id="config"),
        pytest.param(
            body({"authBasic": {**CREDENTIALS, "extra": 1}}),
            ("httpRequest", "authBasic"),
            id="authBasic",
        ),
        pytest.param(
            body({"authAwsSigv4": {**AWS, "extra": 1}}),
            ("httpRequest", "authAwsSigv4"),
            id="authAwsSigv4",
        ),
        pytest.param(
            body({"method": "POST", "data": [{"name": "a", "value": "b", "extra": 1}]}),
            ("httpRequest", "data", "0"),
            id="form field",
        ),
        pytest.param(
            body({"cookie": [{"name": "a", "value": "b", "extra": 1}]}),
            ("httpRequest", "cookie", "0"),
            id="cookie",
        ),
        pytest.param(
            body(config={"cert": {"value": PEM, "extra": 1}}), ("config", "cert"), id="cert"
        ),
        pytest.param(
            body(config={"proxy": {"protocol": "http", "host": "proxy.lan", "extra": 1}}),
            ("config", "proxy"),
            id="proxy",
        ),
        pytest.param(
            body(
                config={
                    "resolve": [
                        {"host": "example.com", "port": 443, "address": ["127.0.0.1"], "extra": 1}
                    ]
                }
            ),
            ("config", "resolve", "0"),
            id="resolve entry",
        ),
        pytest.param(
            body(config={"locationTrusted": {**CREDENTIALS, "extra": 1}}),
            ("config", "locationTrusted"),
            id="locationTrusted",
        ),
    ],
)
async def test_unknown_key_is_reported_at_its_parent(
    client: httpx.AsyncClient, owner: OwnerAuth, data: dict[str, Any], parent: tuple[str, ...]
) -> None:
    tree = await rejected(client, owner, data)
    assert errors_at(tree, *parent) == ["Unrecognized key(s) in object: 'extra'"]
    assert error_paths(tree) - {parent} <= UNION_FIELDS


async def test_unknown_keys_of_one_object_share_one_message(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    tree = await rejected(client, owner, body(config={"later": 1, "sooner": 2}))
    assert tree == only_error(("config",), "Unrecognized key(s) in object: 'later', 'sooner'")


# -- 7.1 record keys and header values -------------------------------------------------


@pytest.mark.parametrize(("field", "key"), [("headers", "X-Key_1.$"), ("query", "X-Key_1.$[0]")])
async def test_record_keys_of_the_allowed_alphabet_are_stored(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, key: str
) -> None:
    record = {key: "v", "k" * 64: "w"}
    wire = await stored(client, owner, body({field: record}))
    assert wire["httpRequest"][field] == record


async def test_header_names_must_be_tokens(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    # "[" and "]" pass the original's record-key rule but are no RFC 9110 token characters
    tree = await rejected(client, owner, body({"headers": {"X-Key[0]": "v"}}))
    assert error_paths(tree) == {("httpRequest", "headers", "X-Key[0]")}


@pytest.mark.parametrize("key", ["", "has space", "a:b", "k" * 65, "caf\u00e9"])
async def test_record_key_rule(client: httpx.AsyncClient, owner: OwnerAuth, key: str) -> None:
    tree = await rejected(client, owner, body({"headers": {key: "value"}}))
    assert error_paths(tree) == {("httpRequest", "headers", key)}


async def test_query_keys_and_values_follow_the_record_rule(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    tree = await rejected(client, owner, body({"query": {"a b": "v", "ok": ""}}))
    assert error_paths(tree) == {("httpRequest", "query", "a b"), ("httpRequest", "query", "ok")}


async def test_proxy_header_and_metadata_keys_follow_the_record_key_rule(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    tree = await rejected(client, owner, body(config={"proxyHeaders": {"a b": "v"}}))
    assert error_paths(tree) == {("config", "proxyHeaders", "a b")}
    tree = await rejected(client, owner, body(metadata={"a:b": "v"}))
    assert error_paths(tree) == {("metadata", "a:b")}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a\r\nX-Injected: 1", id="CRLF"),
        pytest.param("a\nb", id="LF"),
        pytest.param("a\rb", id="CR"),
        pytest.param("a\x00b", id="NUL"),
        pytest.param("", id="empty"),
        pytest.param("v" * 1025, id="1025 chars"),
    ],
)
async def test_header_value_rule(client: httpx.AsyncClient, owner: OwnerAuth, value: str) -> None:
    tree = await rejected(client, owner, body({"headers": {"X-Value": value}}))
    assert error_paths(tree) == {("httpRequest", "headers", "X-Value")}


async def test_proxy_header_values_refuse_line_breaks(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    tree = await rejected(client, owner, body(config={"proxyHeaders": {"X-A": "a\r\nb"}}))
    assert error_paths(tree) == {("config", "proxyHeaders", "X-A")}


async def test_header_value_of_1024_chars_is_stored(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    wire = await stored(client, owner, body({"headers": {"X-Value": "v" * 1024}}))
    assert wire["httpRequest"]["headers"] == {"X-Value": "v" * 1024}


# -- 7.1 URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTP://Example.COM:80/Hook", "http://example.com/Hook"),
        ("https://example.com:443/hook", "https://example.com/hook"),
        ("http://example.com:8080/hook", "http://example.com:8080/hook"),
        ("https://example.com/hook?a=1&b=2", "https://example.com/hook?a=1&b=2"),
        ("http://[2606:4700::1111]:9/hook", "http://[2606:4700::1111]:9/hook"),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("http://example.com/x?q=a b", "http://example.com/x?q=a%20b"),
        ("http://example.com/caf\u00e9", "http://example.com/caf%C3%A9"),
        ("https://hooks.example.com/", "https://hooks.example.com/"),
        ("https://hooks.example.com", "https://hooks.example.com/"),
        ("http://example.com:8080", "http://example.com:8080/"),
        ("http://example.com/hook/", "http://example.com/hook/"),
        ("http://example.com/hook?", "http://example.com/hook?"),
    ],
)
async def test_url_is_stored_in_normalised_form(
    client: httpx.AsyncClient, owner: OwnerAuth, url: str, normal: str
) -> None:
    wire = await stored(client, owner, body({"url": url}))
    assert wire["httpRequest"]["url"] == normal


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://example.com/file", id="ftp"),
        pytest.param("ws://example.com/socket", id="ws"),
    ],
)
async def test_url_rule_and_its_message(
    client: httpx.AsyncClient, owner: OwnerAuth, url: str
) -> None:
    tree = await rejected(client, owner, body({"url": url}))
    assert tree == only_error(("httpRequest", "url"), URL_RULE)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("not a url", id="not a url"),
        pytest.param("/relative/path", id="relative"),
        pytest.param("http://example.com:99999/x", id="port out of range"),
        pytest.param("http://example.com/" + "a" * 1006, id="1025 chars"),
        pytest.param(7, id="number"),
    ],
)
async def test_unparseable_urls(client: httpx.AsyncClient, owner: OwnerAuth, url: Any) -> None:
    tree = await rejected(client, owner, body({"url": url}))
    assert error_paths(tree) == {("httpRequest", "url")}


async def test_url_of_1024_chars_is_accepted(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    url = "http://example.com/" + "a" * 1005
    assert len(url) == 1024
    wire = await stored(client, owner, body({"url": url}))
    assert wire["httpRequest"]["url"] == url


@pytest.mark.parametrize("field", ["refererUrl", "dohUrl"])
async def test_other_url_fields_follow_the_url_rule(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str
) -> None:
    tree = await rejected(client, owner, body(config={field: "ftp://example.com/"}))
    assert URL_RULE in errors_at(tree, "config", field)
    assert error_paths(tree) == {("config", field)}
    config = await stored_config(client, owner, **{field: "HTTPS://Example.com/ref"})
    assert config[field] == "https://example.com/ref"


async def test_doh_url_must_be_https(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    tree = await rejected(client, owner, body(config={"dohUrl": "http://dns.example/q"}))
    assert errors_at(tree, "config", "dohUrl") == ["Must be an https URL"]


@pytest.mark.parametrize(
    ("url", "stored_url"),
    [
        ("http://bücher.example/x", "http://xn--bcher-kva.example/x"),
        ("https://ÉXAMPLE.org/y", "https://xn--xample-9ua.org/y"),
    ],
)
async def test_international_host_names_are_stored_as_idna(
    client: httpx.AsyncClient, owner: OwnerAuth, url: str, stored_url: str
) -> None:
    wire = await stored(client, owner, body({"url": url}))
    assert wire["httpRequest"]["url"] == stored_url


async def test_host_names_idna_cannot_encode_are_refused(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    tree = await rejected(client, owner, body({"url": "http://a\u2488b.example/x"}))
    assert error_paths(tree) == {("httpRequest", "url")}
    assert "cannot be encoded as IDNA" in errors_at(tree, "httpRequest", "url")[0]


@pytest.mark.parametrize("url", ["http://example.com:0/x", "https://example.com:00/x"])
async def test_port_zero_is_refused(client: httpx.AsyncClient, owner: OwnerAuth, url: str) -> None:
    tree = await rejected(client, owner, body({"url": url}))
    assert errors_at(tree, "httpRequest", "url") == ["Port 0 is not allowed"]


# -- 7.1 dates -------------------------------------------------------------------------

EXECUTE_AT = utc_ms(2027, 3, 4, 5, 6, 7, ms=89)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(EXECUTE_AT, id="epoch ms"),
        pytest.param(EXECUTE_AT + 0.75, id="fractional ms truncate"),
        pytest.param("2027-03-04T05:06:07.089Z", id="ISO Z"),
        pytest.param("2027-03-04T12:06:07.089+07:00", id="ISO offset"),
        pytest.param("2027-03-03T23:36:07.089-05:30", id="ISO negative offset"),
    ],
)
async def test_execute_at_forms_give_the_exact_instant(
    client: httpx.AsyncClient, owner: OwnerAuth, value: Any
) -> None:
    record = await accepted(client, owner, body(config={"executeAt": value}))
    assert record["estimateExecutionAt"] == EXECUTE_AT


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Thu, 04 Mar 2027 05:06:07 GMT", id="RFC 2822 GMT"),
        pytest.param("Thu, 04 Mar 2027 12:06:07 +0700", id="RFC 2822 offset"),
        pytest.param("Mar 4 2027 12:06:07 PM +07:00", id="loose with offset"),
        pytest.param("Thu Mar 04 2027 12:06:07 GMT+0700", id="Date.toString"),
        pytest.param(
            "Thu Mar 04 2027 12:06:07 GMT+0700 (Western Indonesia Time)",
            id="Date.toString with zone name",
        ),
        pytest.param("Thu Mar 04 2027 00:06:07 GMT-0500", id="Date.toString west"),
    ],
)
async def test_loose_date_strings(client: httpx.AsyncClient, owner: OwnerAuth, value: str) -> None:
    record = await accepted(client, owner, body(config={"executeAt": value}))
    assert record["estimateExecutionAt"] == utc_ms(2027, 3, 4, 5, 6, 7)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2027-03-04T05:06:07", utc_ms(2027, 3, 3, 22, 6, 7), id="ISO no offset"),
        pytest.param("Mar 4 2027 05:06:07", utc_ms(2027, 3, 3, 22, 6, 7), id="loose no offset"),
        pytest.param("2027-03-04", utc_ms(2027, 3, 4), id="ISO date-only is UTC"),
        pytest.param("2027-03-04T05:06:07Z", utc_ms(2027, 3, 4, 5, 6, 7), id="Z stays UTC"),
    ],
)
async def test_zone_less_strings_are_read_in_the_server_time_zone(
    make_server: ServerFactory, value: str, expected: int
) -> None:
    server = await make_server(tz="Asia/Jakarta")  # UTC+7, no daylight saving
    async with client_for(server) as http:
        owner = await register_owner(http, "zone-owner")
        record = await accepted(http, owner, body(config={"executeAt": value}))
    assert record["estimateExecutionAt"] == expected


async def test_zone_less_strings_default_to_utc(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    record = await accepted(client, owner, body(config={"executeAt": "2027-03-04T05:06:07"}))
    assert record["estimateExecutionAt"] == utc_ms(2027, 3, 4, 5, 6, 7)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(str(EXECUTE_AT), id="digits only"),
        pytest.param("someday", id="words"),
        pytest.param("", id="empty"),
        pytest.param("2027-13-45T00:00:00Z", id="impossible"),
        pytest.param(True, id="boolean"),
        pytest.param([EXECUTE_AT], id="array"),
        pytest.param(9e15, id="beyond the Date range"),
    ],
)
async def test_invalid_dates(client: httpx.AsyncClient, owner: OwnerAuth, value: Any) -> None:
    tree = await rejected(client, owner, body(config={"executeAt": value}))
    assert error_paths(tree) == {("config", "executeAt")}


@pytest.mark.parametrize("value", [str(EXECUTE_AT), "someday"])
@pytest.mark.parametrize("field", ["retryAt", "timeoutAt"])
async def test_invalid_retry_and_timeout_dates(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: str
) -> None:
    tree = await rejected(client, owner, body(config={field: value}))
    assert error_paths(tree) == {("config", field)}


# -- 7.1 numbers, booleans, IPs, hostnames ---------------------------------------------


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"executionDelay": "5"}, ("config", "executionDelay")),
        ({"retry": "1"}, ("config", "retry")),
        ({"retryInterval": "1000"}, ("config", "retryInterval")),
        ({"timeout": "30000"}, ("config", "timeout")),
        ({"keepAliveDuration": "30"}, ("config", "keepAliveDuration")),
        ({"redirectAttempts": "8"}, ("config", "redirectAttempts")),
        ({"ignoreStatusCode": ["404"]}, ("config", "ignoreStatusCode", "0")),
        (
            {"proxy": {"protocol": "http", "host": "p.lan", "port": "8080"}},
            ("config", "proxy", "port"),
        ),
        (
            {"resolve": [{"host": "a.lan", "port": "443", "address": ["127.0.0.1"]}]},
            ("config", "resolve", "0", "port"),
        ),
    ],
)
async def test_numbers_given_as_strings_are_rejected(
    client: httpx.AsyncClient, owner: OwnerAuth, config: dict[str, Any], path: tuple[str, ...]
) -> None:
    tree = await rejected(client, owner, body(config=config))
    assert tree == only_error(path, "Expected number, received string")


@pytest.mark.parametrize("field", ["retry", "timeout", "executionDelay"])
async def test_booleans_are_not_numbers(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str
) -> None:
    tree = await rejected(client, owner, body(config={field: True}))
    assert tree == only_error(("config", field), "Expected number, received boolean")


async def test_numbers_need_not_be_integers(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    config = await stored_config(client, owner, retry=2.5, timeout=1000.5)
    assert (config["retry"], config["timeout"]) == (2, 1000)


@pytest.mark.parametrize(("value", "received"), [("true", "string"), (1, "number")])
@pytest.mark.parametrize(
    "field",
    ["executeImmediately", "retryExponential", "insecure", "location", "certStatus", "dohInsecure"],
)
async def test_booleans_are_strict(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: Any, received: str
) -> None:
    tree = await rejected(client, owner, body(config={field: value}))
    assert tree == only_error(("config", field), f"Expected boolean, received {received}")


@pytest.mark.parametrize("field", ["executeImmediately", "sessionId", "traceResponseData"])
async def test_booleans_with_a_default_refuse_null(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str
) -> None:
    tree = await rejected(client, owner, body(config={field: None}))
    assert tree == only_error(("config", field), "Expected boolean, received null")


async def test_ip_fields_accept_v4_and_v6(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    addresses = ["1.1.1.1", "2606:4700:4700::1111"]
    config = await stored_config(client, owner, resolve=[resolve_entry(address=addresses)])
    assert config["resolve"][0]["address"] == addresses
    # dnsServer and haProxyClientIp pass validation; a libcurl build without c-ares or
    # before 8.2 then refuses them as unsupported (422), never as invalid (400)
    for field, value in (("dnsServer", addresses), ("haProxyClientIp", "::1")):
        response = await register_task(client, owner, config={field: value})
        assert response.status_code in (201, 422), response.text
        if response.status_code == 422:
            assert f"config.{field}" in response.json()["message"]


@pytest.mark.parametrize("value", ["1.1.1", "256.1.1.1", "dns.google", "", "1.1.1.1/32"])
async def test_ip_rule(client: httpx.AsyncClient, owner: OwnerAuth, value: str) -> None:
    tree = await rejected(client, owner, body(config={"dnsServer": ["8.8.8.8", value]}))
    assert error_paths(tree) == {("config", "dnsServer", "1")}
    tree = await rejected(client, owner, body(config={"haProxyClientIp": value}))
    assert error_paths(tree) == {("config", "haProxyClientIp")}


@pytest.mark.parametrize("count", [0, 5])
async def test_dns_server_count(client: httpx.AsyncClient, owner: OwnerAuth, count: int) -> None:
    tree = await rejected(client, owner, body(config={"dnsServer": ["1.1.1.1"] * count}))
    assert error_paths(tree) == {("config", "dnsServer")}


def resolve_entry(**fields: Any) -> dict[str, Any]:
    return {"host": "example.com", "port": 443, "address": ["127.0.0.1"], **fields}


@pytest.mark.parametrize("host", ["*", "example.com", "a-b.example", "localhost", "10.0.0.1"])
async def test_resolve_hosts(client: httpx.AsyncClient, owner: OwnerAuth, host: str) -> None:
    config = await stored_config(client, owner, resolve=[resolve_entry(host=host)])
    assert config["resolve"] == [{"host": host, "port": 443, "address": ["127.0.0.1"]}]


@pytest.mark.parametrize("host", ["", "-a.example", "a-.example", "a..example", "a_b.example"])
async def test_hostname_rule(client: httpx.AsyncClient, owner: OwnerAuth, host: str) -> None:
    tree = await rejected(client, owner, body(config={"resolve": [resolve_entry(host=host)]}))
    assert error_paths(tree) == {("config", "resolve", "0", "host")}
    proxy = {"protocol": "http", "host": host}
    tree = await rejected(client, owner, body(config={"proxy": proxy}))
    assert error_paths(tree) == {("config", "proxy", "host")}


# -- 7.1 certificate and key sources ---------------------------------------------------


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    root = tmp_path / "certs"
    root.mkdir()
    (root / "ca.pem").write_text(PEM)  # in CERT_DIR itself: no owner's file
    (tmp_path / "outside.pem").write_text(PEM)
    return root


def fill_owner_dir(directory: Path, outside: Path) -> None:
    """An owner's own certificate directory, CERT_DIR/<owner id>/."""
    (directory / "sub").mkdir(parents=True)
    (directory / "ca.pem").write_text(PEM)
    (directory / "sub" / "client.key").write_text(PEM)
    (directory / "escape.pem").symlink_to(outside)
    long_dir = directory / ("d" * 130)
    long_dir.mkdir()
    (long_dir / ("f" * 130)).write_text(PEM)


@pytest.fixture
async def cert_client(
    make_server: ServerFactory, cert_dir: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, OwnerAuth]]:
    server = await make_server(cert_dir=str(cert_dir))
    async with client_for(server) as http:
        owner = await register_owner(http, "cert-owner")
        fill_owner_dir(cert_dir / owner.id, cert_dir.parent / "outside.pem")
        yield http, owner


def cert_config(field: str, value: str) -> dict[str, Any]:
    return {"cert": {"value": value}} if field == "cert" else {field: value}


def cert_path(field: str) -> tuple[str, ...]:
    return ("config", "cert", "value") if field == "cert" else ("config", field)


@pytest.mark.parametrize("field", ["ca", "key", "cert"])
@pytest.mark.parametrize("value", [PEM, PEM_B64], ids=["PEM", "base64"])
async def test_inline_certificate_content(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: str
) -> None:
    config = (await stored(client, owner, body(config=cert_config(field, value))))["config"]
    assert config[field] == ({"value": PEM} if field == "cert" else PEM)


@pytest.mark.parametrize(
    ("field", "relative"), [("ca", "ca.pem"), ("key", "sub/client.key"), ("cert", "ca.pem")]
)
async def test_paths_inside_the_cert_dir(
    cert_client: tuple[httpx.AsyncClient, OwnerAuth], field: str, relative: str
) -> None:
    http, owner = cert_client
    config = (await stored(http, owner, body(config=cert_config(field, relative))))["config"]
    assert config[field] == ({"value": relative} if field == "cert" else relative)


async def test_absolute_path_inside_the_cert_dir(
    cert_client: tuple[httpx.AsyncClient, OwnerAuth], cert_dir: Path
) -> None:
    http, owner = cert_client
    await accepted(http, owner, body(config={"ca": str(cert_dir / owner.id / "ca.pem")}))


async def test_another_owners_certificate_files_are_refused(
    cert_client: tuple[httpx.AsyncClient, OwnerAuth], cert_dir: Path
) -> None:
    http, owner = cert_client
    other = await register_owner(http, "cert-other")
    fill_owner_dir(cert_dir / other.id, cert_dir.parent / "outside.pem")
    for value in (
        str(cert_dir / other.id / "sub" / "client.key"),
        f"../{other.id}/sub/client.key",
        str(cert_dir / "ca.pem"),
        "../ca.pem",
    ):
        tree = await rejected(http, owner, body(config={"key": value}))
        assert error_paths(tree) == {("config", "key")}
        assert str(cert_dir) not in json.dumps(tree)  # no server path in the answer


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("../outside.pem", id="dot-dot escape"),
        pytest.param("sub/../../outside.pem", id="nested escape"),
        pytest.param("escape.pem", id="symlink out"),
        pytest.param("sub", id="directory"),
        pytest.param("missing.pem", id="missing"),
        pytest.param("/etc/hostname", id="absolute outside"),
        pytest.param("d" * 130 + "/" + "f" * 130, id="path over 256 chars"),
        pytest.param("", id="empty"),
    ],
)
async def test_paths_outside_the_cert_dir_are_refused(
    cert_client: tuple[httpx.AsyncClient, OwnerAuth], value: str
) -> None:
    http, owner = cert_client
    tree = await rejected(http, owner, body(config={"ca": value}))
    assert error_paths(tree) == {("config", "ca")}


@pytest.mark.parametrize("field", ["key", "cert"])
async def test_key_and_cert_paths_are_confined_too(
    cert_client: tuple[httpx.AsyncClient, OwnerAuth], field: str
) -> None:
    http, owner = cert_client
    tree = await rejected(http, owner, body(config=cert_config(field, "../outside.pem")))
    assert error_paths(tree) == {cert_path(field)}


async def test_paths_are_refused_without_a_cert_dir(
    client: httpx.AsyncClient, owner: OwnerAuth, cert_dir: Path
) -> None:
    for value in ("ca.pem", str(cert_dir / "ca.pem")):
        tree = await rejected(client, owner, body(config={"ca": value}))
        assert error_paths(tree) == {("config", "ca")}


# -- 7.2 httpRequest -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "Post", "put", "PATCH", "delete"])
async def test_method_is_upper_cased(
    client: httpx.AsyncClient, owner: OwnerAuth, method: str
) -> None:
    wire = await stored(client, owner, body({"method": method}))
    assert wire["httpRequest"]["method"] == method.upper()


@pytest.mark.parametrize("method", ["HEAD", "options", "CONNECT", "TRACE", "", "FETCH"])
async def test_other_methods_are_rejected(
    client: httpx.AsyncClient, owner: OwnerAuth, method: str
) -> None:
    tree = await rejected(client, owner, body({"method": method}))
    [message] = errors_at(tree, "httpRequest", "method")
    assert message.startswith("Invalid enum value")
    assert f"'{method.upper()}'" in message
    assert error_paths(tree) == {("httpRequest", "method")}


async def test_method_must_be_a_string(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    tree = await rejected(client, owner, body({"method": 1}))
    assert error_paths(tree) == {("httpRequest", "method")}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("plain text", id="string"),
        pytest.param("x" * 4096, id="string of 4096"),
        pytest.param("x" * 30_000, id="string of 30,000 (within MAX_SIZE_BODY_REQUEST)"),
        pytest.param([{"name": "a", "value": "1"}] * 64, id="form of 64"),
        pytest.param(
            {"a": "x", "n": 1.5, "t": True, "z": None, "o": {"p": {"q": "deep"}}},
            id="JSON of 3 levels",
        ),
        pytest.param({}, id="empty JSON object"),
        pytest.param({"a": {"b": {"c": {"d": {"e": [1, {"f": None}]}}}}}, id="JSON of 6 levels"),
        pytest.param({"items": [{"id": 1}, {"id": 2}], "tags": []}, id="JSON with arrays"),
        pytest.param({"user name": "x", "@type": "event"}, id="JSON keys of any text"),
        pytest.param({"text": "v" * 20_000}, id="JSON string of 20,000"),
    ],
)
async def test_data_forms_are_stored(
    client: httpx.AsyncClient, owner: OwnerAuth, data: Any
) -> None:
    wire = await stored(client, owner, body({"method": "POST", "data": data}))
    assert wire["httpRequest"]["data"] == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param("", "String must contain at least 1 character(s)", id="empty string"),
        pytest.param([], "Array must contain at least 1 element(s)", id="empty form"),
        pytest.param(
            [{"name": "a", "value": "1"}] * 65,
            "Array must contain at most 64 element(s)",
            id="form of 65",
        ),
        pytest.param(
            [{"name": "", "value": "1"}],
            "String must contain at least 1 character(s)",
            id="form name empty",
        ),
        pytest.param(
            [{"name": "n" * 65, "value": "1"}],
            "String must contain at most 64 character(s)",
            id="form name 65",
        ),
        pytest.param(
            [{"name": "a", "value": "v" * 4097}],
            "String must contain at most 4096 character(s)",
            id="form value 4097",
        ),
        pytest.param([{"name": "a"}], "Required", id="form value missing"),
        pytest.param(12, "Expected string, received number", id="number"),
    ],
)
async def test_data_rules(
    client: httpx.AsyncClient, owner: OwnerAuth, data: Any, message: str
) -> None:
    tree = await rejected(client, owner, body({"method": "POST", "data": data}))
    assert {path[:2] for path in error_paths(tree)} == {("httpRequest", "data")}
    assert message in all_messages(tree)


@pytest.mark.parametrize("method", ["GET", "DELETE", "get"])
async def test_data_is_dropped_for_get_and_delete(
    client: httpx.AsyncClient, owner: OwnerAuth, method: str
) -> None:
    wire = await stored(client, owner, body({"method": method, "data": {"a": "b"}}))
    assert "data" not in wire["httpRequest"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_data_is_kept_for_other_methods(
    client: httpx.AsyncClient, owner: OwnerAuth, method: str
) -> None:
    wire = await stored(client, owner, body({"method": method, "data": "payload"}))
    assert wire["httpRequest"]["data"] == "payload"


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param(base64.b64encode(COOKIE_FILE.encode()).decode(), id="cookie file"),
        pytest.param([{"name": "sid", "value": "abc"}], id="one"),
        pytest.param([{"name": f"c{i}", "value": "v" * 512} for i in range(16)], id="sixteen"),
    ],
)
async def test_cookie_forms_are_stored(
    client: httpx.AsyncClient, owner: OwnerAuth, cookie: Any
) -> None:
    wire = await stored(client, owner, body({"cookie": cookie}))
    assert wire["httpRequest"]["cookie"] == cookie


@pytest.mark.parametrize(
    ("cookie", "message"),
    [
        pytest.param("not base64!", "Invalid base64", id="not base64"),
        pytest.param("", "Invalid base64", id="empty string"),
        pytest.param([], "Array must contain at least 1 element(s)", id="empty list"),
        pytest.param(
            [{"name": "c", "value": "v"}] * 17,
            "Array must contain at most 16 element(s)",
            id="seventeen",
        ),
        pytest.param(
            [{"name": "c", "value": "v" * 513}],
            "String must contain at most 512 character(s)",
            id="value 513",
        ),
        pytest.param(
            [{"name": "n" * 65, "value": "v"}],
            "String must contain at most 64 character(s)",
            id="name 65",
        ),
        pytest.param(True, "Expected string, received boolean", id="boolean"),
    ],
)
async def test_cookie_rules(
    client: httpx.AsyncClient, owner: OwnerAuth, cookie: Any, message: str
) -> None:
    tree = await rejected(client, owner, body({"cookie": cookie}))
    assert {path[:2] for path in error_paths(tree)} == {("httpRequest", "cookie")}
    assert message in all_messages(tree)


@pytest.mark.parametrize("field", ["authBasic", "authDigest", "authNtlm"])
async def test_credentials_are_stored(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str
) -> None:
    credentials = {"username": "u" * 64, "password": "p" * 256}
    wire = await stored(client, owner, body({field: credentials}))
    assert wire["httpRequest"][field] == credentials


@pytest.mark.parametrize(
    ("credentials", "failing", "message"),
    [
        ({"username": "", "password": "p"}, "username", "at least 1 character(s)"),
        ({"username": "u" * 65, "password": "p"}, "username", "at most 64 character(s)"),
        ({"username": "u", "password": ""}, "password", "at least 1 character(s)"),
        ({"username": "u", "password": "p" * 257}, "password", "at most 256 character(s)"),
        ({"username": "u"}, "password", "Required"),
        ({"username": 1, "password": "p"}, "username", "Expected string, received number"),
    ],
)
async def test_credentials_rule(
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    credentials: dict[str, Any],
    failing: str,
    message: str,
) -> None:
    tree = await rejected(client, owner, body({"authBasic": credentials}))
    assert error_paths(tree) == {("httpRequest", "authBasic", failing)}
    [text] = errors_at(tree, "httpRequest", "authBasic", failing)
    assert text.endswith(message)


@pytest.mark.parametrize(
    "path",
    [
        ("httpRequest", "authDigest"),
        ("httpRequest", "authNtlm"),
        ("config", "locationTrusted"),
        ("config", "proxyAuthBasic"),
        ("config", "proxyAuthDigest"),
        ("config", "proxyAuthNtlm"),
    ],
)
async def test_every_credentials_object_has_the_same_rule(
    client: httpx.AsyncClient, owner: OwnerAuth, path: tuple[str, str]
) -> None:
    section, field = path
    data = body()
    data.setdefault(section, {})[field] = {"username": "u", "password": "p" * 257}
    tree = await rejected(client, owner, data)
    assert tree == only_error((*path, "password"), "String must contain at most 256 character(s)")


async def test_aws_sigv4_is_stored(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    wire = await stored(client, owner, body({"authAwsSigv4": AWS}))
    assert wire["httpRequest"]["authAwsSigv4"] == AWS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("provider1", "ab"),
        ("provider2", "ab"),
        ("region", ""),
        ("region", "r" * 129),
        ("service", "s" * 129),
        ("key", "k" * 257),
        ("secret", ""),
        ("secret", None),
    ],
)
async def test_aws_sigv4_rule(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: Any
) -> None:
    aws = {**AWS, field: value}
    if value is None:
        del aws[field]
    tree = await rejected(client, owner, body({"authAwsSigv4": aws}))
    assert error_paths(tree) == {("httpRequest", "authAwsSigv4", field)}


@pytest.mark.parametrize("transport", ["fetch", "curl", None])
async def test_transports(
    client: httpx.AsyncClient, owner: OwnerAuth, transport: str | None
) -> None:
    await accepted(client, owner, body({"transport": transport}))


@pytest.mark.parametrize("transport", ["CURL", "http", "", 1])
async def test_unknown_transport(
    client: httpx.AsyncClient, owner: OwnerAuth, transport: Any
) -> None:
    tree = await rejected(client, owner, body({"transport": transport}))
    assert error_paths(tree) == {("httpRequest", "transport")}


# -- 7.3 config: defaults, ranges and enumerations -------------------------------------

DEFAULT_CONFIG = {
    "executionDelay": 1,
    "executeImmediately": False,
    "retry": 0,
    "retryInterval": 1,
    "retryExponential": False,
    "ignoreStatusCode": [],
    "timeout": 30_000,
    "traceResponseData": True,
    "httpVersion": "1.1",
    "userAgent": DEFAULT_USER_AGENT,
    "ipVersion": 4,
    "keepAliveDuration": 30,
    "sessionId": True,
    "insecure": False,
    "location": True,
    "redirectAttempts": 8,
    "proxyHttpVersion": "1.1",
}


async def test_effective_defaults_of_a_minimal_task(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    wire = await stored(client, owner, body())
    assert wire == {"httpRequest": {"url": TARGET, "method": "GET"}, "config": DEFAULT_CONFIG}


async def test_effective_defaults_of_a_curl_task(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    wire = await stored(client, owner, body({"transport": "curl"}))
    assert wire["config"] == {**DEFAULT_CONFIG, "refererUrl": "AUTO"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("executionDelay", 0),
        ("executionDelay", MAX_SAFE_INTEGER),
        ("retry", MAX_SAFE_INTEGER),
        ("retryInterval", 1),
        ("retryInterval", MAX_SAFE_INTEGER),
        ("timeout", 1000),
        ("timeout", MAX_SAFE_INTEGER),
        ("keepAliveDuration", 0),
        ("keepAliveDuration", 259_200),
        ("redirectAttempts", 0),
        ("redirectAttempts", 32),
        ("userAgent", "u" * 8),
        ("userAgent", "u" * 256),
        ("ignoreStatusCode", [400, 599]),
        ("ignoreStatusCode", list(range(400, 440))),
    ],
)
async def test_range_boundaries_are_accepted(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: Any
) -> None:
    config = await stored_config(client, owner, **{field: value})
    assert config[field] == value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("executionDelay", -1, "Number must be greater than or equal to 0"),
        (
            "executionDelay",
            MAX_SAFE_INTEGER + 1,
            "Number must be less than or equal to 9007199254740991",
        ),
        ("retry", -1, "Number must be greater than or equal to 0"),
        ("retry", MAX_SAFE_INTEGER + 1, "Number must be less than or equal to 9007199254740991"),
        ("retryInterval", 0, "Number must be greater than or equal to 1"),
        ("timeout", 999, "Number must be greater than or equal to 1000"),
        ("keepAliveDuration", -1, "Number must be greater than or equal to 0"),
        ("keepAliveDuration", 259_201, "Number must be less than or equal to 259200"),
        ("redirectAttempts", -1, "Number must be greater than or equal to 0"),
        ("redirectAttempts", 33, "Number must be less than or equal to 32"),
        ("userAgent", "u" * 7, "String must contain at least 8 character(s)"),
        ("userAgent", "u" * 257, "String must contain at most 256 character(s)"),
        ("ignoreStatusCode", [404] * 41, "Array must contain at most 40 element(s)"),
    ],
)
async def test_range_violations(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: Any, message: str
) -> None:
    tree = await rejected(client, owner, body(config={field: value}))
    assert tree == only_error(("config", field), message)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (399, "Number must be greater than or equal to 400"),
        (600, "Number must be less than or equal to 599"),
    ],
)
async def test_ignore_status_code_range(
    client: httpx.AsyncClient, owner: OwnerAuth, code: int, message: str
) -> None:
    tree = await rejected(client, owner, body(config={"ignoreStatusCode": [404, code]}))
    assert tree == only_error(("config", "ignoreStatusCode", "1"), message)


@pytest.mark.parametrize(
    ("field", "value", "stored_as"),
    [
        ("httpVersion", "0.9", "0.9"),
        ("httpVersion", "2", "2"),
        ("httpVersion", "2-prior-knowledge", "2-prior-knowledge"),
        ("ipVersion", 6, 6),
        ("credentials", "same-origin", "same-origin"),
        ("referrerPolicy", "", ""),
        ("referrerPolicy", "strict-origin-when-cross-origin", "strict-origin-when-cross-origin"),
        ("mode", "no-cors", "no-cors"),
        ("certType", "p12", "P12"),
        ("certType", "Der", "DER"),
        ("keyType", "eng", "ENG"),
        ("proto", "HTTPS", "https"),
        ("protoRedirect", "Http", "http"),
        ("tlsVersion", "1.0", "1.0"),
        ("tlsMaxVersion", "1.3", "1.3"),
        ("proxyHttpVersion", "1.0", "1.0"),
        ("hsts", True, True),
        ("hsts", False, False),
        ("refererUrl", "http://example.com/from", "http://example.com/from"),
    ],
)
async def test_enumerations(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: Any, stored_as: Any
) -> None:
    config = await stored_config(client, owner, **{field: value})
    assert config[field] == stored_as


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("httpVersion", "2.0"),
        ("httpVersion", "1.1 "),
        ("ipVersion", 5),
        ("ipVersion", "4"),
        ("credentials", "INCLUDE"),
        ("referrerPolicy", "No-Referrer"),
        ("mode", "CORS"),
        ("certType", "PFX"),
        ("keyType", "P12"),
        ("proto", "ftp"),
        ("protoRedirect", "https2"),
        ("tlsVersion", "1.4"),
        ("tlsMaxVersion", "TLSv1.2"),
        ("proxyHttpVersion", "2"),
        ("hsts", ""),
        ("hsts", "not base64!"),
    ],
)
async def test_enumeration_violations(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: Any
) -> None:
    tree = await rejected(client, owner, body(config={field: value}))
    assert error_paths(tree) == {("config", field)}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("executeImmediately", True),
        ("retryExponential", False),
        ("sessionId", False),
        ("insecure", True),
        ("traceResponseData", False),
        ("location", False),
        ("certStatus", True),
        ("proxyInsecure", True),
    ],
)
async def test_booleans_are_stored(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: bool
) -> None:
    config = await stored_config(client, owner, retry=2, **{field: value})
    assert config[field] is value


async def test_objects_of_the_config_are_stored(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    given = {
        "cert": {"value": PEM, "password": "p" * 1024},
        "locationTrusted": CREDENTIALS,
        "proxy": {"protocol": "http", "host": "proxy.lan", "port": 3128},
        "proxyHeaders": {"Proxy-Tag": "blue"},
        "proxyAuthBasic": CREDENTIALS,
    }
    config = await stored_config(client, owner, **given)
    assert {field: config[field] for field in given} == given


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "String must contain at least 1 character(s)"),
        ("p" * 1025, "String must contain at most 1024 character(s)"),
    ],
)
async def test_cert_password_length(
    client: httpx.AsyncClient, owner: OwnerAuth, password: str, message: str
) -> None:
    config = {"cert": {"value": PEM, "password": password}}
    tree = await rejected(client, owner, body(config=config))
    assert tree == only_error(("config", "cert", "password"), message)


async def test_hsts_cache_file_as_base64(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    hsts = base64.b64encode(b'.example.com "20270101 00:00:00"\n').decode()
    config = await stored_config(client, owner, hsts=hsts)
    assert config["hsts"] == hsts


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # the proxies these tests name, listed as an admin would list them
    return dataclasses.replace(settings, egress_proxies="proxy.lan,p.lan,10.1.2.3,127.0.0.1")


def proxy(**fields: Any) -> dict[str, Any]:
    return {"protocol": "http", "host": "proxy.lan", **fields}


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (proxy(), proxy()),
        (proxy(protocol="HTTPS", port=3128), proxy(protocol="https", port=3128)),
        (proxy(host="10.1.2.3", port=65535), proxy(host="10.1.2.3", port=65535)),
    ],
)
async def test_proxy_is_stored(
    client: httpx.AsyncClient, owner: OwnerAuth, given: dict[str, Any], kept: dict[str, Any]
) -> None:
    config = await stored_config(client, owner, proxy=given)
    assert config["proxy"] == kept


@pytest.mark.parametrize("port", [20, 21, 22, 23, 25, 53, 0, 65536])
async def test_proxy_port_exclusions(
    client: httpx.AsyncClient, owner: OwnerAuth, port: int
) -> None:
    tree = await rejected(client, owner, body(config={"proxy": proxy(port=port)}))
    assert error_paths(tree) == {("config", "proxy", "port")}


@pytest.mark.parametrize(
    ("given", "failing"),
    [
        (proxy(protocol="socks5"), ("config", "proxy", "protocol")),
        (proxy(host="h" * 129), ("config", "proxy", "host")),
        ({"host": "proxy.lan"}, ("config", "proxy", "protocol")),
        ({"protocol": "http"}, ("config", "proxy", "host")),
    ],
)
async def test_proxy_rules(
    client: httpx.AsyncClient, owner: OwnerAuth, given: dict[str, Any], failing: tuple[str, ...]
) -> None:
    tree = await rejected(client, owner, body(config={"proxy": given}))
    assert error_paths(tree) == {failing}


@pytest.mark.parametrize("port", [1, 21, 23, 65535])
async def test_resolve_ports(client: httpx.AsyncClient, owner: OwnerAuth, port: int) -> None:
    config = await stored_config(client, owner, resolve=[resolve_entry(port=port)])
    assert config["resolve"][0]["port"] == port


@pytest.mark.parametrize("port", [22, 0, 65536])
async def test_resolve_port_rule(client: httpx.AsyncClient, owner: OwnerAuth, port: int) -> None:
    tree = await rejected(client, owner, body(config={"resolve": [resolve_entry(port=port)]}))
    assert error_paths(tree) == {("config", "resolve", "0", "port")}


@pytest.mark.parametrize(
    ("resolve", "failing"),
    [
        ([], ("config", "resolve")),
        ([resolve_entry()] * 5, ("config", "resolve")),
        ([resolve_entry(address=[])], ("config", "resolve", "0", "address")),
        ([resolve_entry(address=["127.0.0.1"] * 5)], ("config", "resolve", "0", "address")),
        ([resolve_entry(address=["localhost"])], ("config", "resolve", "0", "address", "0")),
    ],
)
async def test_resolve_counts_and_addresses(
    client: httpx.AsyncClient, owner: OwnerAuth, resolve: Any, failing: tuple[str, ...]
) -> None:
    tree = await rejected(client, owner, body(config={"resolve": resolve}))
    assert error_paths(tree) == {failing}


async def test_four_resolve_entries_of_four_addresses(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    entries = [
        resolve_entry(host=f"h{i}.example", address=[f"93.184.216.{j}" for j in range(4)])
        for i in range(4)
    ]
    config = await stored_config(client, owner, resolve=entries)
    assert config["resolve"] == entries


# -- 7.4 metadata ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"k": "v"}, id="one key"),
        pytest.param({f"k{i}": "v" * 512 for i in range(8)}, id="eight keys of 512"),
    ],
)
async def test_metadata_is_echoed(
    client: httpx.AsyncClient, owner: OwnerAuth, metadata: dict[str, str]
) -> None:
    record = await accepted(client, owner, body(metadata=metadata))
    assert record["metadata"] == metadata
    fetched = await client.get(f"/v1/queues/{record['id']}", headers=owner.headers)
    assert fetched.json()["metadata"] == metadata


async def test_no_metadata_is_null(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    assert (await accepted(client, owner, body()))["metadata"] is None


@pytest.mark.parametrize(
    ("metadata", "failing"),
    [
        pytest.param({}, ("metadata",), id="empty"),
        pytest.param({f"k{i}": "v" for i in range(9)}, ("metadata",), id="nine keys"),
        pytest.param({"k": ""}, ("metadata", "k"), id="empty value"),
        pytest.param({"k": "v" * 513}, ("metadata", "k"), id="value 513"),
        pytest.param({"k": 1}, ("metadata", "k"), id="number value"),
        pytest.param({"k": {"a": "b"}}, ("metadata", "k"), id="object value"),
        pytest.param({"k" * 65: "v"}, ("metadata", "k" * 65), id="key 65"),
        pytest.param(["k", "v"], ("metadata",), id="array"),
    ],
)
async def test_metadata_rules(
    client: httpx.AsyncClient, owner: OwnerAuth, metadata: Any, failing: tuple[str, ...]
) -> None:
    tree = await rejected(client, owner, body(metadata=metadata))
    assert error_paths(tree) == {failing}


# -- 7.5 cross-field rules and the planned execution -----------------------------------


async def test_estimate_execution_at_is_created_at_plus_the_default_delay(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    record = await accepted(client, owner, body())
    assert record["createdAt"] == clock.now_ms()
    assert record["estimateExecutionAt"] == clock.now_ms() + 1


@pytest.mark.parametrize("delay", [0, 12_345, 86_400_000])
async def test_estimate_execution_at_is_created_at_plus_execution_delay(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock, delay: int
) -> None:
    record = await accepted(client, owner, body(config={"executionDelay": delay}))
    assert record["estimateExecutionAt"] == record["createdAt"] + delay == clock.now_ms() + delay


@pytest.mark.parametrize("offset_ms", [0, -1, -86_400_000])
async def test_execute_at_must_be_after_now(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock, offset_ms: int
) -> None:
    tree = await rejected(client, owner, body(config={"executeAt": clock.now_ms() + offset_ms}))
    assert tree == only_error(("config", "executeAt"), "Execution date must be greater than today")


async def test_execute_at_one_ms_ahead_is_the_planned_instant(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    record = await accepted(client, owner, body(config={"executeAt": clock.now_ms() + 1}))
    assert record["estimateExecutionAt"] == clock.now_ms() + 1


@pytest.mark.parametrize(
    ("given", "planned"),
    [
        pytest.param({}, 1, id="default delay"),
        pytest.param({"executionDelay": 5000}, 5000, id="delay"),
        pytest.param({"executeAt": 60_000}, 60_000, id="executeAt"),  # ms after now
    ],
)
@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("retryAt", "Retry date must be greater than execution date"),
        ("timeoutAt", "Timeout date must be greater than execution date"),
    ],
)
async def test_retry_and_timeout_dates_need_one_second_after_execution(
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    given: dict[str, int],
    planned: int,
    field: str,
    message: str,
) -> None:
    now = clock.now_ms()
    config = {k: now + v if k == "executeAt" else v for k, v in given.items()}
    early = {**config, field: now + planned + 999}
    tree = await rejected(client, owner, body(config=early))
    assert tree == only_error(("config", field), message)
    record = await accepted(client, owner, body(config={**config, field: now + planned + 1000}))
    assert record["estimateExecutionAt"] == now + planned


async def test_timeout_at_is_not_checked_when_retry_at_is_given(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    now = clock.now_ms()
    config = {"retryAt": now + 5000, "timeoutAt": now + 10}
    stored_as = await stored_config(client, owner, **config)
    assert (stored_as["retryAt"], stored_as["timeoutAt"]) == (now + 5000, now + 10)


async def test_retry_at_may_be_given_as_a_string(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    config = await stored_config(
        client, owner, executeAt="2027-03-04T05:06:07Z", retryAt="2027-03-04T05:06:08Z"
    )
    assert config["retryAt"] == utc_ms(2027, 3, 4, 5, 6, 8)


@pytest.mark.parametrize(
    ("field", "value"),
    [("credentials", "include"), ("referrerPolicy", "no-referrer"), ("mode", "cors")],
)
async def test_fetch_only_options_are_refused_with_curl(
    client: httpx.AsyncClient, owner: OwnerAuth, field: str, value: str
) -> None:
    tree = await rejected(client, owner, body({"transport": "curl"}, config={field: value}))
    assert tree == only_error(("config", field), "Invalid curl option")
    config = await stored_config(client, owner, **{field: value})
    assert config[field] == value


# -- 7.6 normalisation -----------------------------------------------------------------


async def test_execute_at_sets_execution_delay_to_zero(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    data = body(config={"executeAt": EXECUTE_AT, "executionDelay": 5000})
    record = await accepted(client, owner, data)
    assert record["estimateExecutionAt"] == EXECUTE_AT
    config = (await client.get(f"/v1/queues/{record['id']}/config", headers=owner.headers)).json()
    assert (config["config"]["executeAt"], config["config"]["executionDelay"]) == (EXECUTE_AT, 0)


async def test_retry_at_means_one_retry_without_interval(
    client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    retry_at = clock.now_ms() + 60_000
    config = await stored_config(
        client, owner, retryAt=retry_at, retry=5, retryInterval=2000, retryExponential=True
    )
    assert config["retryAt"] == retry_at
    assert config["retry"] == 1
    assert config.get("retryInterval", 0) == 0
    assert config["retryExponential"] is False


@pytest.mark.parametrize(
    ("retry", "exponential", "expected"),
    [
        (0, True, False),
        (1, True, False),
        (2, True, True),
        (2, False, False),
        (3, None, True),
    ],
)
async def test_retry_exponential_only_with_two_or_more_retries(
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    retry: int,
    exponential: bool | None,
    expected: bool,
) -> None:
    given: dict[str, Any] = {"retry": retry}
    if exponential is not None:
        given["retryExponential"] = exponential
    config = await stored_config(client, owner, **given)
    assert config["retryExponential"] is expected


@pytest.mark.parametrize("transport", [None, "fetch"])
@pytest.mark.parametrize("referer", ["AUTO", "auto"])
async def test_auto_referer_is_dropped_without_curl(
    client: httpx.AsyncClient, owner: OwnerAuth, transport: str | None, referer: str
) -> None:
    http = {} if transport is None else {"transport": transport}
    wire = await stored(client, owner, body(http, config={"refererUrl": referer}))
    assert "refererUrl" not in wire["config"]


async def test_auto_referer_is_kept_with_curl(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    data = body({"transport": "curl"}, config={"refererUrl": "Auto"})
    wire = await stored(client, owner, data)
    assert wire["config"]["refererUrl"] == "AUTO"


# -- 6.2 path parameter and 6.4 list query ---------------------------------------------


@pytest.mark.parametrize("task_id", ["short", "A" * 25, "A" * 23 + "-", "A" * 23 + "\u00c4"])
async def test_queue_id_rule(client: httpx.AsyncClient, owner: OwnerAuth, task_id: str) -> None:
    response = await client.get(f"/v1/queues/{task_id}", headers=owner.headers)
    assert response.status_code == 400
    assert response.json() == {
        "action": FIX,
        "message": only_error(("queueId",), "Invalid queue id"),
    }


async def test_queue_id_is_upper_cased(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task_id = (await register_task(client, owner)).json()["id"]
    response = await client.get(f"/v1/queues/{task_id.lower()}", headers=owner.headers)
    assert response.status_code == 200
    assert response.json()["id"] == task_id


@pytest.mark.parametrize(
    "query",
    [
        "",
        "limit=1",
        "limit=1000",
        "offset=0",
        "offset=1000",
        "offset=5000",  # beyond the original's 1000: deep pages are reachable
        "order=createdAt&sort=asc",
        "order=estimateEndAt&sort=DESC",
        "order=estimateExecutionAt&sort=Desc",
        "state=running",
        "state=PAUSED",
        "state=Success&limit=5&offset=1",
    ],
)
async def test_list_query_accepted(client: httpx.AsyncClient, owner: OwnerAuth, query: str) -> None:
    response = await client.get(f"/v1/queues?{query}", headers=owner.headers)
    assert response.status_code == 200, response.text
    assert response.json() == []


@pytest.mark.parametrize(
    ("query", "failing"),
    [
        ("limit=0", ("limit",)),
        ("limit=1001", ("limit",)),
        ("limit=-1", ("limit",)),
        ("limit=ten", ("limit",)),
        ("limit=1.5", ("limit",)),
        ("limit=", ("limit",)),
        ("offset=-1", ("offset",)),
        ("offset=x", ("offset",)),
        ("order=createdat", ("order",)),
        ("order=id", ("order",)),
        ("sort=up", ("sort",)),
        ("state=done", ("state",)),
        ("page=2", ()),
    ],
)
async def test_list_query_rejected(
    client: httpx.AsyncClient, owner: OwnerAuth, query: str, failing: tuple[str, ...]
) -> None:
    response = await client.get(f"/v1/queues?{query}", headers=owner.headers)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["action"] == FIX
    assert error_paths(payload["message"]) == {failing}


async def test_unknown_query_parameter_message(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    response = await client.get("/v1/queues?page=2", headers=owner.headers)
    assert response.json()["message"] == {"_errors": ["Unrecognized key(s) in object: 'page'"]}


async def test_list_state_filter(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    task_id = (await register_task(client, owner)).json()["id"]
    running = await client.get("/v1/queues?state=running", headers=owner.headers)
    assert [item["id"] for item in running.json()] == [task_id]
    paused = await client.get("/v1/queues?state=paused", headers=owner.headers)
    assert paused.json() == []


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([1, 2, 3], id="array"),
        pytest.param([{"name": "a", "value": "1"}], id="array shaped like a form"),
        pytest.param("text", id="string"),
        pytest.param(42, id="number"),
        pytest.param(False, id="false"),
        pytest.param({"a": [1]}, id="object"),
    ],
)
async def test_json_sends_any_json_value_and_is_never_a_form(
    client: httpx.AsyncClient, owner: OwnerAuth, value: Any
) -> None:
    wire = await stored(client, owner, body({"method": "POST", "json": value}))
    if isinstance(value, dict):
        # an object reads back as `data`, the original's form of a JSON object body
        assert wire["httpRequest"]["data"] == value and "json" not in wire["httpRequest"]
    else:
        assert wire["httpRequest"]["json"] == value and "data" not in wire["httpRequest"]


async def test_a_form_shaped_data_array_stays_a_multipart_form(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    form = [{"name": "a", "value": "1"}]
    wire = await stored(client, owner, body({"method": "POST", "data": form}))
    assert wire["httpRequest"]["data"] == form and "json" not in wire["httpRequest"]


async def test_data_and_json_together_are_refused(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    tree = await rejected(client, owner, body({"method": "POST", "data": "x", "json": [1]}))
    assert tree == only_error(
        ("httpRequest", "json"), "Give the body either as data or as json, not both"
    )


async def test_json_null_means_no_body_as_data_null_does(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    wire = await stored(client, owner, body({"method": "POST", "json": None}))
    assert "json" not in wire["httpRequest"] and "data" not in wire["httpRequest"]
