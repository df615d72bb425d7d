"""The ceilings for registrations: a bare Starlette route on the same uvicorn set-up as the
server (uvloop, httptools, no access log) that only parses the JSON body and answers 201;
with ``--durable``, the same route that also commits the body to SQLite before it answers,
the least a registration whose 2xx means "committed" must do.

The durable route writes the way the server does: one writer thread and connection,
group commit (every body queued while a commit runs goes into the next one), WAL with
``synchronous=FULL``, and the loop told once per commit. It validates nothing, checks no
owner and builds no task: what it costs over the bare route is the commit alone.

Run: python -m bench.bare_app PORT [--durable]
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = b'{"id":"0000000000000000000000AA","state":"RUNNING"}'


async def register(request: Request) -> Response:
    json.loads(await request.body())
    return Response(ANSWER, status_code=201, media_type="application/json")


class GroupCommit:
    """One writer thread: each commit takes every body queued since the last one."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._queued: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._ready = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def write(self, body: bytes) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            threading.Thread(target=self._run, daemon=True).start()
        future = self._loop.create_future()
        with self._ready:
            self._queued.append((secrets.token_hex(12), body, future))
            self._ready.notify()
        await future

    def _run(self) -> None:
        assert self._loop is not None
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS task (id TEXT PRIMARY KEY, body BLOB)")
        while True:
            with self._ready:
                while not self._queued:
                    self._ready.wait()
                batch, self._queued = self._queued, []
            db.execute("BEGIN")
            db.executemany("INSERT INTO task VALUES (?, ?)", [(i, b) for i, b, _ in batch])
            db.execute("COMMIT")
            self._loop.call_soon_threadsafe(_answer, [future for _, _, future in batch])


def _answer(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        future.set_result(None)


def durable_route(writer: GroupCommit) -> Route:
    async def register_durably(request: Request) -> Response:
        body = await request.body()
        json.loads(body)
        await writer.write(body)
        return Response(ANSWER, status_code=201, media_type="application/json")

    return Route("/v1/queues/register", register_durably, methods=["POST"])


async def healthz(request: Request) -> Response:  # what the benchmark polls until ready
    return Response(b"ok")


def app(durable: bool) -> Starlette:
    route = Route("/v1/queues/register", register, methods=["POST"])
    if durable:
        route = durable_route(GroupCommit(Path(tempfile.mkdtemp(prefix="bare-")) / "bare.db"))
    return Starlette(routes=[route, Route("/healthz", healthz, methods=["GET"])])


if __name__ == "__main__":
    uvicorn.run(
        app(durable="--durable" in sys.argv[2:]),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        server_header=False,
    )
