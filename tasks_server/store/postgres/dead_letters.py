"""The dead-letter queue on PostgreSQL: an owner's tasks in ERROR, listed, replayed or
deleted (the same contract as the SQLite store's). A replay notifies the other nodes at
commit, like any change that makes a task claimable."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, LiteralString

from psycopg import AsyncCursor

from ...errors import PreconditionFailed, QueueLimitReached, TaskNotFound
from ...models import Task, TaskSpec
from .. import DeadLetterFilter
from .base import PgBase
from .owners import lock_capacity
from .tasks import FLOW_UPSERT, TASK_BY_ID, TASK_COLUMNS, TASK_SPEC

Cursor = AsyncCursor[tuple[Any, ...]]

DEAD_PAGE: LiteralString = (
    # the two extra columns first: _task reads the rest, whatever TASK_COLUMNS holds
    f"SELECT schedule_id, cycle, {TASK_COLUMNS} FROM task "
    "WHERE owner_id = %s AND state = 'ERROR' "
    "AND (%s::bigint IS NULL OR estimate_end_at >= %s) "
    "AND (%s::bigint IS NULL OR estimate_end_at < %s) "
    "AND (%s::int IS NULL OR status_code = %s) AND (%s::text IS NULL OR schedule_id = %s) "
    "AND (estimate_end_at, id) < (%s, %s) "
    "ORDER BY estimate_end_at DESC, id DESC LIMIT %s"
)
TASK_REPLAY: LiteralString = (
    "UPDATE task SET state = 'RUNNING', status_code = 0, response = NULL, "
    "estimate_end_at = 0, estimate_execution_at = %s, due_at = %s, next_at = %s, "
    "retry_count = 0, cycle = cycle + 1, spec = coalesce(%s, spec), "
    "metadata = CASE WHEN %s THEN %s ELSE metadata END, "
    # an edited spec brings its own priority and flow-control key
    "priority = CASE WHEN %s::boolean THEN %s::integer ELSE priority END, "
    "flow_key = CASE WHEN %s::boolean THEN %s::text ELSE flow_key END "
    "WHERE id = %s AND owner_id = %s AND state = 'ERROR'"
)
DEAD_DELETE: LiteralString = (
    "DELETE FROM task WHERE id = ANY(%s) AND owner_id = %s AND state = 'ERROR'"
)

_SCAN_ROWS = 256
_FIRST = (2**62, "")


def _kept_or_new(spec: TaskSpec | None) -> tuple[bool, int, bool, str | None]:
    """TASK_REPLAY's priority and flow-key parameters: the task's own, or the new spec's."""
    if spec is None:
        return False, 0, False, None
    flow = spec.config.flow_control
    return True, spec.config.priority, True, None if flow is None else flow.key


class PgDeadLetterOps(PgBase):
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
            params = (
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
                position[1],
                _SCAN_ROWS,
            )
            rows = await self._read(DEAD_PAGE, params)
            for row in rows:
                task = dataclasses.replace(self._task(row[2:]), schedule_id=row[0], cycle=row[1])
                if where.matches_label(task.metadata):
                    found.append(task)
                    if len(found) == limit:
                        break
            if len(rows) < _SCAN_ROWS:
                break
            last = self._task(rows[-1][2:])
            position = (last.estimate_end_at_ms, last.id)
        return found

    async def replay_task(
        self, owner_id: str, task_id: str, spec: TaskSpec | None, due_at_ms: int, now_ms: int
    ) -> Task:
        spec_blob = None if spec is None else self._seal_spec(spec)
        metadata_blob = None if spec is None else self._seal_metadata(spec.metadata)
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

        async def op(cur: Cursor) -> Task:
            await cur.execute(TASK_SPEC, (task_id, owner_id))
            if await cur.fetchone() is None:
                raise TaskNotFound(task_id)
            free = await lock_capacity(cur, owner_id)
            if free is not None and free <= 0:
                raise QueueLimitReached()
            await cur.execute(TASK_REPLAY, params)
            if cur.rowcount == 0:
                raise PreconditionFailed("Only a task in ERROR can be replayed")
            if flow is not None:  # the last registration naming a key sets its limits
                limits = (flow.key, flow.rate, flow.period.ms, flow.parallelism, now_ms)
                await cur.execute(FLOW_UPSERT, (owner_id, *limits))
            await self._notify_due(cur, [(task_id, due_at_ms)], now_ms)
            await cur.execute(TASK_BY_ID, (task_id, owner_id))
            row = await cur.fetchone()
            assert row is not None
            return self._task(row)

        return await self._tx(op)

    async def replay_dead_letters(
        self, owner_id: str, task_ids: Sequence[str], first_due_ms: int, spacing_ms: int
    ) -> list[tuple[str, int]]:
        async def op(cur: Cursor) -> list[tuple[str, int]]:
            free = await lock_capacity(cur, owner_id)
            replayed: list[tuple[str, int]] = []
            for task_id in task_ids:
                if free is not None and len(replayed) >= free:
                    break
                due = first_due_ms + len(replayed) * spacing_ms
                await cur.execute(
                    TASK_REPLAY,
                    (due, due, due, None, False, None, *_kept_or_new(None), task_id, owner_id),
                )
                if cur.rowcount:
                    replayed.append((task_id, due))
            await self._notify_due(cur, replayed, first_due_ms)
            return replayed

        return await self._tx(op)

    async def delete_dead_letters(self, owner_id: str, task_ids: Sequence[str]) -> int:
        async def op(cur: Cursor) -> int:
            await cur.execute(DEAD_DELETE, (list(task_ids), owner_id))
            return cur.rowcount

        return await self._tx(op)
