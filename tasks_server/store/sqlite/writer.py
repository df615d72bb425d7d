"""The group-commit writer: one thread and connection that runs queued write
operations in batches, one transaction per batch."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)
Op = Callable[[sqlite3.Connection], Any]
CommitObserver = Callable[[float, int], None]  # (seconds from BEGIN to COMMIT, batch size)

_MAX_BATCH = 512


def _run_op(conn: sqlite3.Connection, op: Op, savepoint: bool) -> tuple[bool, Any]:
    if savepoint:
        conn.execute("SAVEPOINT op")
    try:
        result = (True, op(conn))
    except Exception as exc:
        if savepoint:
            conn.execute("ROLLBACK TO op")
        result = (False, exc)
    if savepoint:
        conn.execute("RELEASE op")
    return result


class Writer:
    """Runs queued write operations in batches, one transaction per batch.

    An operation that raises leaves the rest of its batch to commit. Operations with a
    single write need nothing more (SQLite undoes a failed statement); those with several
    writes ask for a savepoint, so a failure halfway rolls back the whole operation.
    """

    def __init__(self, conn: sqlite3.Connection, on_commit: CommitObserver | None = None) -> None:
        self._conn = conn
        self._on_commit = on_commit  # called in the writer thread after each commit
        self._queue: asyncio.Queue[tuple[Op, bool, asyncio.Future[Any]]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-writer")

    async def submit(self, op: Op, savepoint: bool = False) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, savepoint, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            outcomes = await loop.run_in_executor(self._executor, self._run_batch, batch)
            for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _run_batch(
        self, batch: list[tuple[Op, bool, asyncio.Future[Any]]]
    ) -> list[tuple[bool, Any]]:
        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, savepoint, _ in batch:
                outcomes.append(_run_op(conn, op, savepoint))
            conn.execute("COMMIT")
            self.commits += 1
            if self._on_commit is not None:
                self._on_commit(time.perf_counter() - started, len(batch))
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            logger.exception("write batch of %d failed", len(batch))
            return [(False, exc)] * len(batch)
        return outcomes

    async def close(self) -> None:
        if self._task is not None:
            await self.submit(lambda conn: None)  # everything queued before it has run
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown()
