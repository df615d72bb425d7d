"""Workflow runs on PostgreSQL as the API sees them: create, read, list, cancel, retry, delete
and expire, and their SQL. Steps advance in ``workflow_steps``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

from ...errors import PreconditionFailed, QueueLimitReached, WorkflowNotFound
from ...models import DueTask, ScheduleFire
from ...workflows.model import (
    NewRun,
    RunState,
    StepState,
    WorkflowRun,
    WorkflowStep,
)
from ...workflows.steps import (
    CANCELLED,
    TIMED_OUT,
    decode_definition,
    encode_callbacks,
    encode_template,
)
from ..ids import new_task_id
from .base import METADATA
from .owners import lock_capacity
from .schedules import advance_schedule
from .tasks import TASK_REVOKE
from .workflow_steps import (
    RUN_SET_STATE,
    RUN_STATE,
    Advance,
    Cursor,
    PgStepOps,
    _all,
    _one,
)

RUN_INSERT: LiteralString = (
    "INSERT INTO workflow_run (id, owner_id, name, state, created_at, due_at, deadline_at, "
    "remaining, input, metadata, callbacks, schedule_id) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)

RUN_COLUMNS: LiteralString = (
    "id, owner_id, name, state, created_at, due_at, finished_at, deadline_at, error, metadata, "
    "schedule_id"
)
STEP_COLUMNS: LiteralString = (
    "s.step_id, s.state, s.depends_on, s.task_id, coalesce(t.attempts, 0), "
    "coalesce(t.status_code, 0), s.result, s.error, s.started_at, s.finished_at"
)
RUN_BY_ID: LiteralString = f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE id = %s AND owner_id = %s"

RUN_LIST: LiteralString = (
    f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE owner_id = %s "
    "AND (%s::text IS NULL OR state = %s) AND (%s::text IS NULL OR name = %s) "
    "AND (%s::bigint IS NULL OR created_at < %s OR (created_at = %s AND id < %s)) "
    "ORDER BY created_at DESC, id DESC LIMIT %s"
)

RUN_BY_SCHEDULE: LiteralString = (
    f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE owner_id = %s AND schedule_id = %s "
    "ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s"
)
RUN_RESTART: LiteralString = (
    "UPDATE workflow_run SET state = 'RUNNING', finished_at = NULL, error = NULL, remaining = "
    "(SELECT count(*) FROM workflow_step WHERE run_id = %(run)s AND state NOT IN "
    "('SUCCESS', 'SKIPPED')) WHERE id = %(run)s"
)

RUN_DELETE: LiteralString = "DELETE FROM workflow_run WHERE id = %s AND owner_id = %s"

RUN_OVERDUE: LiteralString = (
    "SELECT id FROM workflow_run WHERE deadline_at IS NOT NULL AND finished_at IS NULL "
    "AND deadline_at <= %s LIMIT %s"
)

STEP_INSERT: LiteralString = (
    "INSERT INTO workflow_step (run_id, step_id, position, state, unmet, depends_on, template) "
    "VALUES (%s, %s, %s, 'WAITING', %s, %s, %s)"
)

EDGE_INSERT: LiteralString = (
    "INSERT INTO workflow_edge (run_id, step_id, dependant) VALUES (%s, %s, %s) "
    "ON CONFLICT DO NOTHING"
)

STEP_LIST: LiteralString = (
    f"SELECT {STEP_COLUMNS} FROM workflow_step s LEFT JOIN task t ON t.id = s.task_id "
    "WHERE s.run_id = %s ORDER BY s.position"
)

STEP_CANCEL_WAITING: LiteralString = (
    "UPDATE workflow_step SET state = 'CANCELLED', finished_at = %s "
    "WHERE run_id = %s AND state = 'WAITING'"
)

STEP_CANCEL_RUNNING: LiteralString = (
    "UPDATE workflow_step SET state = 'CANCELLED', finished_at = %s "
    "WHERE run_id = %s AND state = 'RUNNING' RETURNING task_id"
)

STEP_RETRYABLE: LiteralString = (
    "SELECT step_id, unmet FROM workflow_step WHERE run_id = %s "
    "AND state IN ('ERROR', 'CANCELLED') ORDER BY position"
)

STEP_RESET: LiteralString = (
    "UPDATE workflow_step SET state = 'WAITING', error = NULL, finished_at = NULL "
    "WHERE run_id = %s AND step_id = %s"
)


@dataclass(frozen=True, slots=True)
class RunRows:
    """A run's sealed values: input, metadata, callbacks and each step's template."""

    input: bytes
    metadata: bytes | None
    callbacks: bytes | None
    templates: list[bytes]


logger = logging.getLogger(__name__)

STEP_WAITING_COUNT: LiteralString = (
    "SELECT count(*) FROM workflow_step WHERE run_id = %s AND state = 'WAITING'"
)


async def _check_room(cur: Cursor, owner_id: str, steps: int) -> None:
    """Refuse a run whose ``steps`` not started yet would take the owner's queue past its
    limit: every step counts as a task (docs/workflows.md#the-owners-queue-limit). Raises
    OwnerNotFound or QueueLimitReached."""
    free = await lock_capacity(cur, owner_id)
    if free is not None and steps > free:
        raise QueueLimitReached()


class PgWorkflowOps(PgStepOps):
    async def create_run(self, owner_id: str, run: NewRun, now_ms: int) -> WorkflowRun:
        run_id = new_task_id(now_ms)
        rows = self._run_rows(run)

        async def op(cur: Cursor) -> tuple[Advance, WorkflowRun]:
            await _check_room(cur, owner_id, len(run.steps))
            advance = Advance()
            await self._insert_run(cur, run_id, owner_id, run, rows, now_ms, None, advance)
            await self._tell_nodes(cur, advance, now_ms)
            # read in the transaction: the run as created, before any step can have moved
            steps = tuple(self._step(row) for row in await _all(cur, STEP_LIST, (run_id,)))
            return advance, self._run(await _one(cur, RUN_BY_ID, (run_id, owner_id)), steps)

        advance, created = await self._tx(op)
        self._announce(advance)
        return created

    def _run_rows(self, run: NewRun) -> RunRows:
        """The sealed values of a run's rows (sealed before the transaction starts)."""
        return RunRows(
            self._sealer.seal(json.dumps(run.input).encode()),
            self._seal(None if run.metadata is None else METADATA.dump_json(run.metadata)),
            self._seal(encode_callbacks(run.on_success, run.on_failure)),
            [self._sealer.seal(encode_template(step)) for step in run.steps],
        )

    async def _insert_run(
        self,
        cur: Cursor,
        run_id: str,
        owner_id: str,
        run: NewRun,
        rows: RunRows,
        now_ms: int,
        schedule_id: str | None,
        advance: Advance,
    ) -> None:
        """Insert the run, its steps and edges, and start its root steps (due at the
        run's due time or later), in the caller's transaction."""
        state = RunState.PENDING if run.due_at_ms > now_ms else RunState.RUNNING
        deadline = None if run.timeout_ms is None else now_ms + run.timeout_ms
        await cur.execute(
            RUN_INSERT,
            (
                *(run_id, owner_id, run.name, state.value, now_ms, run.due_at_ms, deadline),
                *(len(run.steps), rows.input, rows.metadata, rows.callbacks, schedule_id),
            ),
        )
        for position, (step, blob) in enumerate(zip(run.steps, rows.templates, strict=True)):
            deps = list(dict.fromkeys(step.depends_on))
            await cur.execute(
                STEP_INSERT, (run_id, step.id, position, len(deps), json.dumps(deps), blob)
            )
            for dep in deps:
                await cur.execute(EDGE_INSERT, (run_id, dep, step.id))
        roots = [step.id for step in run.steps if not step.depends_on]
        await self._start_ready(cur, run_id, owner_id, roots, now_ms, run.due_at_ms, advance)

    async def _fire_runs(
        self, cur: Cursor, fire: ScheduleFire, owner_id: str, definition: bytes, now_ms: int
    ) -> tuple[list[DueTask], Callable[[], None]]:
        workflow = decode_definition(self._unseal(definition))
        advance = Advance()
        created: list[DueTask] = []
        free = await lock_capacity(cur, owner_id)
        for due in fire.due_at_ms:
            if free is not None and free < len(workflow.steps):
                logger.warning(
                    "schedule %s: run for %d refused, the owner's task limit is reached",
                    fire.schedule_id,
                    due,
                )
                continue
            free = None if free is None else free - len(workflow.steps)
            run = workflow.at(due)
            run_id = new_task_id(now_ms)
            rows = self._run_rows(run)
            await self._insert_run(
                cur, run_id, owner_id, run, rows, now_ms, fire.schedule_id, advance
            )
            created.append(DueTask(run_id, due))
        await advance_schedule(cur, fire, created)
        await self._tell_nodes(cur, advance, now_ms)
        return created, lambda: self._announce(advance)

    async def list_schedule_runs(
        self, owner_id: str, schedule_id: str, limit: int, offset: int
    ) -> list[WorkflowRun]:
        rows = await self._read(RUN_BY_SCHEDULE, (owner_id, schedule_id, limit, offset))
        return [self._run(row, ()) for row in rows]

    async def get_run(self, owner_id: str, run_id: str) -> WorkflowRun:
        rows = await self._read(RUN_BY_ID, (run_id, owner_id))
        if not rows:
            raise WorkflowNotFound(run_id)
        steps = [self._step(row) for row in await self._read(STEP_LIST, (run_id,))]
        return self._run(rows[0], tuple(steps))

    async def list_runs(
        self,
        owner_id: str,
        state: RunState | None,
        name: str | None,
        limit: int,
        before: tuple[int, str] | None = None,
    ) -> list[WorkflowRun]:
        at, last_id = before if before is not None else (None, None)
        state_text = None if state is None else state.value
        rows = await self._read(
            RUN_LIST,
            (owner_id, state_text, state_text, name, name, at, at, at, last_id, limit),
        )
        return [self._run(row, ()) for row in rows]

    async def cancel_run(self, owner_id: str, run_id: str, now_ms: int) -> list[str]:
        async def op(cur: Cursor) -> list[str]:
            row = await _one(cur, RUN_BY_ID, (run_id, owner_id))
            if row is None:
                raise WorkflowNotFound(run_id)
            if RunState(row[3]).is_final:
                raise PreconditionFailed(f"the run is {row[3]}")
            await cur.execute(RUN_SET_STATE, (RunState.CANCELLED.value, now_ms, CANCELLED, run_id))
            await cur.execute(STEP_CANCEL_WAITING, (now_ms, run_id))
            revoked = []
            for (task_id,) in await _all(cur, STEP_CANCEL_RUNNING, (now_ms, run_id)):
                await cur.execute(TASK_REVOKE, (now_ms, task_id, owner_id))
                revoked.append(task_id)
            return revoked

        revoked = await self._tx(op)
        self._announce(Advance(finished_runs=[run_id]))
        return revoked

    async def retry_run(self, owner_id: str, run_id: str, now_ms: int) -> WorkflowRun:
        async def op(cur: Cursor) -> Advance:
            row = await _one(cur, RUN_BY_ID, (run_id, owner_id))
            if row is None:
                raise WorkflowNotFound(run_id)
            if RunState(row[3]) not in (RunState.ERROR, RunState.CANCELLED):
                raise PreconditionFailed(
                    f"only a run in ERROR or CANCELLED can be retried, not {row[3]}"
                )
            retryable = await _all(cur, STEP_RETRYABLE, (run_id,))
            waiting = await _one(cur, STEP_WAITING_COUNT, (run_id,))
            await _check_room(cur, owner_id, waiting[0] + len(retryable))
            for step_id, _ in retryable:
                await cur.execute(STEP_RESET, (run_id, step_id))
            await cur.execute(RUN_RESTART, {"run": run_id})
            advance = Advance()
            ready = [step_id for step_id, unmet in retryable if unmet == 0]
            await self._start_ready(cur, run_id, owner_id, ready, now_ms, now_ms, advance)
            await self._tell_nodes(cur, advance, now_ms)
            return advance

        advance = await self._tx(op)
        self._announce(advance)
        return await self.get_run(owner_id, run_id)

    async def delete_run(self, owner_id: str, run_id: str) -> None:
        async def op(cur: Cursor) -> None:
            row = await _one(cur, RUN_BY_ID, (run_id, owner_id))
            if row is None:
                raise WorkflowNotFound(run_id)
            if not RunState(row[3]).is_final:
                raise PreconditionFailed("cancel the run before deleting it")
            await cur.execute(RUN_DELETE, (run_id, owner_id))

        await self._tx(op)

    async def expire_runs(self, now_ms: int, limit: int = 100) -> list[str]:
        if not await self._read(RUN_OVERDUE, (now_ms, 1)):
            return []  # the usual case costs one indexed read, no write

        async def op(cur: Cursor) -> tuple[list[tuple[str, list[str]]], Advance]:
            ended = []
            advance = Advance()
            for (run_id,) in await _all(cur, RUN_OVERDUE, (now_ms, limit)):
                owner_id = (await _one(cur, RUN_STATE, (run_id,)))[0]
                await cur.execute(RUN_SET_STATE, (RunState.ERROR.value, now_ms, TIMED_OUT, run_id))
                await self._run_ended(cur, run_id, RunState.ERROR, TIMED_OUT, now_ms, advance)
                await cur.execute(STEP_CANCEL_WAITING, (now_ms, run_id))
                tasks = [row[0] for row in (await _all(cur, STEP_CANCEL_RUNNING, (now_ms, run_id)))]
                for task_id in tasks:
                    await cur.execute(TASK_REVOKE, (now_ms, task_id, owner_id))
                ended.append((run_id, tasks))
            await self._tell_nodes(cur, advance, now_ms)
            return ended, advance

        ended, advance = await self._tx(op)
        self._announce(advance)
        return [task_id for _, tasks in ended for task_id in tasks]

    # -- rows -----------------------------------------------------------------------------

    def _run(self, row: Sequence[Any], steps: tuple[WorkflowStep, ...]) -> WorkflowRun:
        metadata = self._open(row[9])
        return WorkflowRun(
            id=row[0],
            owner_id=row[1],
            name=row[2],
            state=RunState(row[3]),
            created_at_ms=row[4],
            due_at_ms=row[5],
            finished_at_ms=row[6],
            deadline_ms=row[7],
            error=row[8],
            metadata=None if metadata is None else METADATA.validate_json(metadata),
            steps=steps,
            schedule_id=row[10],
        )

    def _step(self, row: Sequence[Any]) -> WorkflowStep:
        result = None if row[6] is None else json.loads(self._unseal(row[6]))
        return WorkflowStep(
            id=row[0],
            state=StepState(row[1]),
            depends_on=tuple(json.loads(row[2])),
            task_id=row[3],
            attempts=row[4],
            status_code=row[5],
            output=None if result is None else result.get("output"),
            error=row[7],
            started_at_ms=row[8],
            finished_at_ms=row[9],
        )
