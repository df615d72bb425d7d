"""The group-commit writer: one thread and connection that runs queued write
operations in batches, one transaction per batch."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ...errors import StorageUnavailable

logger = logging.getLogger(__name__)
Op = Callable[[sqlite3.Connection], Any]
Outcome = tuple[bool, Any]  # (True, result) or (False, the exception the caller gets)


@dataclass(frozen=True, slots=True)
class Together:
    """A write the writer runs in one go with the like writes queued beside it: ``run``
    gets the payloads of consecutive Together operations with the same ``run`` and returns
    one outcome per payload, in order. Registrations use it: many rows in one INSERT
    statement cost one SQLite step, where one statement per row costs a step each, and
    every step lets go of the GIL and must wait to take it back from the event loop."""

    run: Callable[[sqlite3.Connection, list[Any]], list[Outcome]]
    payload: Any


Queued = tuple[Op | Together, bool, asyncio.Future[Any]]
CommitObserver = Callable[[float, int], None]  # (seconds from BEGIN to COMMIT, batch size)

_MAX_BATCH = 512

# Primary result codes that say "not now" rather than "wrong": the same write can succeed
# once space returns, the other process lets go of its lock, or the device recovers.
_TRANSIENT = {
    5: "the database is locked by another process (SQLITE_BUSY)",
    6: "a table is locked (SQLITE_LOCKED)",
    7: "out of memory (SQLITE_NOMEM)",
    10: "disk I/O error (SQLITE_IOERR)",
    13: "the disk or the database file is full (SQLITE_FULL)",
    14: "the database file cannot be opened (SQLITE_CANTOPEN)",
    15: "the database lock protocol failed (SQLITE_PROTOCOL)",
}
# A write that failed less than this long ago, with none succeeding since, makes the
# database unready; after that, with no write tried, nothing is known either way.
FAILURE_MEMORY_S = 10.0
# A batch waiting this long for its transaction is reported as a problem while it waits.
SLOW_BATCH_S = 1.0


def transient_reason(exc: BaseException) -> str | None:
    """Why ``exc`` is a passing storage fault, or None when it is not one."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code is None:
        return None
    return _TRANSIENT.get(code & 0xFF)


@dataclass(slots=True)
class WriteHealth:
    """What the writer last saw; read by the readiness probe."""

    failure: str | None = None  # reason of the last failed batch, until one succeeds
    failed_at: float = 0.0  # monotonic seconds
    batch_started: float | None = None  # a batch is running since then (monotonic s)

    def problem(self, now: float) -> str | None:
        if self.batch_started is not None and now - self.batch_started >= SLOW_BATCH_S:
            waited = now - self.batch_started
            return (
                f"a write has waited {waited:.1f} s for the database (locked by another process?)"
            )
        if self.failure is not None and now - self.failed_at < FAILURE_MEMORY_S:
            return f"the last write failed: {self.failure}"
        return None


def _run_op(conn: sqlite3.Connection, op: Op, savepoint: bool) -> Outcome:
    if savepoint:
        conn.execute("SAVEPOINT op")
    try:
        result = (True, op(conn))
    except Exception as exc:
        if transient_reason(exc) is not None or not conn.in_transaction:
            # SQLite may have rolled the whole transaction back (SQLITE_FULL, IOERR,
            # BUSY): the batch cannot go on, or later operations would run uncommitted
            # work in autocommit mode.
            raise
        if savepoint:
            conn.execute("ROLLBACK TO op")
        result = (False, exc)
    if savepoint:
        conn.execute("RELEASE op")
    return result


def _together_run(batch: list[Queued], start: int) -> list[Any]:
    """The payloads of the Together operations from ``start`` on that share its ``run``."""
    first = batch[start][0]
    assert isinstance(first, Together)
    payloads = []
    for op, _, _ in batch[start:]:
        if (
            not isinstance(op, Together) or op.run != first.run
        ):  # bound methods: equal, not identical
            break
        payloads.append(op.payload)
    return payloads


def _run_together(conn: sqlite3.Connection, op: Together, payloads: list[Any]) -> list[Outcome]:
    """``op.run`` on ``payloads`` inside a savepoint: if it raises, none of its writes stay
    and each of its callers gets the exception (a passing storage fault fails the batch)."""
    conn.execute("SAVEPOINT together")
    try:
        outcomes = op.run(conn, payloads)
    except Exception as exc:
        if transient_reason(exc) is not None or not conn.in_transaction:
            raise
        conn.execute("ROLLBACK TO together")
        outcomes = [(False, exc)] * len(payloads)
    conn.execute("RELEASE together")
    return outcomes


class Writer:
    """Runs queued write operations in batches, one transaction per batch.

    An operation that raises leaves the rest of its batch to commit. Operations with a
    single write need nothing more (SQLite undoes a failed statement); those with several
    writes ask for a savepoint, so a failure halfway rolls back the whole operation. A
    passing storage fault (see ``transient_reason``) fails the whole batch: every caller
    gets StorageUnavailable, nothing of the batch is written, and the writer goes on.
    """

    def __init__(self, conn: sqlite3.Connection, on_commit: CommitObserver | None = None) -> None:
        self._conn = conn
        self._on_commit = on_commit  # called in the writer thread after each commit
        self._queue: asyncio.Queue[Queued] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.health = WriteHealth()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-writer")

    async def submit(self, op: Op | Together, savepoint: bool = False) -> Any:
        """Run ``op`` in the next batch; its result, or its exception raised. A Together
        operation runs inside a savepoint of its own run (``savepoint`` is ignored)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, savepoint, future))
        return await future

    async def run_outside_batch(self, op: Op) -> Any:
        """Run ``op`` on the writer's connection between batches, outside a transaction
        (connection settings such as pragmas)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, op, self._conn)

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

    def _run_batch(self, batch: list[Queued]) -> list[Outcome]:
        conn = self._conn
        outcomes: list[Outcome] = []
        started = time.perf_counter()
        self.health.batch_started = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
            index = 0
            while index < len(batch):
                op, savepoint, _ = batch[index]
                if isinstance(op, Together):
                    payloads = _together_run(batch, index)
                    outcomes += _run_together(conn, op, payloads)
                    index += len(payloads)
                else:
                    outcomes.append(_run_op(conn, op, savepoint))
                    index += 1
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            return self._failed(batch, exc)
        finally:
            self.health.batch_started = None
        self.commits += 1
        self.health.failure = None
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started, len(batch))
        return outcomes

    def _failed(self, batch: list[Queued], exc: sqlite3.Error) -> list[Outcome]:
        conn = self._conn
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.warning("rollback after a failed write batch failed too", exc_info=True)
        reason = transient_reason(exc)
        if reason is None:
            logger.exception("write batch of %d failed", len(batch))
            return [(False, exc)] * len(batch)
        if self.health.failure is None:
            logger.warning("writes fail (%s): %s; retried by their callers", reason, exc)
        self.health.failure = f"{reason}: {exc}"
        self.health.failed_at = time.monotonic()
        return [(False, StorageUnavailable(f"{reason}: {exc}")) for _ in batch]

    async def close(self) -> None:
        if self._task is not None:
            try:
                await self.submit(lambda conn: None)  # everything queued before it has run
            except StorageUnavailable:
                pass  # their callers were told; nothing more can be written now
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown()
