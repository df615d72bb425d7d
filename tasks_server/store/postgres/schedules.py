"""Recurring schedule operations and their SQL (PostgreSQL). Only the schedule leader
fires slots; fire_schedule locks the schedule row and checks its version, so even two
nodes that both believed they lead could not fire one slot twice."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, LiteralString

from psycopg import AsyncCursor, errors

from ...errors import (
    Conflict,
    NotFound,
    OwnerNotFound,
)
from ...models import (
    DueTask,
    MisfirePolicy,
    NewSchedule,
    OverlapPolicy,
    Schedule,
    ScheduleFire,
    ScheduleState,
    ScheduleTarget,
    ScheduleTiming,
    Task,
    TaskSpec,
    TaskState,
)
from ...workflows.model import NewWorkflowSchedule, WorkflowDefinition
from ...workflows.steps import decode_definition, encode_definition
from ..ids import new_task_id
from ..listing import host_of
from .base import METADATA, PgBase
from .owners import lock_capacity
from .tasks import TASK_COLUMNS

Cursor = AsyncCursor[tuple[Any, ...]]

logger = logging.getLogger(__name__)

# -- SQL for recurring schedules (static text, placeholders only) -----------------------

_SCHEDULE_COLUMNS: LiteralString = (
    "s.id, s.owner_id, s.name, s.expression, s.timezone, s.start_at, s.end_at, s.max_runs, "
    "s.misfire_policy, s.overlap_policy, s.catch_up_limit, s.state, s.created_at, "
    "s.updated_at, s.cursor_at, s.runs, s.last_run_at, s.last_task_id, s.next_at, s.version, "
    "coalesce(t.state, CASE r.state WHEN 'PENDING' THEN 'RUNNING' "
    "WHEN 'CANCELLED' THEN 'REVOKED' ELSE r.state END), "
    "coalesce(t.estimate_end_at, r.finished_at), s.target"
)
# the last task's (or, for a workflow schedule, run's) state decides the overlap policies,
# a run's read in a task's words; a deleted one no longer overlaps
_SCHEDULE_FROM: LiteralString = (
    "schedule s LEFT JOIN task t ON t.id = s.last_task_id "
    "LEFT JOIN workflow_run r ON r.id = s.last_task_id"
)
# a `queue` schedule waits while its last task or run is pending: it is not due meanwhile
_SCHEDULE_UNBLOCKED: LiteralString = (
    "(s.overlap_policy <> 'queue' OR ((t.state IS NULL OR t.state NOT IN ('RUNNING', 'PAUSED')) "
    "AND (r.state IS NULL OR r.state NOT IN ('PENDING', 'RUNNING'))))"
)
SCHEDULE_INSERT: LiteralString = (
    "INSERT INTO schedule (id, owner_id, name, expression, timezone, start_at, end_at, "
    "max_runs, misfire_policy, overlap_policy, catch_up_limit, state, created_at, updated_at, "
    "cursor_at, next_at, spec, metadata, host, target) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
SCHEDULE_BY_ID: LiteralString = f"SELECT {_SCHEDULE_COLUMNS} FROM {_SCHEDULE_FROM} WHERE s.id = %s"
# names start with a lowercase letter and ids never do, so one key matches one row
SCHEDULE_BY_KEY: LiteralString = (
    f"SELECT {_SCHEDULE_COLUMNS} FROM {_SCHEDULE_FROM} "
    "WHERE s.owner_id = %s AND (s.id = %s OR s.name = %s)"
)
SCHEDULE_LIST: LiteralString = (
    f"SELECT {_SCHEDULE_COLUMNS} FROM {_SCHEDULE_FROM} WHERE s.owner_id = %s "
    "ORDER BY s.name LIMIT %s OFFSET %s"
)
# a task schedule's template; a workflow schedule's definition
SCHEDULE_SPEC: LiteralString = (
    "SELECT spec FROM schedule WHERE id = %s AND owner_id = %s AND target = 'task'"
)
SCHEDULE_WORKFLOW: LiteralString = (
    "SELECT spec FROM schedule WHERE id = %s AND owner_id = %s AND target = 'workflow'"
)
SCHEDULE_EXISTS: LiteralString = "SELECT 1 FROM schedule WHERE id = %s AND owner_id = %s"
SCHEDULE_SAVE: LiteralString = (
    "UPDATE schedule SET name = %s, expression = %s, timezone = %s, start_at = %s, end_at = %s, "
    "max_runs = %s, misfire_policy = %s, overlap_policy = %s, catch_up_limit = %s, state = %s, "
    "updated_at = %s, cursor_at = %s, next_at = %s, version = version + 1 "
    "WHERE id = %s AND owner_id = %s AND version = %s"
)
SCHEDULE_SAVE_SPEC: LiteralString = (
    "UPDATE schedule SET spec = %s, metadata = %s, host = %s WHERE id = %s"
)
SCHEDULE_DELETE: LiteralString = "DELETE FROM schedule WHERE id = %s AND owner_id = %s"
# `allow` schedules are due a lookahead early (schedule_policy.LOOKAHEAD_MS)
SCHEDULE_DUE: LiteralString = (
    f"SELECT {_SCHEDULE_COLUMNS} FROM {_SCHEDULE_FROM} "
    "WHERE s.next_at <= %s AND (s.overlap_policy = 'allow' OR s.next_at <= %s) "
    f"AND {_SCHEDULE_UNBLOCKED} ORDER BY s.next_at LIMIT %s"
)
SCHEDULE_NEXT: LiteralString = (
    f"SELECT s.next_at, s.overlap_policy FROM {_SCHEDULE_FROM} "
    f"WHERE s.next_at IS NOT NULL AND {_SCHEDULE_UNBLOCKED} ORDER BY s.next_at LIMIT 1"
)
SCHEDULE_GUARD: LiteralString = (
    "SELECT owner_id, target, spec FROM schedule "
    "WHERE id = %s AND version = %s AND state = 'ACTIVE' FOR UPDATE"
)
SCHEDULE_ADVANCE: LiteralString = (
    "UPDATE schedule SET cursor_at = %s, runs = runs + %s, "
    "last_run_at = coalesce(%s::bigint, last_run_at), "
    "last_task_id = coalesce(%s::text, last_task_id), "
    "next_at = %s, state = %s, version = version + 1 WHERE id = %s"
)
# a run's task: the schedule's sealed template and metadata, due at the slot
# the template's priority and flow-control key come with it, as for a registration
TASK_INSERT_SCHEDULED: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, schedule_id, host, priority, flow_key) "
    "SELECT %s, owner_id, 'RUNNING', %s, %s, %s, %s, metadata, spec, id, host, %s, %s "
    "FROM schedule WHERE id = %s"
)
SCHEDULE_TEMPLATE: LiteralString = "SELECT owner_id, spec, target FROM schedule WHERE id = %s"
# a key a schedule names exists with the template's limits; an edit of the schedule (or a
# registration naming the key) sets them, as "the last registration wins"
FLOW_INSERT_MISSING: LiteralString = (
    "INSERT INTO flow_control (owner_id, key, rate, period_ms, parallelism, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (owner_id, key) DO NOTHING"
)
TASK_BY_SCHEDULE: LiteralString = (
    f"SELECT {TASK_COLUMNS} FROM task WHERE owner_id = %s AND schedule_id = %s "
    "ORDER BY created_at DESC, estimate_execution_at DESC, id DESC LIMIT %s OFFSET %s"
)


class PgScheduleOps(PgBase):
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
            target=ScheduleTarget(row[22]),
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

    def _template_blobs(self, task: TaskSpec) -> tuple[bytes, bytes | None, str | None]:
        metadata = task.metadata
        metadata_blob = self._seal(None if metadata is None else METADATA.dump_json(metadata))
        return self._seal_spec(task), metadata_blob, host_of(task.request.url)

    async def create_schedule(
        self,
        owner_id: str,
        new: NewSchedule,
        now_ms: int,
        state: ScheduleState,
        cursor_ms: int,
        next_at_ms: int | None,
    ) -> Schedule:
        blobs = self._template_blobs(new.task)
        progress = (state, cursor_ms, next_at_ms)
        return await self._insert_schedule(
            owner_id, new.name, new.timing, now_ms, progress, blobs, ScheduleTarget.TASK
        )

    async def create_workflow_schedule(
        self,
        owner_id: str,
        new: NewWorkflowSchedule,
        now_ms: int,
        state: ScheduleState,
        cursor_ms: int,
        next_at_ms: int | None,
    ) -> Schedule:
        blobs = (self._sealer.seal(encode_definition(new.workflow)), None, None)
        progress = (state, cursor_ms, next_at_ms)
        return await self._insert_schedule(
            owner_id, new.name, new.timing, now_ms, progress, blobs, ScheduleTarget.WORKFLOW
        )

    async def _insert_schedule(
        self,
        owner_id: str,
        name: str,
        timing: ScheduleTiming,
        now_ms: int,
        progress: tuple[ScheduleState, int, int | None],
        blobs: tuple[bytes, bytes | None, str | None],
        target: ScheduleTarget,
    ) -> Schedule:
        schedule_id = new_task_id(now_ms)
        state, cursor_ms, next_at_ms = progress
        params = (
            *(schedule_id, owner_id, *self._timing_params(name, timing)),
            *(state.value, now_ms, now_ms, cursor_ms, next_at_ms, *blobs, target.value),
        )

        async def op(cur: Cursor) -> Schedule:
            await cur.execute(SCHEDULE_INSERT, params)
            await self._notify_schedule(cur, next_at_ms)
            return await self._schedule_after(cur, schedule_id)

        try:
            return await self._tx(op)
        except errors.ForeignKeyViolation as exc:
            raise OwnerNotFound() from exc
        except errors.UniqueViolation as exc:
            raise Conflict("A schedule with this name already exists") from exc

    async def _schedule_after(self, cur: Cursor, schedule_id: str) -> Schedule:
        await cur.execute(SCHEDULE_BY_ID, (schedule_id,))
        row = await cur.fetchone()
        assert row is not None
        return self._schedule(row)

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

    async def get_schedule_workflow(self, owner_id: str, schedule_id: str) -> WorkflowDefinition:
        rows = await self._read(SCHEDULE_WORKFLOW, (schedule_id, owner_id))
        if not rows:
            raise NotFound()
        return decode_definition(self._sealer.open(bytes(rows[0][0])))

    async def list_schedules(self, owner_id: str, limit: int, offset: int) -> list[Schedule]:
        rows = await self._read(SCHEDULE_LIST, (owner_id, limit, offset))
        return [self._schedule(row) for row in rows]

    async def save_schedule(
        self,
        schedule: Schedule,
        task: TaskSpec | None,
        expected_version: int,
        now_ms: int,
        workflow: WorkflowDefinition | None = None,
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
        if workflow is not None:
            blobs = (self._sealer.seal(encode_definition(workflow)), None, None, s.id)

        async def op(cur: Cursor) -> Schedule | None:
            await cur.execute(SCHEDULE_SAVE, params)
            if not cur.rowcount:
                await cur.execute(SCHEDULE_EXISTS, (s.id, s.owner_id))
                if await cur.fetchone() is None:
                    raise NotFound()
                return None
            if blobs is not None:
                await cur.execute(SCHEDULE_SAVE_SPEC, blobs)
            await self._notify_schedule(cur, s.next_at_ms)
            return await self._schedule_after(cur, s.id)

        try:
            return await self._tx(op)
        except errors.UniqueViolation as exc:
            raise Conflict("A schedule with this name already exists") from exc

    async def delete_schedule(self, owner_id: str, schedule_id: str) -> None:
        async def op(cur: Cursor) -> None:
            await cur.execute(SCHEDULE_DELETE, (schedule_id, owner_id))
            if cur.rowcount == 0:
                raise NotFound()

        await self._tx(op)

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

    async def fire_schedule(self, fire: ScheduleFire, now_ms: int) -> list[DueTask] | None:
        task_ids = [new_task_id(now_ms) for _ in fire.due_at_ms]
        last_run = fire.due_at_ms[-1] if fire.due_at_ms else None
        # read before the transaction: an edit after this read changes the version, and
        # the guard below then refuses the plan
        template = await self._read(SCHEDULE_TEMPLATE, (fire.schedule_id,))
        if not template:
            return None
        if template[0][2] == ScheduleTarget.WORKFLOW:
            return await self._fire_workflow(fire, now_ms)
        owner_id = template[0][0]
        config = self._open_spec(template[0][1]).config
        flow = config.flow_control
        ref = None if flow is None else (owner_id, flow.key)

        async def op(cur: Cursor) -> list[DueTask] | None:
            await cur.execute(SCHEDULE_GUARD, (fire.schedule_id, fire.version))
            row = await cur.fetchone()
            if row is None:
                return None  # changed since it was read: the runner reads it again
            if flow is not None:
                limits = (flow.key, flow.rate, flow.period.ms, flow.parallelism, now_ms)
                await cur.execute(FLOW_INSERT_MISSING, (owner_id, *limits))
            free = await lock_capacity(cur, row[0])
            created: list[DueTask] = []
            for task_id, due in zip(task_ids, fire.due_at_ms, strict=True):
                if free is not None and free <= 0:
                    logger.warning(
                        "schedule %s: run for %d refused, the owner's task limit is reached",
                        fire.schedule_id,
                        due,
                    )
                    continue
                params = (task_id, now_ms, due, due, due, config.priority)
                await cur.execute(
                    TASK_INSERT_SCHEDULED,
                    (*params, None if flow is None else flow.key, fire.schedule_id),
                )
                created.append(DueTask(task_id, due, config.priority, ref))
                free = None if free is None else free - 1
            last_task = created[-1][0] if created else None
            await cur.execute(
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
            await self._notify_due(cur, [(c.task_id, c.due_at_ms) for c in created], now_ms)
            return created

        return await self._tx(op)

    async def _fire_workflow(self, fire: ScheduleFire, now_ms: int) -> list[DueTask] | None:
        """fire_schedule for a schedule that starts workflow runs: the runs (id, slot),
        their first steps announced once committed."""
        after: list[Callable[[], None]] = []

        async def op(cur: Cursor) -> list[DueTask] | None:
            await cur.execute(SCHEDULE_GUARD, (fire.schedule_id, fire.version))
            row = await cur.fetchone()
            if row is None:
                return None  # changed since it was read: the runner reads it again
            runs, announce = await self._fire_runs(cur, fire, row[0], bytes(row[2]), now_ms)
            after.append(announce)
            return runs

        created = await self._tx(op)
        for announce in after:
            announce()
        return created

    async def _fire_runs(
        self, cur: Cursor, fire: ScheduleFire, owner_id: str, definition: bytes, now_ms: int
    ) -> tuple[list[DueTask], Callable[[], None]]:
        """Start a workflow run per slot of ``fire`` and advance the schedule, in the
        caller's transaction; returns the runs (id, slot) and what to announce after the
        commit. The workflow operations of the store implement it."""
        raise NotImplementedError


async def advance_schedule(cur: Cursor, fire: ScheduleFire, created: Sequence[DueTask]) -> None:
    """Move the schedule's durable last-fired slot and progress past ``fire``, in the
    transaction that created what ``created`` lists (id, slot)."""
    last_run = fire.due_at_ms[-1] if fire.due_at_ms else None
    last_id = created[-1][0] if created else None
    params = (fire.cursor_ms, len(fire.due_at_ms), last_run, last_id, fire.next_at_ms)
    await cur.execute(SCHEDULE_ADVANCE, (*params, fire.state.value, fire.schedule_id))
