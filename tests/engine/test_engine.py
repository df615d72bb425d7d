"""Layer 3: the running server with a fake clock, the real curl dispatcher and real
targets on 127.0.0.1. Curl's own timeouts stay on real time, with tolerances."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import OwnerAuth, ServerFactory, client_for, register_owner, register_task
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer, TlsMaterial
from tests.support.waiting import wait_until


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


async def state_of(client: httpx.AsyncClient, owner: OwnerAuth, task_id: str) -> dict[str, object]:
    response = await client.get(f"/v1/queues/{task_id}", headers=owner.headers)
    body: dict[str, object] = response.json()
    return body


async def idle(server: Server) -> None:
    """Wait until the loop has parked with nothing in flight or left to record."""
    for _ in range(3):  # let a loop woken by clock.advance() run before looking
        await asyncio.sleep(0)
    scheduler = server.scheduler
    await wait_until(
        lambda: scheduler.idle.is_set() and scheduler.in_flight == 0,
        message="the scheduler to park",
    )


async def test_task_runs_at_its_due_time(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/hook", Reply(201, b"created"))
    task = (
        await register_task(
            client,
            owner,
            {"url": target.url("/hook"), "method": "POST", "data": "hello"},
            config={"executionDelay": 10_000},
        )
    ).json()
    await idle(server)
    clock.advance(9.999)
    await idle(server)
    assert target.arrivals == []
    clock.advance(0.001)
    await wait_until(lambda: len(target.arrivals) == 1, message="the call")
    arrival = target.arrivals[0]
    assert arrival.method == "POST" and arrival.body == b"hello"
    assert arrival.header("X-Tasks-Queue-Id") == task["id"]
    assert arrival.header("X-Tasks-Attempt") == "1"
    assert arrival.header(
        "User-Agent",
    ).startswith("Tasks-Server/1.0")  # type: ignore[union-attr]

    async def succeeded() -> bool:
        return (await state_of(client, owner, task["id"]))["state"] == "SUCCESS"

    await wait_until(succeeded, message="SUCCESS")
    body = await state_of(client, owner, task["id"])
    assert body["statusCode"] == 201 and body["estimateEndAt"] == clock.now_ms()
    assert base64.b64decode(str(body["response"])) == b"created"
    history = (await client.get(f"/v1/queues/{task['id']}/attempts", headers=owner.headers)).json()
    assert [(a["attempt"], a["statusCode"]) for a in history] == [(1, 201)]


async def test_retries_with_exact_count_and_spacing(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/flaky", Reply(503, b"busy"))
    task = (
        await register_task(
            client,
            owner,
            {"url": target.url("/flaky"), "method": "GET"},
            config={"executionDelay": 0, "retry": 3, "retryInterval": 1000},
        )
    ).json()
    expected_gaps = [1.0, 2.0, 3.0]  # interval x n (docs/compatibility.md#retry-formula)
    await wait_until(lambda: len(target.arrivals) == 1)
    for count, gap in enumerate(expected_gaps, start=2):
        await idle(server)
        clock.advance(gap - 0.001)
        await idle(server)
        assert len(target.arrivals) == count - 1
        clock.advance(0.001)
        await wait_until(lambda c=count: len(target.arrivals) == c, message=f"attempt {count}")
    assert [a.header("X-Tasks-Retry-Count") for a in target.arrivals] == [None, "1", "2", "3"]

    async def errored() -> bool:
        return (await state_of(client, owner, task["id"]))["state"] == "ERROR"

    await wait_until(errored)
    clock.advance(100)
    await idle(server)
    assert len(target.arrivals) == 4
    assert (await state_of(client, owner, task["id"]))["statusCode"] == 503


async def test_timeout_against_a_hanging_target(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    target.route("/hang", Reply(hang=True))
    started = time.monotonic()
    task = (
        await register_task(
            client,
            owner,
            {"url": target.url("/hang"), "method": "GET"},
            config={"executionDelay": 0, "timeout": 1000},
        )
    ).json()

    async def timed_out() -> bool:
        return (await state_of(client, owner, task["id"]))["statusCode"] == 408

    await wait_until(timed_out, timeout=10)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 5.0
    body = await state_of(client, owner, task["id"])
    assert body["state"] == "ERROR"
    assert base64.b64decode(str(body["response"])) == b"TimeoutError: Timeout has occurred"


async def test_slow_target_does_not_delay_others(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    target.route("/slow", Reply(hang=True))
    target.route("/fast", Reply(200, b"ok"))
    await register_task(
        client, owner, {"url": target.url("/slow"), "method": "GET"}, config={"executionDelay": 0}
    )
    await wait_until(lambda: len(target.arrivals_at("/slow")) == 1)
    for _ in range(20):
        await register_task(
            client,
            owner,
            {"url": target.url("/fast"), "method": "GET"},
            config={"executionDelay": 0},
        )
    await wait_until(lambda: len(target.arrivals_at("/fast")) == 20, timeout=5)

    async def all_fast_recorded() -> bool:
        params = {"state": "SUCCESS", "limit": "100"}
        listed = await client.get("/v1/queues", params=params, headers=owner.headers)
        return len(listed.json()) == 20

    # outcomes are written just after the calls return: wait for the write, not a guess
    await wait_until(all_fast_recorded, message="20 successes while /slow still hangs")
    assert len(target.arrivals_at("/slow")) == 1


async def test_pause_while_in_flight_discards_the_result(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/hold", Reply(hang=True))
    task = (
        await register_task(
            client,
            owner,
            {"url": target.url("/hold"), "method": "GET"},
            config={"executionDelay": 0},
        )
    ).json()
    await wait_until(lambda: len(target.arrivals) == 1)
    pause = await client.patch(f"/v1/queues/{task['id']}/pause", headers=owner.headers)
    assert pause.status_code == 200
    target.release()

    async def attempt_finished() -> bool:
        history = (
            await client.get(f"/v1/queues/{task['id']}/attempts", headers=owner.headers)
        ).json()
        return bool(history and history[0]["finishedAt"] is not None)

    await wait_until(attempt_finished)
    body = await state_of(client, owner, task["id"])
    assert body["state"] == "PAUSED" and body["statusCode"] == 0
    clock.advance(60)
    await idle(server)
    assert len(target.arrivals) == 1


async def waiting_to_retry(
    client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer, retry_interval_ms: int
) -> str:
    """Register a task whose target fails and return its id once it waits for a retry."""
    target.route("/fail", Reply(500, b"no"))
    response = await register_task(
        client,
        owner,
        {"url": target.url("/fail"), "method": "GET"},
        config={"executionDelay": 0, "retry": 5, "retryInterval": retry_interval_ms},
    )
    task_id: str = response.json()["id"]
    await wait_until(lambda: len(target.arrivals) == 1)

    async def retrying() -> bool:
        return (await state_of(client, owner, task_id))["statusCode"] == 500

    await wait_until(retrying)
    return task_id


async def test_revoke_during_retry_wait_stops_everything(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    task_id = await waiting_to_retry(client, owner, target, 1000)
    revoke = await client.patch(f"/v1/queues/{task_id}/revoke", headers=owner.headers)
    assert revoke.status_code == 200
    clock.advance(3600)
    await idle(server)
    assert len(target.arrivals) == 1
    assert (await state_of(client, owner, task_id))["state"] == "REVOKED"


async def test_execute_during_retry_wait_runs_the_next_attempt_now(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth, target: TargetServer
) -> None:
    task_id = await waiting_to_retry(client, owner, target, 3_600_000)
    await client.post(f"/v1/queues/{task_id}/execute", headers=owner.headers)
    await wait_until(lambda: len(target.arrivals) == 2, message="the retry, now")


@pytest.mark.parametrize(
    ("reply", "trace"),
    [
        (Reply(200, b"x" * 1_000_000), True),  # 1 MB
        (Reply(200, stream_bytes=1 << 40), True),  # endless, as far as the cap is concerned
        (Reply(200, stream_bytes=1 << 40), False),  # not traced: the download stops too
    ],
    ids=["1MB", "endless", "endless-untraced"],
)
async def test_a_response_over_the_cap_is_kept_truncated_and_the_task_succeeds(
    make_server: ServerFactory, target: TargetServer, reply: Reply, trace: bool
) -> None:
    target.route("/big", reply)
    server = await make_server(max_size_data_response=1024)
    async with client_for(server) as client:
        owner = await register_owner(client, "capped")
        task = (
            await register_task(
                client,
                owner,
                {"url": target.url("/big"), "method": "GET"},
                config={"executionDelay": 0, "retry": 3, "traceResponseData": trace},
            )
        ).json()

        async def finished() -> bool:
            return (await state_of(client, owner, task["id"]))["state"] != "RUNNING"

        await wait_until(finished, timeout=10)
        body = await state_of(client, owner, task["id"])
        assert (body["state"], body["statusCode"], body["truncated"]) == ("SUCCESS", 200, True)
        stored = None if body["response"] is None else base64.b64decode(str(body["response"]))
        assert stored == (b"x" * 1024 if trace else None)
        history = (
            await client.get(f"/v1/queues/{task['id']}/attempts", headers=owner.headers)
        ).json()
        assert [(a["statusCode"], a["truncated"], a["error"]) for a in history] == [
            (200, True, None)
        ]
    assert len(target.arrivals) == 1  # a long answer is not a reason to call again


async def test_https_with_a_ca_given_as_content(
    server: Server, client: httpx.AsyncClient, owner: OwnerAuth
) -> None:
    tls = TlsMaterial()
    async with TargetServer(tls.server_context("127.0.0.1")) as secure:
        secure.route("/secure", Reply(200, b"secret"))
        ca = base64.b64encode(tls.ca_pem).decode()
        task = (
            await register_task(
                client,
                owner,
                {"url": secure.url("/secure"), "method": "GET"},
                config={"executionDelay": 0, "ca": ca},
            )
        ).json()

        async def succeeded() -> bool:
            return (await state_of(client, owner, task["id"]))["state"] == "SUCCESS"

        await wait_until(succeeded)
        assert len(secure.arrivals) == 1


async def test_the_task_view_shows_retries_made_left_and_the_next_attempt(
    server: Server,
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    clock: FakeClock,
    target: TargetServer,
) -> None:
    target.route("/flaky", Reply(503, b"busy"))
    task = (
        await register_task(
            client,
            owner,
            {"url": target.url("/flaky"), "method": "GET"},
            config={"executionDelay": 0, "retry": 3, "retryInterval": 1000},
        )
    ).json()

    async def view() -> dict[str, object]:
        answer = await client.get(f"/v1/queues/{task['id']}", headers=owner.headers)
        body: dict[str, object] = answer.json()
        return body

    async def retried_once() -> bool:
        return (await view())["retryCount"] == 1

    await wait_until(retried_once, message="the first retry to be planned")
    body = await view()
    # retry n waits interval x n: the first retry is due 1 s after the first attempt ended
    assert body["retriesLeft"] == 2 and body["nextAttemptAt"] == clock.now_ms() + 1000
