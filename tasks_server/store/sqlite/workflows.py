"""Workflow runs as the API sees them: create, read, list, cancel, retry, delete
and expire, and their SQL. Steps advance in ``workflow_steps``."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

from ...errors import OwnerNotFound, PreconditionFailed, QueueLimitReached, WorkflowNotFound
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
from .owners import OWNER_CAPACITY
from .schedules import advance_schedule
from .tasks import TASK_REVOKE
from .workflow_steps import RUN_SET_STATE, RUN_STATE, Advance, StepOps

logger = logging.getLogger(__name__)

RUN_INSERT: LiteralString = (
    "INSERT INTO workflow_run (id, owner_id, name, state, created_at, due_at, deadline_at, "
    "remaining, input, metadata, callbacks, schedule_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

RUN_COLUMNS: LiteralString = (
    "id, owner_id, name, state, created_at, due_at, finished_at, deadline_at, error, metadata, "
    "schedule_id"
)
STEP_COLUMNS: LiteralString = (
    "s.step_id, s.state, s.depends_on, s.task_id, coalesce(t.attempts, 0), "
    "coalesce(t.status_code, 0), s.result, s.error, s.started_at, s.finished_at"
)
RUN_BY_ID: LiteralString = f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE id = ? AND owner_id = ?"

RUN_LIST: LiteralString = (
    f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE owner_id = ? "
    "AND (? IS NULL OR state = ?) AND (? IS NULL OR name = ?) "
    "AND (? IS NULL OR created_at < ? OR (created_at = ? AND id < ?)) "
    "ORDER BY created_at DESC, id DESC LIMIT ?"
)

RUN_BY_SCHEDULE: LiteralString = (
    f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE owner_id = ? AND schedule_id = ? "
    "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
)

RUN_RESTART: LiteralString = (
    "UPDATE workflow_run SET state = 'RUNNING', finished_at = NULL, error = NULL, remaining = "
    "(SELECT count(*) FROM workflow_step WHERE run_id = ?1 AND state NOT IN "
    "('SUCCESS', 'SKIPPED')) WHERE id = ?1"
)

RUN_DELETE: LiteralString = "DELETE FROM workflow_run WHERE id = ? AND owner_id = ?"

RUN_OVERDUE: LiteralString = (
    "SELECT id FROM workflow_run WHERE deadline_at IS NOT NULL AND finished_at IS NULL "
    "AND deadline_at <= ? LIMIT ?"
)

STEP_INSERT: LiteralString = (
    "INSERT INTO workflow_step (run_id, step_id, position, state, unmet, depends_on, template) "
    "VALUES (?, ?, ?, 'WAITING', ?, ?, ?)"
)

EDGE_INSERT: LiteralString = (
    "INSERT OR IGNORE INTO workflow_edge (run_id, step_id, dependant) VALUES (?, ?, ?)"
)

STEP_LIST: LiteralString = (
    f"SELECT {STEP_COLUMNS} FROM workflow_step s LEFT JOIN task t ON t.id = s.task_id "
    "WHERE s.run_id = ? ORDER BY s.position"
)

STEP_CANCEL_WAITING: LiteralString = (
    "UPDATE workflow_step SET state = 'CANCELLED', finished_at = ? "
    "WHERE run_id = ? AND state = 'WAITING'"
)

STEP_CANCEL_RUNNING: LiteralString = (
    "UPDATE workflow_step SET state = 'CANCELLED', finished_at = ? "
    "WHERE run_id = ? AND state = 'RUNNING' RETURNING task_id"
)

STEP_RETRYABLE: LiteralString = (
    "SELECT step_id, unmet FROM workflow_step WHERE run_id = ? "
    "AND state IN ('ERROR', 'CANCELLED') ORDER BY position"
)

STEP_RESET: LiteralString = (
    "UPDATE workflow_step SET state = 'WAITING', error = NULL, finished_at = NULL "
    "WHERE run_id = ? AND step_id = ?"
)


STEP_WAITING_COUNT: LiteralString = (
    "SELECT count(*) FROM workflow_step WHERE run_id = ? AND state = 'WAITING'"
)


def _check_room(conn: sqlite3.Connection, owner_id: str, steps: int) -> None:
    """Refuse a run whose ``steps`` not started yet would take the owner's queue past its
    limit: every step counts as a task (docs/workflows.md#the-owners-queue-limit). Raises
    OwnerNotFound or QueueLimitReached."""
    row = conn.execute(OWNER_CAPACITY, (owner_id,)).fetchone()
    if row is None:
        raise OwnerNotFound()
    queued, limit = row
    if limit and queued + steps > limit:
        raise QueueLimitReached(limit)


def _has_room(conn: sqlite3.Connection, owner_id: str, steps: int) -> bool:
    try:
        _check_room(conn, owner_id, steps)
    except QueueLimitReached:
        return False
    return True


@dataclass(frozen=True, slots=True)
class RunRows:
    """A run's sealed values: input, metadata, callbacks and each step's template."""

    input: bytes
    metadata: bytes | None
    callbacks: bytes | None
    templates: list[bytes]


class WorkflowOps(StepOps):
    async def create_run(self, owner_id: str, run: NewRun, now_ms: int) -> WorkflowRun:
        run_id = new_task_id(now_ms)
        rows = self._run_rows(run)

        def op(conn: sqlite3.Connection) -> tuple[Advance, WorkflowRun]:
            _check_room(conn, owner_id, len(run.steps))
            advance = Advance()
            self._insert_run(conn, run_id, owner_id, run, rows, now_ms, None, advance)
            # read in the transaction: the run as created, before any step can have moved
            steps = tuple(self._step(row) for row in conn.execute(STEP_LIST, (run_id,)))
            return advance, self._run(conn.execute(RUN_BY_ID, (run_id, owner_id)).fetchone(), steps)

        advance, created = await self._write(op, savepoint=True)
        self._announce(advance)
        return created

    def _run_rows(self, run: NewRun) -> RunRows:
        """The sealed values of a run's rows (sealed before the writer takes the op)."""
        return RunRows(
            self._sealer.seal(json.dumps(run.input).encode()),
            self._seal(None if run.metadata is None else METADATA.dump_json(run.metadata)),
            self._seal(encode_callbacks(run.on_success, run.on_failure)),
            [self._sealer.seal(encode_template(step)) for step in run.steps],
        )

    def _insert_run(
        self,
        conn: sqlite3.Connection,
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
        conn.execute(
            RUN_INSERT,
            (
                *(run_id, owner_id, run.name, state.value, now_ms, run.due_at_ms, deadline),
                *(len(run.steps), rows.input, rows.metadata, rows.callbacks, schedule_id),
            ),
        )
        for position, (step, blob) in enumerate(zip(run.steps, rows.templates, strict=True)):
            deps = list(dict.fromkeys(step.depends_on))
            conn.execute(
                STEP_INSERT, (run_id, step.id, position, len(deps), json.dumps(deps), blob)
            )
            for dep in deps:
                conn.execute(EDGE_INSERT, (run_id, dep, step.id))
        roots = [step.id for step in run.steps if not step.depends_on]
        self._keep_built(run_id, run)
        self._start_ready(conn, run_id, owner_id, roots, now_ms, run.due_at_ms, advance)

    def _fire_runs(
        self,
        conn: sqlite3.Connection,
        fire: ScheduleFire,
        owner_id: str,
        definition: bytes,
        now_ms: int,
    ) -> tuple[list[DueTask], Callable[[], None]]:
        workflow = decode_definition(self._sealer.open(definition))
        advance = Advance()
        created: list[DueTask] = []
        for due in fire.due_at_ms:
            if not _has_room(conn, owner_id, len(workflow.steps)):
                logger.warning(
                    "schedule %s: run for %d refused, the owner's task limit is reached",
                    fire.schedule_id,
                    due,
                )
                continue
            run = workflow.at(due)
            run_id = new_task_id(now_ms)
            rows = self._run_rows(run)
            self._insert_run(conn, run_id, owner_id, run, rows, now_ms, fire.schedule_id, advance)
            created.append(DueTask(run_id, due))
        advance_schedule(conn, fire, created)
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
        def op(conn: sqlite3.Connection) -> list[str]:
            row = conn.execute(RUN_BY_ID, (run_id, owner_id)).fetchone()
            if row is None:
                raise WorkflowNotFound(run_id)
            if RunState(row[3]).is_final:
                raise PreconditionFailed(f"the run is {row[3]}")
            conn.execute(RUN_SET_STATE, (RunState.CANCELLED.value, now_ms, CANCELLED, run_id))
            conn.execute(STEP_CANCEL_WAITING, (now_ms, run_id))
            revoked = []
            for (task_id,) in conn.execute(STEP_CANCEL_RUNNING, (now_ms, run_id)).fetchall():
                conn.execute(TASK_REVOKE, (now_ms, task_id, owner_id))
                revoked.append(task_id)
            return revoked

        revoked = await self._write(op, savepoint=True)
        self._announce(Advance(finished_runs=[run_id]))
        return revoked

    async def retry_run(self, owner_id: str, run_id: str, now_ms: int) -> WorkflowRun:
        def op(conn: sqlite3.Connection) -> Advance:
            row = conn.execute(RUN_BY_ID, (run_id, owner_id)).fetchone()
            if row is None:
                raise WorkflowNotFound(run_id)
            if RunState(row[3]) not in (RunState.ERROR, RunState.CANCELLED):
                raise PreconditionFailed(
                    f"only a run in ERROR or CANCELLED can be retried, not {row[3]}"
                )
            retryable = conn.execute(STEP_RETRYABLE, (run_id,)).fetchall()
            waiting = conn.execute(STEP_WAITING_COUNT, (run_id,)).fetchone()[0]
            _check_room(conn, owner_id, waiting + len(retryable))
            for step_id, _ in retryable:
                conn.execute(STEP_RESET, (run_id, step_id))
            conn.execute(RUN_RESTART, (run_id,))
            advance = Advance()
            ready = [step_id for step_id, unmet in retryable if unmet == 0]
            self._start_ready(conn, run_id, owner_id, ready, now_ms, now_ms, advance)
            return advance

        advance = await self._write(op, savepoint=True)
        self._announce(advance)
        return await self.get_run(owner_id, run_id)

    async def delete_run(self, owner_id: str, run_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(RUN_BY_ID, (run_id, owner_id)).fetchone()
            if row is None:
                raise WorkflowNotFound(run_id)
            if not RunState(row[3]).is_final:
                raise PreconditionFailed("cancel the run before deleting it")
            conn.execute(RUN_DELETE, (run_id, owner_id))

        await self._write(op)

    async def expire_runs(self, now_ms: int, limit: int = 100) -> list[str]:
        if not await self._read(RUN_OVERDUE, (now_ms, 1)):
            return []  # the usual case costs one indexed read, no write

        def op(conn: sqlite3.Connection) -> tuple[list[tuple[str, list[str]]], Advance]:
            ended = []
            advance = Advance()
            for (run_id,) in conn.execute(RUN_OVERDUE, (now_ms, limit)).fetchall():
                owner_id = conn.execute(RUN_STATE, (run_id,)).fetchone()[0]
                conn.execute(RUN_SET_STATE, (RunState.ERROR.value, now_ms, TIMED_OUT, run_id))
                self._run_ended(conn, run_id, RunState.ERROR, TIMED_OUT, now_ms, advance)
                conn.execute(STEP_CANCEL_WAITING, (now_ms, run_id))
                tasks = [row[0] for row in conn.execute(STEP_CANCEL_RUNNING, (now_ms, run_id))]
                for task_id in tasks:
                    conn.execute(TASK_REVOKE, (now_ms, task_id, owner_id))
                ended.append((run_id, tasks))
            return ended, advance

        ended, advance = await self._write(op, savepoint=True)
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
        result = None if row[6] is None else json.loads(self._sealer.open(row[6]))
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
