"""Destination backpressure with the running server, a fake clock and real targets: a 429
with Retry-After delays the task's retry and halves the host's concurrency; failures open
the host's circuit, which is probed with one call after the cool-down and closes when the
probe succeeds; an administrator's override caps the calls a host sees at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tasks_server.app import Server
from tests.conftest import ServerFactory, client_for, register_owner, register_task
from tests.support.clock import FakeClock
from tests.support.targets import Arrival, Reply, TargetServer
from tests.support.waiting import wait_until

ADMIN = "admin-key-0123456789abcdef"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


class ScriptedSink:
    """An HTTP target answering each request with the next scripted status; ``None``
    holds the request until ``release()`` and then answers 200. Records how many
    requests it was holding when each one arrived."""

    def __init__(self, script: list[int | None], then: int = 200) -> None:
        self._script = list(script)
        self._then = then
        self.arrived = 0
        self.active = 0
        self.active_at_arrival: list[int] = []
        self._gate = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> ScriptedSink:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._gate.set()
        assert self._server is not None
        self._server.close()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self) -> str:
        return f"http://{self.host}/hook"

    def release(self) -> None:
        self._gate.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.active_at_arrival.append(self.active)
                self.arrived += 1
                status = self._script.pop(0) if self._script else self._then
                if status is None:
                    self.active += 1
                    await self._gate.wait()
                    self.active -= 1
                    status = 200
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        yield server


async def settled(server: Server) -> None:
    """The loop has parked with nothing left to start at this instant."""
    for _ in range(5):
        await asyncio.sleep(0)
    await wait_until(
        lambda: server.scheduler.idle.is_set() and server.scheduler.in_flight == 0,
        message="the scheduler to park",
    )


async def host_view(client: httpx.AsyncClient, host: str) -> dict[str, Any]:
    response = await client.get(f"/v1/hosts/{host}", headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_429_with_retry_after_delays_the_retry_and_halves_the_host(
    make_server: ServerFactory, clock: FakeClock, target: TargetServer
) -> None:
    server = await make_server(admin_key=ADMIN, owner_registration="open")
    answers = iter([Reply(429, b"slow down", (("Retry-After", "2"),))])

    def busy_once(arrival: Arrival) -> Reply:
        return next(answers, Reply(200))

    target.route("/busy", busy_once)
    async with client_for(server) as client:
        owner = await register_owner(client, "owner-one")
        created = await register_task(
            client,
            owner,
            {"url": target.url("/busy"), "method": "POST"},
            config={"retry": 3, "retryInterval": 100, "executionDelay": 0},
        )
        assert created.status_code == 201
        await wait_until(lambda: server.scheduler.stats.retried == 1, message="the 429")
        host = f"127.0.0.1:{target.port}"
        view = await host_view(client, host)
        assert view["maxConcurrency"] == 256
        assert view["concurrency"] == 128  # halved
        assert view["lastThrottled"] == {"status": 429, "at": clock.now_ms()}
        assert view["throttled"] == 1
        listed = (await client.get("/v1/hosts", headers=ADMIN_HEADERS)).json()
        assert [h["host"] for h in listed] == [host]
        clock.advance(1.9)
        await settled(server)
        assert len(target.arrivals) == 1  # not before the 2 s the target asked for
        clock.advance(0.1)
        await wait_until(lambda: server.scheduler.stats.succeeded == 1, message="the retry")
        assert len(target.arrivals) == 2
        assert target.arrivals[1].header("X-Tasks-Retry-Count") == "1"
        metrics = (await client.get("/metrics")).text
        assert f'tasks_host_throttled_total{{host="{host}"}} 1.0' in metrics
        assert f'tasks_host_concurrency_limit{{host="{host}"}} 128.0' in metrics


async def test_the_circuit_opens_after_n_failures_probes_once_and_closes(
    make_server: ServerFactory, clock: FakeClock
) -> None:
    server = await make_server(
        admin_key=ADMIN,
        owner_registration="open",
        host_circuit_failures=3,
        host_circuit_cooldown_s=10,
    )
    async with ScriptedSink([500, 500, 500, None]) as sink, client_for(server) as client:
        owner = await register_owner(client, "owner-one")

        async def register(count: int) -> None:
            for _ in range(count):
                created = await register_task(
                    client,
                    owner,
                    {"url": sink.url(), "method": "POST", "data": "x"},
                    config={"retry": 0, "executionDelay": 0},
                )
                assert created.status_code == 201

        await register(3)
        await wait_until(lambda: server.scheduler.stats.failed == 3, message="three failures")
        view = await host_view(client, sink.host)
        assert view["circuit"] == "open" and view["consecutiveFailures"] == 3
        assert view["circuitReopensAt"] == clock.now_ms() + 10_000
        assert view["lastFailure"] == "HTTP 500"
        await register(3)
        assert server.hosts is not None
        await wait_until(
            lambda: (
                server.hosts is not None
                and server.hosts.view(sink.host, clock.now_ms()).waiting == 3
            ),
            message="three calls held at the host",
        )
        view = await host_view(client, sink.host)
        assert view["waiting"] == 3 and sink.arrived == 3
        assert view["waitingReason"].startswith("circuit open after 3 consecutive failures")
        clock.advance(10)
        await wait_until(lambda: sink.arrived == 4, message="the probe")
        view = await host_view(client, sink.host)
        assert view["circuit"] == "half-open"
        assert (view["inFlight"], view["waiting"]) == (1, 2)  # exactly one call: the probe
        assert view["waitingReason"] == "circuit half-open: one probe call in flight"
        sink.release()
        await wait_until(lambda: server.scheduler.stats.succeeded == 3, message="the rest")
        assert sink.arrived == 6
        assert sink.active_at_arrival[4] == 0  # the next call left after the probe's answer
        view = await host_view(client, sink.host)
        assert view["circuit"] == "closed" and view["consecutiveFailures"] == 0
        assert view["circuitOpened"] == 1


async def test_an_override_caps_the_calls_a_host_sees_and_survives_a_restart(
    make_server: ServerFactory, clock: FakeClock
) -> None:
    server = await make_server(admin_key=ADMIN, owner_registration="open")
    async with ScriptedSink([None] * 5) as sink, client_for(server) as client:
        owner = await register_owner(client, "owner-one")
        patched = await client.patch(
            f"/v1/hosts/{sink.host}", json={"maxConcurrency": 2}, headers=ADMIN_HEADERS
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["override"] == {
            "host": sink.host,
            "maxConcurrency": 2,
            "maxRate": None,
            "updatedAt": clock.now_ms(),
        }
        for _ in range(5):
            await register_task(
                client,
                owner,
                {"url": sink.url(), "method": "POST", "data": "x"},
                config={"retry": 0, "executionDelay": 0},
            )
        await wait_until(lambda: sink.arrived == 2, message="two calls")
        await wait_until(
            lambda: (
                server.hosts is not None
                and server.hosts.view(sink.host, clock.now_ms()).waiting == 3
            ),
            message="three calls waiting",
        )
        view = await host_view(client, sink.host)
        assert (view["concurrency"], view["inFlight"], view["waiting"]) == (2, 2, 3)
        assert view["waitingReason"] == "concurrency limit 2 reached"
        assert sink.arrived == 2
        sink.release()
        await wait_until(lambda: server.scheduler.stats.succeeded == 5, message="all five")
        assert max(sink.active_at_arrival) <= 1  # never a third call beside two held ones
    again = await make_server(admin_key=ADMIN, owner_registration="open")
    async with client_for(again) as client:
        view = await host_view(client, sink.host)
        assert view["override"]["maxConcurrency"] == 2 and view["maxConcurrency"] == 2


async def test_a_host_rate_spaces_calls_on_the_clock(
    make_server: ServerFactory, clock: FakeClock, target: TargetServer
) -> None:
    server = await make_server(admin_key=ADMIN, owner_registration="open", host_max_rate=1.0)
    target.route("/r", Reply(200))
    host = f"127.0.0.1:{target.port}"
    async with client_for(server) as client:
        owner = await register_owner(client, "owner-one")
        for _ in range(3):
            await register_task(
                client,
                owner,
                {"url": target.url("/r"), "method": "GET"},
                config={"executionDelay": 0},
            )
        await wait_until(lambda: len(target.arrivals) == 1, message="the first call")
        await wait_until(
            lambda: (
                server.hosts is not None and server.hosts.view(host, clock.now_ms()).waiting == 2
            ),
            message="two calls waiting for a token",
        )
        view = await host_view(client, host)
        assert view["maxRate"] == 1.0
        assert view["waitingReason"] == "rate limit 1 calls/s reached"
        clock.advance(0.9)
        for _ in range(20):  # the dispatcher's wake-up is due at 1 s: nothing moves here
            await asyncio.sleep(0)
        await wait_until(lambda: server.scheduler.idle.is_set(), message="the loop to park")
        assert len(target.arrivals) == 1
        clock.advance(0.1)
        await wait_until(lambda: len(target.arrivals) == 2, message="the second call, 1 s later")
        clock.advance(1)
        await wait_until(lambda: len(target.arrivals) == 3, message="the third call")
