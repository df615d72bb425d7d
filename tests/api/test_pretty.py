"""``?pretty`` indents the JSON answer of every operation that answers JSON, the task list
included (the original answered that one with 400: its query was a strict object)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tasks_server.api.openapi import spec
from tests.conftest import TARGET, ServerFactory, client_for, register_owner, register_task

ADMIN_KEY = "admin-key-for-pretty-0123456789"


def json_gets() -> dict[str, bool]:
    """The path of every GET whose description takes ``pretty``, and whether it needs the
    admin key."""
    return {
        path: {"adminKey": []} in item["get"].get("security", [])
        for path, item in sorted(spec()["paths"].items())
        if any(p.get("name") == "pretty" for p in item.get("get", {}).get("parameters", []))
    }


async def created(client: httpx.AsyncClient, url: str, body: Any, headers: Any) -> Any:
    response = await client.post(url, json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def test_pretty_on_every_get_that_answers_json(make_server: ServerFactory) -> None:
    server = await make_server(admin_key=ADMIN_KEY)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with client_for(server) as client:
        owner = await register_owner(client, "owner-pretty", headers=admin)
        auth = owner.headers
        task = (await register_task(client, owner, config={"executionDelay": 60_000})).json()
        await register_task(
            client, owner, config={"executionDelay": 60_000, "flowControl": {"key": "mail"}}
        )
        request = {"url": TARGET, "method": "POST"}
        schedule = await created(
            client,
            "/v1/schedules",
            {"name": "nightly", "schedule": "0 3 * * *", "httpRequest": request},
            auth,
        )
        rule = await created(
            client,
            "/v1/alerts",
            {"name": "r", "on": "task.failed", "channel": {"webhook": {"url": TARGET}}},
            auth,
        )
        run = await created(
            client,
            "/v1/workflows",
            {"name": "w", "steps": [{"id": "a", "httpRequest": request}]},
            auth,
        )
        values = {
            "{name}": owner.name,
            "{task_id}": task["id"],
            "{key}": schedule["id"],
            "{rule_id}": rule["id"],
            "{run_id}": run["id"],
            "{owner_id}": owner.id,
            "{host}": "127.0.0.1:9",
        }
        paths = json_gets()
        assert "/v1/queues" in paths and len(paths) >= 20
        for path, needs_admin in paths.items():
            url = path.replace("/v1/flow-control/{key}", "/v1/flow-control/mail")
            for name, value in values.items():
                url = url.replace(name, value)
            headers = admin if needs_admin else auth
            plain = await client.get(url, headers=headers)
            pretty = await client.get(url, params={"pretty": ""}, headers=headers)
            assert plain.status_code in (200, 202), (url, plain.text)  # 202: result not in yet
            assert pretty.status_code == plain.status_code, (url, pretty.text)
            shown = pretty.json()
            assert pretty.text == json.dumps(shown, indent=4, ensure_ascii=False), url
            assert "\n" not in plain.text, url  # compact without it
            if shown:
                assert "\n    " in pretty.text, url


async def test_pretty_beside_the_list_filters(make_server: ServerFactory) -> None:
    server = await make_server()
    async with client_for(server) as client:
        owner = await register_owner(client, "owner-pretty")
        task = (await register_task(client, owner)).json()
        response = await client.get("/v1/queues?state=running&pretty", headers=owner.headers)
        assert response.status_code == 200
        assert response.text.startswith('[\n    {\n        "id"')
        assert [item["id"] for item in response.json()] == [task["id"]]
        unknown = await client.get("/v1/queues?page=2&pretty", headers=owner.headers)
        assert unknown.status_code == 400
        assert unknown.json()["message"] == {"_errors": ["Unrecognized key(s) in object: 'page'"]}
