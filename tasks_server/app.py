"""Composition root: build(settings, clock) wires the store, scheduler, dispatcher and the
Starlette app; the lifespan starts them in dependency order and stops them in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from . import cipher_key, dispatch
from .alerts.email import SmtpMailer, SmtpSettings
from .alerts.service import AlertOptions, AlertService
from .api import create_app, exception_handlers
from .api.auth import Authenticator
from .api.buckets import TokenBuckets
from .api.edge import Edge, Throttle
from .api.outgoing import Destinations
from .api.overview import OverviewCache, overview_figures
from .api.services import Services
from .api.step_tasks import step_arming, step_builder
from .backup.job import BackupJob
from .clock import Clock, SystemClock
from .config import Settings
from .dispatch.egress import EgressPolicy
from .dispatch.hosts import HostDefaults, HostGovernor
from .engine.retention import RetentionJob
from .engine.scheduler import Scheduler, SchedulerOptions
from .engine.waiters import FinalWaiters
from .metrics import Metrics
from .models import HttpRequest, TaskConfig
from .processes import Channels, Election, Relay
from .schedules.runner import ScheduleRunner
from .sealing import Sealer
from .store import Store
from .store.postgres import PostgresStore
from .store.sqlite import DatabaseLock, SqliteStore
from .workflows.pacing import StepPacer

logger = logging.getLogger(__name__)


class Fatal:
    """Where a background loop reports the error it died of. The server cannot serve
    without its loops, so the first report makes it stop (the CLI listens and makes
    uvicorn exit) and the process ends with a non-zero code."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._listeners: list[Callable[[], None]] = []

    def listen(self, stop: Callable[[], None]) -> None:
        self._listeners.append(stop)

    def report(self, name: str, error: BaseException) -> None:
        logger.critical("%s stopped; shutting down", name, exc_info=error)
        if self.error is None:
            self.error = error
        for stop in self._listeners:
            stop()


@dataclass(frozen=True, slots=True)
class Server:
    """Everything ``build`` made, so tests and the CLI can reach the parts."""

    settings: Settings
    clock: Clock
    store: Store
    dispatcher: dispatch.Dispatcher
    scheduler: Scheduler
    schedules: ScheduleRunner  # recurring schedules → tasks
    backup: BackupJob | None  # scheduled backups, when a cron or interval is set
    metrics: Metrics
    app: Starlette
    asgi: Edge  # the app behind the edge (routing, errors, limits): what uvicorn serves
    fatal: Fatal = field(default_factory=Fatal)
    alerts: AlertService | None = None  # judges outcomes against alert rules, sends
    retention: RetentionJob | None = None  # RETENTION_FINISHED_DAYS: old finished tasks go
    hosts: HostGovernor | None = None  # destination backpressure, per host
    overview: OverviewCache | None = None  # the dashboard overview's figures, kept fresh
    # API_PROCESSES > 1: the wake-ups between the processes, and who runs the engine
    relay: Relay | None = None
    election: Election | None = None


def build(
    settings: Settings,
    clock: Clock | None = None,
    dispatcher: dispatch.Dispatcher | None = None,
    channels: Channels | None = None,
) -> Server:
    """``channels``: this process is one of API_PROCESSES (processes.py)."""
    clock = clock or SystemClock()
    metrics = Metrics()
    store = make_store(settings, metrics)
    hosts = HostGovernor(host_defaults(settings))
    dispatcher = dispatcher or _curl_dispatcher(settings, hosts, clock)
    scheduler = Scheduler(store, dispatcher, clock, _scheduler_options(settings))
    metrics.watch_scheduler(scheduler)
    metrics.watch_hosts(hosts, clock)
    runs = FinalWaiters()
    relay = (
        None if channels is None else Relay(scheduler, runs, channels, clock, settings.horizon_ms)
    )
    tasks: Scheduler | Relay = scheduler if relay is None else relay  # what wakes the engine
    schedules = ScheduleRunner(store, tasks, clock)
    alerts = _alert_service(settings, store, clock, tasks)
    scheduler.on_recorded = alerts.observe
    metrics.watch_alerts(alerts)
    unsupported = _unsupported_fields()
    # new workflow runs wait while the steps in progress have no room (a step released
    # by its dependencies never does); PostgreSQL releases steps without saying so
    pacer = StepPacer()
    if not settings.uses_postgres:
        scheduler.start_gate = pacer
    store.watch_workflows(
        step_builder(settings, unsupported, egress_policy(settings)),
        step_arming(tasks, pacer),
        runs.wake,
        tasks.free_claims,
        alerts.observe_run,
    )
    services = Services(
        settings=settings,
        store=store,
        clock=clock,
        scheduler=tasks,
        auth=Authenticator(store, clock, settings.request_budget, _owner_cache_s(settings, store)),
        unsupported=unsupported,
        readiness=lambda: _readiness(settings, store, scheduler, relay),
        metrics_text=lambda: metrics.render(lambda: _count_pending(store)),
        schedules=schedules if relay is None else relay.schedule_wakeups,
        runs=runs,
        destinations=Destinations(egress_policy(settings), store, clock),
        engine_figures=lambda: _engine_figures(scheduler, metrics),
        alerts=alerts,
        hosts=hosts,
        overview=_overview_cache(settings, store, clock),
    )
    if relay is not None:
        relay.schedules = schedules
    server: Server  # the lifespan runs after build has returned, when `server` exists
    app = create_app(services, lifespan=lambda _app: _lifespan(server))
    server = Server(
        settings=settings,
        clock=clock,
        store=store,
        dispatcher=dispatcher,
        scheduler=scheduler,
        schedules=schedules,
        backup=BackupJob(settings, clock) if settings.backup_is_scheduled else None,
        retention=(
            RetentionJob(store, clock, settings.retention_finished_days)
            if settings.retention_finished_days
            else None
        ),
        metrics=metrics,
        overview=services.overview,
        app=app,
        asgi=Edge(
            app,
            clock,
            _throttle(settings),
            log_requests=settings.log,
            on_request=metrics.on_request,
            # the larger of the two limits: each route checks its own while reading
            max_body_bytes=max(settings.max_size_body_request, settings.max_size_body_batch),
            auth_failures=(
                TokenBuckets(settings.auth_failures_per_minute)
                if settings.auth_failures_per_minute
                else None
            ),
            error_handlers=exception_handlers(),
        ),
        alerts=alerts,
        hosts=hosts,
        relay=relay,
        election=None if channels is None else Election(settings.database_path),
    )
    return server


def _alert_service(
    settings: Settings, store: Store, clock: Clock, tasks: Scheduler | Relay
) -> AlertService:
    mailer = None
    if settings.smtp_host:
        mailer = SmtpMailer(
            SmtpSettings(
                host=settings.smtp_host,
                port=settings.smtp_port,
                sender=settings.smtp_from,
                user=settings.smtp_user,
                password=settings.smtp_password,
                tls=settings.smtp_tls,
                ca_file=settings.smtp_ca_file,
            )
        )
    options = AlertOptions(
        public_url=settings.public_url or f"http://{settings.host}:{settings.port}",
        max_per_hour=settings.alerts_max_per_hour,
        digest_interval_ms=settings.alert_digest_interval_s * 1000,
    )
    return AlertService(store, clock, tasks, options, mailer)


def make_store(settings: Settings, metrics: Metrics | None = None) -> Store:
    """PostgreSQL when DATABASE_URL is set (several nodes may share it), else SQLite."""
    if settings.database_url is not None:
        # every node shares the database, so the key is CIPHER_KEY itself (no key file)
        sealer = Sealer(cipher_key.shared(settings.cipher_key))
        return PostgresStore(
            settings.database_url,
            sealer,
            lease_ms=settings.lease_ms,
            pool_size=settings.pg_pool_size,
            wake_horizon_ms=settings.horizon_ms,
            keep_attempts=settings.attempts_kept,
            claim_lookahead_ms=settings.lookahead_ms,
        )
    return SqliteStore(
        settings.database_path,
        Sealer(cipher_key.resolve(settings.cipher_key, settings.database_path)),
        settings.sqlite_synchronous,
        on_commit=None if metrics is None else metrics.on_commit,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        keep_attempts=settings.attempts_kept,
        shared=settings.api_processes > 1,
    )


def egress_policy(settings: Settings) -> EgressPolicy:
    """The egress settings as a policy (config.py has checked every entry)."""
    return EgressPolicy.parse(
        settings.egress_allow, settings.egress_deny, settings.egress_proxies, settings.egress_ports
    )


def host_defaults(settings: Settings) -> HostDefaults:
    """The server-wide destination limits (README.md, "Destination backpressure")."""
    return HostDefaults(
        max_concurrency=settings.host_max_concurrency,
        max_rate=settings.host_max_rate,
        max_connections=settings.max_host_connections,
        circuit_failures=settings.host_circuit_failures,
        circuit_cooldown_ms=round(settings.host_circuit_cooldown_s * 1000),
    )


def _curl_dispatcher(settings: Settings, hosts: HostGovernor, clock: Clock) -> dispatch.Dispatcher:
    curl = dispatch.CurlSettings(
        cert_dir=settings.cert_dir,
        max_host_connections=settings.max_host_connections,
        host_wait_s=settings.max_host_wait_s,
        egress=egress_policy(settings),
    )
    # the scheduler already waited SHUTDOWN_GRACE_S for in-flight calls at stop
    return dispatch.CurlDispatcher(
        curl, max_connections=settings.max_in_flight, close_grace_s=0.5, hosts=hosts, clock=clock
    )


def _scheduler_options(settings: Settings) -> SchedulerOptions:
    return SchedulerOptions(
        horizon_ms=settings.horizon_ms,
        lookahead_ms=settings.lookahead_ms,
        max_in_flight=settings.max_in_flight,
        max_response_bytes=settings.max_size_data_response,
        max_header_bytes=settings.max_response_headers_bytes,
        log_attempts=settings.log,
        retry_after_max_ms=settings.retry_after_max_s * 1000,
    )


def _unsupported_fields() -> Callable[[HttpRequest, TaskConfig], list[str]]:
    return dispatch.fields_checker(dispatch.curl_capabilities())


# how long a node trusts what it read of an owner (key, disabled, budget) when other
# nodes may change it: a key rotated or an owner disabled elsewhere stops working here
# within this time (changes made through this node apply at once)
OWNER_CACHE_S = 2.0


def _owner_cache_s(settings: Settings, store: Store) -> float | None:
    """None (kept until this server changes the owner) where one process owns the
    database; OWNER_CACHE_S where other nodes (leases exist only there) or other
    processes of this server write to it."""
    return None if store.lease_ms is None and settings.api_processes == 1 else OWNER_CACHE_S


def _throttle(settings: Settings) -> Throttle | None:
    if not settings.throttle_enabled:
        return None
    return Throttle(settings.max_throttle_request, settings.max_throttle_time_window)


async def _readiness(
    settings: Settings, store: Store, scheduler: Scheduler, relay: Relay | None = None
) -> dict[str, str | None]:
    """Checks for /readyz: each is None or says what is wrong."""
    path = settings.database_path
    problem = store.write_problem()
    if problem is None and not settings.uses_postgres and not _is_writable(path):
        problem = f"{path} or its directory is not writable"
    if problem is None:
        try:
            await store.due_before(0, 1)
        except Exception as exc:
            logger.warning("readiness: reading the database failed: %s", exc)
            problem = f"reading the database failed: {exc}"
    # a process that does not run the engine answers for the API only
    engine_here = relay is None or relay.leading
    return {
        "database": problem,
        "scheduler": (
            None if scheduler.alive or not engine_here else "the scheduler loop is not running"
        ),
    }


def _is_writable(path: Path) -> bool:
    """The file and its directory (where SQLite creates -wal and -shm) accept writes: a
    read-only volume or a wrong owner fails readiness before a registration fails."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _overview_cache(settings: Settings, store: Store, clock: Clock) -> OverviewCache | None:
    """The overview's figures per viewer, refreshed off the request path (dashboard only)."""
    if not settings.dashboard:
        return None
    return OverviewCache(lambda owner_id, now_ms: overview_figures(store, owner_id, now_ms), clock)


def _engine_figures(scheduler: Scheduler, metrics: Metrics) -> dict[str, float | None]:
    """What the dashboard's overview shows of the engine of this process."""
    quantiles = metrics.lateness_quantiles()
    return {
        "in_flight": scheduler.in_flight,
        "lateness_p50_ms": None if quantiles is None else quantiles[0],
        "lateness_p99_ms": None if quantiles is None else quantiles[1],
    }


async def _count_pending(store: Store) -> int:
    return sum(owner.tasks_in_queue for owner in await store.list_owners())


# -- start-up and shutdown ----------------------------------------------------------------
#
# Start-up is a list of steps; each registers how it is undone on one exit stack, so
# shutdown runs the undo steps in reverse, every one of them, even when an earlier one
# failed or start-up stopped halfway (a store left open keeps aiosqlite's thread, and so
# the process, alive).


@contextlib.asynccontextmanager
async def _lifespan(server: Server) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        await _hold_database_lock(server, stack)
        await _open_store(server, stack)
        await _load_host_limits(server)
        if server.relay is None:
            await _start_engine(server, stack)
        else:  # one of API_PROCESSES: the engine starts here if this one is elected
            server.relay.start()
            stack.callback(server.relay.close)
            _start_loop(server, stack, "election", lambda: _engine_once_elected(server), _resign)
            _start_loop(server, stack, "host-limits", lambda: _follow_host_limits(server), _cancel)
        if server.overview is not None:
            _start_loop(server, stack, "overview", server.overview.run, _stop_overview)
        yield
        logger.info("shutting down")


async def _start_engine(server: Server, stack: contextlib.AsyncExitStack) -> None:
    """What one process of a server runs: the scheduler and its dispatcher, and the
    loops that must run once (alerts, schedules, backups, retention)."""
    await _requeue_interrupted(server)
    await _start_dispatcher(server, stack)
    if server.alerts is not None:  # started first, so it stops after the scheduler
        _start_loop(server, stack, "alerts", server.alerts.run, _stop_alerts)
    _start_loop(server, stack, "scheduler", server.scheduler.run, _stop_scheduler)
    if server.settings.uses_postgres:
        _start_loop(server, stack, "wake-ups", lambda: _listen(server), _stop_listening)
        _start_loop(server, stack, "host-limits", lambda: _follow_host_limits(server), _cancel)
    _start_loop(server, stack, "schedules", server.schedules.run, _stop_schedules)
    if server.backup is not None:
        _start_loop(server, stack, "backup", server.backup.run, _stop_backup)
    if server.retention is not None:
        _start_loop(server, stack, "retention", server.retention.run, _stop_retention)


async def _engine_once_elected(server: Server) -> None:
    """Wait to be elected, then run the engine until the server stops. The process that
    held the lock before has ended: its claimed attempts are requeued as at a restart."""
    assert server.election is not None and server.relay is not None
    await server.election.won()
    if server.election.stopping():
        # the process that ran it ended as the server stops: starting it here would make
        # calls after the stop was asked for, and abandon them a moment later
        logger.info("process %d is stopping: it does not take the scheduler over", os.getpid())
        await server.election.resigned.wait()  # until the lifespan ends (cancelled there)
        return
    logger.info("process %d now runs the scheduler", os.getpid())
    async with contextlib.AsyncExitStack() as stack:
        await _start_engine(server, stack)
        server.relay.lead()
        await server.election.resigned.wait()


async def _resign(server: Server, task: asyncio.Task[None]) -> None:
    """Stop the engine if it runs here (each loop with its own grace), else stop waiting."""
    assert server.election is not None and server.relay is not None
    if not server.relay.leading:
        task.cancel()
        return
    server.election.resigned.set()
    await asyncio.wait([task])


async def _hold_database_lock(server: Server, stack: contextlib.AsyncExitStack) -> None:
    """A shared flock on ``<db>.lock`` while serving: `restore` refuses this database,
    and start-up waits while a restore runs. (PostgreSQL has no file to lock, and
    `restore` refuses it anyway.)"""
    if server.settings.uses_postgres:
        return
    lock = DatabaseLock(server.settings.database_path)
    await asyncio.to_thread(lock.acquire_shared)
    stack.callback(lock.release)


async def _open_store(server: Server, stack: contextlib.AsyncExitStack) -> None:
    stack.push_async_callback(server.store.close)  # close() undoes a half-done open()
    await server.store.open()


async def _requeue_interrupted(server: Server) -> None:
    """Attempts left in flight by a crash end as interrupted; their tasks are due again."""
    requeued = await server.store.requeue_interrupted(server.clock.now_ms())
    if requeued:
        logger.warning("requeued %d attempts interrupted by the last stop", requeued)


async def _load_host_limits(server: Server) -> None:
    """The administrator's per-host limits, kept in the store, apply from the start."""
    if server.hosts is not None:
        server.hosts.load(await server.store.list_host_limits())


HOST_LIMITS_REFRESH_S = 10.0


async def _follow_host_limits(server: Server) -> None:
    """Several nodes share the overrides: each reads them again every
    HOST_LIMITS_REFRESH_S, so one changed on another node applies here within that."""
    assert server.hosts is not None
    while True:
        await server.clock.sleep(HOST_LIMITS_REFRESH_S)
        try:
            server.hosts.load(await server.store.list_host_limits())
        except Exception as exc:  # a refresh is best effort (a pool timeout, say): the
            # limits read last stay in force and the next round tries again
            logger.warning("reading the host limits failed: %r", exc)


async def _cancel(server: Server, task: asyncio.Task[None]) -> None:
    task.cancel()


async def _start_dispatcher(server: Server, stack: contextlib.AsyncExitStack) -> None:
    stack.push_async_callback(server.dispatcher.close)
    await server.dispatcher.start()


Stopper = Callable[[Server, "asyncio.Task[None]"], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class _Loop:
    """A background loop's task, how to ask it to stop, and whether it was asked."""

    task: asyncio.Task[None]
    stop: Stopper
    stopping: bool = False


def _start_loop(
    server: Server,
    stack: contextlib.AsyncExitStack,
    name: str,
    run: Callable[[], Coroutine[Any, Any, None]],
    stop: Stopper,
) -> None:
    """Run a background loop as a named task; if it ends on its own, the server stops."""
    loop = _Loop(asyncio.create_task(run(), name=name), stop)
    loop.task.add_done_callback(lambda _task: _report_death(server, loop))
    stack.push_async_callback(_stop_loop, server, loop)


def _report_death(server: Server, loop: _Loop) -> None:
    task = loop.task
    if task.cancelled():
        return
    error = task.exception()
    if error is None and not loop.stopping:
        error = RuntimeError(f"{task.get_name()} returned while the server was running")
    if error is not None:
        server.fatal.report(task.get_name(), error)


async def _stop_loop(server: Server, loop: _Loop) -> None:
    """Ask the loop to stop and give it the shutdown grace and a second, then cancel it.
    An error it died of was reported when it died."""
    loop.stopping = True
    task = loop.task
    if not task.done():
        await loop.stop(server, task)
    grace_s = server.settings.shutdown_grace_s + 1
    await asyncio.wait([task], timeout=grace_s)
    if not task.done():
        logger.error("%s did not stop within %.1f s; cancelled", task.get_name(), grace_s)
        task.cancel()
        await asyncio.wait([task])


async def _stop_scheduler(server: Server, task: asyncio.Task[None]) -> None:
    """No new work; calls in flight get SHUTDOWN_GRACE_S, then their outcomes are
    written. A call still running keeps its durable claim and runs again at next start."""
    await server.scheduler.stop(server.settings.shutdown_grace_s)


async def _stop_alerts(server: Server, task: asyncio.Task[None]) -> None:
    """Judge what the scheduler recorded before it stopped, then end."""
    assert server.alerts is not None
    await server.alerts.stop()


async def _listen(server: Server) -> None:
    """Other nodes' new tasks and schedule changes wake this node's loops."""
    await server.store.listen(server.scheduler.notify, server.schedules.notify)


async def _stop_listening(server: Server, task: asyncio.Task[None]) -> None:
    task.cancel()


async def _stop_schedules(server: Server, task: asyncio.Task[None]) -> None:
    await server.schedules.stop()


async def _stop_retention(server: Server, task: asyncio.Task[None]) -> None:
    assert server.retention is not None
    await server.retention.stop()


async def _stop_overview(server: Server, task: asyncio.Task[None]) -> None:
    assert server.overview is not None
    await server.overview.stop()


async def _stop_backup(server: Server, task: asyncio.Task[None]) -> None:
    task.cancel()  # a snapshot being written is finished first
