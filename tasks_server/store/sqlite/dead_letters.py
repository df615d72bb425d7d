"""The dead-letter queue: an owner's tasks in ERROR, listed, replayed or deleted.

A replay moves a task from ERROR back to RUNNING with a new attempt cycle (retries count
from zero again; attempt numbers go on, so the history keeps every cycle)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from typing import Any, LiteralString

from ...errors import PreconditionFailed, QueueLimitReached, TaskNotFound
from ...models import Task, TaskSpec
from .. import DeadLetterFilter
from .base import METADATA, TASK_COLUMNS, StoreBase
from .owners import OWNER_CAPACITY
from .tasks import FLOW_UPSERT, TASK_BY_ID, TASK_SPEC

# the filters are optional: "? IS NULL OR ..." keeps one static statement for them all
DEAD_PAGE: LiteralString = (
    # the two extra columns first: _task reads the rest, whatever TASK_COLUMNS holds
    f"SELECT schedule_id, cycle, {TASK_COLUMNS} FROM task "
    "WHERE owner_id = ? AND state = 'ERROR' "
    "AND (? IS NULL OR estimate_end_at >= ?) AND (? IS NULL OR estimate_end_at < ?) "
    "AND (? IS NULL OR status_code = ?) AND (? IS NULL OR schedule_id = ?) "
    "AND (estimate_end_at < ? OR (estimate_end_at = ? AND id < ?)) "
    "ORDER BY estimate_end_at DESC, id DESC LIMIT ?"
)
TASK_REPLAY: LiteralString = (
    "UPDATE task SET state = 'RUNNING', status_code = 0, response = NULL, "
    "estimate_end_at = 0, estimate_execution_at = ?, due_at = ?, next_at = ?, "
    "retry_count = 0, cycle = cycle + 1, spec = coalesce(?, spec), "
    "metadata = CASE WHEN ? THEN ? ELSE metadata END, "
    # an edited spec brings its own priority and flow-control key
    "priority = CASE WHEN ? THEN ? ELSE priority END, "
    "flow_key = CASE WHEN ? THEN ? ELSE flow_key END "
    "WHERE id = ? AND owner_id = ? AND state = 'ERROR'"
)
DEAD_DELETE: LiteralString = "DELETE FROM task WHERE id = ? AND owner_id = ? AND state = 'ERROR'"

_SCAN_ROWS = 256
_FIRST = (2**62, "")  # a position before every dead letter (newest first)


def _kept_or_new(spec: TaskSpec | None) -> tuple[bool, int, bool, str | None]:
    """TASK_REPLAY's priority and flow-key parameters: the task's own, or the new spec's."""
    if spec is None:
        return False, 0, False, None
    flow = spec.config.flow_control
    return True, spec.config.priority, True, None if flow is None else flow.key


class DeadLetterOps(StoreBase):
    async def list_dead_letters(
        self,
        owner_id: str,
        where: DeadLetterFilter,
        limit: int,
        after: tuple[int, str] | None = None,
    ) -> list[Task]:
        found: list[Task] = []
        position = after or _FIRST
        while len(found) < limit:
            rows = await self._read(DEAD_PAGE, self._page_params(owner_id, where, position))
            for row in rows:
                task = self._dead_task(row)
                if where.matches_label(task.metadata):
                    found.append(task)
                    if len(found) == limit:
                        break
            if len(rows) < _SCAN_ROWS:
                break
            last = self._dead_task(rows[-1])
            position = (last.estimate_end_at_ms, last.id)
        return found

    @staticmethod
    def _page_params(
        owner_id: str, where: DeadLetterFilter, position: tuple[int, str]
    ) -> tuple[Any, ...]:
        return (
            owner_id,
            where.failed_from_ms,
            where.failed_from_ms,
            where.failed_until_ms,
            where.failed_until_ms,
            where.status_code,
            where.status_code,
            where.schedule_id,
            where.schedule_id,
            position[0],
            position[0],
            position[1],
            _SCAN_ROWS,
        )

    def _dead_task(self, row: Sequence[Any]) -> Task:
        return dataclasses.replace(self._task(row[2:]), schedule_id=row[0], cycle=row[1])

    async def replay_task(
        self, owner_id: str, task_id: str, spec: TaskSpec | None, due_at_ms: int, now_ms: int
    ) -> Task:
        spec_blob = None if spec is None else self._seal_spec(spec)
        metadata_blob = None
        if spec is not None and spec.metadata is not None:
            metadata_blob = self._seal(METADATA.dump_json(spec.metadata))
        flow = None if spec is None else spec.config.flow_control
        params = (
            due_at_ms,
            due_at_ms,
            due_at_ms,
            spec_blob,
            spec is not None,
            metadata_blob,
            *_kept_or_new(spec),
            task_id,
            owner_id,
        )

        def op(conn: sqlite3.Connection) -> Task:
            row = conn.execute(OWNER_CAPACITY, (owner_id,)).fetchone()
            if conn.execute(TASK_SPEC, (task_id, owner_id)).fetchone() is None:
                raise TaskNotFound(task_id)
            if row[1] and row[0] >= row[1]:
                raise QueueLimitReached()
            if conn.execute(TASK_REPLAY, params).rowcount == 0:
                raise PreconditionFailed("Only a task in ERROR can be replayed")
            if flow is not None:  # the last registration naming a key sets its limits
                limits = (flow.key, flow.rate, flow.period.ms, flow.parallelism, now_ms)
                conn.execute(FLOW_UPSERT, (owner_id, *limits))
            return self._task(conn.execute(TASK_BY_ID, (task_id, owner_id)).fetchone())

        return await self._write(op)

    async def replay_dead_letters(
        self, owner_id: str, task_ids: Sequence[str], first_due_ms: int, spacing_ms: int
    ) -> list[tuple[str, int]]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            replayed: list[tuple[str, int]] = []
            for task_id in task_ids:
                count, limit = conn.execute(OWNER_CAPACITY, (owner_id,)).fetchone()
                if limit and count >= limit:
                    break
                due = first_due_ms + len(replayed) * spacing_ms
                params = (due, due, due, None, False, None, *_kept_or_new(None), task_id, owner_id)
                if conn.execute(TASK_REPLAY, params).rowcount:
                    replayed.append((task_id, due))
            return replayed

        return await self._write(op, savepoint=True)

    async def delete_dead_letters(self, owner_id: str, task_ids: Sequence[str]) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return sum(
                conn.execute(DEAD_DELETE, (task_id, owner_id)).rowcount for task_id in task_ids
            )

        return await self._write(op, savepoint=True)
