"""The schedule API: validation, reads, edits, state changes, previews, the tasks a schedule
created, owner isolation, and a run end to end on the fake clock with a real target."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import TARGET, OwnerAuth
from tests.support.clock import START_MS, FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until

S = 1_000
M = 60_000


def body(**fields: Any) -> dict[str, Any]:
    return {
        "name": "nightly-report",
        "schedule": "*/5 * * * *",
        "httpRequest": {"url": TARGET, "method": "POST", "data": {"report": "daily"}},
        **fields,
    }


async def create(client: httpx.AsyncClient, owner: OwnerAuth, **fields: Any) -> httpx.Response:
    return await client.post("/v1/schedules", json=body(**fields), headers=owner.headers)


async def created(client: httpx.AsyncClient, owner: OwnerAuth, **fields: Any) -> dict[str, Any]:
    response = await create(client, owner, **fields)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def errors_at(response: httpx.Response, *path: str) -> list[str]:
    assert response.status_code == 400, response.text
    node = response.json()["message"]
    for part in path:
        node = node[part]
    found: list[str] = node["_errors"]
    return found


# -- create and read ------------------------------------------------------------------------


async def test_create_answers_the_whole_schedule(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    answer = await created(
        client,
        owner,
        timezone="Europe/Berlin",
        config={"retry": 2, "timeout": 5000},
        metadata={"team": "ops"},
        maxRuns=10,
        misfirePolicy="run_all",
        overlapPolicy="skip",
        catchUpLimit=3,
    )
    assert len(answer.pop("id")) == 24
    config = answer.pop("config")
    assert (config["retry"], config["timeout"]) == (2, 5000)
    assert "executionDelay" not in config and "executeAt" not in config
    assert answer == {
        "name": "nightly-report",
        "schedule": "*/5 * * * *",
        "timezone": "Europe/Berlin",
        "state": "ACTIVE",
        "createdAt": START_MS,
        "updatedAt": START_MS,
        "startAt": None,
        "endAt": None,
        "maxRuns": 10,
        "misfirePolicy": "run_all",
        "overlapPolicy": "skip",
        "catchUpLimit": 3,
        "runs": 0,
        "lastRunAt": None,
        "lastTaskId": None,
        "nextRunAt": START_MS + 5 * M,
        "httpRequest": {"url": TARGET, "method": "POST", "data": {"report": "daily"}},
        "metadata": {"team": "ops"},
    }


async def test_defaults(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    answer = await created(client, owner, schedule="@every 90s")
    assert (answer["timezone"], answer["misfirePolicy"], answer["overlapPolicy"]) == (
        "UTC",
        "run_once",
        "allow",
    )
    assert (answer["catchUpLimit"], answer["nextRunAt"]) == (10, START_MS + 90 * S)


async def test_get_by_id_or_name_and_list(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    first = await created(client, owner, name="b-job")
    await created(client, owner, name="a-job")
    by_id = (await client.get(f"/v1/schedules/{first['id']}", headers=owner.headers)).json()
    by_name = (await client.get("/v1/schedules/b-job", headers=owner.headers)).json()
    assert by_id == by_name == first
    listed = (await client.get("/v1/schedules", headers=owner.headers)).json()
    assert [s["name"] for s in listed] == ["a-job", "b-job"]
    assert "httpRequest" not in listed[0]
    page = await client.get("/v1/schedules?limit=1&offset=1", headers=owner.headers)
    assert [s["name"] for s in page.json()] == ["b-job"]


async def test_names_are_unique_per_owner(
    client: httpx.AsyncClient, owner: OwnerAuth, other_owner: OwnerAuth
) -> None:
    await created(client, owner)
    again = await create(client, owner, schedule="@daily")
    assert again.status_code == 409
    assert again.json()["message"] == "A schedule with this name already exists"
    assert (await create(client, other_owner)).status_code == 201


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"schedule": "61 * * * *"}, ("schedule",), "Invalid cron expression '61 * * * *'"),
        ({"schedule": "@every 10"}, ("schedule",), "Invalid duration '10'"),
        ({"schedule": "* * *"}, ("schedule",), "expected 5 fields"),
        ({"timezone": "Mars/Base"}, ("timezone",), "Unknown time zone 'Mars/Base'"),
        ({"name": "Nightly"}, ("name",), "Must start with a lowercase letter"),
        ({"name": "x" * 65}, ("name",), "Must start with a lowercase letter"),
        ({"misfirePolicy": "later"}, ("misfirePolicy",), "Invalid enum value"),
        ({"overlapPolicy": "cancel"}, ("overlapPolicy",), "Invalid enum value"),
        ({"catchUpLimit": 0}, ("catchUpLimit",), "greater than or equal to 1"),
        ({"maxRuns": 0}, ("maxRuns",), "greater than or equal to 1"),
        ({"startAt": "soon"}, ("startAt",), "Invalid date"),
        (
            {"startAt": START_MS + M, "endAt": START_MS + M},
            ("endAt",),
            "End date must be greater than start date",
        ),
        ({"config": {"executeAt": START_MS + M}}, ("config", "executeAt"), "Not allowed"),
        ({"config": {"executionDelay": 5}}, ("config", "executionDelay"), "Not allowed"),
        ({"config": {"retryAt": START_MS + M}}, ("config", "retryAt"), "Not allowed"),
        ({"cron": "* * * * *"}, (), "Unrecognized key(s) in object: 'cron'"),
        ({"httpRequest": {"url": "ftp://x", "method": "GET"}}, ("httpRequest", "url"), "URL"),
    ],
)
async def test_bad_input_names_the_field(
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    fields: dict[str, Any],
    path: tuple[str, ...],
    message: str,
) -> None:
    response = await create(client, owner, **fields)
    assert any(message in text for text in errors_at(response, *path)), response.json()
    listed = await client.get("/v1/schedules", headers=owner.headers)
    assert listed.json() == []


async def test_missing_fields_are_required(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    response = await client.post("/v1/schedules", json={}, headers=owner.headers)
    for field in ("name", "schedule", "httpRequest"):
        assert errors_at(response, field) == ["Required"]


# -- edit, pause, resume, delete --------------------------------------------------------------


async def test_edit_merges_and_recomputes(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    first = await created(client, owner, endAt=START_MS + 3_600 * S, config={"retry": 1})
    patch = {"schedule": "@every 7s", "endAt": None, "config": {"timeout": 9000}}
    response = await client.patch(f"/v1/schedules/{first['id']}", json=patch, headers=owner.headers)
    assert response.status_code == 200, response.text
    edited = response.json()
    assert (edited["schedule"], edited["endAt"], edited["nextRunAt"]) == (
        "@every 7s",
        None,
        START_MS + 7 * S,
    )
    assert (edited["config"]["retry"], edited["config"]["timeout"]) == (1, 9000)
    assert edited["httpRequest"] == first["httpRequest"]
    renamed = await client.patch(
        "/v1/schedules/nightly-report", json={"name": "hourly"}, headers=owner.headers
    )
    assert renamed.json()["name"] == "hourly"
    assert (await client.get("/v1/schedules/hourly", headers=owner.headers)).status_code == 200


async def test_edit_refuses_bad_input_and_taken_names(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    await created(client, owner, name="taken")
    mine = await created(client, owner)
    bad = await client.patch(
        f"/v1/schedules/{mine['id']}", json={"schedule": "nope"}, headers=owner.headers
    )
    assert errors_at(bad, "schedule")
    taken = await client.patch(
        f"/v1/schedules/{mine['id']}", json={"name": "taken"}, headers=owner.headers
    )
    assert taken.status_code == 409
    after = await client.get(f"/v1/schedules/{mine['id']}", headers=owner.headers)
    assert after.json() == mine


async def test_pause_resume_and_finished(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    first = await created(client, owner)
    url = f"/v1/schedules/{first['id']}"
    paused = (await client.patch(f"{url}/pause", headers=owner.headers)).json()
    assert (paused["state"], paused["nextRunAt"]) == ("PAUSED", None)
    assert (await client.patch(f"{url}/pause", headers=owner.headers)).status_code == 422
    resumed = (await client.patch(f"{url}/resume", headers=owner.headers)).json()
    assert (resumed["state"], resumed["nextRunAt"]) == ("ACTIVE", START_MS + 5 * M)
    assert (await client.patch(f"{url}/resume", headers=owner.headers)).status_code == 422
    ended = await client.patch(url, json={"endAt": START_MS + M}, headers=owner.headers)
    assert (ended.json()["state"], ended.json()["nextRunAt"]) == ("FINISHED", None)
    assert (await client.patch(f"{url}/pause", headers=owner.headers)).status_code == 422
    assert (await client.get(f"{url}/next", headers=owner.headers)).json() == []


async def test_delete(client: httpx.AsyncClient, owner: OwnerAuth) -> None:
    first = await created(client, owner)
    url = f"/v1/schedules/{first['id']}"
    assert (await client.delete(url, headers=owner.headers)).json() == {"status": "Done"}
    assert (await client.get(url, headers=owner.headers)).status_code == 404
    assert (await client.delete(url, headers=owner.headers)).status_code == 404


async def test_next_previews_slots_in_local_time(
    client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    await created(
        client,
        owner,
        schedule="30 2 * * *",
        timezone="Europe/Berlin",
        startAt="2026-03-27T12:00:00Z",
    )
    response = await client.get("/v1/schedules/nightly-report/next?n=3", headers=owner.headers)
    assert [slot["local"] for slot in response.json()] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist that night
        "2026-03-30T02:30:00+02:00",
    ]
    assert response.json()[0]["at"] == 1_774_661_400_000
    bad = await client.get("/v1/schedules/nightly-report/next?n=0", headers=owner.headers)
    assert errors_at(bad, "n")


# -- isolation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "payload"),
    [
        ("GET", "", None),
        ("PATCH", "", {"schedule": "@daily"}),
        ("DELETE", "", None),
        ("PATCH", "/pause", None),
        ("PATCH", "/resume", None),
        ("GET", "/next", None),
        ("GET", "/tasks", None),
    ],
)
async def test_foreign_schedule_answers_like_a_missing_one(
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    other_owner: OwnerAuth,
    method: str,
    suffix: str,
    payload: dict[str, Any] | None,
) -> None:
    mine = await created(client, owner)
    for key in (mine["id"], mine["name"]):
        foreign = await client.request(
            method, f"/v1/schedules/{key}{suffix}", json=payload, headers=other_owner.headers
        )
        missing = await client.request(
            method, f"/v1/schedules/{'Z' * 24}{suffix}", json=payload, headers=other_owner.headers
        )
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json() == missing.json()
    after = await client.get(f"/v1/schedules/{mine['id']}", headers=owner.headers)
    assert after.json() == mine
    assert (await client.get("/v1/schedules", headers=other_owner.headers)).json() == []


async def test_requires_an_owner(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/schedules")).status_code == 403
    assert (await client.post("/v1/schedules", json=body())).status_code == 403


# -- end to end on the fake clock ---------------------------------------------------------------


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/tick", Reply(200, b"ok"))
        yield server


async def settle(server: Server) -> None:
    for _ in range(5):  # let loops woken by clock.advance() run before looking
        await asyncio.sleep(0)
    runner, scheduler = server.schedules, server.scheduler
    assert runner is not None
    await wait_until(
        lambda: runner.idle.is_set() and scheduler.idle.is_set() and scheduler.in_flight == 0,
        message="the runner and the scheduler to park",
    )


async def test_a_schedule_calls_its_target_at_each_slot(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    schedule = await created(
        client,
        owner,
        schedule="@every 10s",
        maxRuns=3,
        httpRequest={"url": target.url("/tick"), "method": "GET"},
    )
    await settle(server)
    for _ in range(5):
        clock.advance(5)
        await settle(server)
    assert len(target.arrivals) == 2
    for _ in range(4):
        clock.advance(5)
        await settle(server)
    await wait_until(lambda: len(target.arrivals) == 3, message="three calls")

    url = f"/v1/schedules/{schedule['id']}"
    listed = (await client.get(f"{url}/tasks", headers=owner.headers)).json()
    assert [t["estimateExecutionAt"] for t in listed] == [
        START_MS + 30 * S,
        START_MS + 20 * S,
        START_MS + 10 * S,
    ]
    assert {t["state"] for t in listed} == {"SUCCESS"}
    sent = sorted(a.header("X-Tasks-Queue-Id") or "" for a in target.arrivals)
    assert sent == sorted(t["id"] for t in listed)
    queues = (await client.get("/v1/queues", headers=owner.headers)).json()
    assert {t["id"] for t in queues} == {t["id"] for t in listed}
    after = (await client.get(url, headers=owner.headers)).json()
    assert (after["state"], after["runs"], after["lastRunAt"]) == (
        "FINISHED",
        3,
        START_MS + 30 * S,
    )


async def test_an_edit_racing_the_runner_is_retried(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await created(client, owner)
    save = server.store.save_schedule
    refusals = {"left": 2}

    async def racing(*args: Any) -> Any:
        if refusals["left"]:
            refusals["left"] -= 1
            return None  # as if the runner had fired the schedule in between
        return await save(*args)

    monkeypatch.setattr(server.store, "save_schedule", racing)
    url = f"/v1/schedules/{first['id']}"
    paused = await client.patch(f"{url}/pause", headers=owner.headers)
    assert paused.json()["state"] == "PAUSED"
    refusals["left"] = 99
    stuck = await client.patch(url, json={"maxRuns": 3}, headers=owner.headers)
    assert stuck.status_code == 409
    assert (await client.get(url, headers=owner.headers)).json()["maxRuns"] is None
