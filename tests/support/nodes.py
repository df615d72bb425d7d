"""Several real server processes on one PostgreSQL database, and what the tests read
from that database directly (task states, the schedule leader)."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from .process import ServerProcess

# the schedule leader's advisory lock key (tasks_server/store/postgres/store.py)
LEADER_LOCK = 0x74737363


class Nodes:
    """``count`` nodes (``tasks-server serve``), each in a directory of its own, all with
    ``DATABASE_URL``; ``env`` adds settings for every node."""

    def __init__(self, directory: Path, database_url: str, count: int, **env: str) -> None:
        self.database_url = database_url
        self.nodes: list[ServerProcess] = []
        for index in range(count):
            home = directory / f"node{index}"
            home.mkdir(parents=True)
            node_env = {"DATABASE_URL": database_url, "EGRESS_ALLOW": "127.0.0.1/32", **env}
            self.nodes.append(ServerProcess(home, **node_env))

    def __getitem__(self, index: int) -> ServerProcess:
        return self.nodes[index]

    def __len__(self) -> int:
        return len(self.nodes)

    async def start(self, *indexes: int) -> None:
        """Start the given nodes (all by default) side by side."""
        chosen = indexes or tuple(range(len(self.nodes)))
        await asyncio.gather(*(asyncio.to_thread(self.nodes[i].start, 60.0) for i in chosen))

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def stop_all(self) -> None:
        for node in self.nodes:
            node.__exit__(None, None, None)

    def pid(self, index: int) -> int:
        process = self.nodes[index].process
        assert process is not None
        return process.pid


async def register_owner(url: str, name: str = "nodes") -> dict[str, str]:
    """A new owner through the node at ``url``: the auth headers for it."""
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/owners/register", json={"name": name})
        assert response.status_code == 201, response.text
        owner = response.json()
    return {"Authorization": f"Bearer {owner['key']}", "X-Tasks-Owner-Id": owner["id"]}


async def register_tasks(
    urls: list[str] | Callable[[], list[str]],
    headers: dict[str, str],
    count: int,
    body: Callable[[int], dict[str, Any]],
    parallel: int = 16,
    batch: int = 1,
) -> list[str]:
    """Register ``count`` tasks round-robin through the nodes at ``urls``, the body of the
    i-th made by ``body(i)`` when it is sent, ``batch`` to a request (through the batch
    endpoint when more than one); returns the ids.

    ``urls`` may be a function giving the addresses of the nodes up at the moment (a
    node started again listens on a new port). A request whose connection fails, or that
    is answered 503 (not accepted: try again), is sent to the next node, as a load
    balancer would, for up to two minutes: registrations carry deduplication ids, so a
    request a killed node committed before it died never makes a second task."""
    addresses = urls if callable(urls) else lambda: urls
    # the client drops idle connections well before uvicorn does (after 5 s): a request
    # sent on a connection the server is closing would fail for no fault of the node
    limits = httpx.Limits(keepalive_expiry=1.0)
    clients: dict[str, httpx.AsyncClient] = {}
    ids: list[str] = [""] * count
    queue: asyncio.Queue[range] = asyncio.Queue()
    for start in range(0, count, batch):
        queue.put_nowait(range(start, min(start + batch, count)))

    run = secrets.token_hex(4)

    def client(index: int) -> httpx.AsyncClient:
        now = addresses()
        url = now[index % len(now)]
        if url not in clients:
            clients[url] = httpx.AsyncClient(base_url=url, timeout=60, limits=limits)
        return clients[url]

    async def post(first: int, path: str, **kwargs: Any) -> httpx.Response:
        deadline = asyncio.get_running_loop().time() + 120
        for attempt in itertools.count():
            late = asyncio.get_running_loop().time() > deadline
            try:
                response = await client(first + attempt).post(path, **kwargs)
            except httpx.TransportError:
                if late:
                    raise
                continue
            if response.status_code != 503 or late:  # 503: not accepted, try again
                return response
        raise AssertionError("unreachable")

    async def worker() -> None:
        while not queue.empty():
            indexes = queue.get_nowait()
            first = indexes[0] // batch
            if batch == 1:
                key = {"Idempotency-Key": f"{run}-{indexes[0]}"}
                response = await post(
                    first, "/v1/queues/register", json=body(indexes[0]), headers=headers | key
                )
                assert response.status_code in (200, 201), response.text
                ids[indexes[0]] = response.json()["id"]
                continue
            items = [body(index) for index in indexes]
            for index, item in zip(indexes, items, strict=True):
                item.setdefault("config", {})["deduplicationId"] = f"{run}-{index}"
            response = await post(first, "/v1/queues/register/batch", json=items, headers=headers)
            assert response.status_code == 200, response.text
            for index, result in zip(indexes, response.json(), strict=True):
                assert result["status"] in (200, 201), result
                ids[index] = result["task"]["id"]

    try:
        await asyncio.gather(*(worker() for _ in range(parallel)))
    finally:
        for each in clients.values():
            await each.aclose()
    return ids


async def task_states(database_url: str) -> dict[str, str]:
    """Every task's state, straight from the database."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (await conn.execute("SELECT id, state FROM task")).fetchall()
    return {row[0]: row[1] for row in rows}


async def leader_pid(database_url: str) -> int | None:
    """The process id of the node holding the schedule leader's lock, or None. A node's
    connections are named "tasks-server <host>-<pid>-<random>"."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (
            await conn.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.objid = %s",
                (LEADER_LOCK,),
            )
        ).fetchone()
    if row is None:
        return None
    return int(row[0].rsplit("-", 2)[1])
