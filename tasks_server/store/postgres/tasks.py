"""Task operations called by the API (create, read, list, transitions) and their SQL
(PostgreSQL). A change that makes a task claimable notifies the other nodes at commit."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, LiteralString, NamedTuple

from psycopg import AsyncCursor

from ...errors import (
    QueueLimitReached,
    TaskNotFound,
    TasksServerError,
    WrongState,
)
from ...models import AttemptRecord, NewTask, Task, TaskSpec, TaskState
from ...timing import resume_due_ms
from .. import LIST_ORDERS
from ..details import open_detail
from ..ids import new_task_id
from ..listing import host_of
from .base import DUE_CHANNEL, PgBase
from .owners import lock_capacity

Cursor = AsyncCursor[tuple[Any, ...]]


class _Insert(NamedTuple):
    """One registration ready to be written: TASK_REGISTER's parameters, the task when
    that INSERT is all it takes (no deduplication id, no flow-control key), and the write
    that does the rest (given the owner's free slots, None: no limit)."""

    params: tuple[Any, ...]
    plain: Task | None
    write: Callable[[Cursor, int | None], Awaitable[Task]]


async def _write_run(cur: Cursor, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        await cur.executemany(TASK_REGISTER, rows)


TASK_COLUMNS: LiteralString = (
    "id, owner_id, state, created_at, status_code, estimate_end_at, estimate_execution_at, "
    "response, metadata, attempts, retry_count, due_at, response_truncated"
)
TASK_INSERT: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, host) VALUES (%s, %s, 'RUNNING', %s, %s, %s, %s, %s, %s, %s)"
)
# a registration: with its priority, deduplication id and flow-control key
TASK_REGISTER: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, priority, dedup_key, dedup_until, flow_key, host) "
    "VALUES (%s, %s, 'RUNNING', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
# registrations with one deduplication id queue up here until the first one commits
DEDUP_LOCK: LiteralString = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))"
TASK_BY_DEDUP: LiteralString = (
    f"SELECT {TASK_COLUMNS}, dedup_until FROM task WHERE owner_id = %s AND dedup_key = %s"
)
TASK_DEDUP_EXPIRE: LiteralString = (
    "UPDATE task SET dedup_key = NULL, dedup_until = NULL WHERE owner_id = %s AND dedup_key = %s"
)
# the last registration naming a key sets its limits (as QStash does)
FLOW_UPSERT: LiteralString = (
    "INSERT INTO flow_control (owner_id, key, rate, period_ms, parallelism, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (owner_id, key) DO UPDATE SET "
    # a new rate starts with its own full burst
    "credit_at = CASE WHEN flow_control.rate IS NOT DISTINCT FROM excluded.rate "
    "AND flow_control.period_ms = excluded.period_ms THEN flow_control.credit_at END, "
    "rate = excluded.rate, period_ms = excluded.period_ms, "
    "parallelism = excluded.parallelism, updated_at = excluded.updated_at"
)
# one round trip for an owner without a queue limit, and a registration with neither a
# deduplication id nor a flow-control key: the insert, and the wake-up of the other nodes
# (NOTIFY is sent at commit); no row when the owner is missing or has a limit
TASK_INSERT_UNLIMITED: LiteralString = (
    "WITH inserted AS ("
    " INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at,"
    " next_at, metadata, spec, priority, host)"
    " SELECT %(id)s, id, 'RUNNING', %(now)s, %(due)s, %(due)s, %(due)s, %(metadata)s,"
    " %(spec)s, %(priority)s, %(host)s FROM owner"
    " WHERE id = %(owner)s AND tasks_in_queue_limit = 0"
    " RETURNING id"
    ") SELECT id, CASE WHEN %(wake)s THEN pg_notify(%(channel)s, %(payload)s) END FROM inserted"
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
RULE_PAUSE = "only a RUNNING task can be paused"
RULE_RESUME = "only a PAUSED task can be resumed"
RULE_REVOKE = "only a RUNNING or PAUSED task can be revoked"
RULE_EXECUTE = "only a RUNNING task can be executed"
RULE_EDIT = "only a RUNNING or PAUSED task that has not made an attempt can be edited"
TASK_EDIT: LiteralString = (
    "UPDATE task SET spec = %s, metadata = %s, host = %s, estimate_execution_at = %s, "
    "due_at = %s, priority = %s, flow_key = %s, "
    "next_at = CASE WHEN state = 'RUNNING' THEN %s::bigint END, "
    "estimate_end_at = CASE WHEN state = 'PAUSED' THEN %s ELSE 0 END "
    "WHERE id = %s AND owner_id = %s AND attempts = 0 AND NOT in_flight "
    "AND state IN ('RUNNING', 'PAUSED') RETURNING state"
)
ATTEMPT_LIST: LiteralString = (
    "SELECT number, started_at, finished_at, status_code, error, response, headers, "
    "total_ms, truncated, cycle, detail FROM attempt WHERE task_id = %s ORDER BY number"
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


TASK_EXPIRE: LiteralString = (
    "DELETE FROM task WHERE id IN (SELECT id FROM task WHERE state IN "
    "('SUCCESS', 'ERROR', 'REVOKED') AND estimate_end_at > 0 AND estimate_end_at < %s "
    "LIMIT %s)"
)


class PgTaskOps(PgBase):
    async def create_task(self, owner_id: str, new: NewTask, now_ms: int) -> Task:
        plain = new.dedup_until_ms is None and new.spec.config.flow_control is None
        if plain and (task := await self._insert_unlimited(owner_id, new, now_ms)) is not None:
            return task
        insert = self._task_insert(owner_id, new, now_ms)

        async def op(cur: Cursor) -> Task:
            free = await lock_capacity(cur, owner_id)
            task = await insert.write(cur, free)
            if not task.deduplicated:
                await self._notify_due(cur, [(task.id, new.due_at_ms)], now_ms)
            return task

        return await self._tx(op)

    async def create_tasks(
        self, owner_id: str, news: Sequence[NewTask], now_ms: int
    ) -> list[Task | TasksServerError]:
        inserts = [self._task_insert(owner_id, new, now_ms) for new in news]

        async def op(cur: Cursor) -> list[Task | TasksServerError]:
            free = await lock_capacity(cur, owner_id)
            results: list[Task | TasksServerError] = []
            # plain registrations (one INSERT each, nothing to look up) go in one
            # executemany, a pipeline of one round trip, where one execute each waited
            # for a round trip per item
            run: list[tuple[Any, ...]] = []
            for insert in inserts:
                if insert.plain is not None:
                    if free is not None and free <= 0:
                        results.append(QueueLimitReached())
                        continue
                    run.append(insert.params)
                    task: Task = insert.plain
                else:
                    await _write_run(cur, run)
                    run = []
                    try:
                        task = await insert.write(cur, free)
                    except TasksServerError as exc:  # checked before any write of the item
                        results.append(exc)
                        continue
                if free is not None and not task.deduplicated:
                    free -= 1
                results.append(task)
            await _write_run(cur, run)
            created = [(t.id, t.estimate_execution_at_ms) for t in results if isinstance(t, Task)]
            await self._notify_due(cur, created, now_ms)
            return results

        return await self._tx(op)

    async def _insert_unlimited(self, owner_id: str, new: NewTask, now_ms: int) -> Task | None:
        """The common case in one statement; None when the owner has a limit (or is
        missing): then the checked path runs."""
        task_id = new_task_id(now_ms)
        due = new.due_at_ms
        params = {
            "id": task_id,
            "owner": owner_id,
            "now": now_ms,
            "due": due,
            "metadata": self._seal_metadata(new.spec.metadata),
            "spec": self._seal_spec(new.spec),
            "priority": new.spec.config.priority,
            "host": host_of(new.spec.request.url),
            "wake": due < now_ms + self._wake_horizon_ms,
            "channel": DUE_CHANNEL,
            "payload": f"{self.node_id}|{task_id}:{due}",
        }
        if not await self._write_one(TASK_INSERT_UNLIMITED, params):
            return None
        if params["wake"]:
            self._firsts[task_id] = due
        return new.registered(task_id, owner_id, now_ms)

    def _task_insert(self, owner_id: str, new: NewTask, now_ms: int) -> _Insert:
        """The write of one registration, given the owner's free slots (None: no limit);
        sealing is done here, before the transaction."""
        task_id = new_task_id(now_ms)
        config = new.spec.config
        dedup_key = config.deduplication_id if new.dedup_until_ms is not None else None
        flow = config.flow_control
        due = new.due_at_ms
        params = (
            *(task_id, owner_id, now_ms, due, due, due),
            self._seal_metadata(new.spec.metadata),
            self._seal_spec(new.spec),
            config.priority,
            dedup_key,
            new.dedup_until_ms if dedup_key is not None else None,
            None if flow is None else flow.key,
            host_of(new.spec.request.url),
        )
        registered = new.registered(task_id, owner_id, now_ms)

        async def write(cur: Cursor, free: int | None) -> Task:
            if dedup_key is not None:
                existing = await self._deduplicated(cur, owner_id, dedup_key, now_ms)
                if existing is not None:
                    return existing
            if free is not None and free <= 0:
                raise QueueLimitReached()
            await cur.execute(TASK_REGISTER, params)
            if flow is not None:
                await cur.execute(
                    FLOW_UPSERT,
                    (owner_id, flow.key, flow.rate, flow.period.ms, flow.parallelism, now_ms),
                )
            return registered

        plain = registered if dedup_key is None and flow is None else None
        return _Insert(params, plain, write)

    async def _deduplicated(self, cur: Cursor, owner_id: str, key: str, now_ms: int) -> Task | None:
        """The live task registered with ``key``; an expired one gives the key up."""
        await cur.execute(DEDUP_LOCK, (f"{owner_id}/{key}",))
        await cur.execute(TASK_BY_DEDUP, (owner_id, key))
        row = await cur.fetchone()
        if row is None:
            return None
        if row[-1] is not None and row[-1] <= now_ms:
            await cur.execute(TASK_DEDUP_EXPIRE, (owner_id, key))
            return None
        return dataclasses.replace(self._task(row[:-1]), deduplicated=True)

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
        # sealed (error and headers together); older versions wrote them in the clear,
        # and an attempt interrupted by an ended lease has a fixed error text
        error, headers = row[4], json.loads(row[6] or "[]")
        if row[10] is not None:
            error, headers = open_detail(self._sealer, bytes(row[10]))
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
        self, owner_id: str, task_id: str, sql: LiteralString, params: Sequence[Any], rule: str
    ) -> Callable[[Cursor], Awaitable[Task]]:
        """An op that runs one guarded UPDATE and returns the task after it; when the
        guard refuses, WrongState says the task's state and ``rule``."""

        async def op(cur: Cursor) -> Task:
            await cur.execute(sql, params)
            if cur.rowcount == 0:
                row = await self._locked_state(cur, owner_id, task_id)
                raise WrongState(task_id, row[0], rule)
            return await self._task_after(cur, owner_id, task_id)

        return op

    async def _task_after(self, cur: Cursor, owner_id: str, task_id: str) -> Task:
        await cur.execute(TASK_BY_ID, (task_id, owner_id))
        row = await cur.fetchone()
        assert row is not None
        return self._task(row)

    async def pause_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        params = (now_ms, task_id, owner_id)
        op = self._transition(owner_id, task_id, TASK_PAUSE, params, RULE_PAUSE)
        return await self._tx(op)

    async def revoke_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        params = (now_ms, task_id, owner_id)
        op = self._transition(owner_id, task_id, TASK_REVOKE, params, RULE_REVOKE)
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
                raise WrongState(task_id, row[0], RULE_EXECUTE)
            if not row[3]:  # an attempt in flight is left to finish
                await cur.execute(TASK_EXECUTE, (now_ms, now_ms, now_ms, task_id, owner_id))
                await self._notify_due(cur, [(task_id, now_ms)], now_ms)
            return await self._task_after(cur, owner_id, task_id)

        return await self._tx(op)

    async def resume_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        async def op(cur: Cursor) -> Task:
            row = await self._locked_state(cur, owner_id, task_id)
            if row[0] != TaskState.PAUSED:
                raise WrongState(task_id, row[0], RULE_RESUME)
            config = self._open_spec(row[5]).config
            due = resume_due_ms(config, due_at_ms=row[1], paused_at_ms=row[2], now_ms=now_ms)
            await cur.execute(TASK_RESUME, (due, due, due, task_id, owner_id))
            await self._notify_due(cur, [(task_id, due)], now_ms)
            return await self._task_after(cur, owner_id, task_id)

        return await self._tx(op)

    async def delete_finished_before(self, before_ms: int, limit: int) -> int:
        async def op(cur: Cursor) -> int:
            await cur.execute(TASK_EXPIRE, (before_ms, limit))
            return cur.rowcount

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
        flow = new.spec.config.flow_control
        flow_key = None if flow is None else flow.key
        priority = new.spec.config.priority
        params = (
            *(spec_blob, metadata_blob, host_of(new.spec.request.url), due, due),
            *(priority, flow_key, due, now_ms, task_id, owner_id),
        )
        transition = self._transition(owner_id, task_id, TASK_EDIT, params, RULE_EDIT)

        async def op(cur: Cursor) -> Task:
            task = await transition(cur)
            if task.state is TaskState.RUNNING:
                await self._notify_due(cur, [(task_id, due)], now_ms)
            return task

        return await self._tx(op)
