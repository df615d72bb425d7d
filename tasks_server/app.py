"""Composition root: build(settings, clock) wires the store, scheduler, dispatcher and the
Starlette app; the lifespan starts them in dependency order and stops them in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette

from . import dispatch
from .api import create_app
from .api.auth import Authenticator
from .api.edge import Edge, Throttle
from .api.services import Services
from .backup.job import BackupJob
from .clock import Clock, SystemClock
from .config import Settings
from .engine.scheduler import Scheduler, SchedulerOptions
from .metrics import Metrics
from .models import HttpRequest, TaskConfig
from .schedules.runner import ScheduleRunner
from .sealing import Sealer
from .store.sqlite import SqliteStore
from .store.sqlite.lock import DatabaseLock

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Server:
    """Everything ``build`` made, so tests and the CLI can reach the parts."""

    settings: Settings
    clock: Clock
    store: SqliteStore
    dispatcher: dispatch.Dispatcher
    scheduler: Scheduler
    app: Starlette
    asgi: Edge
    on_fatal: Callable[[], None] = lambda: None  # the CLI makes uvicorn exit
    metrics: Metrics | None = None
    backup: BackupJob | None = None  # scheduled backups, when a cron or interval is set
    schedules: ScheduleRunner | None = None  # recurring schedules → tasks


def build(
    settings: Settings,
    clock: Clock | None = None,
    dispatcher: dispatch.Dispatcher | None = None,
) -> Server:
    clock = clock or SystemClock()
    metrics = Metrics()
    store = SqliteStore(
        settings.database_path,
        Sealer(settings.cipher_key),
        settings.sqlite_synchronous,
        on_commit=metrics.on_commit,
    )
    if dispatcher is None:
        curl = dispatch.CurlSettings(
            cert_dir=settings.cert_dir, max_host_connections=settings.max_host_connections
        )
        # the scheduler already waited SHUTDOWN_GRACE_S for in-flight calls at stop
        dispatcher = dispatch.CurlDispatcher(
            curl, max_connections=settings.max_in_flight, close_grace_s=0.5
        )
    scheduler = Scheduler(
        store,
        dispatcher,
        clock,
        SchedulerOptions(
            horizon_ms=settings.horizon_ms,
            lookahead_ms=settings.lookahead_ms,
            max_in_flight=settings.max_in_flight,
            max_response_bytes=settings.max_size_data_response,
            log_attempts=settings.log,
        ),
    )
    metrics.watch_scheduler(scheduler)
    schedule_runner = ScheduleRunner(store, scheduler, clock)
    capabilities = dispatch.curl_capabilities()

    def unsupported(request: HttpRequest, config: TaskConfig) -> list[str]:
        return dispatch.unsupported_fields(request, config, capabilities)

    async def readiness() -> dict[str, bool]:
        try:
            await store.due_before(0, 1)
            database = _is_writable(settings.database_path)
        except Exception:
            logger.exception("readiness: database check failed")
            database = False
        return {"database": database, "scheduler": scheduler.alive}

    async def count_pending() -> int:
        return sum(owner.tasks_in_queue for owner in await store.list_owners())

    services = Services(
        settings=settings,
        store=store,
        clock=clock,
        scheduler=scheduler,
        auth=Authenticator(store),
        unsupported=unsupported,
        readiness=readiness,
        metrics_text=lambda: metrics.render(count_pending),
        schedules=schedule_runner,
    )
    server = Server(settings, clock, store, dispatcher, scheduler, None, None)  # type: ignore[arg-type]
    app = create_app(services, lifespan=lambda _app: _lifespan(server))
    server.app = app
    server.metrics = metrics
    server.schedules = schedule_runner
    server.backup = BackupJob(settings, clock) if settings.backup_is_scheduled else None
    throttle = (
        Throttle(settings.max_throttle_request, settings.max_throttle_time_window)
        if settings.throttle_enabled
        else None
    )
    server.asgi = Edge(
        app, clock, throttle, log_requests=settings.log, on_request=metrics.on_request
    )
    return server


def _is_writable(path: Path) -> bool:
    """The file and its directory (where SQLite creates -wal and -shm) accept writes: a
    read-only volume or a wrong owner fails readiness before a registration fails."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


@contextlib.asynccontextmanager
async def _lifespan(server: Server) -> AsyncIterator[None]:
    """Start: lock → store → requeue interrupted → dispatcher → scheduler → schedule
    runner → backup job. Stop in reverse."""
    lock = DatabaseLock(server.settings.database_path)
    # held while serving, so `restore` refuses this database; waits while a restore runs
    await asyncio.to_thread(lock.acquire_shared)
    try:
        await server.store.open()
    except BaseException:
        lock.release()
        raise
    requeued = await server.store.requeue_interrupted(server.clock.now_ms())
    if requeued:
        logger.warning("requeued %d attempts interrupted by the last stop", requeued)
    await server.dispatcher.start()
    loop_task = asyncio.create_task(server.scheduler.run(), name="scheduler")
    loop_task.add_done_callback(lambda task: _stop_on_crash(server, task))
    schedules_task = None
    if server.schedules is not None:
        schedules_task = asyncio.create_task(server.schedules.run(), name="schedules")
        schedules_task.add_done_callback(lambda task: _stop_on_crash(server, task))
    backup_task = None
    if server.backup is not None:
        backup_task = asyncio.create_task(server.backup.run(), name="backup")
        backup_task.add_done_callback(lambda task: _stop_on_crash(server, task))
    try:
        yield
    finally:
        if backup_task is not None:
            backup_task.cancel()  # a snapshot being written is finished first
            with contextlib.suppress(asyncio.CancelledError):
                await backup_task
        if server.schedules is not None and schedules_task is not None:
            await server.schedules.stop()
            # a crash was logged by _stop_on_crash; the rest must still shut down
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await schedules_task
        await server.scheduler.stop(server.settings.shutdown_grace_s)
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        await server.dispatcher.close()
        await server.store.close()
        lock.release()


def _stop_on_crash(server: Server, task: asyncio.Task[None]) -> None:
    """A dead scheduler (or backup job) must not leave a server that seems healthy."""
    if task.cancelled() or task.exception() is None:
        return
    logger.critical("%s stopped; shutting down", task.get_name(), exc_info=task.exception())
    server.on_fatal()
