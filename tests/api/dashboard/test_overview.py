"""The overview's (and the failures page's) alert incidents and flow-control keys, and the
figures kept fresh off the request path (OverviewCache) on a real store, with the fake
clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tasks_server.api.overview import OverviewCache, OverviewFigures, overview_figures
from tasks_server.app import Server
from tasks_server.models import FlowControl, TaskState
from tasks_server.store import Store
from tests.conftest import OwnerAuth, register_task
from tests.store.test_contract import make_owner, new_task
from tests.support.clock import FakeClock
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer() as server:
        server.route("/fail", Reply(500, b"broken"))
        server.route("/alerts", Reply(202, b""))
        yield server


async def create_rule(client: httpx.AsyncClient, owner: OwnerAuth, **rule: Any) -> str:
    response = await client.post("/v1/alerts", json=rule, headers=owner.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def fresh_overview(ui: httpx.AsyncClient, clock: FakeClock) -> httpx.Response:
    """The overview once the figures a page may show have aged out (the fake clock moves
    only when told)."""
    clock.advance(10)
    page = await ui.get("/ui/")
    assert page.status_code == 200
    return page


async def test_overview_without_alert_rules_says_so(ui: httpx.AsyncClient) -> None:
    page = await ui.get("/ui/")
    assert "No alert rules yet" in page.text
    assert "Busiest flow-control keys" in page.text


async def test_overview_shows_rules_all_clear_then_an_open_incident(
    server: Server,
    client: httpx.AsyncClient,
    ui: httpx.AsyncClient,
    owner: OwnerAuth,
    target: TargetServer,
    clock: FakeClock,
) -> None:
    rule_id = await create_rule(
        client,
        owner,
        name="hook-failures",
        on="task.failed",
        channel={"webhook": {"url": target.url("/alerts")}},
    )
    page = await fresh_overview(ui, clock)
    assert "1 alert rule watching, all clear" in page.text
    assert "Open alert incidents" not in (await ui.get("/ui/failures")).text
    response = await client.post(
        "/v1/queues/register?wait=30",
        json={
            "httpRequest": {"url": target.url("/fail"), "method": "GET"},
            "config": {"executionDelay": 0},
        },
        headers=owner.headers,
    )
    assert response.json()["state"] == "ERROR"

    async def incident_open() -> bool:
        incident = await server.store.get_incident(rule_id, "")
        return incident is not None and incident.is_open

    await wait_until(incident_open, message="the incident opens")
    page = await fresh_overview(ui, clock)
    assert "Open alert incidents" in page.text  # the chart's title
    assert "<strong>hook-failures</strong>: open since" in page.text
    assert "1 failure" in page.text and response.json()["id"] in page.text
    failures = await ui.get("/ui/failures")  # the failures page shows it above the tasks
    assert "Open alert incidents" in failures.text and "hook-failures" in failures.text
    assert f'href="/ui/tasks/{response.json()["id"]}">last failed task' in failures.text


async def test_overview_shows_the_busiest_flow_control_keys(
    client: httpx.AsyncClient, ui: httpx.AsyncClient, owner: OwnerAuth, clock: FakeClock
) -> None:
    for key, count in (("payments-key", 3), ("emails-key", 1)):
        for _ in range(count):
            response = await register_task(
                client,
                owner,
                {"url": "https://flow.example/hook", "method": "POST"},
                {"executionDelay": 3_600_000, "flowControl": {"key": key, "parallelism": 1}},
            )
            assert response.status_code == 201, response.text
    page = await fresh_overview(ui, clock)
    chart = page.text.split("Busiest flow-control keys", 1)[1]
    assert chart.index("payments-key") < chart.index("emails-key")
    assert ">3</text>" in chart and ">1</text>" in chart


async def test_the_admin_overview_names_each_keys_owner(store: Store, clock: FakeClock) -> None:
    owner = await make_owner(store)
    flow = FlowControl("nightly-key", parallelism=1)
    later = clock.now_ms() + 60_000
    await store.create_task(owner.id, new_task(later, flow_control=flow), clock.now_ms())
    figures = await overview_figures(store, None, clock.now_ms())
    assert figures.flow_keys == (("owner-one/nightly-key", 1),) and figures.rules is None
    mine = await overview_figures(store, owner.id, clock.now_ms())
    assert mine.flow_keys == (("nightly-key", 1),) and mine.rules == 0


# -- the figures kept fresh ---------------------------------------------------------------


class Counted:
    """overview_figures on a real store, counting how often it ran."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0
        self.finished = 0

    async def __call__(self, owner_id: str | None, now_ms: int) -> OverviewFigures:
        self.calls += 1
        try:
            return await overview_figures(self.store, owner_id, now_ms)
        finally:
            self.finished += 1


async def pending(store: Store, owner_id: str, clock: FakeClock) -> None:
    await store.create_task(owner_id, new_task(due=clock.now_ms() + 60_000), clock.now_ms())


async def test_a_page_gets_figures_at_most_max_age_old(store: Store, clock: FakeClock) -> None:
    owner = await make_owner(store)
    compute = Counted(store)
    cache = OverviewCache(compute, clock, refresh_s=2, max_age_s=5)
    first = await cache.get(owner.id)
    assert first.tasks.counts[TaskState.RUNNING] == 0 and compute.calls == 1
    await pending(store, owner.id, clock)
    clock.advance(4.9)
    assert (await cache.get(owner.id)) is first  # young enough: no work for the page
    clock.advance(0.2)
    later = await cache.get(owner.id)  # too old: the page computes them itself
    assert later.tasks.counts[TaskState.RUNNING] == 1 and compute.calls == 2


async def test_the_loop_refreshes_watched_scopes_and_forgets_idle_ones(
    store: Store, clock: FakeClock
) -> None:
    owner = await make_owner(store)
    compute = Counted(store)
    cache = OverviewCache(compute, clock, refresh_s=2, max_age_s=5, watch_s=60)
    await cache.get(owner.id)
    await cache.refresh_watched()
    assert compute.calls == 1  # still fresh
    await pending(store, owner.id, clock)
    clock.advance(2)
    await cache.refresh_watched()
    assert compute.calls == 2
    clock.advance(1)
    refreshed = await cache.get(owner.id)  # the page takes the loop's figures
    assert refreshed.tasks.counts[TaskState.RUNNING] == 1 and compute.calls == 2
    clock.advance(61)
    await cache.refresh_watched()  # nobody looked for a minute: forgotten, not recomputed
    assert compute.calls == 2
    await cache.get(owner.id)
    assert compute.calls == 3


async def test_the_running_loop_keeps_a_watched_scope_fresh(store: Store, clock: FakeClock) -> None:
    owner = await make_owner(store)
    compute = Counted(store)
    cache = OverviewCache(compute, clock, refresh_s=2, max_age_s=5)
    loop = asyncio.create_task(cache.run())
    try:
        await cache.get(owner.id)
        await pending(store, owner.id, clock)
        for _ in range(3):
            await asyncio.sleep(0)  # the loop parks on the clock
            clock.advance(1)
        await wait_until(lambda: compute.finished >= 2, message="the loop refreshed")
        figures = await cache.get(owner.id)
        assert figures.tasks.counts[TaskState.RUNNING] == 1
        assert compute.calls == 2  # the page did not compute
    finally:
        await cache.stop()
        await asyncio.wait_for(loop, 5)


async def test_concurrent_pages_share_one_computation(store: Store, clock: FakeClock) -> None:
    owner = await make_owner(store)
    compute = Counted(store)
    cache = OverviewCache(compute, clock)
    results = await asyncio.gather(*(cache.get(owner.id) for _ in range(5)))
    assert compute.calls == 1 and all(r is results[0] for r in results)


async def test_a_failing_store_reaches_the_page_and_the_loop_goes_on(
    store: Store, clock: FakeClock
) -> None:
    owner = await make_owner(store)
    compute = Counted(store)
    cache = OverviewCache(compute, clock, refresh_s=2, max_age_s=5)
    await cache.get(owner.id)
    await store.close()
    clock.advance(3)
    with pytest.raises(Exception):  # noqa: B017 - whatever the closed store raises
        await cache.refresh_watched()
    loop = asyncio.create_task(cache.run())
    try:
        await wait_until(lambda: compute.finished >= 3, message="the loop tried again")
        assert not loop.done()  # a failed refresh does not end the loop
    finally:
        await cache.stop()
        await asyncio.wait_for(loop, 5)
        await store.open()


async def test_slow_figures_are_recomputed_less_often(store: Store, clock: FakeClock) -> None:
    owner = await make_owner(store)
    compute = Counted(store)

    async def slow(owner_id: str | None, now_ms: int) -> OverviewFigures:
        clock.advance(2)  # the computation takes two seconds of the clock
        return await compute(owner_id, now_ms)

    cache = OverviewCache(slow, clock, refresh_s=2, max_age_s=5)
    await cache.get(owner.id)  # computed at t=0, ready at t=2
    clock.advance(3)  # t=5: five seconds after the start, one interval is six
    await cache.refresh_watched()
    assert compute.calls == 1
    clock.advance(1)
    await cache.refresh_watched()  # t=6: recomputed, ready at t=8
    assert compute.calls == 2
    clock.advance(7)  # figures of t=6 at t=15: nine seconds old, taken (at most 6 + 2 + 2)
    await cache.get(owner.id)
    assert compute.calls == 2
    clock.advance(2)  # t=17: eleven seconds old, too old even for slow figures
    await cache.get(owner.id)
    assert compute.calls == 3
