"""Task operations called by the API (create, read, list, transitions) and their SQL
(PostgreSQL). A change that makes a task claimable notifies the other nodes at commit."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, LiteralString

from psycopg import AsyncCursor

from ...errors import PreconditionFailed, QueueLimitReached, TaskNotFound
from ...models import AttemptRecord, NewTask, Task, TaskSpec, TaskState
from ...timing import resume_due_ms
from .. import LIST_ORDERS
from ..ids import new_task_id
from .base import PgBase
from .owners import lock_capacity

Cursor = AsyncCursor[tuple[Any, ...]]

TASK_COLUMNS: LiteralString = (
    "id, owner_id, state, created_at, status_code, estimate_end_at, estimate_execution_at, "
    "response, metadata, attempts, retry_count, due_at, response_truncated"
)
TASK_INSERT: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec) VALUES (%s, %s, 'RUNNING', %s, %s, %s, %s, %s, %s)"
)
TASK_BY_ID: LiteralString = f"SELECT {TASK_COLUMNS} FROM task WHERE id = %s AND owner_id = %s"
TASK_STATE: LiteralString = (
    "SELECT state, due_at, estimate_end_at, in_flight, attempts, spec "
    "FROM task WHERE id = %s AND owner_id = %s FOR UPDATE"
)
TASK_SPEC: LiteralString = "SELECT spec FROM task WHERE id = %s AND owner_id = %s"
TASK_PAUSE: LiteralString = (
    "UPDATE task SET state = 'PAUSED', estimate_end_at = %s, next_at = NULL, in_flight = false, "
    "lease_owner = NULL, lease_until = NULL "
    "WHERE id = %s AND owner_id = %s AND state = 'RUNNING'"
)
TASK_RESUME: LiteralString = (
    "UPDATE task SET state = 'RUNNING', estimate_end_at = 0, estimate_execution_at = %s, "
    "due_at = %s, next_at = %s WHERE id = %s AND owner_id = %s AND state = 'PAUSED'"
)
TASK_REVOKE: LiteralString = (
    "UPDATE task SET state = 'REVOKED', status_code = 0, response = NULL, "
    "response_truncated = false, "
    "estimate_end_at = %s, next_at = NULL, in_flight = false, lease_owner = NULL, "
    "lease_until = NULL WHERE id = %s AND owner_id = %s AND state IN ('RUNNING', 'PAUSED')"
)
TASK_DELETE: LiteralString = "DELETE FROM task WHERE id = %s AND owner_id = %s"
TASK_EXECUTE: LiteralString = (
    "UPDATE task SET estimate_execution_at = %s, due_at = %s, next_at = %s "
    "WHERE id = %s AND owner_id = %s AND state = 'RUNNING' AND NOT in_flight"
)
TASK_EDIT: LiteralString = (
    "UPDATE task SET spec = %s, metadata = %s, estimate_execution_at = %s, due_at = %s, "
    "next_at = CASE WHEN state = 'RUNNING' THEN %s::bigint END, "
    "estimate_end_at = CASE WHEN state = 'PAUSED' THEN %s ELSE 0 END "
    "WHERE id = %s AND owner_id = %s AND attempts = 0 AND NOT in_flight "
    "AND state IN ('RUNNING', 'PAUSED') RETURNING state"
)
ATTEMPT_LIST: LiteralString = (
    "SELECT number, started_at, finished_at, status_code, error, response, headers, "
    "total_ms, truncated, cycle FROM attempt WHERE task_id = %s ORDER BY number"
)

_ORDER_COLUMNS: dict[str, LiteralString] = {
    "createdAt": "created_at",
    "estimateEndAt": "estimate_end_at",
    "estimateExecutionAt": "estimate_execution_at",
}
assert set(_ORDER_COLUMNS) == set(LIST_ORDERS)


def _list_sql(order: str, descending: bool, with_state: bool) -> LiteralString:
    column = _ORDER_COLUMNS[order]
    direction: LiteralString = "DESC" if descending else "ASC"
    where: LiteralString = "owner_id = %s AND state = %s" if with_state else "owner_id = %s"
    return (
        f"SELECT {TASK_COLUMNS} FROM task WHERE {where} "
        f"ORDER BY {column} {direction}, id {direction} LIMIT %s OFFSET %s"
    )


class PgTaskOps(PgBase):
    async def create_task(self, owner_id: str, new: NewTask, now_ms: int) -> Task:
        task_id = new_task_id(now_ms)
        spec_blob = self._seal_spec(new.spec)
        metadata = new.spec.metadata
        metadata_blob = self._seal_metadata(metadata)
        due = new.due_at_ms

        async def op(cur: Cursor) -> None:
            free = await lock_capacity(cur, owner_id)
            if free is not None and free <= 0:
                raise QueueLimitReached()
            params = (task_id, owner_id, now_ms, due, due, due, metadata_blob, spec_blob)
            await cur.execute(TASK_INSERT, params)
            await self._notify_due(cur, [(task_id, due)], now_ms)

        await self._tx(op)
        return Task(
            id=task_id,
            owner_id=owner_id,
            state=TaskState.RUNNING,
            created_at_ms=now_ms,
            status_code=0,
            estimate_end_at_ms=0,
            estimate_execution_at_ms=due,
            response=None,
            metadata=metadata,
            due_at_ms=due,
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
                truncated=bool(row[8]),
                cycle=row[9],
            )
            for row in rows
        ]

    def _transition(
        self, owner_id: str, task_id: str, sql: LiteralString, params: Sequence[Any]
    ) -> Callable[[Cursor], Awaitable[Task]]:
        """An op that runs one guarded UPDATE and returns the task after it."""

        async def op(cur: Cursor) -> Task:
            await cur.execute(sql, params)
            if cur.rowcount == 0:
                await cur.execute(TASK_SPEC, (task_id, owner_id))
                if await cur.fetchone() is None:
                    raise TaskNotFound(task_id)
                raise PreconditionFailed()
            return await self._task_after(cur, owner_id, task_id)

        return op

    async def _task_after(self, cur: Cursor, owner_id: str, task_id: str) -> Task:
        await cur.execute(TASK_BY_ID, (task_id, owner_id))
        row = await cur.fetchone()
        assert row is not None
        return self._task(row)

    async def pause_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        op = self._transition(owner_id, task_id, TASK_PAUSE, (now_ms, task_id, owner_id))
        return await self._tx(op)

    async def revoke_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        op = self._transition(owner_id, task_id, TASK_REVOKE, (now_ms, task_id, owner_id))
        return await self._tx(op)

    async def _locked_state(self, cur: Cursor, owner_id: str, task_id: str) -> tuple[Any, ...]:
        await cur.execute(TASK_STATE, (task_id, owner_id))
        row = await cur.fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return row

    async def execute_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        async def op(cur: Cursor) -> Task:
            row = await self._locked_state(cur, owner_id, task_id)
            if row[0] != TaskState.RUNNING:
                raise PreconditionFailed()
            if not row[3]:  # an attempt in flight is left to finish
                await cur.execute(TASK_EXECUTE, (now_ms, now_ms, now_ms, task_id, owner_id))
                await self._notify_due(cur, [(task_id, now_ms)], now_ms)
            return await self._task_after(cur, owner_id, task_id)

        return await self._tx(op)

    async def resume_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        async def op(cur: Cursor) -> Task:
            row = await self._locked_state(cur, owner_id, task_id)
            if row[0] != TaskState.PAUSED:
                raise PreconditionFailed()
            config = self._open_spec(row[5]).config
            due = resume_due_ms(config, due_at_ms=row[1], paused_at_ms=row[2], now_ms=now_ms)
            await cur.execute(TASK_RESUME, (due, due, due, task_id, owner_id))
            await self._notify_due(cur, [(task_id, due)], now_ms)
            return await self._task_after(cur, owner_id, task_id)

        return await self._tx(op)

    async def delete_task(self, owner_id: str, task_id: str) -> None:
        async def op(cur: Cursor) -> None:
            await cur.execute(TASK_DELETE, (task_id, owner_id))
            if cur.rowcount == 0:
                raise TaskNotFound(task_id)

        await self._tx(op)

    async def edit_task(self, owner_id: str, task_id: str, new: NewTask, now_ms: int) -> Task:
        spec_blob = self._seal_spec(new.spec)
        metadata_blob = self._seal_metadata(new.spec.metadata)
        due = new.due_at_ms
        params = (spec_blob, metadata_blob, due, due, due, now_ms, task_id, owner_id)
        transition = self._transition(owner_id, task_id, TASK_EDIT, params)

        async def op(cur: Cursor) -> Task:
            task = await transition(cur)
            if task.state is TaskState.RUNNING:
                await self._notify_due(cur, [(task_id, due)], now_ms)
            return task

        return await self._tx(op)
