"""Whole server with API_PROCESSES=2 on one SQLite file: tasks registered through either
process are sent once, on time, with no polling of the database (the scheduler's horizon
is an hour, so its next read of the database is half an hour away); the engine moves to
the other process when its process is killed; SIGTERM ends every process.

Which process answers a connection is read from /proc (the server-side socket's inode
in /proc/net/tcp, found among each process's descriptors); which one runs the engine,
from the holder of ``<db>.scheduler.lock`` in /proc/locks."""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import ServerProcess
from tests.support.targets import Reply, TargetServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # real servers of two processes each: a few seconds a test

HOUR_MS = 3_600_000


def processes(server: ServerProcess) -> list[int]:
    """The API processes: the children of the process ``serve`` started."""
    assert server.process is not None
    pid = server.process.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def engine_pid(server: ServerProcess) -> int | None:
    """The process holding the scheduler's lock, if one does."""
    inode = (server.directory / "tasks.db.scheduler.lock").stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:  # a process waiting for the lock, not holding it
            continue
        if fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            return int(fields[4])
    return None


def serving_pid(server: ServerProcess, client_port: int) -> int | None:
    """The API process holding the server side of the connection from ``client_port``."""
    local, remote = f"0100007F:{server.port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            inode = fields[9]
    if inode is None:
        return None
    for pid in processes(server):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    return None


class Client:
    """One keep-alive connection, and the process that answers it."""

    def __init__(self, server: ServerProcess) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        self.http.connect()
        assert self.http.sock is not None
        port = self.http.sock.getsockname()[1]
        self.pid = _wait_sync(lambda: serving_pid(server, port))

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
        self.http.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json", **headers}
        )
        response = self.http.getresponse()
        data = response.read()
        assert response.status in (200, 201), data
        return json.loads(data)

    def register(self, headers: dict[str, str], url: str, delay_ms: int) -> str:
        body = {
            "httpRequest": {"url": url, "method": "POST"},
            "config": {"executionDelay": delay_ms},
        }
        task_id: str = self.post("/v1/queues/register", body, headers)["id"]
        return task_id

    def close(self) -> None:
        self.http.close()


def _wait_sync(find: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while (found := find()) is None:
        assert time.monotonic() < deadline, "not found in time"
        time.sleep(0.01)
    return found


def clients_of_every_process(server: ServerProcess, each: int) -> dict[int, list[Client]]:
    """At least ``each`` connections answered by every API process (the kernel picks the
    process that accepts a connection, so connections are opened until each has some)."""
    by_pid: dict[int, list[Client]] = collections.defaultdict(list)
    pids = set(processes(server))
    deadline = time.monotonic() + 20
    while any(len(by_pid[pid]) < each for pid in pids):
        assert time.monotonic() < deadline, {pid: len(c) for pid, c in by_pid.items()}
        client = Client(server)
        if len(by_pid[client.pid]) < each:
            by_pid[client.pid].append(client)
        else:
            client.close()
    return dict(by_pid)


def close_all(by_pid: dict[int, list[Client]]) -> None:
    for clients in by_pid.values():
        for client in clients:
            client.close()


def owner_headers(server: ServerProcess) -> dict[str, str]:
    client = Client(server)
    try:
        owner = client.post("/v1/owners/register", {"name": "processes"}, {})
    finally:
        client.close()
    return {"Authorization": f"Bearer {owner['key']}", "X-Tasks-Owner-Id": owner["id"]}


def two_processes(directory: Path) -> ServerProcess:
    return ServerProcess(directory, API_PROCESSES="2", SCHEDULER_HORIZON_MS=str(HOUR_MS))


async def outside_the_engine(
    server: ServerProcess,
) -> tuple[dict[str, str], int, int, dict[int, list[Client]]]:
    """An owner's headers, the engine's pid, the other process's pid, and a client of
    each process (close them with ``close_all``)."""
    headers = await asyncio.to_thread(owner_headers, server)
    engine = engine_pid(server)
    assert engine is not None
    by_pid = await asyncio.to_thread(clients_of_every_process, server, 1)
    (other,) = (pid for pid in by_pid if pid != engine)
    return headers, engine, other, by_pid


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    """The tasks' target: ``/hook`` answers 200."""
    async with TargetServer() as hook:
        hook.route("/hook", Reply(200, b"ok"))
        yield hook


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of two API processes, stopped after the test."""
    with two_processes(tmp_path) as started:
        yield started


def queue_ids(target: TargetServer) -> collections.Counter[str | None]:
    return collections.Counter(a.header("X-Tasks-Queue-Id") for a in target.arrivals)


async def test_tasks_registered_through_both_processes_are_each_called_once(
    target: TargetServer, server: ServerProcess
) -> None:
    headers = await asyncio.to_thread(owner_headers, server)
    by_pid = await asyncio.to_thread(clients_of_every_process, server, 4)
    assert len(by_pid) == 2

    def register_many(client: Client) -> list[str]:
        return [client.register(headers, target.url("/hook"), 1500) for _ in range(25)]

    clients = [client for group in by_pid.values() for client in group]
    try:
        batches = await asyncio.gather(
            *(asyncio.to_thread(register_many, client) for client in clients)
        )
    finally:
        close_all(by_pid)
    registered = [task_id for batch in batches for task_id in batch]
    await wait_until(lambda: len(target.arrivals) >= len(registered), timeout=30)
    counts = queue_ids(target)
    assert sorted(counts) == sorted(registered)
    assert set(counts.values()) == {1}


async def test_a_task_registered_outside_the_engine_process_arrives_without_polling(
    target: TargetServer, server: ServerProcess
) -> None:
    headers, _, other, by_pid = await outside_the_engine(server)
    client = by_pid[other][0]
    registered_at = time.monotonic()
    try:
        task_id = await asyncio.to_thread(client.register, headers, target.url("/hook"), 1000)
    finally:
        close_all(by_pid)
    # the scheduler reads the database next in half an hour: only the wake-up
    # from the other process can bring the task in within the deadline
    await wait_until(lambda: target.arrivals, timeout=15)
    (arrival,) = target.arrivals
    assert arrival.header("X-Tasks-Queue-Id") == task_id
    assert arrival.arrived_at >= registered_at + 0.9


async def test_killing_the_engine_process_hands_the_engine_to_the_other(
    target: TargetServer, server: ServerProcess
) -> None:
    headers, engine, other, by_pid = await outside_the_engine(server)
    client = by_pid[other][0]

    def register(count: int, delay_ms: int) -> list[str]:
        return [client.register(headers, target.url("/hook"), delay_ms) for _ in range(count)]

    try:
        before = await asyncio.to_thread(register, 20, 3000)
        os.kill(engine, 9)
        await wait_until(lambda: engine_pid(server) == other, timeout=10)
        # the killed process is replaced, and the replacement serves the API only
        await wait_until(
            lambda: len(processes(server)) == 2 and engine not in processes(server),
            timeout=15,
        )
        after = await asyncio.to_thread(register, 10, 500)
    finally:
        close_all(by_pid)
    expected = {*before, *after}
    await wait_until(lambda: set(queue_ids(target)) >= expected, timeout=30)
    assert set(queue_ids(target)) == expected
    assert engine_pid(server) == other


async def test_sigterm_ends_every_process(server: ServerProcess) -> None:
    children = processes(server)
    assert len(children) == 2
    # both serve (their start-up is done) before the stop
    close_all(await asyncio.to_thread(clients_of_every_process, server, 1))
    assert server.terminate() == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_processes_that_keep_dying_stop_the_whole_server(server: ServerProcess) -> None:
    killed: set[int] = set()

    def kill_the_next() -> bool:
        assert server.process is not None
        if server.process.poll() is not None:
            return True
        for pid in processes(server):
            if pid not in killed:
                killed.add(pid)
                os.kill(pid, 9)
        return False

    # every death is answered by a restart until five came within a minute; the
    # sixth stops the other process too, and the server with it
    await wait_until(kill_the_next, timeout=30, interval=0.01)
    assert server.process is not None and server.process.wait(10) == 1
    assert len(killed) >= 6
    for pid in killed:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
