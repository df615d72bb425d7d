"""Every dashboard page in its empty, normal and error states, over the app in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tasks_server.app import Server
from tests.api.dashboard.conftest import post_form, sign_in
from tests.conftest import OwnerAuth, client_for, register_task
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/ok", Reply(200, b'{"done": true}', (("X-Reply", "yes"),)))
        server.route("/fail", Reply(500, b"broken"))
        yield server


async def finished(client: httpx.AsyncClient, owner: OwnerAuth, task_id: str, state: str) -> None:
    async def reached() -> bool:
        response = await client.get(f"/v1/queues/{task_id}", headers=owner.headers)
        return bool(response.json()["state"] == state)

    await wait_until(reached, message=state)


async def new_task(
    client: httpx.AsyncClient, owner: OwnerAuth, url: str, delay_ms: int = 0, **extra: object
) -> str:
    request = {"url": url, "method": "POST", "headers": {"Authorization": "Bearer s3cr3t-token"}}
    response = await register_task(client, owner, request, {"executionDelay": delay_ms}, **extra)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# -- overview ---------------------------------------------------------------------------


async def test_overview_empty(ui: httpx.AsyncClient) -> None:
    page = await ui.get("/ui/")
    assert page.status_code == 200
    assert "Tasks by state" in page.text and "<svg" in page.text and "No data yet" in page.text


async def test_overview_counts_and_charts(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    done = await new_task(client, owner, target.url("/ok"))
    await new_task(client, owner, target.url("/later"), delay_ms=3_600_000)
    await finished(client, owner, done, "SUCCESS")
    page = await ui.get("/ui/")
    assert "RUNNING <strong>1</strong>" in page.text and "SUCCESS <strong>1</strong>" in page.text
    assert "Last hour <strong>1</strong>, failed <strong>0</strong>" in page.text
    assert "127.0.0.1" in page.text  # the busiest host
    assert "Lateness p50" in page.text and "Calls in flight" in page.text


async def test_overview_when_the_database_fails(
    server: Server, owner: OwnerAuth, ui: httpx.AsyncClient
) -> None:
    transport = httpx.ASGITransport(app=server.asgi, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://tasks.test", cookies=ui.cookies
    ) as http:
        await server.store.close()  # the database is gone under a signed-in page
        page = await http.get("/ui/")
        assert page.status_code == 500 and "logged this error" in page.text
        assert "Traceback" not in page.text
        await server.store.open()


# -- task list ----------------------------------------------------------------------------


async def test_task_list_empty(ui: httpx.AsyncClient) -> None:
    page = await ui.get("/ui/tasks")
    assert page.status_code == 200 and "No tasks match." in page.text


async def test_task_list_filters_searches_and_pages(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    ids = []
    for n, host in enumerate(["alpha"] * 52 + ["beta"]):
        url = f"https://{host}.example/path-{n}"
        ids.append(await new_task(client, owner, url, delay_ms=3_600_000))
        clock.advance(0.001)  # one creation time each, so the order is known
    first = await ui.get("/ui/tasks")
    assert first.text.count('href="/ui/tasks/') == 50 and ids[-1] in first.text
    assert ids[0] not in first.text and 'rel="next"' in first.text
    next_link = first.text.split('href="?')[1].split('"')[0].replace("&amp;", "&")
    second = await ui.get("/ui/tasks?" + next_link)
    assert ids[0] in second.text and ids[2] in second.text and 'rel="next"' not in second.text
    by_host = await ui.get("/ui/tasks?host=beta.example")
    assert by_host.text.count('href="/ui/tasks/') == 1 and ids[-1] in by_host.text
    by_url = await ui.get("/ui/tasks?q=path-7")
    assert ids[7] in by_url.text and by_url.text.count('href="/ui/tasks/') == 1
    oldest = await ui.get("/ui/tasks?sort=oldest&state=RUNNING")
    assert oldest.text.index(ids[0]) < oldest.text.index(ids[1])
    assert "No tasks match." in (await ui.get("/ui/tasks?state=SUCCESS")).text
    later = await ui.get("/ui/tasks?from=2100-01-01T00:00")
    assert "No tasks match." in later.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=DONE", "state must be one of"),
        ("label=novalue", "key=value"),
        ("from=yesterday", "from is not a date"),
        ("after=xyz", "cursor is not valid"),
        ("sort=random", "sort must be"),
    ],
)
async def test_task_list_bad_filters_are_a_400_page(
    ui: httpx.AsyncClient, query: str, message: str
) -> None:
    page = await ui.get(f"/ui/tasks?{query}")
    assert page.status_code == 400 and message in page.text


# -- one task -----------------------------------------------------------------------------


async def test_task_page_shows_request_masked_and_attempts(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    task_id = await new_task(client, owner, target.url("/ok"), metadata={"team": "red"})
    await finished(client, owner, task_id, "SUCCESS")
    page = await ui.get(f"/ui/tasks/{task_id}")
    assert page.status_code == 200
    assert "s3cr3t-token" not in page.text and "••••••" in page.text
    assert "Attempt 1 — 200" in page.text and "x-reply" in page.text.lower()
    assert "{&#34;done&#34;: true}" in page.text and "Label team" in page.text
    assert "Run now" not in page.text and "Delete" in page.text


async def test_task_page_before_any_attempt(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    task_id = await new_task(client, owner, "https://later.example/x", delay_ms=3_600_000)
    page = await ui.get(f"/ui/tasks/{task_id.lower()}")
    assert "No attempt yet." in page.text and "Run now" in page.text and "Edit" in page.text


async def test_another_owners_task_is_a_404_page(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, other_owner: OwnerAuth
) -> None:
    task_id = await new_task(client, other_owner, "https://theirs.example/x", delay_ms=60_000)
    page = await ui.get(f"/ui/tasks/{task_id}")
    assert page.status_code == 404 and "not yours" in page.text and "theirs" not in page.text
    refused = await post_form(ui, "/ui/tasks", f"/ui/tasks/{task_id}/pause")
    assert refused.status_code == 404
    assert (await ui.get("/ui/tasks/not-an-id")).status_code == 404


async def test_actions_pause_resume_run_revoke_delete(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    task_id = await new_task(client, owner, target.url("/ok"), delay_ms=3_600_000)
    page = f"/ui/tasks/{task_id}"

    async def act(action: str) -> str:
        response = await post_form(ui, page, f"{page}/{action}")
        assert response.status_code == 303, response.text
        return (await ui.get(response.headers["location"])).text

    assert "The task is paused." in await act("pause")
    assert "Not done" in await act("pause")  # already paused: a message, nothing changes
    assert "The task is running again." in await act("resume")
    assert "The task runs now." in await act("run")
    await finished(client, owner, task_id, "SUCCESS")
    assert "Attempt 1 — 200" in (await ui.get(page)).text
    other = await new_task(client, owner, target.url("/ok"), delay_ms=3_600_000)
    assert "The task is revoked." in await act_on(ui, other, "revoke")
    deleted = await post_form(ui, page, f"{page}/delete")
    assert deleted.headers["location"] == "/ui/tasks"
    assert (await ui.get(page)).status_code == 404


async def act_on(ui: httpx.AsyncClient, task_id: str, action: str) -> str:
    page = f"/ui/tasks/{task_id}"
    response = await post_form(ui, page, f"{page}/{action}")
    return (await ui.get(response.headers["location"])).text


async def test_replay_a_failed_task_runs_it_again(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    task_id = await new_task(client, owner, target.url("/fail"))
    await finished(client, owner, task_id, "ERROR")
    assert task_id in (await ui.get("/ui/failures")).text
    text = await act_on(ui, task_id, "replay")
    assert "The task runs again." in text
    await wait_until(lambda: len(target.arrivals_at("/fail")) == 2, message="the replay")
    await finished(client, owner, task_id, "ERROR")
    page = (await ui.get(f"/ui/tasks/{task_id}")).text
    assert "Attempt 2 — 500" in page and "Attempt 1 — 500" in page
    ok = await new_task(client, owner, target.url("/ok"))
    await finished(client, owner, ok, "SUCCESS")
    assert "Not done" in await act_on(ui, ok, "replay")  # only failed tasks


async def test_failures_empty(ui: httpx.AsyncClient) -> None:
    page = await ui.get("/ui/failures")
    assert page.status_code == 200 and "No failed tasks." in page.text


async def test_edit_a_pending_task(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    task_id = await new_task(client, owner, "https://before.example/x", delay_ms=3_600_000)
    edit = f"/ui/tasks/{task_id}/edit"
    form = await ui.get(edit)
    assert form.status_code == 200 and "s3cr3t-token" not in form.text
    text = form.text.split('spellcheck="false">')[1].split("</textarea>")[0]
    changed = text.replace("https://before.example/x", "https://after.example/x").replace(
        "&#34;", '"'
    )
    saved = await post_form(ui, edit, edit, registration=changed)
    assert saved.status_code == 303
    config = await client.get(f"/v1/queues/{task_id}/config?reveal=true", headers=owner.headers)
    request = config.json()["httpRequest"]
    assert request["url"] == "https://after.example/x"
    assert request["headers"]["Authorization"] == "Bearer s3cr3t-token"  # the mask kept it
    bad = await post_form(ui, edit, edit, registration="{not json")
    assert bad.status_code == 400 and "Expecting property name" in bad.text
    invalid = await post_form(ui, edit, edit, registration='{"httpRequest": {"url": 5}}')
    assert invalid.status_code == 400 and "_errors" in invalid.text


# -- schedules ----------------------------------------------------------------------------


async def test_schedules_empty(ui: httpx.AsyncClient) -> None:
    page = await ui.get("/ui/schedules")
    assert page.status_code == 200 and "No schedules yet." in page.text


async def test_schedule_list_page_and_actions(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    body = {
        "name": "nightly-report",
        "schedule": "0 3 * * *",
        "httpRequest": {"url": "https://reports.example/run", "method": "POST"},
    }
    created = await client.post("/v1/schedules", json=body, headers=owner.headers)
    assert created.status_code == 201, created.text
    schedule_id = created.json()["id"]
    listing = await ui.get("/ui/schedules")
    assert "nightly-report" in listing.text and "0 3 * * *" in listing.text
    page = f"/ui/schedules/{schedule_id}"
    view = await ui.get(page)
    assert view.status_code == 200 and "Next runs" in view.text and "03:00:00Z" in view.text
    assert "No run yet." in view.text
    paused = await post_form(ui, page, f"{page}/pause")
    assert "The schedule is paused." in (await ui.get(paused.headers["location"])).text
    resumed = await post_form(ui, page, f"{page}/resume")
    assert "active again" in (await ui.get(resumed.headers["location"])).text
    ran = await post_form(ui, page, f"{page}/run")
    assert "Started task" in (await ui.get(ran.headers["location"])).text
    assert (await ui.get("/ui/schedules/NOSUCHSCHEDULE0000000000")).status_code == 404


async def test_a_schedule_of_workflow_runs_has_its_page(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    step = {"id": "only", "httpRequest": {"url": "https://etl.example/run", "method": "POST"}}
    workflow = {"name": "etl", "steps": [step]}
    body = {"name": "nightly-etl", "schedule": "0 2 * * *", "workflow": workflow}
    created = await client.post("/v1/schedules", json=body, headers=owner.headers)
    assert created.status_code == 201, created.text
    page = await ui.get(f"/ui/schedules/{created.json()['id']}")
    assert page.status_code == 200 and "starts a workflow run" in page.text
    assert "Run now" not in page.text and "Task template" not in page.text


# -- test a task ----------------------------------------------------------------------------


async def test_test_form_shows_the_json_then_registers(
    ui: httpx.AsyncClient, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    form = await ui.get("/ui/test")
    assert form.status_code == 200 and 'for="t-url"' in form.text
    fields = {
        "method": "PUT",
        "url": "https://hooks.example/in",
        "headers": "X-Kind: test",
        "body": "hello",
        "delay": "60000",
        "retry": "2",
        "retryInterval": "500",
    }
    shown = await post_form(ui, "/ui/test", "/ui/test", **fields)
    assert shown.status_code == 200 and "Registration (valid)" in shown.text
    assert "&#34;executionDelay&#34;: 60000" in shown.text
    assert "&#34;retryInterval&#34;: 500" in shown.text
    registered = await post_form(ui, "/ui/test", "/ui/test", register="1", **fields)
    assert registered.status_code == 303
    task_id = registered.headers["location"].rsplit("/", 1)[1]
    config = await client.get(f"/v1/queues/{task_id}/config", headers=owner.headers)
    assert config.json()["httpRequest"]["method"] == "PUT"


async def test_test_form_errors(ui: httpx.AsyncClient) -> None:
    bad_header = await post_form(
        ui, "/ui/test", "/ui/test", url="https://x.example/y", headers="no colon here"
    )
    assert bad_header.status_code == 400 and "no name: value" in bad_header.text
    bad_url = await post_form(ui, "/ui/test", "/ui/test", url="not a url", headers="")
    assert bad_url.status_code == 400 and "_errors" in bad_url.text


# -- admin ----------------------------------------------------------------------------------


async def test_admin_page_lists_owners_health_and_masked_settings(
    make_server: object, tmp_path: Path
) -> None:
    from tests.api.dashboard.conftest import ADMIN_KEY

    # a database of its own: a database keeps the key it was made with
    server: Server = await make_server(  # type: ignore[operator]
        admin_key=ADMIN_KEY, cipher_key="very-secret-cipher", path_sqlite=str(tmp_path / "a.db")
    )
    async with client_for(server) as http:
        await http.post(
            "/v1/owners/register",
            json={"name": "owner-three"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        await sign_in(http, "", ADMIN_KEY)
        page = await http.get("/ui/admin")
        assert "owner-three" in page.text and "database" in page.text
        assert "very-secret-cipher" not in page.text and "***" in page.text
        overview = await http.get("/ui/")
        assert "every owner" in overview.text
        assert (await http.get("/ui/tasks")).status_code == 303  # the admin has no tasks
