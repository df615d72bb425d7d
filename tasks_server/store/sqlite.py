"""SqliteStore: the Store contract on one WAL-mode SQLite file.

Writes go through one writer thread that runs whole batches of operations in a single
transaction (group commit): many registrations or outcomes cost one fsync. Reads use an
aiosqlite connection of their own, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, LiteralString, TypeVar

import aiosqlite
from pydantic import TypeAdapter

from ..errors import (
    Conflict,
    NotFound,
    OwnerNotFound,
    PreconditionFailed,
    QueueLimitReached,
    TaskNotFound,
)
from ..models import (
    Attempt,
    AttemptRecord,
    MisfirePolicy,
    NewSchedule,
    NewTask,
    OverlapPolicy,
    Owner,
    Result,
    Schedule,
    ScheduleFire,
    ScheduleState,
    ScheduleTiming,
    Task,
    TaskSpec,
    TaskState,
)
from ..sealing import Sealer
from ..timing import resume_due_ms
from . import LIST_ORDERS
from .migrate import migrate

logger = logging.getLogger(__name__)
T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
CommitObserver = Callable[[float, int], None]  # (seconds from BEGIN to COMMIT, batch size)

_SPEC = TypeAdapter(TaskSpec)
_METADATA = TypeAdapter(tuple[tuple[str, str], ...])
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_MAX_BATCH = 512

# -- SQL (static text, placeholders only) ---------------------------------------------

OWNER_INSERT: LiteralString = (
    "INSERT INTO owner (id, name, key_digest, created_at, tasks_in_queue_limit) "
    "VALUES (?, ?, ?, ?, ?)"
)
OWNER_COLUMNS: LiteralString = "id, name, created_at, tasks_in_queue, tasks_in_queue_limit"
OWNER_BY_ID: LiteralString = f"SELECT {OWNER_COLUMNS} FROM owner WHERE id = ?"
OWNER_ALL: LiteralString = f"SELECT {OWNER_COLUMNS} FROM owner ORDER BY created_at, id"
OWNER_DIGEST: LiteralString = "SELECT key_digest FROM owner WHERE id = ?"
OWNER_DELETE: LiteralString = "DELETE FROM owner WHERE id = ? AND tasks_in_queue = 0"
OWNER_EXISTS: LiteralString = "SELECT 1 FROM owner WHERE id = ?"
OWNER_CAPACITY: LiteralString = (
    "SELECT tasks_in_queue, tasks_in_queue_limit FROM owner WHERE id = ?"
)

TASK_COLUMNS: LiteralString = (
    "id, owner_id, state, created_at, status_code, estimate_end_at, estimate_execution_at, "
    "response, metadata, attempts, retry_count, due_at"
)
TASK_INSERT: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec) VALUES (?, ?, 'RUNNING', ?, ?, ?, ?, ?, ?)"
)
TASK_BY_ID: LiteralString = f"SELECT {TASK_COLUMNS} FROM task WHERE id = ? AND owner_id = ?"
TASK_STATE: LiteralString = (
    "SELECT state, due_at, estimate_end_at, in_flight, attempts, spec "
    "FROM task WHERE id = ? AND owner_id = ?"
)
TASK_SPEC: LiteralString = "SELECT spec FROM task WHERE id = ? AND owner_id = ?"
TASK_PAUSE: LiteralString = (
    "UPDATE task SET state = 'PAUSED', estimate_end_at = ?, next_at = NULL, in_flight = 0 "
    "WHERE id = ? AND owner_id = ? AND state = 'RUNNING'"
)
TASK_RESUME: LiteralString = (
    "UPDATE task SET state = 'RUNNING', estimate_end_at = 0, estimate_execution_at = ?, "
    "due_at = ?, next_at = ? WHERE id = ? AND owner_id = ? AND state = 'PAUSED'"
)
TASK_REVOKE: LiteralString = (
    "UPDATE task SET state = 'REVOKED', status_code = 0, response = NULL, "
    "estimate_end_at = ?, next_at = NULL, in_flight = 0 "
    "WHERE id = ? AND owner_id = ? AND state IN ('RUNNING', 'PAUSED')"
)
TASK_DELETE: LiteralString = "DELETE FROM task WHERE id = ? AND owner_id = ?"
TASK_EXECUTE: LiteralString = (
    "UPDATE task SET estimate_execution_at = ?, due_at = ?, next_at = ? "
    "WHERE id = ? AND owner_id = ? AND state = 'RUNNING' AND in_flight = 0"
)
TASK_EDIT: LiteralString = (
    "UPDATE task SET spec = ?, metadata = ?, estimate_execution_at = ?, due_at = ?, "
    "next_at = CASE WHEN state = 'RUNNING' THEN ? END, "
    "estimate_end_at = CASE WHEN state = 'PAUSED' THEN ? ELSE 0 END "
    "WHERE id = ? AND owner_id = ? AND attempts = 0 AND in_flight = 0 "
    "AND state IN ('RUNNING', 'PAUSED')"
)
TASK_DUE: LiteralString = (
    "SELECT id, next_at FROM task WHERE next_at IS NOT NULL AND next_at < ? "
    "ORDER BY next_at LIMIT ?"
)
TASK_CLAIM: LiteralString = (
    "UPDATE task SET in_flight = 1, next_at = NULL, attempts = attempts + 1 "
    "WHERE id = ? AND state = 'RUNNING' AND in_flight = 0 AND next_at <= ? "
    "RETURNING attempts, retry_count, due_at, spec"
)
TASK_FINISH: LiteralString = (
    "UPDATE task SET in_flight = 0, state = ?, status_code = ?, response = ?, "
    "estimate_end_at = ?, due_at = coalesce(?, due_at), next_at = ?, "
    "retry_count = retry_count + ? "
    "WHERE id = ? AND state = 'RUNNING' AND in_flight = 1 AND attempts = ?"
)
TASK_REQUEUE: LiteralString = (
    "UPDATE task SET in_flight = 0, next_at = due_at WHERE in_flight = 1 AND state = 'RUNNING'"
)
TASK_REARM: LiteralString = (
    "UPDATE task SET next_at = due_at WHERE state = 'RUNNING' AND in_flight = 0 AND next_at IS NULL"
)
ATTEMPT_INSERT: LiteralString = "INSERT INTO attempt (task_id, number, started_at) VALUES (?, ?, ?)"
ATTEMPT_FINISH: LiteralString = (
    "UPDATE attempt SET finished_at = ?, status_code = ?, error = ?, response = ?, "
    "headers = ?, total_ms = ? WHERE task_id = ? AND number = ?"
)
ATTEMPT_INTERRUPT: LiteralString = (
    "UPDATE attempt SET finished_at = ?, error = 'interrupted: the server stopped' "
    "WHERE finished_at IS NULL"
)
ATTEMPT_LIST: LiteralString = (
    "SELECT number, started_at, finished_at, status_code, error, response, headers, "
    "total_ms FROM attempt WHERE task_id = ? ORDER BY number"
)

# ORDER BY cannot take a placeholder: each allowed wire name maps to a fixed statement
# (the original bound the column name as a value, so its ordering did nothing: W9).
_ORDER_COLUMNS: dict[str, LiteralString] = {
    "createdAt": "created_at",
    "estimateEndAt": "estimate_end_at",
    "estimateExecutionAt": "estimate_execution_at",
}
assert set(_ORDER_COLUMNS) == set(LIST_ORDERS)


def _list_sql(order: str, descending: bool, with_state: bool) -> LiteralString:
    column = _ORDER_COLUMNS[order]
    direction: LiteralString = "DESC" if descending else "ASC"
    where: LiteralString = "owner_id = ? AND state = ?" if with_state else "owner_id = ?"
    return (
        f"SELECT {TASK_COLUMNS} FROM task WHERE {where} "
        f"ORDER BY {column} {direction}, id {direction} LIMIT ? OFFSET ?"
    )


def new_task_id(now_ms: int) -> str:
    """24 characters of [0-9A-Z]: the creation ms in hex (as the original) + 13 random.

    The original used the decimal ms as the suffix, so two tasks in one ms collided (W4).
    """
    # base32 (A-Z, 2-7) of 10 random bytes: 13 characters carry 65 random bits
    return f"{now_ms:011X}"[-11:] + base64.b32encode(os.urandom(10))[:13].decode()


def new_owner_id(now_ms: int) -> str:
    """A ULID: 48-bit ms time and 80 random bits in Crockford base 32 (26 characters)."""
    value = (now_ms & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """The one place where connections are opened and their pragmas set."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    configure(conn, synchronous)
    return conn


def configure(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {_SYNC[synchronous]}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA temp_store = MEMORY")


_SYNC: dict[str, LiteralString] = {"FULL": "FULL", "NORMAL": "NORMAL", "EXTRA": "EXTRA"}


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


class _Writer:
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


class SqliteStore:
    """Store on SQLite. Secrets (specs, responses, metadata) are sealed with ``sealer``."""

    def __init__(
        self,
        path: Path,
        sealer: Sealer,
        synchronous: str = "FULL",
        on_commit: CommitObserver | None = None,
    ) -> None:
        self.path = path
        self._sealer = sealer
        self._synchronous = synchronous
        self._on_commit = on_commit
        self._writer: _Writer | None = None
        self._reader: aiosqlite.Connection | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, self._synchronous)
        migrate(conn)
        self._writer = _Writer(conn, self._on_commit)
        self._writer.start()
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA foreign_keys = ON")
        await self._reader.execute("PRAGMA busy_timeout = 30000")

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer else 0

    async def _write(self, op: Callable[[sqlite3.Connection], T], savepoint: bool = False) -> T:
        """Run ``op`` in the next write batch; ``savepoint`` for ops with several writes."""
        assert self._writer is not None, "store is not open"
        result: T = await self._writer.submit(op, savepoint)
        return result

    async def _read(self, sql: LiteralString, params: Sequence[Any]) -> list[Any]:
        assert self._reader is not None, "store is not open"
        return list(await self._reader.execute_fetchall(sql, params))

    # -- codecs -----------------------------------------------------------------------

    def _seal_spec(self, spec: TaskSpec) -> bytes:
        return self._sealer.seal(_SPEC.dump_json(spec, exclude_defaults=True))

    def _open_spec(self, blob: bytes) -> TaskSpec:
        return _SPEC.validate_json(self._sealer.open(blob))

    def _seal(self, value: bytes | None) -> bytes | None:
        return None if value is None else self._sealer.seal(value)

    def _open(self, value: bytes | None) -> bytes | None:
        return None if value is None else self._sealer.open(value)

    def _task(self, row: Sequence[Any]) -> Task:
        metadata = self._open(row[8])
        return Task(
            id=row[0],
            owner_id=row[1],
            state=TaskState(row[2]),
            created_at_ms=row[3],
            status_code=row[4],
            estimate_end_at_ms=row[5],
            estimate_execution_at_ms=row[6],
            response=self._open(row[7]),
            metadata=None if metadata is None else _METADATA.validate_json(metadata),
            attempts=row[9],
            retry_count=row[10],
            due_at_ms=row[11],
        )

    # -- owners -----------------------------------------------------------------------

    async def create_owner(self, name: str, key_digest: bytes, now_ms: int, limit: int) -> Owner:
        owner = Owner(new_owner_id(now_ms), name, now_ms, 0, limit)

        def op(conn: sqlite3.Connection) -> Owner:
            try:
                conn.execute(OWNER_INSERT, (owner.id, name, key_digest, now_ms, limit))
            except sqlite3.IntegrityError as exc:
                raise Conflict("Owner has already registered") from exc
            return owner

        return await self._write(op)

    async def get_owner(self, owner_id: str) -> Owner:
        rows = await self._read(OWNER_BY_ID, (owner_id,))
        if not rows:
            raise OwnerNotFound()
        return Owner(*rows[0])

    async def owner_key_digest(self, owner_id: str) -> bytes | None:
        rows = await self._read(OWNER_DIGEST, (owner_id,))
        return bytes(rows[0][0]) if rows else None

    async def list_owners(self) -> list[Owner]:
        return [Owner(*row) for row in await self._read(OWNER_ALL, ())]

    async def delete_owner(self, owner_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(OWNER_DELETE, (owner_id,)).rowcount == 1:
                return
            if conn.execute(OWNER_EXISTS, (owner_id,)).fetchone() is None:
                raise OwnerNotFound()
            raise PreconditionFailed()

        await self._write(op)

    # -- tasks ------------------------------------------------------------------------

    async def create_task(self, owner_id: str, new: NewTask, now_ms: int) -> Task:
        task_id = new_task_id(now_ms)
        spec_blob = self._seal_spec(new.spec)
        metadata = new.spec.metadata
        metadata_blob = self._seal(None if metadata is None else _METADATA.dump_json(metadata))

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(OWNER_CAPACITY, (owner_id,)).fetchone()
            if row is None:
                raise OwnerNotFound()
            if row[1] and row[0] >= row[1]:
                raise QueueLimitReached()
            conn.execute(
                TASK_INSERT,
                (
                    task_id,
                    owner_id,
                    now_ms,
                    new.due_at_ms,
                    new.due_at_ms,
                    new.due_at_ms,
                    metadata_blob,
                    spec_blob,
                ),
            )

        await self._write(op)
        return Task(
            id=task_id,
            owner_id=owner_id,
            state=TaskState.RUNNING,
            created_at_ms=now_ms,
            status_code=0,
            estimate_end_at_ms=0,
            estimate_execution_at_ms=new.due_at_ms,
            response=None,
            metadata=metadata,
            due_at_ms=new.due_at_ms,
        )

    async def get_task(self, owner_id: str, task_id: str) -> Task:
        rows = await self._read(TASK_BY_ID, (task_id, owner_id))
        if not rows:
            raise TaskNotFound(task_id)
        return self._task(rows[0])

    async def get_spec(self, owner_id: str, task_id: str) -> TaskSpec:
        rows = await self._read(TASK_SPEC, (task_id, owner_id))
        if not rows:
            raise TaskNotFound(task_id)
        return self._open_spec(rows[0][0])

    async def list_tasks(
        self,
        owner_id: str,
        state: TaskState | None,
        order: str,
        descending: bool,
        limit: int,
        offset: int,
    ) -> list[Task]:
        sql = _list_sql(order, descending, state is not None)
        params: list[Any] = [owner_id]
        if state is not None:
            params.append(state.value)
        rows = await self._read(sql, [*params, limit, offset])
        return [self._task(row) for row in rows]

    async def list_attempts(self, owner_id: str, task_id: str) -> list[AttemptRecord]:
        await self.get_task(owner_id, task_id)
        rows = await self._read(ATTEMPT_LIST, (task_id,))
        return [
            AttemptRecord(
                number=row[0],
                started_at_ms=row[1],
                finished_at_ms=row[2],
                status_code=row[3],
                error=row[4],
                response=self._open(row[5]),
                headers=tuple(tuple(pair) for pair in json.loads(row[6] or "[]")),
                total_ms=row[7] or 0.0,
            )
            for row in rows
        ]

    def _transition(
        self,
        owner_id: str,
        task_id: str,
        sql: LiteralString,
        params: Sequence[Any],
    ) -> Callable[[sqlite3.Connection], Task]:
        """An op that runs one guarded UPDATE and returns the task after it."""

        def op(conn: sqlite3.Connection) -> Task:
            if conn.execute(sql, params).rowcount == 0:
                if conn.execute(TASK_SPEC, (task_id, owner_id)).fetchone() is None:
                    raise TaskNotFound(task_id)
                raise PreconditionFailed()
            return self._task(conn.execute(TASK_BY_ID, (task_id, owner_id)).fetchone())

        return op

    async def pause_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        op = self._transition(owner_id, task_id, TASK_PAUSE, (now_ms, task_id, owner_id))
        return await self._write(op)

    async def revoke_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        op = self._transition(owner_id, task_id, TASK_REVOKE, (now_ms, task_id, owner_id))
        return await self._write(op)

    async def execute_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        def op(conn: sqlite3.Connection) -> Task:
            row = conn.execute(TASK_STATE, (task_id, owner_id)).fetchone()
            if row is None:
                raise TaskNotFound(task_id)
            if row[0] != TaskState.RUNNING:
                raise PreconditionFailed()
            if not row[3]:  # an attempt in flight is left to finish
                conn.execute(TASK_EXECUTE, (now_ms, now_ms, now_ms, task_id, owner_id))
            return self._task(conn.execute(TASK_BY_ID, (task_id, owner_id)).fetchone())

        return await self._write(op)

    async def resume_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        def op(conn: sqlite3.Connection) -> Task:
            row = conn.execute(TASK_STATE, (task_id, owner_id)).fetchone()
            if row is None:
                raise TaskNotFound(task_id)
            if row[0] != TaskState.PAUSED:
                raise PreconditionFailed()
            config = self._open_spec(row[5]).config
            due = resume_due_ms(config, due_at_ms=row[1], paused_at_ms=row[2], now_ms=now_ms)
            conn.execute(TASK_RESUME, (due, due, due, task_id, owner_id))
            return self._task(conn.execute(TASK_BY_ID, (task_id, owner_id)).fetchone())

        return await self._write(op)

    async def delete_task(self, owner_id: str, task_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(TASK_DELETE, (task_id, owner_id)).rowcount == 0:
                raise TaskNotFound(task_id)

        await self._write(op)

    async def edit_task(self, owner_id: str, task_id: str, new: NewTask, now_ms: int) -> Task:
        spec_blob = self._seal_spec(new.spec)
        metadata = new.spec.metadata
        metadata_blob = self._seal(None if metadata is None else _METADATA.dump_json(metadata))
        due = new.due_at_ms
        params = (spec_blob, metadata_blob, due, due, due, now_ms, task_id, owner_id)
        return await self._write(self._transition(owner_id, task_id, TASK_EDIT, params))

    # -- engine -----------------------------------------------------------------------

    async def due_before(self, until_ms: int, limit: int) -> list[tuple[str, int]]:
        return [(row[0], row[1]) for row in await self._read(TASK_DUE, (until_ms, limit))]

    async def claim_due(
        self, task_ids: Sequence[str], now_ms: int, lookahead_ms: int = 0
    ) -> list[Attempt]:
        until = now_ms + lookahead_ms

        def op(conn: sqlite3.Connection) -> list[tuple[str, Any]]:
            claimed = []
            for task_id in task_ids:
                row = conn.execute(TASK_CLAIM, (task_id, until)).fetchone()
                if row is not None:
                    conn.execute(ATTEMPT_INSERT, (task_id, row[0], max(now_ms, row[2])))
                    claimed.append((task_id, row))
            return claimed

        rows = await self._write(op, savepoint=True)
        return [
            Attempt(
                task_id=task_id,
                number=row[0],
                spec=self._open_spec(row[3]),
                retry_count=row[1],
                due_at_ms=row[2],
                started_at_ms=max(now_ms, row[2]),
            )
            for task_id, row in rows
        ]

    async def record_outcomes(self, results: Sequence[Result]) -> list[str]:
        rows = [self._outcome_params(result) for result in results]

        def op(conn: sqlite3.Connection) -> list[str]:
            updated = []
            for result, (attempt_params, task_params) in zip(results, rows, strict=True):
                conn.execute(ATTEMPT_FINISH, attempt_params)
                if conn.execute(TASK_FINISH, task_params).rowcount:
                    updated.append(result.task_id)
            return updated

        return await self._write(op, savepoint=True)

    def _outcome_params(self, result: Result) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        outcome = result.outcome
        attempt_params = (
            result.finished_at_ms,
            outcome.status,
            outcome.error,
            self._seal(outcome.body or None),
            json.dumps(outcome.headers),
            outcome.total_ms,
            result.task_id,
            result.attempt_number,
        )
        retrying = result.next_due_at_ms is not None
        task_params = (
            result.state.value,
            result.status_code,
            self._seal(result.response),
            0 if retrying else result.finished_at_ms,
            result.next_due_at_ms,
            result.next_due_at_ms,
            1 if retrying else 0,
            result.task_id,
            result.attempt_number,
        )
        return attempt_params, task_params

    async def requeue_interrupted(self, now_ms: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            conn.execute(ATTEMPT_INTERRUPT, (now_ms,))
            requeued: int = conn.execute(TASK_REQUEUE).rowcount
            conn.execute(TASK_REARM)
            return requeued

        return await self._write(op, savepoint=True)

    async def backup_to(self, path: Path) -> None:
        def copy() -> None:
            source = sqlite3.connect(self.path)
            target = sqlite3.connect(path)
            try:
                # one step, one read transaction: a stepwise copy restarts on every
                # write by another connection and may never finish on a busy database
                source.backup(target)
            finally:
                target.close()
                source.close()

        await asyncio.get_running_loop().run_in_executor(None, copy)

    # -- recurring schedules ------------------------------------------------------------
    # (SQL in the module's last section, below the class)

    def _schedule(self, row: Sequence[Any]) -> Schedule:
        last_state = None if row[20] is None else TaskState(row[20])
        timing = ScheduleTiming(
            expression=row[3],
            timezone=row[4],
            start_at_ms=row[5],
            end_at_ms=row[6],
            max_runs=row[7],
            misfire=MisfirePolicy(row[8]),
            overlap=OverlapPolicy(row[9]),
            catch_up_limit=row[10],
        )
        return Schedule(
            id=row[0],
            owner_id=row[1],
            name=row[2],
            timing=timing,
            state=ScheduleState(row[11]),
            created_at_ms=row[12],
            updated_at_ms=row[13],
            cursor_ms=row[14],
            runs=row[15],
            last_run_at_ms=row[16],
            last_task_id=row[17],
            next_at_ms=row[18],
            version=row[19],
            last_task_state=last_state,
            last_task_ended_at_ms=row[21] if last_state and last_state.is_terminal else None,
        )

    def _timing_params(self, name: str, timing: ScheduleTiming) -> tuple[Any, ...]:
        return (
            name,
            timing.expression,
            timing.timezone,
            timing.start_at_ms,
            timing.end_at_ms,
            timing.max_runs,
            timing.misfire.value,
            timing.overlap.value,
            timing.catch_up_limit,
        )

    def _template_blobs(self, task: TaskSpec) -> tuple[bytes, bytes | None]:
        metadata = task.metadata
        metadata_blob = self._seal(None if metadata is None else _METADATA.dump_json(metadata))
        return self._seal_spec(task), metadata_blob

    async def create_schedule(
        self,
        owner_id: str,
        new: NewSchedule,
        now_ms: int,
        state: ScheduleState,
        cursor_ms: int,
        next_at_ms: int | None,
    ) -> Schedule:
        schedule_id = new_task_id(now_ms)
        spec_blob, metadata_blob = self._template_blobs(new.task)
        params = (
            schedule_id,
            owner_id,
            *self._timing_params(new.name, new.timing),
            state.value,
            now_ms,
            now_ms,
            cursor_ms,
            next_at_ms,
            spec_blob,
            metadata_blob,
        )

        def op(conn: sqlite3.Connection) -> Schedule:
            try:
                conn.execute(SCHEDULE_INSERT, params)
            except sqlite3.IntegrityError as exc:
                if conn.execute(OWNER_EXISTS, (owner_id,)).fetchone() is None:
                    raise OwnerNotFound() from exc
                raise Conflict("A schedule with this name already exists") from exc
            return self._schedule(conn.execute(SCHEDULE_BY_ID, (schedule_id,)).fetchone())

        return await self._write(op)

    async def get_schedule(self, owner_id: str, key: str) -> Schedule:
        rows = await self._read(SCHEDULE_BY_KEY, (owner_id, key, key))
        if not rows:
            raise NotFound()
        return self._schedule(rows[0])

    async def get_schedule_spec(self, owner_id: str, schedule_id: str) -> TaskSpec:
        rows = await self._read(SCHEDULE_SPEC, (schedule_id, owner_id))
        if not rows:
            raise NotFound()
        return self._open_spec(rows[0][0])

    async def list_schedules(self, owner_id: str, limit: int, offset: int) -> list[Schedule]:
        rows = await self._read(SCHEDULE_LIST, (owner_id, limit, offset))
        return [self._schedule(row) for row in rows]

    async def save_schedule(
        self, schedule: Schedule, task: TaskSpec | None, expected_version: int, now_ms: int
    ) -> Schedule | None:
        s = schedule
        params = (
            *self._timing_params(s.name, s.timing),
            s.state.value,
            now_ms,
            s.cursor_ms,
            s.next_at_ms,
            s.id,
            s.owner_id,
            expected_version,
        )
        blobs = None if task is None else (*self._template_blobs(task), s.id)

        def op(conn: sqlite3.Connection) -> Schedule | None:
            try:
                saved = conn.execute(SCHEDULE_SAVE, params).rowcount
            except sqlite3.IntegrityError as exc:
                raise Conflict("A schedule with this name already exists") from exc
            if not saved:
                if conn.execute(SCHEDULE_SPEC, (s.id, s.owner_id)).fetchone() is None:
                    raise NotFound()
                return None
            if blobs is not None:
                conn.execute(SCHEDULE_SAVE_SPEC, blobs)
            return self._schedule(conn.execute(SCHEDULE_BY_ID, (s.id,)).fetchone())

        return await self._write(op, savepoint=True)

    async def delete_schedule(self, owner_id: str, schedule_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(SCHEDULE_DELETE, (schedule_id, owner_id)).rowcount == 0:
                raise NotFound()

        await self._write(op)

    async def list_schedule_tasks(
        self, owner_id: str, schedule_id: str, limit: int, offset: int
    ) -> list[Task]:
        rows = await self._read(TASK_BY_SCHEDULE, (owner_id, schedule_id, limit, offset))
        return [self._task(row) for row in rows]

    async def due_schedules(self, now_ms: int, lookahead_ms: int, limit: int) -> list[Schedule]:
        rows = await self._read(SCHEDULE_DUE, (now_ms + lookahead_ms, now_ms, limit))
        return [self._schedule(row) for row in rows]

    async def next_schedule_at(self, lookahead_ms: int) -> int | None:
        rows = await self._read(SCHEDULE_NEXT, ())
        if not rows:
            return None
        next_at: int = rows[0][0]
        return next_at - lookahead_ms if rows[0][1] == OverlapPolicy.ALLOW else next_at

    async def fire_schedule(self, fire: ScheduleFire, now_ms: int) -> list[tuple[str, int]] | None:
        task_ids = [new_task_id(now_ms) for _ in fire.due_at_ms]
        last_run = fire.due_at_ms[-1] if fire.due_at_ms else None

        def op(conn: sqlite3.Connection) -> list[tuple[str, int]] | None:
            row = conn.execute(SCHEDULE_GUARD, (fire.schedule_id, fire.version)).fetchone()
            if row is None:
                return None  # changed since it was read: the runner reads it again
            created = []
            for task_id, due in zip(task_ids, fire.due_at_ms, strict=True):
                used, limit = conn.execute(OWNER_CAPACITY, (row[0],)).fetchone()
                if limit and used >= limit:
                    logger.warning(
                        "schedule %s: run for %d refused, the owner's task limit is reached",
                        fire.schedule_id,
                        due,
                    )
                    continue
                params = (task_id, now_ms, due, due, due, fire.schedule_id)
                conn.execute(TASK_INSERT_SCHEDULED, params)
                created.append((task_id, due))
            last_task = created[-1][0] if created else None
            conn.execute(
                SCHEDULE_ADVANCE,
                (
                    fire.cursor_ms,
                    len(fire.due_at_ms),
                    last_run,
                    last_task,
                    fire.next_at_ms,
                    fire.state.value,
                    fire.schedule_id,
                ),
            )
            return created

        return await self._write(op, savepoint=True)


# -- SQL for recurring schedules (static text, placeholders only) -----------------------

_SCHEDULE_COLUMNS: LiteralString = (
    "s.id, s.owner_id, s.name, s.expression, s.timezone, s.start_at, s.end_at, s.max_runs, "
    "s.misfire_policy, s.overlap_policy, s.catch_up_limit, s.state, s.created_at, "
    "s.updated_at, s.cursor_at, s.runs, s.last_run_at, s.last_task_id, s.next_at, s.version, "
    "t.state, t.estimate_end_at"
)
# the last task's state decides the overlap policies; a deleted task no longer overlaps
_SCHEDULE_FROM: LiteralString = "schedule s LEFT JOIN task t ON t.id = s.last_task_id"
# a `queue` schedule waits while its last task is pending: it is not due meanwhile
_SCHEDULE_UNBLOCKED: LiteralString = (
    "(s.overlap_policy <> 'queue' OR t.state IS NULL OR t.state NOT IN ('RUNNING', 'PAUSED'))"
)
SCHEDULE_INSERT: LiteralString = (
    "INSERT INTO schedule (id, owner_id, name, expression, timezone, start_at, end_at, "
    "max_runs, misfire_policy, overlap_policy, catch_up_limit, state, created_at, updated_at, "
    "cursor_at, next_at, spec, metadata) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SCHEDULE_BY_ID: LiteralString = f"SELECT {_SCHEDULE_COLUMNS} FROM {_SCHEDULE_FROM} WHERE s.id = ?"
# names start with a lowercase letter and ids never do, so one key matches one row
SCHEDULE_BY_KEY: LiteralString = (
    f"SELECT {_SCHEDULE_COLUMNS} FROM {_SCHEDULE_FROM} "
    "WHERE s.owner_id = ? AND (s.id = ? OR s.name = ?)"
)
SCHEDULE_LIST: LiteralString = (
    f"SELECT {_SCHEDULE_COLUMNS} FROM {_SCHEDULE_FROM} WHERE s.owner_id = ? "
    "ORDER BY s.name LIMIT ? OFFSET ?"
)
SCHEDULE_SPEC: LiteralString = "SELECT spec FROM schedule WHERE id = ? AND owner_id = ?"
SCHEDULE_SAVE: LiteralString = (
    "UPDATE schedule SET name = ?, expression = ?, timezone = ?, start_at = ?, end_at = ?, "
    "max_runs = ?, misfire_policy = ?, overlap_policy = ?, catch_up_limit = ?, state = ?, "
    "updated_at = ?, cursor_at = ?, next_at = ?, version = version + 1 "
    "WHERE id = ? AND owner_id = ? AND version = ?"
)
SCHEDULE_SAVE_SPEC: LiteralString = "UPDATE schedule SET spec = ?, metadata = ? WHERE id = ?"
SCHEDULE_DELETE: LiteralString = "DELETE FROM schedule WHERE id = ? AND owner_id = ?"
# `allow` schedules are due a lookahead early (schedule_policy.LOOKAHEAD_MS)
SCHEDULE_DUE: LiteralString = (
    f"SELECT {_SCHEDULE_COLUMNS} FROM {_SCHEDULE_FROM} "
    "WHERE s.next_at <= ? AND (s.overlap_policy = 'allow' OR s.next_at <= ?) "
    f"AND {_SCHEDULE_UNBLOCKED} ORDER BY s.next_at LIMIT ?"
)
SCHEDULE_NEXT: LiteralString = (
    f"SELECT s.next_at, s.overlap_policy FROM {_SCHEDULE_FROM} "
    f"WHERE s.next_at IS NOT NULL AND {_SCHEDULE_UNBLOCKED} ORDER BY s.next_at LIMIT 1"
)
SCHEDULE_GUARD: LiteralString = (
    "SELECT owner_id FROM schedule WHERE id = ? AND version = ? AND state = 'ACTIVE'"
)
SCHEDULE_ADVANCE: LiteralString = (
    "UPDATE schedule SET cursor_at = ?, runs = runs + ?, "
    "last_run_at = coalesce(?, last_run_at), last_task_id = coalesce(?, last_task_id), "
    "next_at = ?, state = ?, version = version + 1 WHERE id = ?"
)
# a run's task: the schedule's sealed template and metadata, due at the slot
TASK_INSERT_SCHEDULED: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, schedule_id) "
    "SELECT ?, owner_id, 'RUNNING', ?, ?, ?, ?, metadata, spec, id FROM schedule WHERE id = ?"
)
TASK_BY_SCHEDULE: LiteralString = (
    f"SELECT {TASK_COLUMNS} FROM task WHERE owner_id = ? AND schedule_id = ? "
    "ORDER BY created_at DESC, estimate_execution_at DESC, id DESC LIMIT ? OFFSET ?"
)
