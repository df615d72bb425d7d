"""Bodies the JSON parser refuses (too deep, bad encoding, too many digits, not JSON) are a
400 with the usual error shape on every route that takes a body, and log no traceback;
a client that hangs up mid-body costs one debug line."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest

from tasks_server.api.openapi import spec
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner, register_task

ADMIN_KEY = "admin-key-0123456789abcdef"

BAD_BODIES = {
    "nested arrays": b"[" * 16_000,
    "nested objects": b'{"a":' * 6_000,
    "deep but parsable": b'{"httpRequest":' + b"[" * 900 + b"]" * 900 + b"}",
    "not utf-8": b'{"name": "\xff\xfe"}',
    "huge integer": b'{"name": ' + b"9" * 5000 + b"}",
    "truncated": b'{"name": "abc',
    "nul bytes": b"\x00" * 100,
}


def _operations_with_a_body() -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, item in spec()["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "requestBody" in operation
    )


def test_the_routes_with_a_body_are_found() -> None:
    found = _operations_with_a_body()
    assert ("POST", "/v1/owners/register") in found
    assert ("PATCH", "/v1/queues/{task_id}") in found
    assert ("POST", "/v1/schedules") in found
    assert ("PATCH", "/v1/schedules/{key}") in found


async def _concrete(client: httpx.AsyncClient, owner: OwnerAuth) -> dict[str, str]:
    task = await register_task(client, owner, config={"executionDelay": 3_600_000})
    assert task.status_code == 201, task.text
    schedule = await client.post(
        "/v1/schedules",
        json={
            "name": "every-hour",
            "schedule": "0 * * * *",
            "httpRequest": {"url": "http://127.0.0.1:9/hook", "method": "GET"},
        },
        headers=owner.headers,
    )
    assert schedule.status_code == 201, schedule.text
    rule = await client.post(
        "/v1/alerts",
        json={"name": "failures", "on": "task.failed", "channel": {"email": {"to": ["a@b.co"]}}},
        headers=owner.headers,
    )
    assert rule.status_code == 201, rule.text
    return {
        "rule_id": rule.json()["id"],
        "task_id": task.json()["id"],
        "key": schedule.json()["id"],
        "owner_id": owner.id,
        "name": owner.name,
        "action": "pause",
        "host": "api.example.com:443",
    }


@pytest.mark.parametrize("kind", sorted(BAD_BODIES))
async def test_refused_json_is_a_400_on_every_route_with_a_body(
    make_server: ServerFactory, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(admin_key=ADMIN_KEY, owner_registration="open")
    caplog.set_level(logging.DEBUG)
    async with client_for(server) as client:
        owner = await register_owner(client, "owner-bodies")
        values = await _concrete(client, owner)
        for method, template in _operations_with_a_body():
            path = re.sub(r"{(\w+)}", lambda m: values[m.group(1)], template)
            headers: dict[str, Any] = {"Content-Type": "application/json"}
            if path.startswith(("/v1/admin/", "/v1/hosts")):
                headers["Authorization"] = f"Bearer {ADMIN_KEY}"
            elif path != "/v1/owners/register":
                headers.update(owner.headers)
            response = await client.request(method, path, content=BAD_BODIES[kind], headers=headers)
            assert response.status_code == 400, (method, path, response.text)
            assert set(response.json()) == {"action", "message"}, (method, path)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_client_hanging_up_mid_body_logs_one_debug_line(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": b'{"name": "half', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/owners/register",
        "raw_path": b"/v1/owners/register",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "client": ("127.0.0.1", 40000),
        "server": ("tasks.test", 80),
        "state": {},
    }
    await server.asgi(scope, receive, send)
    records = [r for r in caplog.records if "hung up" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG and records[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
