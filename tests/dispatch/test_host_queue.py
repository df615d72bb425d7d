"""The per-host queue: calls beyond a host's connection cap wait in the dispatcher, hold
no global slot, and their timeout starts only when they get a connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tasks_server.dispatch import CurlDispatcher, CurlSettings
from tasks_server.dispatch import curl as curl_module
from tasks_server.dispatch.egress import EgressPolicy
from tasks_server.models import Call, HttpRequest, Outcome, TaskConfig
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until


def call(url: str, timeout_ms: int) -> Call:
    return Call(
        request=HttpRequest(url=url, method="GET"),
        config=TaskConfig(),
        headers=(),
        timeout_ms=timeout_ms,
        max_body_bytes=1 << 16,
    )


@asynccontextmanager
async def curl(
    max_host_connections: int, max_connections: int = 64, host_wait_s: float = 300.0
) -> AsyncIterator[CurlDispatcher]:
    settings = CurlSettings(
        max_host_connections=max_host_connections,
        host_wait_s=host_wait_s,
        egress=EgressPolicy.parse(allow="127.0.0.1/32"),  # the targets are on loopback
    )
    dispatcher = CurlDispatcher(settings, max_connections=max_connections, close_grace_s=0.2)
    await dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.close()


async def all_outcomes(futures: list[asyncio.Future[Outcome]]) -> list[Outcome]:
    return list(await asyncio.wait_for(asyncio.gather(*futures), timeout=30))


async def queued_calls_all_succeed(delay_s: float, timeout_ms: int) -> None:
    """Six calls, a cap of two: the last pair waits two answers' time, longer than its
    own timeout, and still succeeds because its timeout starts with its connection."""
    async with TargetServer() as target, curl(max_host_connections=2) as dispatcher:
        target.route("/slow", Reply(200, b"fine", delay_s=delay_s))
        futures = [dispatcher.submit(call(target.url("/slow"), timeout_ms)) for _ in range(6)]
        assert dispatcher.waiting_for_host == 4
        outcomes = await all_outcomes(futures)
    assert [(o.status, o.error) for o in outcomes] == [(200, None)] * 6


async def test_calls_beyond_the_host_cap_get_their_whole_timeout() -> None:
    """Two calls hold the host's two slots until the four queued behind them have waited
    longer than their own timeout; then each of the four still gets that whole timeout.
    The queued calls' own answers come at once, so a busy machine cannot eat the margin."""
    timeout_ms = 500
    gate = asyncio.Event()
    async with TargetServer() as target, curl(max_host_connections=2) as dispatcher:
        target.route("/held", Reply(200, b"held", gate=gate))
        target.route("/ok", Reply(200, b"fine"))
        loop = asyncio.get_running_loop()
        held = [dispatcher.submit(call(target.url("/held"), 30_000)) for _ in range(2)]
        queued = [dispatcher.submit(call(target.url("/ok"), timeout_ms)) for _ in range(4)]
        queued_at = loop.time()
        assert dispatcher.waiting_for_host == 4
        await wait_until(
            lambda: loop.time() - queued_at > 2 * timeout_ms / 1000,
            message="the queued calls to wait past their timeout",
        )
        assert dispatcher.waiting_for_host == 4
        gate.set()
        outcomes = await all_outcomes(held + queued)
    assert [(o.status, o.error) for o in outcomes] == [(200, None)] * 6
    assert [o.body for o in outcomes] == [b"held"] * 2 + [b"fine"] * 4


@pytest.mark.slow
async def test_six_calls_to_a_3_s_target_with_a_cap_of_2_and_a_5_s_timeout_all_succeed() -> None:
    await queued_calls_all_succeed(delay_s=3.0, timeout_ms=5000)


async def test_a_hanging_host_does_not_delay_another_host() -> None:
    async with (
        TargetServer() as stuck,
        TargetServer() as healthy,
        curl(max_host_connections=1, max_connections=2) as dispatcher,
    ):
        stuck.route("/hang", Reply(hang=True))
        healthy.route("/ok", Reply(200, b"ok"))
        hanging = [dispatcher.submit(call(stuck.url("/hang"), 30_000)) for _ in range(5)]
        await wait_until(lambda: len(stuck.arrivals) == 1, message="the first hanging call")
        assert dispatcher.waiting_for_host == 4
        outcome = await asyncio.wait_for(dispatcher.submit(call(healthy.url("/ok"), 5000)), 5)
        assert outcome.status == 200
        assert len(stuck.arrivals) == 1  # still one connection to the stuck host
        for future in hanging:
            future.cancel()


async def test_a_call_that_never_gets_a_slot_says_so() -> None:
    async with TargetServer() as stuck, curl(max_host_connections=1, host_wait_s=0.2) as dispatcher:
        stuck.route("/hang", Reply(hang=True))
        first = dispatcher.submit(call(stuck.url("/hang"), 30_000))
        second = await asyncio.wait_for(dispatcher.submit(call(stuck.url("/hang"), 30_000)), 5)
        assert second.status == 0 and second.timed_out
        assert second.error == (
            f"no connection slot to host 127.0.0.1:{stuck.port} within 0.2 s "
            "(all MAX_HOST_CONNECTIONS=1 connections to it were busy)"
        )
        first.cancel()
        await wait_until(lambda: dispatcher.in_flight == 0, message="the cancelled call to go")


async def test_a_host_queue_drains_only_while_its_calls_get_their_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls queued behind a host whose calls hang are not draining; once the host
    answers and the queued calls get their slots, the queue is draining until it is
    empty. (The moment a move counts for is stretched: a busy machine cannot end it.)"""
    monkeypatch.setattr(curl_module, "DRAINING_S", 3600.0)
    gate = asyncio.Event()
    async with TargetServer() as target, curl(max_host_connections=1) as dispatcher:
        target.route("/held", Reply(200, b"held", gate=gate))
        futures = [dispatcher.submit(call(target.url("/held"), 30_000)) for _ in range(3)]
        assert dispatcher.waiting_for_host == 2
        assert not dispatcher.draining_host_queues  # nothing has left the queue
        await wait_until(lambda: len(target.arrivals) == 1, message="the first call")
        assert not dispatcher.draining_host_queues
        seen: list[bool] = []

        def look(future: asyncio.Future[Outcome]) -> None:
            seen.append(dispatcher.draining_host_queues)

        futures[0].add_done_callback(look)  # runs after the next call took the slot
        gate.set()
        await all_outcomes(futures)
        assert seen == [True]
        assert not dispatcher.draining_host_queues  # the queue is empty
