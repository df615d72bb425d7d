"""What the handlers are given: the services the composition root wires for the API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from starlette.requests import Request

from ..alerts.service import AlertService
from ..clock import Clock
from ..config import Settings
from ..dispatch.egress import EgressPolicy
from ..dispatch.hosts import HostGovernor
from ..engine.waiters import FinalWaiters
from ..models import FlowControl, HttpRequest, TaskConfig
from ..store import Store
from .auth import Authenticator

if TYPE_CHECKING:
    from .overview import OverviewCache


class Notifier(Protocol):
    """What the API may tell the scheduler: in-memory calls, no I/O, never blocking."""

    def notify(
        self,
        task_id: str,
        due_at_ms: int,
        priority: int = 0,
        flow: tuple[str, str] | None = None,
    ) -> None: ...

    def configure_flow(
        self, owner_id: str, flow: FlowControl, paused: bool | None = None
    ) -> None: ...

    def flow_in_flight(self, flow: tuple[str, str]) -> int: ...

    def forget(self, task_id: str) -> None: ...

    def wait_final(self, task_id: str) -> asyncio.Future[None]: ...

    def stop_waiting(self, task_id: str, future: asyncio.Future[None]) -> None: ...


class ScheduleNotifier(Protocol):
    """What the API may tell the schedule runner: a schedule is next due at this time."""

    def notify(self, next_at_ms: int | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: Store
    clock: Clock
    scheduler: Notifier
    auth: Authenticator
    unsupported: Callable[[HttpRequest, TaskConfig], list[str]]
    # check name → None when fine, else what is wrong
    readiness: Callable[[], Awaitable[dict[str, str | None]]]
    metrics_text: Callable[[], Awaitable[bytes]] | None = None  # Prometheus exposition
    egress: EgressPolicy = field(default_factory=EgressPolicy)  # where calls may go
    schedules: ScheduleNotifier | None = None  # the recurring-schedule runner
    alerts: AlertService | None = None  # judges outcomes against alert rules, sends
    runs: FinalWaiters | None = None  # woken when a workflow run ends
    # the engine's live figures for the dashboard: in_flight, lateness_p50_ms, lateness_p99_ms
    engine_figures: Callable[[], dict[str, float | None]] | None = None
    hosts: HostGovernor | None = None  # destination backpressure (api/hosts.py reads it)
    # the dashboard overview's store figures, kept fresh in the background
    overview: OverviewCache | None = None


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
