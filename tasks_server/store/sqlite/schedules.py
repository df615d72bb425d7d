"""Recurring schedule operations and their SQL."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, LiteralString

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
from .base import METADATA, TASK_COLUMNS, StoreBase
from .owners import OWNER_CAPACITY, OWNER_EXISTS

logger = logging.getLogger(__name__)

# -- SQL for recurring schedules (static text, placeholders only) -----------------------

# a workflow schedule's last run, in the words of a task's state (for the overlap policies)
_RUN_AS_TASK_STATE: LiteralString = (
    "CASE r.state WHEN 'PENDING' THEN 'RUNNING' WHEN 'CANCELLED' THEN 'REVOKED' ELSE r.state END"
)
# (name the row is read by, column): the schedule's own columns, then its last task's
# state and end, which the overlap policies need; schedule_from_row reads them by name
_SCHEDULE_FIELDS: tuple[tuple[str, LiteralString], ...] = (
    ("id", "s.id"),
    ("owner_id", "s.owner_id"),
    ("name", "s.name"),
    ("expression", "s.expression"),
    ("timezone", "s.timezone"),
    ("start_at", "s.start_at"),
    ("end_at", "s.end_at"),
    ("max_runs", "s.max_runs"),
    ("misfire_policy", "s.misfire_policy"),
    ("overlap_policy", "s.overlap_policy"),
    ("catch_up_limit", "s.catch_up_limit"),
    ("state", "s.state"),
    ("created_at", "s.created_at"),
    ("updated_at", "s.updated_at"),
    ("cursor_at", "s.cursor_at"),
    ("runs", "s.runs"),
    ("last_run_at", "s.last_run_at"),
    ("last_task_id", "s.last_task_id"),
    ("next_at", "s.next_at"),
    ("version", "s.version"),
    ("last_task_state", f"coalesce(t.state, {_RUN_AS_TASK_STATE})"),
    ("last_task_end_at", "coalesce(t.estimate_end_at, r.finished_at)"),
    ("target", "s.target"),
)
_SCHEDULE_COLUMNS: LiteralString = ", ".join(column for _, column in _SCHEDULE_FIELDS)


def schedule_from_row(row: Sequence[Any]) -> Schedule:
    """A Schedule from a row of ``_SCHEDULE_COLUMNS``."""
    c = dict(zip((name for name, _ in _SCHEDULE_FIELDS), row, strict=True))
    last_state = None if c["last_task_state"] is None else TaskState(c["last_task_state"])
    timing = ScheduleTiming(
        expression=c["expression"],
        timezone=c["timezone"],
        start_at_ms=c["start_at"],
        end_at_ms=c["end_at"],
        max_runs=c["max_runs"],
        misfire=MisfirePolicy(c["misfire_policy"]),
        overlap=OverlapPolicy(c["overlap_policy"]),
        catch_up_limit=c["catch_up_limit"],
    )
    ended = c["last_task_end_at"] if last_state and last_state.is_terminal else None
    return Schedule(
        id=c["id"],
        owner_id=c["owner_id"],
        name=c["name"],
        timing=timing,
        state=ScheduleState(c["state"]),
        created_at_ms=c["created_at"],
        updated_at_ms=c["updated_at"],
        cursor_ms=c["cursor_at"],
        runs=c["runs"],
        last_run_at_ms=c["last_run_at"],
        last_task_id=c["last_task_id"],
        next_at_ms=c["next_at"],
        version=c["version"],
        last_task_state=last_state,
        last_task_ended_at_ms=ended,
        target=ScheduleTarget(c["target"]),
    )


# the last task's (or run's) state decides the overlap policies; a deleted one no longer
# overlaps
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
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
# a task schedule's template; a workflow schedule's definition
SCHEDULE_SPEC: LiteralString = (
    "SELECT spec FROM schedule WHERE id = ? AND owner_id = ? AND target = 'task'"
)
SCHEDULE_WORKFLOW: LiteralString = (
    "SELECT spec FROM schedule WHERE id = ? AND owner_id = ? AND target = 'workflow'"
)
SCHEDULE_EXISTS: LiteralString = "SELECT 1 FROM schedule WHERE id = ? AND owner_id = ?"
SCHEDULE_SAVE: LiteralString = (
    "UPDATE schedule SET name = ?, expression = ?, timezone = ?, start_at = ?, end_at = ?, "
    "max_runs = ?, misfire_policy = ?, overlap_policy = ?, catch_up_limit = ?, state = ?, "
    "updated_at = ?, cursor_at = ?, next_at = ?, version = version + 1 "
    "WHERE id = ? AND owner_id = ? AND version = ?"
)
SCHEDULE_SAVE_SPEC: LiteralString = (
    "UPDATE schedule SET spec = ?, metadata = ?, host = ? WHERE id = ?"
)
SCHEDULE_DELETE: LiteralString = "DELETE FROM schedule WHERE id = ? AND owner_id = ?"
# `allow` schedules are due a lookahead early (schedules.policy.LOOKAHEAD_MS)
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
    "SELECT owner_id, target, spec FROM schedule WHERE id = ? AND version = ? AND state = 'ACTIVE'"
)
SCHEDULE_ADVANCE: LiteralString = (
    "UPDATE schedule SET cursor_at = ?, runs = runs + ?, "
    "last_run_at = coalesce(?, last_run_at), last_task_id = coalesce(?, last_task_id), "
    "next_at = ?, state = ?, version = version + 1 WHERE id = ?"
)
# a run's task: the schedule's sealed template and metadata, due at the slot
# the template's priority and flow-control key come with it, as for a registration
TASK_INSERT_SCHEDULED: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, schedule_id, host, priority, flow_key) "
    "SELECT ?, owner_id, 'RUNNING', ?, ?, ?, ?, metadata, spec, id, host, ?, ? "
    "FROM schedule WHERE id = ?"
)
SCHEDULE_TEMPLATE: LiteralString = "SELECT owner_id, spec, target FROM schedule WHERE id = ?"
# a key a schedule names exists with the template's limits; an edit of the schedule (or a
# registration naming the key) sets them, as "the last registration wins"
FLOW_INSERT_MISSING: LiteralString = (
    "INSERT INTO flow_control (owner_id, key, rate, period_ms, parallelism, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (owner_id, key) DO NOTHING"
)
TASK_BY_SCHEDULE: LiteralString = (
    f"SELECT {TASK_COLUMNS} FROM task WHERE owner_id = ? AND schedule_id = ? "
    "ORDER BY created_at DESC, estimate_execution_at DESC, id DESC LIMIT ? OFFSET ?"
)


class ScheduleOps(StoreBase):
    """The recurring-schedule operations of SqliteStore (their SQL is above)."""

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

        def op(conn: sqlite3.Connection) -> Schedule:
            try:
                conn.execute(SCHEDULE_INSERT, params)
            except sqlite3.IntegrityError as exc:
                if conn.execute(OWNER_EXISTS, (owner_id,)).fetchone() is None:
                    raise OwnerNotFound() from exc
                raise Conflict("A schedule with this name already exists") from exc
            return schedule_from_row(conn.execute(SCHEDULE_BY_ID, (schedule_id,)).fetchone())

        return await self._write(op)

    async def get_schedule(self, owner_id: str, key: str) -> Schedule:
        rows = await self._read(SCHEDULE_BY_KEY, (owner_id, key, key))
        if not rows:
            raise NotFound()
        return schedule_from_row(rows[0])

    async def get_schedule_spec(self, owner_id: str, schedule_id: str) -> TaskSpec:
        rows = await self._read(SCHEDULE_SPEC, (schedule_id, owner_id))
        if not rows:
            raise NotFound()
        return self._open_spec(rows[0][0])

    async def get_schedule_workflow(self, owner_id: str, schedule_id: str) -> WorkflowDefinition:
        rows = await self._read(SCHEDULE_WORKFLOW, (schedule_id, owner_id))
        if not rows:
            raise NotFound()
        return decode_definition(self._sealer.open(rows[0][0]))

    async def list_schedules(self, owner_id: str, limit: int, offset: int) -> list[Schedule]:
        rows = await self._read(SCHEDULE_LIST, (owner_id, limit, offset))
        return [schedule_from_row(row) for row in rows]

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

        def op(conn: sqlite3.Connection) -> Schedule | None:
            try:
                saved = conn.execute(SCHEDULE_SAVE, params).rowcount
            except sqlite3.IntegrityError as exc:
                raise Conflict("A schedule with this name already exists") from exc
            if not saved:
                if conn.execute(SCHEDULE_EXISTS, (s.id, s.owner_id)).fetchone() is None:
                    raise NotFound()
                return None
            if blobs is not None:
                conn.execute(SCHEDULE_SAVE_SPEC, blobs)
            return schedule_from_row(conn.execute(SCHEDULE_BY_ID, (s.id,)).fetchone())

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
        return [schedule_from_row(row) for row in rows]

    async def next_schedule_at(self, lookahead_ms: int) -> int | None:
        rows = await self._read(SCHEDULE_NEXT, ())
        if not rows:
            return None
        next_at: int = rows[0][0]
        return next_at - lookahead_ms if rows[0][1] == OverlapPolicy.ALLOW else next_at

    async def fire_schedule(self, fire: ScheduleFire, now_ms: int) -> list[DueTask] | None:
        task_ids = [new_task_id(now_ms) for _ in fire.due_at_ms]
        last_run = fire.due_at_ms[-1] if fire.due_at_ms else None
        # read before the write: an edit after this read changes the version, and the
        # guard below then refuses the plan
        template = await self._read(SCHEDULE_TEMPLATE, (fire.schedule_id,))
        if not template:
            return None
        if template[0][2] == ScheduleTarget.WORKFLOW:
            return await self._fire_workflow(fire, now_ms)
        owner_id = template[0][0]
        config = self._open_spec(template[0][1]).config
        flow = config.flow_control
        ref = None if flow is None else (owner_id, flow.key)

        def op(conn: sqlite3.Connection) -> list[DueTask] | None:
            row = conn.execute(SCHEDULE_GUARD, (fire.schedule_id, fire.version)).fetchone()
            if row is None:
                return None  # changed since it was read: the runner reads it again
            if flow is not None:
                limits = (flow.key, flow.rate, flow.period.ms, flow.parallelism, now_ms)
                conn.execute(FLOW_INSERT_MISSING, (owner_id, *limits))
            created: list[DueTask] = []
            for task_id, due in zip(task_ids, fire.due_at_ms, strict=True):
                used, limit = conn.execute(OWNER_CAPACITY, (row[0],)).fetchone()
                if limit and used >= limit:
                    logger.warning(
                        "schedule %s: run for %d refused, the owner's task limit is reached",
                        fire.schedule_id,
                        due,
                    )
                    continue
                params = (task_id, now_ms, due, due, due, config.priority)
                conn.execute(
                    TASK_INSERT_SCHEDULED,
                    (*params, None if flow is None else flow.key, fire.schedule_id),
                )
                created.append(DueTask(task_id, due, config.priority, ref))
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

    async def _fire_workflow(self, fire: ScheduleFire, now_ms: int) -> list[DueTask] | None:
        """fire_schedule for a schedule that starts workflow runs: the runs (id, slot),
        their first steps announced once committed."""
        after: list[Callable[[], None]] = []

        def op(conn: sqlite3.Connection) -> list[DueTask] | None:
            row = conn.execute(SCHEDULE_GUARD, (fire.schedule_id, fire.version)).fetchone()
            if row is None:
                return None  # changed since it was read: the runner reads it again
            runs, announce = self._fire_runs(conn, fire, row[0], row[2], now_ms)
            after.append(announce)
            return runs

        created = await self._write(op, savepoint=True)
        for announce in after:
            announce()
        return created

    def _fire_runs(
        self,
        conn: sqlite3.Connection,
        fire: ScheduleFire,
        owner_id: str,
        definition: bytes,
        now_ms: int,
    ) -> tuple[list[DueTask], Callable[[], None]]:
        """Start a workflow run per slot of ``fire`` and advance the schedule, in the
        caller's transaction; returns the runs (id, slot) and what to announce after the
        commit. The workflow operations of the store implement it."""
        raise NotImplementedError


def advance_schedule(
    conn: sqlite3.Connection, fire: ScheduleFire, created: Sequence[DueTask]
) -> None:
    """Move the schedule's durable last-fired slot and progress past ``fire``, in the
    transaction that created what ``created`` lists (id, slot)."""
    last_run = fire.due_at_ms[-1] if fire.due_at_ms else None
    last_id = created[-1][0] if created else None
    params = (fire.cursor_ms, len(fire.due_at_ms), last_run, last_id, fire.next_at_ms)
    conn.execute(SCHEDULE_ADVANCE, (*params, fire.state.value, fire.schedule_id))
