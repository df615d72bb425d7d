"""Shared fixtures: settings on a real SQLite file, a fake clock, the app and a client."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks_server.app import Server, build
from tasks_server.config import Settings
from tasks_server.dispatch import Dispatcher
from tasks_server.sealing import Sealer
from tasks_server.store import Store
from tests.support.clock import FakeClock
from tests.support.postgres import PostgresServer, find_bin_dir, throwaway_cluster
from tests.support.stores import STORES, StoreMaker

TARGET = "http://127.0.0.1:9/hook"
# The targets these tests call run on loopback, which the egress policy refuses by default:
# allowed here explicitly, so the default everywhere else stays deny.
LOOPBACK_ALLOWED = "127.0.0.1/32"


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """The root logger's handlers and level as they were before the test: a test that runs
    the CLI in-process configures logging onto the stream pytest captured for that test,
    which is closed once the test ends, and every later record would fail on it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session: DATABASE_URL's, else a throwaway cluster."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield PostgresServer(url)
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (install.sh installs the Debian package)")
    with throwaway_cluster(bin_dir) as server:
        yield server


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture(params=sorted(STORES))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    """Makes stores on one database of each implementation in turn (tests/support/stores.py)."""
    maker: StoreMaker = STORES[request.param](request, tmp_path)
    return maker


@pytest.fixture
async def store(make_store: StoreMaker) -> AsyncIterator[Store]:
    """An open store, empty, of each implementation in turn; closed after the test."""
    opened = make_store(Sealer("test-key"))
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        path_sqlite=str(tmp_path / "tasks.db"),
        shutdown_grace_s=2.0,
        egress_allow=LOOPBACK_ALLOWED,
        metrics_public=True,  # tests scrape freely; the key rules are tested on their own
        # many tests fail calls to their target on purpose, more than the circuit's
        # threshold: the circuit is tested on its own (tests/engine/test_host_backpressure.py)
        host_circuit_failures=0,
    )


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server(
    settings: Settings, clock: FakeClock
) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start servers with overridden settings (and optionally a dispatcher); all are
    stopped at the end of the test."""
    contexts: list[Any] = []

    async def start(dispatcher: Dispatcher | None = None, **overrides: Any) -> Server:
        server = build(dataclasses.replace(settings, **overrides), clock, dispatcher)
        context = server.app.router.lifespan_context(server.app)
        await context.__aenter__()
        contexts.append(context)
        return server

    yield start
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


def client_for(server: Server) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=server.asgi, client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://tasks.test")


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(server) as http:
        yield http


@dataclasses.dataclass
class OwnerAuth:
    id: str
    key: str
    name: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "X-Tasks-Owner-Id": self.id}


async def register_owner(
    client: httpx.AsyncClient, name: str, headers: dict[str, str] | None = None
) -> OwnerAuth:
    response = await client.post("/v1/owners/register", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    body = response.json()
    return OwnerAuth(body["id"], body["key"], name)


@pytest.fixture
async def owner(client: httpx.AsyncClient) -> OwnerAuth:
    return await register_owner(client, "owner-one")


@pytest.fixture
async def other_owner(client: httpx.AsyncClient) -> OwnerAuth:
    return await register_owner(client, "owner-two")


async def register_task(
    client: httpx.AsyncClient,
    owner: OwnerAuth,
    http_request: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"httpRequest": http_request or {"url": TARGET, "method": "GET"}}
    if config is not None:
        body["config"] = config
    body.update(extra)
    return await client.post("/v1/queues/register", json=body, headers=owner.headers)
