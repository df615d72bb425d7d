"""``GET /metrics``: Prometheus text from the app's own registry, fed by the edge, the
scheduler and the store; optional bearer protection with METRICS_KEY."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasks_server.config import Settings
from tasks_server.metrics import Metrics, status_class
from tests.conftest import ServerFactory, client_for, register_owner, register_task
from tests.support.clock import FakeClock
from tests.support.recording import RecordingDispatcher
from tests.support.waiting import wait_until

METRICS_KEY = "metrics-key-0123456789abcdef"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Scraped without a key here; the key rules have tests of their own below."""
    return dataclasses.replace(settings, metrics_public=True)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as (name, sorted labels) → value; parsing fails on a malformed text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(
    client: httpx.AsyncClient, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


async def test_every_documented_metric_is_exported(client: httpx.AsyncClient) -> None:
    names = {name for name, _ in await scrape(client)}
    for expected in (
        "tasks_registered_total",
        "tasks_attempts_started_total",
        "tasks_succeeded_total",
        "tasks_failed_total",
        "tasks_retried_total",
        "tasks_attempts_in_flight",
        "tasks_armed",
        "tasks_pending",
        "tasks_scheduler_lateness_seconds_count",
        "tasks_db_commit_duration_seconds_count",
        "tasks_db_commit_batch_size_count",
        "process_resident_memory_bytes",
    ):
        assert expected in names


async def test_a_task_moves_the_counters_and_histograms(
    make_server: ServerFactory, clock: FakeClock
) -> None:
    dispatcher = RecordingDispatcher()
    server = await make_server(dispatcher)
    async with client_for(server) as client:
        owner = await register_owner(client, "metrics-owner")
        task = (await register_task(client, owner, config={"executionDelay": 1000})).json()
        before = await scrape(client)
        assert value(before, "tasks_registered_total") == 1
        assert value(before, "tasks_pending") == 1
        assert value(before, "tasks_db_commit_duration_seconds_count") >= 2

        clock.advance(1.5)
        await wait_until(lambda: server.scheduler.stats.succeeded == 1, message="the attempt")
        after = await scrape(client)
    assert value(after, "tasks_succeeded_total") == 1
    assert value(after, "tasks_attempts_started_total") == 1
    assert value(after, "tasks_pending") == 0
    assert value(after, "tasks_dispatch_duration_seconds_count", status_class="2xx") == 1
    lateness_sum = value(after, "tasks_scheduler_lateness_seconds_sum")
    assert value(after, "tasks_scheduler_lateness_seconds_count") == 1
    assert lateness_sum == pytest.approx(0.5, abs=0.01)  # due at +1 s, started at +1.5 s
    route = "/v1/queues/register"
    assert (
        value(
            after,
            "tasks_http_request_duration_seconds_count",
            method="POST",
            route=route,
            status="201",
        )
        == 1
    )
    text = "\n".join(name + str(labels) for name, labels in after)
    assert owner.id not in text and task["id"] not in text  # no per-owner or per-task series


async def test_unmatched_paths_share_one_route_label(client: httpx.AsyncClient) -> None:
    await client.get("/no/such/path/1")
    await client.get("/no/such/path/2")
    found = await scrape(client)
    labels = dict(method="GET", route="unmatched", status="404")
    assert value(found, "tasks_http_request_duration_seconds_count", **labels) == 2


async def test_metrics_key_requires_the_bearer(make_server: ServerFactory) -> None:
    server = await make_server(metrics_key=METRICS_KEY)
    async with client_for(server) as client:
        assert (await client.get("/metrics")).status_code == 401
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert await scrape(client, Authorization=f"Bearer {METRICS_KEY}")


async def test_metrics_are_closed_without_a_key_unless_public(make_server: ServerFactory) -> None:
    closed = await make_server(metrics_public=False)
    async with client_for(closed) as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 403 and "METRICS_KEY" in refused.json()["message"]
    both = await make_server(metrics_public=True, metrics_key=METRICS_KEY)  # the key wins
    async with client_for(both) as client:
        assert (await client.get("/metrics")).status_code == 401


async def test_each_app_has_its_own_registry(make_server: ServerFactory, tmp_path: Path) -> None:
    first = await make_server()
    second = await make_server(path_sqlite=str(tmp_path / "second.db"))
    assert first.metrics is not None and second.metrics is not None
    assert first.metrics.registry is not second.metrics.registry


def test_lateness_is_observed_as_attempts_start() -> None:
    metrics = Metrics(process=False)
    metrics.on_start(5.0)
    metrics.on_start(15.0)
    assert asyncio.run(metrics.render()).count(b"tasks_scheduler_lateness_seconds_count 2.0") == 1


def test_status_classes() -> None:
    assert [status_class(s) for s in (0, 200, 302, 404, 503, 999)] == [
        "none", "2xx", "3xx", "4xx", "5xx", "none",
    ]  # fmt: skip
