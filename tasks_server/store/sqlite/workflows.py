"""Workflow runs and their steps, and their SQL.

A step becomes a task when its dependencies have succeeded; finishing the step (in the
transaction that records its task's outcome, ``advance_steps``) releases its dependants
through ``workflow_edge`` and a per-step count of unmet dependencies, so starting a
dependant never scans the run. Rendering a step's request and validating it is the
``StepBuilder`` the composition root gives the store.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, LiteralString

from ...errors import OwnerNotFound, PreconditionFailed, WorkflowNotFound
from ...models import Result, TaskState
from ...workflows.model import (
    NewRun,
    RunState,
    StepStart,
    StepState,
    WorkflowRun,
    WorkflowStep,
)
from ...workflows.steps import (
    CANCELLED,
    TIMED_OUT,
    RunFinished,
    StepBuilder,
    StepStarted,
    encode_template,
    labelled,
    referenced_steps,
    step_error,
    step_response,
    step_result,
)
from ...workflows.template import TemplateError, holds, render
from ..ids import new_task_id
from .base import METADATA, StoreBase
from .owners import OWNER_EXISTS
from .tasks import TASK_INSERT, TASK_REVOKE

logger = logging.getLogger(__name__)

RUN_INSERT: LiteralString = (
    "INSERT INTO workflow_run (id, owner_id, name, state, created_at, due_at, deadline_at, "
    "remaining, input, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
RUN_COLUMNS: LiteralString = (
    "id, owner_id, name, state, created_at, due_at, finished_at, deadline_at, error, metadata"
)
RUN_BY_ID: LiteralString = f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE id = ? AND owner_id = ?"
RUN_LIST: LiteralString = (
    f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE owner_id = ? "
    "AND (? IS NULL OR state = ?) AND (? IS NULL OR name = ?) "
    "AND (? IS NULL OR created_at < ? OR (created_at = ? AND id < ?)) "
    "ORDER BY created_at DESC, id DESC LIMIT ?"
)
RUN_STATE: LiteralString = "SELECT owner_id, state, input FROM workflow_run WHERE id = ?"
RUN_SET_STATE: LiteralString = (
    "UPDATE workflow_run SET state = ?, finished_at = ?, error = ? WHERE id = ?"
)
RUN_START: LiteralString = (
    "UPDATE workflow_run SET state = 'RUNNING' WHERE id = ? AND state = 'PENDING'"
)
RUN_DONE_ONE: LiteralString = (
    "UPDATE workflow_run SET remaining = remaining - 1 WHERE id = ? RETURNING remaining, state"
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
STEP_BY_TASK: LiteralString = (
    "SELECT run_id, step_id, template FROM workflow_step WHERE task_id = ? AND state = 'RUNNING'"
)
STEP_TEMPLATE: LiteralString = (
    "SELECT template, state, dep_skipped FROM workflow_step WHERE run_id = ? AND step_id = ?"
)
STEP_RESULT: LiteralString = (
    "SELECT result FROM workflow_step WHERE run_id = ? AND step_id = ? AND state = 'SUCCESS'"
)
STEP_STARTED: LiteralString = (
    "UPDATE workflow_step SET state = 'RUNNING', task_id = ?, started_at = ?, finished_at = NULL, "
    "error = NULL WHERE run_id = ? AND step_id = ?"
)
STEP_FINISHED: LiteralString = (
    "UPDATE workflow_step SET state = ?, result = ?, error = ?, finished_at = ? "
    "WHERE run_id = ? AND step_id = ?"
)
STEP_RELEASE: LiteralString = (
    "UPDATE workflow_step SET unmet = unmet - 1, dep_skipped = max(dep_skipped, ?) "
    "WHERE run_id = ? AND step_id IN "
    "(SELECT dependant FROM workflow_edge WHERE run_id = ? AND step_id = ?) "
    "RETURNING step_id, unmet, state"
)
STEP_COLUMNS: LiteralString = (
    "s.step_id, s.state, s.depends_on, s.task_id, coalesce(t.attempts, 0), "
    "coalesce(t.status_code, 0), s.result, s.error, s.started_at, s.finished_at"
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


@dataclass(slots=True)
class _Advance:
    """What one transaction did to runs: step tasks to arm, runs that ended."""

    started: list[StepStart] = field(default_factory=list)
    finished_runs: list[str] = field(default_factory=list)


class WorkflowOps(StoreBase):
    _step_builder: StepBuilder | None = None
    _step_started: StepStarted | None = None
    _run_finished: RunFinished | None = None

    def watch_workflows(
        self, builder: StepBuilder, step_started: StepStarted, run_finished: RunFinished
    ) -> None:
        self._step_builder = builder
        self._step_started = step_started
        self._run_finished = run_finished

    async def create_run(self, owner_id: str, run: NewRun, now_ms: int) -> WorkflowRun:
        run_id = new_task_id(now_ms)
        state = RunState.PENDING if run.due_at_ms > now_ms else RunState.RUNNING
        deadline = None if run.timeout_ms is None else now_ms + run.timeout_ms
        input_blob = self._sealer.seal(json.dumps(run.input).encode())
        metadata_blob = self._seal(
            None if run.metadata is None else METADATA.dump_json(run.metadata)
        )
        templates = [(step, self._sealer.seal(encode_template(step))) for step in run.steps]

        def op(conn: sqlite3.Connection) -> _Advance:
            if conn.execute(OWNER_EXISTS, (owner_id,)).fetchone() is None:
                raise OwnerNotFound()
            conn.execute(
                RUN_INSERT,
                (
                    run_id,
                    owner_id,
                    run.name,
                    state.value,
                    now_ms,
                    run.due_at_ms,
                    deadline,
                    len(run.steps),
                    input_blob,
                    metadata_blob,
                ),
            )
            for position, (step, blob) in enumerate(templates):
                deps = list(dict.fromkeys(step.depends_on))
                conn.execute(
                    STEP_INSERT, (run_id, step.id, position, len(deps), json.dumps(deps), blob)
                )
                for dep in deps:
                    conn.execute(EDGE_INSERT, (run_id, dep, step.id))
            advance = _Advance()
            roots = [step.id for step in run.steps if not step.depends_on]
            self._start_ready(conn, run_id, owner_id, roots, now_ms, run.due_at_ms, advance)
            return advance

        advance = await self._write(op, savepoint=True)
        self._announce(advance)
        return await self.get_run(owner_id, run_id)

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
        self._announce(_Advance(finished_runs=[run_id]))
        return revoked

    async def retry_run(self, owner_id: str, run_id: str, now_ms: int) -> WorkflowRun:
        def op(conn: sqlite3.Connection) -> _Advance:
            row = conn.execute(RUN_BY_ID, (run_id, owner_id)).fetchone()
            if row is None:
                raise WorkflowNotFound(run_id)
            if RunState(row[3]) not in (RunState.ERROR, RunState.CANCELLED):
                raise PreconditionFailed(
                    f"only a run in ERROR or CANCELLED can be retried, not {row[3]}"
                )
            retryable = conn.execute(STEP_RETRYABLE, (run_id,)).fetchall()
            for step_id, _ in retryable:
                conn.execute(STEP_RESET, (run_id, step_id))
            conn.execute(RUN_RESTART, (run_id,))
            advance = _Advance()
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

        def op(conn: sqlite3.Connection) -> list[tuple[str, list[str]]]:
            ended = []
            for (run_id,) in conn.execute(RUN_OVERDUE, (now_ms, limit)).fetchall():
                owner_id = conn.execute(RUN_STATE, (run_id,)).fetchone()[0]
                conn.execute(RUN_SET_STATE, (RunState.ERROR.value, now_ms, TIMED_OUT, run_id))
                conn.execute(STEP_CANCEL_WAITING, (now_ms, run_id))
                tasks = [row[0] for row in conn.execute(STEP_CANCEL_RUNNING, (now_ms, run_id))]
                for task_id in tasks:
                    conn.execute(TASK_REVOKE, (now_ms, task_id, owner_id))
                ended.append((run_id, tasks))
            return ended

        ended = await self._write(op, savepoint=True)
        self._announce(_Advance(finished_runs=[run_id for run_id, _ in ended]))
        return [task_id for _, tasks in ended for task_id in tasks]

    # -- inside the outcome transaction ---------------------------------------------------

    def _outcome_followups(
        self, conn: sqlite3.Connection, results: Sequence[Result]
    ) -> Callable[[], None]:
        advance = self.advance_steps(conn, results)
        return lambda: self._announce(advance)

    def advance_steps(self, conn: sqlite3.Connection, results: Sequence[Result]) -> _Advance:
        """Finish the workflow steps whose task just ended (called inside the transaction
        that records the outcomes) and start what they release."""
        advance = _Advance()
        for result in results:
            if result.state not in (TaskState.SUCCESS, TaskState.ERROR):
                continue
            row = conn.execute(STEP_BY_TASK, (result.task_id,)).fetchone()
            if row is not None:
                self._finish_step(conn, row[0], row[1], row[2], result, advance)
        return advance

    def _finish_step(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        step_id: str,
        template_blob: bytes,
        result: Result,
        advance: _Advance,
    ) -> None:
        now = result.finished_at_ms
        owner_id, run_state, _ = conn.execute(RUN_STATE, (run_id,)).fetchone()
        response = step_response(result)
        if result.state is TaskState.ERROR:
            error = step_error(result)
            self._fail_step(conn, run_id, step_id, run_state, error, response, now, advance)
            return
        template = json.loads(self._sealer.open(template_blob))
        try:
            context = self._context(conn, run_id, referenced_steps(template, "output"))
            blob = self._sealer.seal(step_result(template, context, response))
        except TemplateError as exc:
            error = f"output: {exc}"
            self._fail_step(conn, run_id, step_id, run_state, error, response, now, advance)
            return
        conn.execute(STEP_FINISHED, (StepState.SUCCESS.value, blob, None, now, run_id, step_id))
        self._step_done(conn, run_id, owner_id, step_id, False, now, advance)

    def _fail_step(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        step_id: str,
        run_state: str,
        error: str,
        response: dict[str, Any] | None,
        now: int,
        advance: _Advance,
    ) -> None:
        blob = (
            None
            if response is None
            else self._sealer.seal(json.dumps({"response": response, "output": None}).encode())
        )
        conn.execute(STEP_FINISHED, (StepState.ERROR.value, blob, error, now, run_id, step_id))
        if not RunState(run_state).is_final:
            message = f"step {step_id!r} failed: {error}"
            conn.execute(RUN_SET_STATE, (RunState.ERROR.value, now, message, run_id))
            advance.finished_runs.append(run_id)

    def _start_ready(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        owner_id: str,
        step_ids: Sequence[str],
        now: int,
        due_floor_ms: int,
        advance: _Advance,
    ) -> None:
        """Start steps with nothing unmet, and count the ones that are skipped."""
        for step_id in self._start_steps(
            conn, run_id, owner_id, step_ids, now, due_floor_ms, advance
        ):
            self._step_done(conn, run_id, owner_id, step_id, True, now, advance)

    def _step_done(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        owner_id: str,
        step_id: str,
        skipped: bool,
        now: int,
        advance: _Advance,
    ) -> None:
        """A step succeeded or was skipped: count it, and start (or skip) the dependants
        it leaves with nothing unmet. Iterative, so a long chain of skips is no recursion."""
        work = [(step_id, skipped)]
        while work:
            done_id, done_skipped = work.pop()
            remaining, run_state = conn.execute(RUN_DONE_ONE, (run_id,)).fetchone()
            if RunState(run_state).is_final:
                return  # a failed or cancelled run starts nothing new
            conn.execute(RUN_START, (run_id,))
            if remaining == 0:
                conn.execute(RUN_SET_STATE, (RunState.SUCCESS.value, now, None, run_id))
                advance.finished_runs.append(run_id)
                return
            released = conn.execute(
                STEP_RELEASE, (int(done_skipped), run_id, run_id, done_id)
            ).fetchall()
            ready = [dep for dep, unmet, state in released if unmet == 0 and state == "WAITING"]
            skipped_now = self._start_steps(conn, run_id, owner_id, ready, now, now, advance)
            work.extend((dep, True) for dep in skipped_now)

    def _start_steps(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        owner_id: str,
        step_ids: Sequence[str],
        now: int,
        due_floor_ms: int,
        advance: _Advance,
    ) -> list[str]:
        """Turn ready steps into tasks; returns the ones skipped (their dependants are
        released by the caller). A step whose request cannot be built fails the run."""
        skipped = []
        for step_id in step_ids:
            template_blob, _, dep_skipped = conn.execute(
                STEP_TEMPLATE, (run_id, step_id)
            ).fetchone()
            template = json.loads(self._sealer.open(template_blob))
            try:
                start = self._start_step(
                    conn, run_id, owner_id, step_id, template, bool(dep_skipped), now, due_floor_ms
                )
            except (TemplateError, ValueError) as exc:
                run_state = conn.execute(RUN_STATE, (run_id,)).fetchone()[1]
                self._fail_step(conn, run_id, step_id, run_state, str(exc), None, now, advance)
                break  # the run failed: nothing new starts
            if start is None:
                conn.execute(
                    STEP_FINISHED, (StepState.SKIPPED.value, None, None, now, run_id, step_id)
                )
                skipped.append(step_id)
            else:
                advance.started.append(start)
        return skipped

    def _start_step(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        owner_id: str,
        step_id: str,
        template: dict[str, Any],
        dep_skipped: bool,
        now: int,
        due_floor_ms: int,
    ) -> StepStart | None:
        if dep_skipped and not template["runIfSkipped"]:
            return None
        refs = referenced_steps(template, "request") | referenced_steps(template, "when")
        context = self._context(conn, run_id, refs)
        if template["when"] is not None and not holds(template["when"], context):
            return None
        assert self._step_builder is not None, "the store was given no step builder"
        new = labelled(
            self._step_builder(render(template["request"], context), now), run_id, step_id
        )
        due = max(new.due_at_ms, due_floor_ms)
        metadata = self._seal(METADATA.dump_json(new.spec.metadata or ()))
        task_id = new_task_id(now)
        conn.execute(
            TASK_INSERT,
            (task_id, owner_id, now, due, due, due, metadata, self._seal_spec(new.spec)),
        )
        conn.execute(STEP_STARTED, (task_id, now, run_id, step_id))
        return StepStart(task_id, due)

    def _context(self, conn: sqlite3.Connection, run_id: str, step_ids: set[str]) -> dict[str, Any]:
        """The run's input and the results of the steps named."""
        steps: dict[str, Any] = {}
        for step_id in step_ids:
            row = conn.execute(STEP_RESULT, (run_id, step_id)).fetchone()
            if row is not None and row[0] is not None:
                steps[step_id] = json.loads(self._sealer.open(row[0]))
        input_blob = conn.execute(RUN_STATE, (run_id,)).fetchone()[2]
        return {"input": json.loads(self._sealer.open(input_blob)), "steps": steps}

    def _announce(self, advance: _Advance) -> None:
        """Tell the scheduler and the waiters, after the commit."""
        if self._step_started is not None:
            for start in advance.started:
                self._step_started(start.task_id, start.due_at_ms)
        if self._run_finished is not None:
            for run_id in advance.finished_runs:
                self._run_finished(run_id)

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
