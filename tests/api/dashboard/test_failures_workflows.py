"""The failures page (the dead-letter queue) and the workflow pages, in their empty,
normal and error states."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.api.dashboard.conftest import post_form
from tests.api.dashboard.test_pages import finished, new_task
from tests.conftest import OwnerAuth
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/ok", Reply(200, b"{}", (("Content-Type", "application/json"),)))
        server.route("/fail", Reply(500, b"broken"))
        server.route("/teapot", Reply(418, b"short and stout"))
        yield server


async def test_failures_list_filters_and_pages(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    failed = await new_task(client, owner, target.url("/fail"))
    teapot = await new_task(client, owner, target.url("/teapot"))
    await finished(client, owner, failed, "ERROR")
    await finished(client, owner, teapot, "ERROR")
    page = await ui.get("/ui/failures")
    assert failed in page.text and teapot in page.text and "Replay all matching" in page.text
    only = await ui.get("/ui/failures?status=418")
    assert teapot in only.text and failed not in only.text
    none = await ui.get("/ui/failures?from=2100-01-01T00:00")
    assert "No failed tasks." in none.text and "Replay all matching" not in none.text


@pytest.mark.parametrize(
    ("query", "message"),
    [("status=abc", "status must be"), ("from=soon", "from is not a date"), ("after=1", "cursor")],
)
async def test_failures_bad_filters_are_a_400_page(
    ui: httpx.AsyncClient, query: str, message: str
) -> None:
    page = await ui.get(f"/ui/failures?{query}")
    assert page.status_code == 400 and message in page.text


async def test_bulk_replay_then_delete_by_filter(
    ui: httpx.AsyncClient,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    target: TargetServer,
    clock: FakeClock,
) -> None:
    ids = [await new_task(client, owner, target.url("/fail")) for _ in range(3)]
    kept = await new_task(client, owner, target.url("/teapot"))
    for task_id in [*ids, kept]:
        await finished(client, owner, task_id, "ERROR")
    replayed = await post_form(ui, "/ui/failures", "/ui/failures/replay", status="500")
    assert replayed.status_code == 303
    assert "Replayed 3 failed task(s)" in (await ui.get(replayed.headers["location"])).text
    clock.advance(1)  # replays are spaced 20 ms apart
    await wait_until(lambda: len(target.arrivals_at("/fail")) == 6, message="three replays")
    for task_id in ids:
        await finished(client, owner, task_id, "ERROR")
    refused = await post_form(ui, "/ui/failures", "/ui/failures/delete")
    assert refused.status_code == 400 and "Give a filter" in refused.text
    deleted = await post_form(ui, "/ui/failures", "/ui/failures/delete", status="500")
    assert "Deleted 3 failed task(s)." in (await ui.get(deleted.headers["location"])).text
    left = await ui.get("/ui/failures")
    assert kept in left.text and all(task_id not in left.text for task_id in ids)


# -- workflows ------------------------------------------------------------------------------


def step(target: TargetServer, path: str, **fields: Any) -> dict[str, Any]:
    return {"httpRequest": {"url": target.url(path), "method": "POST"}, **fields}


async def start_run(client: httpx.AsyncClient, owner: OwnerAuth, body: dict[str, Any]) -> str:
    response = await client.post("/v1/workflows", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def run_state(client: httpx.AsyncClient, owner: OwnerAuth, run_id: str, state: str) -> None:
    async def reached() -> bool:
        response = await client.get(f"/v1/workflows/{run_id}", headers=owner.headers)
        return bool(response.json()["state"] == state)

    await wait_until(reached, message=f"run {state}")


async def test_workflows_empty(ui: httpx.AsyncClient) -> None:
    page = await ui.get("/ui/workflows")
    assert page.status_code == 200 and "No workflow runs." in page.text
    assert (await ui.get("/ui/workflows?state=LOST")).status_code == 400


async def test_a_run_shows_its_graph_and_can_be_retried(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    body = {
        "name": "ship-order",
        "steps": [
            {"id": "tax", **step(target, "/ok")},
            {"id": "store", "dependsOn": ["tax"], **step(target, "/fail")},
        ],
    }
    run_id = await start_run(client, owner, body)
    await run_state(client, owner, run_id, "ERROR")
    listing = await ui.get("/ui/workflows?state=ERROR")
    assert run_id in listing.text and "ship-order" in listing.text
    page = await ui.get(f"/ui/workflows/{run_id}")
    assert page.status_code == 200 and "<svg" in page.text
    assert "step-success" in page.text and "step-error" in page.text
    assert page.text.count('<a href="/ui/tasks/') >= 2  # each step's box links to its task
    retried = await post_form(ui, f"/ui/workflows/{run_id}", f"/ui/workflows/{run_id}/retry")
    assert "run again" in (await ui.get(retried.headers["location"])).text
    await run_state(client, owner, run_id, "ERROR")
    assert len(target.arrivals_at("/ok")) == 1  # the successful step was not called again
    again = await post_form(ui, f"/ui/workflows/{run_id}", f"/ui/workflows/{run_id}/cancel")
    assert "Not done" in (await ui.get(again.headers["location"])).text  # already final


async def test_another_owners_run_is_a_404_page(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, other_owner: OwnerAuth, target: TargetServer
) -> None:
    run_id = await start_run(
        client, other_owner, {"name": "theirs", "steps": [{"id": "a", **step(target, "/ok")}]}
    )
    assert (await ui.get(f"/ui/workflows/{run_id}")).status_code == 404
    assert (await ui.get("/ui/workflows/not-a-run")).status_code == 404
