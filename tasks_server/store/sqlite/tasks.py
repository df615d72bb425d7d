"""Task operations called by the API (create, read, list, transitions) and their SQL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, LiteralString

from ...errors import (
    TaskNotFound,
    WrongState,
)
from ...models import (
    AttemptRecord,
    NewTask,
    Task,
    TaskSpec,
    TaskState,
)
from ...timing import resume_due_ms
from .. import LIST_ORDERS
from ..listing import host_of
from .base import METADATA, TASK_COLUMNS, StoreBase

TASK_INSERT: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, host) VALUES (?, ?, 'RUNNING', ?, ?, ?, ?, ?, ?, ?)"
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
# retention: finished tasks whose end is older than the cut-off, a bounded batch at a time
TASK_EXPIRE: LiteralString = (
    "DELETE FROM task WHERE id IN (SELECT id FROM task WHERE state IN "
    "('SUCCESS', 'ERROR', 'REVOKED') AND estimate_end_at > 0 AND estimate_end_at < ? "
    "LIMIT ?)"
)
TASK_REVOKE: LiteralString = (
    "UPDATE task SET state = 'REVOKED', status_code = 0, response = NULL, "
    "response_truncated = 0, "
    "estimate_end_at = ?, next_at = NULL, in_flight = 0 "
    "WHERE id = ? AND owner_id = ? AND state IN ('RUNNING', 'PAUSED')"
)
TASK_DELETE: LiteralString = "DELETE FROM task WHERE id = ? AND owner_id = ?"
TASK_EXECUTE: LiteralString = (
    "UPDATE task SET estimate_execution_at = ?, due_at = ?, next_at = ? "
    "WHERE id = ? AND owner_id = ? AND state = 'RUNNING' AND in_flight = 0"
)
RULE_PAUSE = "only a RUNNING task can be paused"
RULE_RESUME = "only a PAUSED task can be resumed"
RULE_REVOKE = "only a RUNNING or PAUSED task can be revoked"
RULE_EXECUTE = "only a RUNNING task can be executed"
RULE_EDIT = "only a RUNNING or PAUSED task that has not made an attempt can be edited"
TASK_EDIT: LiteralString = (
    "UPDATE task SET spec = ?, metadata = ?, host = ?, estimate_execution_at = ?, "
    "due_at = ?, priority = ?, flow_key = ?, "
    "next_at = CASE WHEN state = 'RUNNING' THEN ? END, "
    "estimate_end_at = CASE WHEN state = 'PAUSED' THEN ? ELSE 0 END "
    "WHERE id = ? AND owner_id = ? AND attempts = 0 AND in_flight = 0 "
    "AND state IN ('RUNNING', 'PAUSED')"
)
ATTEMPT_LIST: LiteralString = (
    "SELECT number, started_at, finished_at, status_code, error, response, headers, "
    "total_ms, truncated, cycle, detail FROM attempt WHERE task_id = ? ORDER BY number"
)


# ORDER BY cannot take a placeholder: each allowed wire name maps to a fixed statement
# (the original bound the column name as a value, so its ordering did nothing).
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


class TaskOps(StoreBase):
    """The task operations of SqliteStore, as a task's owner sees them."""

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
        return [self._attempt_record(row) for row in rows]

    def _attempt_record(self, row: Sequence[Any]) -> AttemptRecord:
        error, headers = row[4], json.loads(row[6] or "[]")
        if row[10] is not None:  # sealed; rows from older versions keep the clear columns
            detail = json.loads(self._sealer.open(row[10]))
            error, headers = detail["error"], detail["headers"]
        return AttemptRecord(
            number=row[0],
            started_at_ms=row[1],
            finished_at_ms=row[2],
            status_code=row[3],
            error=error,
            response=self._open(row[5]),
            headers=tuple(tuple(pair) for pair in headers),
            total_ms=row[7] or 0.0,
            truncated=bool(row[8]),
            cycle=row[9],
        )

    def _transition(
        self,
        owner_id: str,
        task_id: str,
        sql: LiteralString,
        params: Sequence[Any],
        rule: str,
    ) -> Callable[[sqlite3.Connection], Task]:
        """An op that runs one guarded UPDATE and returns the task after it; when the
        guard refuses, WrongState says the task's state and ``rule``."""

        def op(conn: sqlite3.Connection) -> Task:
            if conn.execute(sql, params).rowcount == 0:
                row = conn.execute(TASK_STATE, (task_id, owner_id)).fetchone()
                if row is None:
                    raise TaskNotFound(task_id)
                raise WrongState(task_id, row[0], rule)
            return self._task(conn.execute(TASK_BY_ID, (task_id, owner_id)).fetchone())

        return op

    async def pause_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        params = (now_ms, task_id, owner_id)
        op = self._transition(owner_id, task_id, TASK_PAUSE, params, RULE_PAUSE)
        return await self._write(op)

    async def revoke_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        params = (now_ms, task_id, owner_id)
        op = self._transition(owner_id, task_id, TASK_REVOKE, params, RULE_REVOKE)
        return await self._write(op)

    async def execute_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        def op(conn: sqlite3.Connection) -> Task:
            row = conn.execute(TASK_STATE, (task_id, owner_id)).fetchone()
            if row is None:
                raise TaskNotFound(task_id)
            if row[0] != TaskState.RUNNING:
                raise WrongState(task_id, row[0], RULE_EXECUTE)
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
                raise WrongState(task_id, row[0], RULE_RESUME)
            config = self._open_spec(row[5]).config
            due = resume_due_ms(config, due_at_ms=row[1], paused_at_ms=row[2], now_ms=now_ms)
            conn.execute(TASK_RESUME, (due, due, due, task_id, owner_id))
            return self._task(conn.execute(TASK_BY_ID, (task_id, owner_id)).fetchone())

        return await self._write(op)

    async def delete_finished_before(self, before_ms: int, limit: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            deleted: int = conn.execute(TASK_EXPIRE, (before_ms, limit)).rowcount
            return deleted

        return await self._write(op)

    async def delete_task(self, owner_id: str, task_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(TASK_DELETE, (task_id, owner_id)).rowcount == 0:
                raise TaskNotFound(task_id)

        await self._write(op)

    async def edit_task(self, owner_id: str, task_id: str, new: NewTask, now_ms: int) -> Task:
        spec_blob = self._seal_spec(new.spec)
        metadata = new.spec.metadata
        metadata_blob = self._seal(None if metadata is None else METADATA.dump_json(metadata))
        due = new.due_at_ms
        flow = new.spec.config.flow_control
        flow_key = None if flow is None else flow.key
        priority = new.spec.config.priority
        params = (
            *(spec_blob, metadata_blob, host_of(new.spec.request.url), due, due),
            *(priority, flow_key, due, now_ms, task_id, owner_id),
        )
        return await self._write(self._transition(owner_id, task_id, TASK_EDIT, params, RULE_EDIT))
