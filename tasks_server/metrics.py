"""Prometheus metrics: one registry per app, fed by hooks of the scheduler, the HTTP edge
and the store, and rendered as Prometheus text for ``GET /metrics``.

No label carries an owner or a task id, so the number of series stays fixed however many
owners and tasks there are. The per-host series (``tasks_host_*``) follow the destination
hosts the governor keeps state for: busy ones, throttled ones, and those with limits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .alerts.service import AlertService
    from .clock import Clock
    from .dispatch.hosts import HostGovernor
    from .engine.scheduler import Scheduler
    from .models import Attempt, Result

REGISTER_ROUTE = ("POST", "/v1/queues/register", 201)

# seconds; scheduler lateness is small when healthy, so the low end is fine-grained
_LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_RECENT_STARTS = 4096


def status_class(status: int) -> str:
    """``2xx`` … ``5xx`` for an HTTP status, ``none`` when no response arrived."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


class _SchedulerCollector(Collector):
    """Reads the scheduler's own counters at scrape time, so the figures are the ones it
    counted (only results the store accepted) and nothing is double-kept."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        stats = self._scheduler.stats
        counters = (
            (
                "tasks_attempts_started",
                "Attempts claimed and handed to the dispatcher",
                stats.claimed,
            ),
            ("tasks_succeeded", "Tasks that ended in SUCCESS", stats.succeeded),
            ("tasks_failed", "Tasks that ended in ERROR after their last attempt", stats.failed),
            ("tasks_retried", "Failed attempts followed by a planned retry", stats.retried),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        yield GaugeMetricFamily(
            "tasks_attempts_in_flight",
            "Outgoing calls started and not yet finished",
            value=self._scheduler.in_flight,
        )
        yield GaugeMetricFamily(
            "tasks_armed",
            "Tasks due within the scheduler's in-memory horizon",
            value=self._scheduler.armed,
        )


class _AlertCollector(Collector):
    """Alert deliveries by status (a failed or suppressed one shows here and in the log)
    and outcomes the alert queue had to drop."""

    def __init__(self, alerts: AlertService) -> None:
        self._alerts = alerts

    def collect(self) -> Iterator[Metric]:
        deliveries = CounterMetricFamily(
            "tasks_alert_deliveries", "Alert messages by delivery status", labels=["status"]
        )
        for status in ("sent", "queued", "failed", "suppressed"):
            deliveries.add_metric([status], self._alerts.stats.deliveries.get(status, 0))
        yield deliveries
        yield CounterMetricFamily(
            "tasks_alert_outcomes_dropped",
            "Outcomes not judged against alert rules because the queue was full",
            value=self._alerts.stats.dropped,
        )


_CIRCUIT_VALUES = {"closed": 0, "half-open": 1, "open": 2}


class _HostCollector(Collector):
    """Destination backpressure per host, read from the governor at scrape time."""

    def __init__(self, hosts: HostGovernor, clock: Clock) -> None:
        self._hosts = hosts
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        views = self._hosts.views(self._clock.now_ms())
        gauges = (
            ("tasks_host_concurrency_limit", "Calls that may run at once to the host now (AIMD)"),
            ("tasks_host_in_flight", "Calls to the host running now"),
            ("tasks_host_waiting", "Calls waiting in the host's queue"),
            ("tasks_host_circuit_state", "The host's circuit: 0 closed, 1 half-open, 2 open"),
        )
        counters = (
            ("tasks_host_throttled", "429 and 503 answers from the host"),
            ("tasks_host_circuit_opened", "Times the host's circuit opened"),
        )
        families = {
            name: GaugeMetricFamily(name, text, labels=["host"]) for name, text in gauges
        } | {name: CounterMetricFamily(name, text, labels=["host"]) for name, text in counters}
        for view in views:
            values = (
                view.concurrency,
                view.in_flight,
                view.waiting,
                _CIRCUIT_VALUES[view.circuit.value],
                view.throttled,
                view.circuit_opened,
            )
            for family, value in zip(families.values(), values, strict=True):
                family.add_metric([view.host], value)
        yield from families.values()


class Metrics:
    """The registry of one app and the hooks that feed it. Every hook is cheap, never
    raises and may be called from the store's writer thread (``on_commit``)."""

    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # exact quantiles for the dashboard over the last starts (the histogram has buckets)
        self.recent_lateness_ms: deque[float] = deque(maxlen=_RECENT_STARTS)
        registry = self.registry
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.registered = Counter(
            "tasks_registered", "Tasks accepted by POST /v1/queues/register", registry=registry
        )
        self.requests = Histogram(
            "tasks_http_request_duration_seconds",
            "API requests by method, route template and status",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.lateness = Histogram(
            "tasks_scheduler_lateness_seconds",
            "How late attempts started: start time minus due time",
            buckets=_LATENESS_BUCKETS,
            registry=registry,
        )
        self.dispatch = Histogram(
            "tasks_dispatch_duration_seconds",
            "Duration of outgoing calls, by status class of the target's answer",
            ["status_class"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.commit = Histogram(
            "tasks_db_commit_duration_seconds",
            "SQLite write transactions, BEGIN to COMMIT (one per group-commit batch)",
            buckets=_COMMIT_BUCKETS,
            registry=registry,
        )
        self.commit_batch = Histogram(
            "tasks_db_commit_batch_size",
            "Operations written by one commit",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        # labelled children, looked up once each: labels() costs more than observe()
        self._request_children: dict[tuple[str, str, str], Histogram] = {}
        self._dispatch_children: dict[str, Histogram] = {}
        self.pending = Gauge(
            "tasks_pending",
            "Tasks not yet finished (RUNNING or PAUSED), read from the store at scrape time",
            registry=registry,
        )

    # -- wiring -------------------------------------------------------------------------

    def watch_scheduler(self, scheduler: Scheduler) -> None:
        """Export the scheduler's counters and gauges and observe every finished attempt."""
        self.registry.register(_SchedulerCollector(scheduler))
        scheduler.stats.observe = self.on_attempt
        scheduler.stats.on_start = self.on_start

    def watch_alerts(self, alerts: AlertService) -> None:
        self.registry.register(_AlertCollector(alerts))

    def watch_hosts(self, hosts: HostGovernor, clock: Clock) -> None:
        self.registry.register(_HostCollector(hosts, clock))

    # -- hooks --------------------------------------------------------------------------

    def on_request(self, method: str, route: str, status: int, elapsed_ms: float) -> None:
        """The edge's per-request callback; unmatched paths share one ``route`` label."""
        key = (method, route or "unmatched", str(status))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.observe(elapsed_ms / 1000)
        if (method, route, status) == REGISTER_ROUTE:
            self.registered.inc()

    def on_attempt(self, attempt: Attempt, result: Result) -> None:
        """The scheduler's observe hook: dispatch latency."""
        outcome = result.outcome
        status = status_class(outcome.status)
        child = self._dispatch_children.get(status)
        if child is None:
            child = self._dispatch_children[status] = self.dispatch.labels(status)
        child.observe(outcome.total_ms / 1000)

    def on_start(self, lateness_ms: float) -> None:
        """The scheduler's start hook: how late after its due time an attempt started."""
        self.lateness.observe(max(lateness_ms, 0.0) / 1000)
        self.recent_lateness_ms.append(max(lateness_ms, 0.0))

    def lateness_quantiles(self) -> tuple[float, float] | None:
        """p50 and p99 lateness (ms) of the most recent starts, or None before any."""
        recent = sorted(self.recent_lateness_ms)
        if not recent:
            return None
        return recent[len(recent) // 2], recent[min(len(recent) - 1, len(recent) * 99 // 100)]

    def on_commit(self, seconds: float, batch_size: int) -> None:
        self.commit.observe(seconds)
        self.commit_batch.observe(batch_size)

    # -- exposition ---------------------------------------------------------------------

    async def render(self, count_pending: Callable[[], Awaitable[int]] | None = None) -> bytes:
        """The Prometheus text exposition of every metric, after refreshing the gauges
        that must be read from elsewhere."""
        if count_pending is not None:
            self.pending.set(await count_pending())
        return generate_latest(self.registry)
