"""Alerts against the running server: rules over the API, a real SMTP server (aiosmtpd)
receiving the mail, webhooks as tasks at a real target, incidents that keep a failing job
to one alert, at most a digest, and one recovery. Fake clock; real targets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trustme

from tasks_server.app import Server
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner
from tests.support.clock import FakeClock
from tests.support.smtp import SmtpServer
from tests.support.targets import Arrival, Reply, TargetServer
from tests.support.waiting import wait_until

PUBLIC_URL = "https://tasks.example.com"
OPS = "ops@example.com"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/fail", Reply(500, b"database down"))
        server.route("/ok", Reply(200, b"ok"))
        server.route("/degraded", Reply(200, b"status: degraded"))
        server.route("/alerts", Reply(202, b""))
        yield server


@pytest.fixture
async def mailing(make_server: ServerFactory, smtp: SmtpServer) -> Server:
    return await make_server(
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_tls="none",
        smtp_from="alerts@tasks.test",
        public_url=PUBLIC_URL,
    )


@pytest.fixture
async def mail_client(mailing: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(mailing) as http:
        yield http


async def judged(server: Server) -> None:
    """Wait until the scheduler has parked and the alert service has judged everything."""
    for _ in range(3):
        await asyncio.sleep(0)
    alerts = server.alerts
    assert alerts is not None
    await wait_until(
        lambda: (
            server.scheduler.idle.is_set()
            and server.scheduler.in_flight == 0
            and alerts.pending == 0
            and not alerts.busy
        ),
        message="outcomes judged",
    )


async def create_rule(client: httpx.AsyncClient, owner: OwnerAuth, **rule: Any) -> dict[str, Any]:
    response = await client.post("/v1/alerts", json=rule, headers=owner.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def deliveries(client: httpx.AsyncClient, owner: OwnerAuth, rule_id: str) -> list[Any]:
    response = await client.get(f"/v1/alerts/{rule_id}/deliveries", headers=owner.headers)
    assert response.status_code == 200, response.text
    found: list[Any] = response.json()
    return found


async def test_a_schedule_failing_three_times_then_succeeding(
    mailing: Server,
    mail_client: httpx.AsyncClient,
    clock: FakeClock,
    smtp: SmtpServer,
    target: TargetServer,
) -> None:
    client = mail_client
    owner = await register_owner(client, "owner-one")
    runs = 0

    def flaky(arrival: Arrival) -> Reply:
        nonlocal runs
        runs += 1
        return Reply(503, b"upstream timeout") if runs <= 3 else Reply(200, b"fine")

    target.route("/job", flaky)
    schedule = await client.post(
        "/v1/schedules",
        json={
            "name": "heartbeat",
            "schedule": "@every 10s",
            "httpRequest": {"url": target.url("/job"), "method": "GET"},
        },
        headers=owner.headers,
    )
    assert schedule.status_code == 201, schedule.text
    rule = await create_rule(
        client,
        owner,
        name="heartbeat down",
        on="schedule.failed",
        scope={"schedule": "heartbeat"},
        channel={"email": {"to": [OPS, "oncall@example.com"]}},
    )
    for run in (1, 2, 3, 4):
        clock.advance(10)
        await wait_until(lambda n=run: runs == n, message=f"run {run}")
        await judged(mailing)
    await wait_until(lambda: len(smtp.messages) == 2, message="two mails")
    clock.advance(60)
    await judged(mailing)

    kinds = [d["kind"] for d in reversed(await deliveries(client, owner, rule["id"]))]
    assert kinds.count("alert") == 1 and kinds.count("digest") <= 1 and kinds.count("resolved") == 1
    assert kinds[0] == "alert" and kinds[-1] == "resolved"
    assert len(smtp.messages) == len(kinds)
    alert, resolved = smtp.messages[0], smtp.messages[-1]
    assert alert.recipients == (OPS, "oncall@example.com") and alert.sender == "alerts@tasks.test"
    assert alert.message["Subject"] == "[tasks-server] heartbeat down: failing"
    assert alert.message["To"] == f"{OPS}, oncall@example.com"
    text = alert.text
    assert "schedule.failed" in text and "Last status: 503" in text
    assert "Last failure: 2026-01-01T00:00:10.000+00:00" in text
    first_task = (
        await client.get("/v1/schedules/heartbeat/tasks?limit=10", headers=owner.headers)
    ).json()[-1]
    assert f"{PUBLIC_URL}/v1/queues/{first_task['id']}" in text
    assert resolved.message["Subject"].startswith("[tasks-server] heartbeat down: resolved")
    assert "(2 more failures)" in resolved.message["Subject"]
    assert "Resolved at 2026-01-01T00:00:40.000+00:00" in resolved.text


async def test_a_scheduled_workflow_run_that_fails_raises_the_schedules_alert(
    mailing: Server,
    mail_client: httpx.AsyncClient,
    clock: FakeClock,
    smtp: SmtpServer,
    target: TargetServer,
) -> None:
    """A schedule that starts workflow runs is judged by its runs: a run ending in ERROR
    is a failure of the schedule (the failed step's task and status in the message), the
    next run that succeeds resolves it."""
    client = mail_client
    owner = await register_owner(client, "owner-one")
    loads = 0

    def flaky(arrival: Arrival) -> Reply:
        nonlocal loads
        loads += 1
        return Reply(503, b"warehouse down") if loads == 1 else Reply(200, b"{}")

    target.route("/load", flaky)
    steps = [
        {"id": "export", "httpRequest": {"url": target.url("/ok"), "method": "POST"}},
        {
            "id": "load",
            "dependsOn": ["export"],
            "httpRequest": {"url": target.url("/load"), "method": "POST"},
            "config": {"retry": 0},
        },
    ]
    schedule = await client.post(
        "/v1/schedules",
        json={"name": "etl", "schedule": "@every 10s", "workflow": {"name": "etl", "steps": steps}},
        headers=owner.headers,
    )
    assert schedule.status_code == 201, schedule.text
    rule = await create_rule(
        client,
        owner,
        name="etl down",
        on="schedule.failed",
        scope={"schedule": "etl"},
        channel={"email": {"to": [OPS]}},
    )
    clock.advance(10)
    await wait_until(lambda: loads == 1, message="the first run's load step")
    await judged(mailing)
    await wait_until(lambda: len(smtp.messages) == 1, message="the alert")
    runs = (await client.get("/v1/schedules/etl/runs", headers=owner.headers)).json()
    failed = (await client.get(f"/v1/workflows/{runs[0]['id']}", headers=owner.headers)).json()
    assert failed["state"] == "ERROR"
    load_task = failed["steps"][1]["taskId"]
    text = smtp.messages[0].text
    assert "schedule.failed in schedule" in text and "Last status: 503" in text
    assert f"Last failed task: {load_task}" in text and "step 'load' failed" in text
    clock.advance(10)
    await wait_until(lambda: loads == 2, message="the second run's load step")
    await judged(mailing)
    await wait_until(lambda: len(smtp.messages) == 2, message="the recovery")
    assert smtp.messages[1].message["Subject"] == "[tasks-server] etl down: resolved"
    kinds = [d["kind"] for d in reversed(await deliveries(client, owner, rule["id"]))]
    assert kinds == ["alert", "resolved"]


async def test_mail_over_starttls_with_login(make_server: ServerFactory, tmp_path: Any) -> None:
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    with SmtpServer(tls=context, user="alerts", password="s3cret-pass") as smtp:
        server = await make_server(
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            smtp_tls="starttls",
            smtp_user="alerts",
            smtp_password="s3cret-pass",
            smtp_ca_file=str(ca_file),
            smtp_from="alerts@tasks.test",
        )
        async with client_for(server) as client:
            owner = await register_owner(client, "owner-one")
            rule = await create_rule(
                client,
                owner,
                name="any failure",
                on="task.failed",
                channel={"email": {"to": [OPS]}},
            )
            tested = await client.post(f"/v1/alerts/{rule['id']}/test", headers=owner.headers)
            assert tested.status_code == 200, tested.text
            assert tested.json()["status"] == "sent", tested.json()
            (mail,) = smtp.messages
            assert mail.over_tls and mail.login == "alerts" and mail.recipients == (OPS,)
            assert mail.message["Subject"] == "[tasks-server] any failure: test message"


async def test_starttls_refuses_an_untrusted_certificate(make_server: ServerFactory) -> None:
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    with SmtpServer(tls=context) as smtp:
        server = await make_server(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_tls="starttls")
        async with client_for(server) as client:
            owner = await register_owner(client, "owner-one")
            rule = await create_rule(
                client,
                owner,
                name="any failure",
                on="task.failed",
                channel={"email": {"to": [OPS]}},
            )
            tested = (
                await client.post(f"/v1/alerts/{rule['id']}/test", headers=owner.headers)
            ).json()
            assert tested["status"] == "failed" and "CERTIFICATE_VERIFY_FAILED" in tested["error"]
            assert smtp.messages == []
            metrics = (await client.get("/metrics")).text
            assert 'tasks_alert_deliveries_total{status="failed"} 1.0' in metrics


async def test_webhook_channel_is_a_task(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    rule = await create_rule(
        client,
        owner,
        name="billing failures",
        on="task.failed",
        scope={"label": "team=billing"},
        channel={"webhook": {"url": target.url("/alerts"), "headers": {"X-Team": "billing"}}},
    )
    for team in ("search", "billing"):
        response = await client.post(
            "/v1/queues/register?wait=30",
            json={
                "httpRequest": {"url": target.url("/fail"), "method": "GET"},
                "config": {"executionDelay": 0},
                "metadata": {"team": team},
            },
            headers=owner.headers,
        )
        assert response.json()["state"] == "ERROR"
    await wait_until(lambda: len(target.arrivals_at("/alerts")) == 1, message="the webhook")
    await judged(server)
    (call,) = target.arrivals_at("/alerts")
    payload = json.loads(call.body)
    assert call.header("X-Team") == "billing" and call.method == "POST"
    assert payload["type"] == "alert.alert" and payload["rule"]["name"] == "billing failures"
    assert payload["lastStatusCode"] == 500 and payload["taskUrl"].endswith(payload["lastTaskId"])
    (delivery,) = await deliveries(client, owner, rule["id"])
    assert delivery["status"] == "queued" and delivery["taskId"] == call.header("X-Tasks-Queue-Id")
    webhook_task = (
        await client.get(f"/v1/queues/{delivery['taskId']}", headers=owner.headers)
    ).json()
    assert webhook_task["metadata"] == {"alert": rule["id"]}


async def test_attempt_failed_after_n_in_a_row_and_unexpected_responses(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    attempts = await create_rule(
        client,
        owner,
        name="second attempt",
        on="attempt.failed",
        consecutive=2,
        channel={"webhook": {"url": target.url("/alerts")}},
    )
    strange = await create_rule(
        client,
        owner,
        name="strange health",
        on="response.unexpected",
        scope={"label": "probe=health"},
        expect={"statusCodes": [200], "bodyRegex": "^ok$"},
        channel={"webhook": {"url": target.url("/alerts")}},
    )
    await client.post(
        "/v1/queues/register",
        json={
            "httpRequest": {"url": target.url("/fail"), "method": "GET"},
            "config": {"executionDelay": 0, "retry": 1, "retryInterval": 1000},
        },
        headers=owner.headers,
    )
    await wait_until(lambda: len(target.arrivals_at("/fail")) == 1, message="attempt 1")
    await judged(server)
    assert await deliveries(client, owner, attempts["id"]) == []
    clock.advance(1)
    await wait_until(lambda: len(target.arrivals_at("/fail")) == 2, message="attempt 2")
    await judged(server)
    assert [d["kind"] for d in await deliveries(client, owner, attempts["id"])] == ["alert"]
    degraded = await client.post(
        "/v1/queues/register?wait=30",
        json={
            "httpRequest": {"url": target.url("/degraded"), "method": "GET"},
            "config": {"executionDelay": 0},
            "metadata": {"probe": "health"},
        },
        headers=owner.headers,
    )
    assert degraded.json()["state"] == "SUCCESS"
    await judged(server)
    assert [d["kind"] for d in await deliveries(client, owner, strange["id"])] == ["alert"]
    fine = await client.post(
        "/v1/queues/register?wait=30",
        json={
            "httpRequest": {"url": target.url("/ok"), "method": "GET"},
            "config": {"executionDelay": 0},
            "metadata": {"probe": "health"},
        },
        headers=owner.headers,
    )
    assert fine.json()["state"] == "SUCCESS"
    await judged(server)
    assert [d["kind"] for d in await deliveries(client, owner, strange["id"])] == [
        "resolved",
        "alert",
    ]


async def test_a_rule_created_after_outcomes_judged_by_none_judges_the_next_ones(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    """Outcomes of an owner known to have no rule are not queued to be judged; creating
    a rule ends that at once, so the next failure raises its alert."""
    failing = {
        "httpRequest": {"url": target.url("/fail"), "method": "GET"},
        "config": {"executionDelay": 0, "retry": 0},
    }
    for expected in (1, 2):
        await client.post("/v1/queues/register", json=failing, headers=owner.headers)
        await wait_until(lambda n=expected: len(target.arrivals_at("/fail")) == n, message="call")
        await judged(server)
    rule = await create_rule(
        client,
        owner,
        name="any failure",
        on="attempt.failed",
        consecutive=1,
        channel={"webhook": {"url": target.url("/alerts")}},
    )
    await client.post("/v1/queues/register", json=failing, headers=owner.headers)
    await wait_until(lambda: len(target.arrivals_at("/fail")) == 3, message="third call")
    await judged(server)
    assert [d["kind"] for d in await deliveries(client, owner, rule["id"])] == ["alert"]


async def test_the_hourly_cap_suppresses_and_shows_it(
    make_server: ServerFactory, smtp: SmtpServer, target: TargetServer, clock: FakeClock
) -> None:
    server = await make_server(
        smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_tls="none", alerts_max_per_hour=1
    )
    async with client_for(server) as client:
        owner = await register_owner(client, "owner-one")
        one = await create_rule(
            client, owner, name="one", on="task.failed", channel={"email": {"to": [OPS]}}
        )
        two = await create_rule(
            client, owner, name="two", on="task.failed", channel={"email": {"to": [OPS]}}
        )
        await client.post(
            "/v1/queues/register?wait=30",
            json={
                "httpRequest": {"url": target.url("/fail"), "method": "GET"},
                "config": {"executionDelay": 0},
            },
            headers=owner.headers,
        )
        await judged(server)
        statuses = sorted(
            [d["status"] for d in await deliveries(client, owner, one["id"])]
            + [d["status"] for d in await deliveries(client, owner, two["id"])]
        )
        assert statuses == ["sent", "suppressed"] and len(smtp.messages) == 1
        metrics = (await client.get("/metrics")).text
        assert 'tasks_alert_deliveries_total{status="suppressed"} 1.0' in metrics
        clock.advance(3601)
        tested = await client.post(f"/v1/alerts/{one['id']}/test", headers=owner.headers)
        assert tested.json()["status"] == "sent"  # a new hour


async def test_mail_without_smtp_is_a_visible_failure(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    rule = await create_rule(
        client, owner, name="mail", on="task.failed", channel={"email": {"to": [OPS]}}
    )
    tested = (await client.post(f"/v1/alerts/{rule['id']}/test", headers=owner.headers)).json()
    assert tested["status"] == "failed" and tested["error"] == "SMTP_HOST is not set"
    assert [d["status"] for d in await deliveries(client, owner, rule["id"])] == ["failed"]


async def test_rule_crud(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    rule = await create_rule(
        client, owner, name="failures", on="task.failed", channel={"email": {"to": [OPS]}}
    )
    assert rule["consecutive"] == 1 and "scope" not in rule
    assert (await client.get("/v1/alerts", headers=owner.headers)).json() == [rule]
    assert (await client.get(f"/v1/alerts/{rule['id']}", headers=owner.headers)).json() == rule
    patched = await client.patch(
        f"/v1/alerts/{rule['id']}",
        json={"consecutive": 3, "scope": {"label": "team"}},
        headers=owner.headers,
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["consecutive"] == 3 and body["scope"] == {"label": "team"}
    assert body["channel"] == {"email": {"to": [OPS]}}
    duplicate = await client.post(
        "/v1/alerts",
        json={"name": "failures", "on": "task.failed", "channel": {"email": {"to": [OPS]}}},
        headers=owner.headers,
    )
    assert duplicate.status_code == 409
    deleted = await client.delete(f"/v1/alerts/{rule['id']}", headers=owner.headers)
    assert deleted.status_code == 200
    assert (await client.get(f"/v1/alerts/{rule['id']}", headers=owner.headers)).status_code == 404


@pytest.mark.parametrize(
    "rule",
    [
        {"on": "task.failed", "channel": {"email": {"to": [OPS]}}},
        {"name": "x", "on": "task.exploded", "channel": {"email": {"to": [OPS]}}},
        {"name": "x", "on": "task.failed", "channel": {}},
        {"name": "x", "on": "task.failed", "channel": {"email": {"to": ["not-an-address"]}}},
        {
            "name": "x",
            "on": "task.failed",
            "channel": {"email": {"to": [OPS]}, "webhook": {"url": "http://127.0.0.1:9/"}},
        },
        {
            "name": "x",
            "on": "task.failed",
            "channel": {"webhook": {"url": "http://127.0.0.1:9/", "data": "x"}},
        },
        {"name": "x", "on": "response.unexpected", "channel": {"email": {"to": [OPS]}}},
        {
            "name": "x",
            "on": "response.unexpected",
            "expect": {"bodyRegex": "("},
            "channel": {"email": {"to": [OPS]}},
        },
        {"name": "x", "on": "task.failed", "consecutive": 0, "channel": {"email": {"to": [OPS]}}},
        {
            "name": "x",
            "on": "task.failed",
            "scope": {"schedule": "missing"},
            "channel": {"email": {"to": [OPS]}},
        },
        {
            "name": "x",
            "on": "task.failed",
            "scope": {"schedule": "a", "label": "b"},
            "channel": {"email": {"to": [OPS]}},
        },
    ],
)
async def test_bad_rules_are_refused(
    client: httpx.AsyncClient, owner: OwnerAuth, rule: dict[str, Any]
) -> None:
    response = await client.post("/v1/alerts", json=rule, headers=owner.headers)
    assert response.status_code == 400, response.text
    assert (await client.get("/v1/alerts", headers=owner.headers)).json() == []


async def test_another_owners_rule_looks_missing(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    rule = await create_rule(
        client, owner, name="mine", on="task.failed", channel={"email": {"to": [OPS]}}
    )
    missing = "Z" * 24
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"consecutive": 2}),
        ("DELETE", "", None),
        ("POST", "/test", None),
        ("GET", "/deliveries", None),
    ):
        foreign = await client.request(
            method, f"/v1/alerts/{rule['id']}{suffix}", json=body, headers=other_owner.headers
        )
        absent = await client.request(
            method, f"/v1/alerts/{missing}{suffix}", json=body, headers=other_owner.headers
        )
        assert foreign.status_code == absent.status_code == 404, (method, suffix)
        assert foreign.json() == absent.json()
    assert (await client.get("/v1/alerts", headers=other_owner.headers)).json() == []
    assert (await client.get(f"/v1/alerts/{rule['id']}", headers=owner.headers)).json() == rule
