"""SqliteStore: the Store contract on one WAL-mode SQLite file.

Writes go through one writer thread that runs whole batches of operations in a single
transaction (group commit): many registrations or outcomes cost one fsync. Reads use an
aiosqlite connection of their own, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import string
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, LiteralString, TypeVar

import aiosqlite
from pydantic import TypeAdapter

from ..errors import (
    Conflict,
    OwnerNotFound,
    PreconditionFailed,
    QueueLimitReached,
    TaskNotFound,
)
from ..models import (
    Attempt,
    AttemptRecord,
    NewTask,
    Owner,
    Result,
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

_SPEC = TypeAdapter(TaskSpec)
_METADATA = TypeAdapter(tuple[tuple[str, str], ...])
_ID_ALPHABET = string.digits + string.ascii_uppercase
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
    prefix = f"{now_ms:011X}"[-11:]
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(13))


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


class _Writer:
    """Runs queued write operations in batches, one transaction per batch.

    Each operation runs inside a savepoint, so one failing operation (a constraint, a
    precondition) rolls back alone and the rest of the batch still commits.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[tuple[Op, asyncio.Future[Any]]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-writer")

    async def submit(self, op: Op) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            outcomes = await loop.run_in_executor(self._executor, self._run_batch, batch)
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _run_batch(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> list[tuple[bool, Any]]:
        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, op(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
            self.commits += 1
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

    def __init__(self, path: Path, sealer: Sealer, synchronous: str = "FULL") -> None:
        self.path = path
        self._sealer = sealer
        self._synchronous = synchronous
        self._writer: _Writer | None = None
        self._reader: aiosqlite.Connection | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, self._synchronous)
        migrate(conn)
        self._writer = _Writer(conn)
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

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        assert self._writer is not None, "store is not open"
        result: T = await self._writer.submit(op)
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

    async def claim_due(self, task_ids: Sequence[str], now_ms: int) -> list[Attempt]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, Any]]:
            claimed = []
            for task_id in task_ids:
                row = conn.execute(TASK_CLAIM, (task_id, now_ms)).fetchone()
                if row is not None:
                    conn.execute(ATTEMPT_INSERT, (task_id, row[0], now_ms))
                    claimed.append((task_id, row))
            return claimed

        rows = await self._write(op)
        return [
            Attempt(
                task_id=task_id,
                number=row[0],
                spec=self._open_spec(row[3]),
                retry_count=row[1],
                due_at_ms=row[2],
                started_at_ms=now_ms,
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

        return await self._write(op)

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

        return await self._write(op)

    async def backup_to(self, path: Path) -> None:
        def copy() -> None:
            source = sqlite3.connect(self.path)
            target = sqlite3.connect(path)
            try:
                source.backup(target, pages=1024)
            finally:
                target.close()
                source.close()

        await asyncio.get_running_loop().run_in_executor(None, copy)
