"""Workflow runs and their steps on PostgreSQL, and their SQL (as the SQLite store's,
with row locks where nodes meet: a run's row and each dependant's row).

A step becomes a task when its dependencies have succeeded; finishing the step (in the
transaction that records its task's outcome, ``advance_steps``) releases its dependants
through ``workflow_edge`` and a per-step count of unmet dependencies, so starting a
dependant never scans the run. Rendering a step's request and validating it is the
``StepBuilder`` the composition root gives the store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, LiteralString

from psycopg import AsyncCursor

from ...errors import PreconditionFailed, WorkflowNotFound
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
from .base import METADATA, PgBase
from .owners import lock_capacity
from .tasks import TASK_INSERT, TASK_REVOKE

logger = logging.getLogger(__name__)
Cursor = AsyncCursor[tuple[Any, ...]]


async def _one(cur: Cursor, sql: LiteralString, params: Any) -> Any:
    await cur.execute(sql, params)
    return await cur.fetchone()


async def _all(cur: Cursor, sql: LiteralString, params: Any) -> list[Any]:
    await cur.execute(sql, params)
    return await cur.fetchall()


RUN_INSERT: LiteralString = (
    "INSERT INTO workflow_run (id, owner_id, name, state, created_at, due_at, deadline_at, "
    "remaining, input, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
RUN_COLUMNS: LiteralString = (
    "id, owner_id, name, state, created_at, due_at, finished_at, deadline_at, error, metadata"
)
RUN_BY_ID: LiteralString = f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE id = %s AND owner_id = %s"
RUN_LIST: LiteralString = (
    f"SELECT {RUN_COLUMNS} FROM workflow_run WHERE owner_id = %s "
    "AND (%s::text IS NULL OR state = %s) AND (%s::text IS NULL OR name = %s) "
    "AND (%s::bigint IS NULL OR created_at < %s OR (created_at = %s AND id < %s)) "
    "ORDER BY created_at DESC, id DESC LIMIT %s"
)
RUN_STATE: LiteralString = "SELECT owner_id, state, input FROM workflow_run WHERE id = %s"
RUN_LOCK: LiteralString = "SELECT owner_id, state, input FROM workflow_run WHERE id = %s FOR UPDATE"
RUN_SET_STATE: LiteralString = (
    "UPDATE workflow_run SET state = %s, finished_at = %s, error = %s WHERE id = %s"
)
RUN_START: LiteralString = (
    "UPDATE workflow_run SET state = 'RUNNING' WHERE id = %s AND state = 'PENDING'"
)
RUN_DONE_ONE: LiteralString = (
    "UPDATE workflow_run SET remaining = remaining - 1 WHERE id = %s RETURNING remaining, state"
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
STEP_BY_TASK: LiteralString = (
    "SELECT run_id, step_id, template FROM workflow_step WHERE task_id = %s AND state = 'RUNNING'"
)
STEP_TEMPLATE: LiteralString = (
    "SELECT template, state, dep_skipped FROM workflow_step WHERE run_id = %s AND step_id = %s"
)
STEP_RESULT: LiteralString = (
    "SELECT result FROM workflow_step WHERE run_id = %s AND step_id = %s AND state = 'SUCCESS'"
)
STEP_STARTED: LiteralString = (
    "UPDATE workflow_step SET state = 'RUNNING', task_id = %s, started_at = %s, "
    "finished_at = NULL, error = NULL WHERE run_id = %s AND step_id = %s"
)
STEP_FINISHED: LiteralString = (
    "UPDATE workflow_step SET state = %s, result = %s, error = %s, finished_at = %s "
    "WHERE run_id = %s AND step_id = %s"
)
STEP_RELEASE: LiteralString = (
    "UPDATE workflow_step SET unmet = unmet - 1, dep_skipped = greatest(dep_skipped, %s) "
    "WHERE run_id = %s AND step_id IN "
    "(SELECT dependant FROM workflow_edge WHERE run_id = %s AND step_id = %s) "
    "RETURNING step_id, unmet, state"
)
STEP_COLUMNS: LiteralString = (
    "s.step_id, s.state, s.depends_on, s.task_id, coalesce(t.attempts, 0), "
    "coalesce(t.status_code, 0), s.result, s.error, s.started_at, s.finished_at"
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


@dataclass(slots=True)
class _Advance:
    """What one transaction did to runs: step tasks to arm, runs that ended."""

    started: list[StepStart] = field(default_factory=list)
    finished_runs: list[str] = field(default_factory=list)


class PgWorkflowOps(PgBase):
    _step_builder: StepBuilder | None = None
    _step_started: StepStarted | None = None
    _run_finished: RunFinished | None = None

    def _unseal(self, blob: bytes) -> bytes:
        return self._sealer.open(bytes(blob))

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

        async def op(cur: Cursor) -> _Advance:
            await lock_capacity(cur, owner_id)  # raises OwnerNotFound
            await cur.execute(
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
                await cur.execute(
                    STEP_INSERT, (run_id, step.id, position, len(deps), json.dumps(deps), blob)
                )
                for dep in deps:
                    await cur.execute(EDGE_INSERT, (run_id, dep, step.id))
            advance = _Advance()
            roots = [step.id for step in run.steps if not step.depends_on]
            await self._start_ready(cur, run_id, owner_id, roots, now_ms, run.due_at_ms, advance)
            await self._tell_nodes(cur, advance, now_ms)
            return advance

        advance = await self._tx(op)
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
        self._announce(_Advance(finished_runs=[run_id]))
        return revoked

    async def retry_run(self, owner_id: str, run_id: str, now_ms: int) -> WorkflowRun:
        async def op(cur: Cursor) -> _Advance:
            row = await _one(cur, RUN_BY_ID, (run_id, owner_id))
            if row is None:
                raise WorkflowNotFound(run_id)
            if RunState(row[3]) not in (RunState.ERROR, RunState.CANCELLED):
                raise PreconditionFailed(
                    f"only a run in ERROR or CANCELLED can be retried, not {row[3]}"
                )
            retryable = await _all(cur, STEP_RETRYABLE, (run_id,))
            for step_id, _ in retryable:
                await cur.execute(STEP_RESET, (run_id, step_id))
            await cur.execute(RUN_RESTART, {"run": run_id})
            advance = _Advance()
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

        async def op(cur: Cursor) -> list[tuple[str, list[str]]]:
            ended = []
            for (run_id,) in await _all(cur, RUN_OVERDUE, (now_ms, limit)):
                owner_id = (await _one(cur, RUN_STATE, (run_id,)))[0]
                await cur.execute(RUN_SET_STATE, (RunState.ERROR.value, now_ms, TIMED_OUT, run_id))
                await cur.execute(STEP_CANCEL_WAITING, (now_ms, run_id))
                tasks = [row[0] for row in (await _all(cur, STEP_CANCEL_RUNNING, (now_ms, run_id)))]
                for task_id in tasks:
                    await cur.execute(TASK_REVOKE, (now_ms, task_id, owner_id))
                ended.append((run_id, tasks))
            return ended

        ended = await self._tx(op)
        self._announce(_Advance(finished_runs=[run_id for run_id, _ in ended]))
        return [task_id for _, tasks in ended for task_id in tasks]

    # -- inside the outcome transaction ---------------------------------------------------

    async def _outcome_followups(
        self, cur: Cursor, results: Sequence[Result]
    ) -> Callable[[], None]:
        advance = await self.advance_steps(cur, results)
        return lambda: self._announce(advance)

    async def advance_steps(self, cur: Cursor, results: Sequence[Result]) -> _Advance:
        """Finish the workflow steps whose task just ended (called inside the transaction
        that records the outcomes) and start what they release."""
        advance = _Advance()
        for result in results:
            if result.state not in (TaskState.SUCCESS, TaskState.ERROR):
                continue
            row = await _one(cur, STEP_BY_TASK, (result.task_id,))
            if row is not None:
                await self._finish_step(cur, row[0], row[1], row[2], result, advance)
        await self._tell_nodes(cur, advance, max((r.finished_at_ms for r in results), default=0))
        return advance

    async def _tell_nodes(self, cur: Cursor, advance: _Advance, now_ms: int) -> None:
        """Other nodes learn of the step tasks this transaction created, at its commit."""
        started = [(start.task_id, start.due_at_ms) for start in advance.started]
        if started:
            await self._notify_due(cur, started, now_ms)

    async def _finish_step(
        self,
        cur: Cursor,
        run_id: str,
        step_id: str,
        template_blob: bytes,
        result: Result,
        advance: _Advance,
    ) -> None:
        now = result.finished_at_ms
        # the run's row is locked: steps of one run finishing on two nodes take turns
        owner_id, run_state, _ = await _one(cur, RUN_LOCK, (run_id,))
        response = step_response(result)
        if result.state is TaskState.ERROR:
            error = step_error(result)
            await self._fail_step(cur, run_id, step_id, run_state, error, response, now, advance)
            return
        template = json.loads(self._unseal(template_blob))
        try:
            context = await self._context(cur, run_id, referenced_steps(template, "output"))
            blob = self._sealer.seal(step_result(template, context, response))
        except TemplateError as exc:
            error = f"output: {exc}"
            await self._fail_step(cur, run_id, step_id, run_state, error, response, now, advance)
            return
        await cur.execute(
            STEP_FINISHED, (StepState.SUCCESS.value, blob, None, now, run_id, step_id)
        )
        await self._step_done(cur, run_id, owner_id, step_id, False, now, advance)

    async def _fail_step(
        self,
        cur: Cursor,
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
        await cur.execute(STEP_FINISHED, (StepState.ERROR.value, blob, error, now, run_id, step_id))
        if not RunState(run_state).is_final:
            message = f"step {step_id!r} failed: {error}"
            await cur.execute(RUN_SET_STATE, (RunState.ERROR.value, now, message, run_id))
            advance.finished_runs.append(run_id)

    async def _start_ready(
        self,
        cur: Cursor,
        run_id: str,
        owner_id: str,
        step_ids: Sequence[str],
        now: int,
        due_floor_ms: int,
        advance: _Advance,
    ) -> None:
        """Start steps with nothing unmet, and count the ones that are skipped."""
        for step_id in await self._start_steps(
            cur, run_id, owner_id, step_ids, now, due_floor_ms, advance
        ):
            await self._step_done(cur, run_id, owner_id, step_id, True, now, advance)

    async def _step_done(
        self,
        cur: Cursor,
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
            remaining, run_state = await _one(cur, RUN_DONE_ONE, (run_id,))
            if RunState(run_state).is_final:
                return  # a failed or cancelled run starts nothing new
            await cur.execute(RUN_START, (run_id,))
            if remaining == 0:
                await cur.execute(RUN_SET_STATE, (RunState.SUCCESS.value, now, None, run_id))
                advance.finished_runs.append(run_id)
                return
            released = await _all(cur, STEP_RELEASE, (int(done_skipped), run_id, run_id, done_id))
            ready = [dep for dep, unmet, state in released if unmet == 0 and state == "WAITING"]
            skipped_now = await self._start_steps(cur, run_id, owner_id, ready, now, now, advance)
            work.extend((dep, True) for dep in skipped_now)

    async def _start_steps(
        self,
        cur: Cursor,
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
            template_blob, _, dep_skipped = await _one(cur, STEP_TEMPLATE, (run_id, step_id))
            template = json.loads(self._unseal(template_blob))
            try:
                start = await self._start_step(
                    cur, run_id, owner_id, step_id, template, bool(dep_skipped), now, due_floor_ms
                )
            except (TemplateError, ValueError) as exc:
                run_state = (await _one(cur, RUN_STATE, (run_id,)))[1]
                await self._fail_step(cur, run_id, step_id, run_state, str(exc), None, now, advance)
                break  # the run failed: nothing new starts
            if start is None:
                await cur.execute(
                    STEP_FINISHED, (StepState.SKIPPED.value, None, None, now, run_id, step_id)
                )
                skipped.append(step_id)
            else:
                advance.started.append(start)
        return skipped

    async def _start_step(
        self,
        cur: Cursor,
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
        context = await self._context(cur, run_id, refs)
        if template["when"] is not None and not holds(template["when"], context):
            return None
        assert self._step_builder is not None, "the store was given no step builder"
        new = labelled(
            self._step_builder(render(template["request"], context), now), run_id, step_id
        )
        due = max(new.due_at_ms, due_floor_ms)
        metadata = self._seal(METADATA.dump_json(new.spec.metadata or ()))
        task_id = new_task_id(now)
        await cur.execute(
            TASK_INSERT,
            (task_id, owner_id, now, due, due, due, metadata, self._seal_spec(new.spec)),
        )
        await cur.execute(STEP_STARTED, (task_id, now, run_id, step_id))
        return StepStart(task_id, due)

    async def _context(self, cur: Cursor, run_id: str, step_ids: set[str]) -> dict[str, Any]:
        """The run's input and the results of the steps named."""
        steps: dict[str, Any] = {}
        for step_id in step_ids:
            row = await _one(cur, STEP_RESULT, (run_id, step_id))
            if row is not None and row[0] is not None:
                steps[step_id] = json.loads(self._unseal(row[0]))
        input_blob = (await _one(cur, RUN_STATE, (run_id,)))[2]
        return {"input": json.loads(self._unseal(input_blob)), "steps": steps}

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
