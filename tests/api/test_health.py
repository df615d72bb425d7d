"""Liveness and readiness probes."""

from __future__ import annotations

import httpx
import pytest

from tasks_server.app import Server


async def test_healthz_answers_while_the_process_is_up(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_checks_the_database_and_the_scheduler(
    server: Server, client: httpx.AsyncClient
) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": True, "scheduler": True}}


async def test_readyz_is_503_when_the_scheduler_loop_is_not_alive(
    server: Server, client: httpx.AsyncClient
) -> None:
    server.scheduler.alive = False
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": True, "scheduler": False}


async def test_readyz_is_503_when_the_database_fails(
    server: Server, client: httpx.AsyncClient
) -> None:
    await server.store.close()  # every read now fails
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] is False
    await server.store.open()  # the fixture closes it again


async def test_readyz_is_503_when_the_database_file_is_not_writable(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.access is the check; faked because root (CI) may write to any file
    monkeypatch.setattr("tasks_server.app.os.access", lambda path, mode: False)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] is False
