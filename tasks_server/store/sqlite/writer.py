"""The group-commit writer: one thread and connection that runs queued write
operations in batches, one transaction per batch."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
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


class _Outside:
    """An operation the writer thread runs alone, between batches, outside a transaction."""

    __slots__ = ("op",)

    def __init__(self, op: Op) -> None:
        self.op = op


_STOP = _Outside(lambda conn: None)  # the thread closes the connection and ends (see _work)


class Writer:
    """Runs queued write operations in batches, one transaction per batch.

    An operation that raises leaves the rest of its batch to commit. Operations with a
    single write need nothing more (SQLite undoes a failed statement); those with several
    writes ask for a savepoint, so a failure halfway rolls back the whole operation. A
    passing storage fault (see ``transient_reason``) fails the whole batch: every caller
    gets StorageUnavailable, nothing of the batch is written, and the writer goes on.

    The writer is a thread of its own that takes the next batch as soon as it has
    committed one: it never waits for the event loop, which under load is busy answering
    the callers of the batch just committed. Operations submitted during one step of the
    event loop reach the thread together, at the end of that step, so concurrent callers
    share a batch even when the thread is idle.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        on_commit: CommitObserver | None = None,
        turns: Path | None = None,
    ) -> None:
        self._conn = conn
        # several processes write to the database (API_PROCESSES): each takes its turn
        # on this file's flock around a batch (see _turn)
        self._turns = None if turns is None else turns.open("ab")
        self._on_commit = on_commit  # called in the writer thread after each commit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Queued | tuple[_Outside, asyncio.Future[Any]]] = []
        self._queue: deque[Queued | tuple[_Outside, asyncio.Future[Any]]] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.health = WriteHealth()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name="sqlite-writer", daemon=True)
        self._thread.start()

    async def submit(self, op: Op | Together, savepoint: bool = False) -> Any:
        """Run ``op`` in the next batch; its result, or its exception raised. A Together
        operation runs inside a savepoint of its own run (``savepoint`` is ignored)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue((op, savepoint, future))
        return await future

    async def run_outside_batch(self, op: Op) -> Any:
        """Run ``op`` on the writer's connection between batches, outside a transaction
        (connection settings such as pragmas)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue((_Outside(op), future))
        return await future

    def _enqueue(self, item: Queued | tuple[_Outside, asyncio.Future[Any]]) -> None:
        if not self._pending:
            assert self._loop is not None, "writer not started"
            self._loop.call_soon(self._hand_over)
        self._pending.append(item)

    def _hand_over(self) -> None:
        """Give the thread what this step of the event loop submitted."""
        pending, self._pending = self._pending, []
        with self._ready:
            self._queue.extend(pending)
            self._ready.notify()

    def _take(self) -> list[Queued] | tuple[_Outside, asyncio.Future[Any]]:
        """The next batch (consecutive operations, up to _MAX_BATCH), or one operation to
        run outside a batch; waits for work."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            queue = self._queue
            if isinstance(queue[0][0], _Outside):
                return queue.popleft()  # type: ignore[return-value]
            batch: list[Queued] = []
            while queue and len(batch) < _MAX_BATCH and not isinstance(queue[0][0], _Outside):
                batch.append(queue.popleft())  # type: ignore[arg-type]
            return batch

    def _work(self) -> None:
        """The writer thread: batches back to back until told to stop."""
        while True:
            taken = self._take()
            if isinstance(taken, tuple):
                outside, future = taken
                op = self._conn.close if outside is _STOP else partial(outside.op, self._conn)
                try:
                    outcome: Outcome = (True, op())
                except Exception as exc:
                    outcome = (False, exc)
                self._deliver([future], [outcome])
                if outside is _STOP:
                    if self._turns is not None:
                        self._turns.close()
                    return
                continue
            try:
                outcomes = self._run_batch(taken)
            except Exception as exc:  # not the database's: a defect, told to each caller
                logger.exception("write batch of %d failed", len(taken))
                try:
                    if self._conn.in_transaction:
                        self._conn.rollback()
                except sqlite3.Error:
                    logger.warning("rollback after a failed write batch failed too", exc_info=True)
                outcomes = [(False, exc)] * len(taken)
            self._deliver([future for _, _, future in taken], outcomes)

    def _deliver(self, futures: list[asyncio.Future[Any]], outcomes: list[Outcome]) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_settle, futures, outcomes)
        except RuntimeError:
            pass  # the event loop is closed: nobody waits for these any more

    def _run_batch(self, batch: list[Queued]) -> list[Outcome]:
        conn = self._conn
        outcomes: list[Outcome] = []
        started = time.perf_counter()
        self.health.batch_started = time.monotonic()
        try:
            self._take_turn()
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
            self._end_turn()
            self.health.batch_started = None
        self.commits += 1
        self.health.failure = None
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started, len(batch))
        return outcomes

    def _take_turn(self) -> None:
        """Wait for the other processes' writers in ``flock``, which wakes this thread the
        moment the holder commits, rather than in SQLite's busy handler, which sleeps
        1 to 100 ms between tries: their batches alternate back to back, and each
        collects what arrived while the other committed."""
        if self._turns is not None:
            fcntl.flock(self._turns, fcntl.LOCK_EX)

    def _end_turn(self) -> None:
        if self._turns is not None:
            fcntl.flock(self._turns, fcntl.LOCK_UN)

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
        """Run what is queued, then close the connection and end the thread."""
        if self._thread is None:
            self._conn.close()
            return
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue((_STOP, future))
        await future
        await asyncio.to_thread(self._thread.join)
        self._thread = None


def _settle(futures: list[asyncio.Future[Any]], outcomes: list[Outcome]) -> None:
    """In the event loop: each caller gets its result or its exception."""
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.done():
            continue  # the caller gave up waiting
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
