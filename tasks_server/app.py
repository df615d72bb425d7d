"""Composition root: build(settings, clock) wires the store, scheduler, dispatcher and the
Starlette app; the lifespan starts them in dependency order and stops them in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.applications import Starlette

from . import dispatch
from .api import Services, create_app
from .api.auth import Authenticator
from .api.edge import Edge, Throttle
from .clock import Clock, SystemClock
from .config import Settings
from .models import HttpRequest, TaskConfig
from .scheduler import Scheduler, SchedulerOptions
from .sealing import Sealer
from .store.sqlite import SqliteStore

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


def build(
    settings: Settings,
    clock: Clock | None = None,
    dispatcher: dispatch.Dispatcher | None = None,
) -> Server:
    clock = clock or SystemClock()
    store = SqliteStore(
        settings.database_path, Sealer(settings.cipher_key), settings.sqlite_synchronous
    )
    if dispatcher is None:
        curl = dispatch.CurlSettings(cert_dir=settings.cert_dir, hsts_dir=_hsts_dir(settings))
        dispatcher = dispatch.CurlDispatcher(curl, max_connections=settings.max_in_flight)
    scheduler = Scheduler(
        store,
        dispatcher,
        clock,
        SchedulerOptions(
            horizon_ms=settings.horizon_ms,
            max_in_flight=settings.max_in_flight,
            max_response_bytes=settings.max_size_data_response,
            log_attempts=settings.log,
        ),
    )
    capabilities = dispatch.curl_capabilities()

    def unsupported(request: HttpRequest, config: TaskConfig) -> list[str]:
        return dispatch.unsupported_fields(request, config, capabilities)

    async def readiness() -> dict[str, bool]:
        try:
            await store.due_before(0, 1)
            database = True
        except Exception:
            logger.exception("readiness: database check failed")
            database = False
        return {"database": database, "scheduler": scheduler.alive}

    services = Services(
        settings=settings,
        store=store,
        clock=clock,
        scheduler=scheduler,
        auth=Authenticator(store),
        unsupported=unsupported,
        readiness=readiness,
    )
    server = Server(settings, clock, store, dispatcher, scheduler, None, None)  # type: ignore[arg-type]
    app = create_app(services, lifespan=lambda _app: _lifespan(server))
    server.app = app
    throttle = (
        Throttle(settings.max_throttle_request, settings.max_throttle_time_window)
        if settings.throttle_enabled
        else None
    )
    server.asgi = Edge(app, clock, throttle, log_requests=settings.log)
    return server


def _hsts_dir(settings: Settings) -> str:
    return str(settings.database_path.parent / "tmp")


@contextlib.asynccontextmanager
async def _lifespan(server: Server) -> AsyncIterator[None]:
    """Start: store → requeue interrupted → dispatcher → scheduler. Stop in reverse."""
    await server.store.open()
    requeued = await server.store.requeue_interrupted(server.clock.now_ms())
    if requeued:
        logger.warning("requeued %d attempts interrupted by the last stop", requeued)
    await server.dispatcher.start()
    loop_task = asyncio.create_task(server.scheduler.run(), name="scheduler")
    loop_task.add_done_callback(lambda task: _stop_on_crash(server, task))
    try:
        yield
    finally:
        await server.scheduler.stop(server.settings.shutdown_grace_s)
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        await server.dispatcher.close()
        await server.store.close()


def _stop_on_crash(server: Server, task: asyncio.Task[None]) -> None:
    """A dead scheduler must not leave a server that accepts tasks it never runs."""
    if task.cancelled() or task.exception() is None:
        return
    logger.critical("scheduler stopped; shutting down", exc_info=task.exception())
    server.on_fatal()
