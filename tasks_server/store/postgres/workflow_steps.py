"""Advancing workflow runs on PostgreSQL inside the transaction that records a step's outcome:
the step is finished, its dependants' counts of unmet dependencies drop through
``workflow_edge`` (no scan of the run), and the steps left with none are rendered and
inserted as tasks (the ``StepBuilder`` the composition root gives the store validates
them). The SQL the run operations share lives here too."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, LiteralString

from psycopg import AsyncCursor

from ...models import Result, TaskState
from ...workflows.model import (
    RunEnd,
    RunState,
    StepStart,
    StepState,
)
from ...workflows.steps import (
    ClaimBudget,
    RunFinished,
    ScheduledRunEnded,
    StepBuilder,
    StepStarted,
    callback_for,
    callback_request,
    callback_task,
    envelope,
    failed_result,
    labelled,
    referenced_steps,
    run_error,
    scheduled_end,
    step_error,
    step_response,
    step_result,
    step_start,
    step_summary,
)
from ...workflows.template import TemplateError, holds, render
from ..ids import new_task_id
from ..listing import host_of
from .base import METADATA, PgBase
from .tasks import FLOW_UPSERT, TASK_INSERT

logger = logging.getLogger(__name__)

Cursor = AsyncCursor[tuple[Any, ...]]


async def _one(cur: Cursor, sql: LiteralString, params: Any) -> Any:
    await cur.execute(sql, params)
    return await cur.fetchone()


async def _all(cur: Cursor, sql: LiteralString, params: Any) -> list[Any]:
    await cur.execute(sql, params)
    return await cur.fetchall()


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

STEP_BY_TASK: LiteralString = (
    "SELECT run_id, step_id, template FROM workflow_step WHERE task_id = %s AND state = 'RUNNING'"
)
# which of the tasks that just ended are workflow steps (one round trip for the batch)
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

# a step's task: like a registration, with its priority and flow-control key
STEP_TASK_INSERT: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, priority, flow_key, host) "
    "VALUES (%s, %s, 'RUNNING', %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
# the owner's validated domains (JSON, clear): a step's destination must be one of them
OWNER_ALLOWED_HOSTS: LiteralString = "SELECT allowed_hosts FROM owner_security WHERE owner_id = %s"

RUN_ENDED: LiteralString = (
    "SELECT owner_id, name, created_at, metadata, callbacks, schedule_id FROM workflow_run "
    "WHERE id = %s"
)
# the step whose failure ended a run (none after a timeout): its task and status
STEP_FAILED: LiteralString = (
    "SELECT s.task_id, coalesce(t.status_code, 0) FROM workflow_step s "
    "LEFT JOIN task t ON t.id = s.task_id WHERE s.run_id = %s AND s.state = 'ERROR' "
    "ORDER BY s.finished_at DESC LIMIT 1"
)
STEP_SUMMARY: LiteralString = (
    "SELECT s.step_id, s.state, s.task_id, coalesce(t.attempts, 0), "
    "coalesce(t.status_code, 0), s.result, s.error FROM workflow_step s "
    "LEFT JOIN task t ON t.id = s.task_id WHERE s.run_id = %s ORDER BY s.position"
)


@dataclass(slots=True)
class Advance:
    """What one transaction did to runs: step tasks to arm, runs that ended."""

    started: list[StepStart] = field(default_factory=list)
    finished_runs: list[str] = field(default_factory=list)
    scheduled_ends: list[RunEnd] = field(default_factory=list)


class PgStepOps(PgBase):
    _step_builder: StepBuilder | None = None
    _step_started: StepStarted | None = None
    _run_finished: RunFinished | None = None
    _scheduled_run_ended: ScheduledRunEnded | None = None

    def _unseal(self, blob: bytes) -> bytes:
        return self._sealer.open(bytes(blob))

    def watch_workflows(
        self,
        builder: StepBuilder,
        step_started: StepStarted,
        run_finished: RunFinished,
        claim_budget: ClaimBudget | None = None,
        scheduled_run_ended: ScheduledRunEnded | None = None,
    ) -> None:
        # claim_budget is not used here: a claim on PostgreSQL is a lease of this node,
        # taken by claim_due, so released steps are left for the scheduler to claim
        self._step_builder = builder
        self._step_started = step_started
        self._run_finished = run_finished
        self._scheduled_run_ended = scheduled_run_ended

    # -- inside the outcome transaction ---------------------------------------------------

    async def _outcome_followups(
        self, cur: Cursor, results: Sequence[Result], steps: Collection[str]
    ) -> Callable[[], None]:
        advance = await self.advance_steps(cur, results, steps)
        return lambda: self._announce(advance)

    async def advance_steps(
        self, cur: Cursor, results: Sequence[Result], steps: Collection[str]
    ) -> Advance:
        """Finish the workflow steps whose task just ended (called inside the transaction
        that records the outcomes, which found which tasks are ``steps``) and start what
        they release."""
        advance = Advance()
        for result in results:
            if result.task_id not in steps:
                continue
            if result.state not in (TaskState.SUCCESS, TaskState.ERROR):
                continue
            row = await _one(cur, STEP_BY_TASK, (result.task_id,))
            if row is not None:
                await self._finish_step(cur, row[0], row[1], row[2], result, advance)
        await self._tell_nodes(cur, advance, max((r.finished_at_ms for r in results), default=0))
        return advance

    async def _tell_nodes(self, cur: Cursor, advance: Advance, now_ms: int) -> None:
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
        advance: Advance,
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
        advance: Advance,
    ) -> None:
        found = failed_result(response)
        blob = None if found is None else self._sealer.seal(found)
        await cur.execute(STEP_FINISHED, (StepState.ERROR.value, blob, error, now, run_id, step_id))
        if not RunState(run_state).is_final:
            message = run_error(step_id, error)
            await cur.execute(RUN_SET_STATE, (RunState.ERROR.value, now, message, run_id))
            await self._run_ended(cur, run_id, RunState.ERROR, message, now, advance)

    async def _start_ready(
        self,
        cur: Cursor,
        run_id: str,
        owner_id: str,
        step_ids: Sequence[str],
        now: int,
        due_floor_ms: int,
        advance: Advance,
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
        advance: Advance,
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
                await self._run_ended(cur, run_id, RunState.SUCCESS, None, now, advance)
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
        advance: Advance,
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
            self._step_builder(
                render(template["request"], context), now, await self._allowed_hosts(cur, owner_id)
            ),
            run_id,
            step_id,
        )
        due = max(new.due_at_ms, due_floor_ms)
        metadata = self._seal(METADATA.dump_json(new.spec.metadata or ()))
        task_id = new_task_id(now)
        config = new.spec.config
        flow = config.flow_control
        params = (
            *(task_id, owner_id, now, due, due, due, metadata, self._seal_spec(new.spec)),
            *(config.priority, None if flow is None else flow.key, host_of(new.spec.request.url)),
        )
        await cur.execute(STEP_TASK_INSERT, params)
        if flow is not None:  # the step's limits for its key, as a registration sets them
            await cur.execute(
                FLOW_UPSERT, (owner_id, flow.key, flow.rate, flow.period.ms, flow.parallelism, now)
            )
        await cur.execute(STEP_STARTED, (task_id, now, run_id, step_id))
        return step_start(task_id, due, owner_id, new)

    async def _allowed_hosts(self, cur: Cursor, owner_id: str) -> tuple[str, ...] | None:
        row = await _one(cur, OWNER_ALLOWED_HOSTS, (owner_id,))
        return None if row is None or row[0] is None else tuple(json.loads(row[0]))

    async def _context(self, cur: Cursor, run_id: str, step_ids: set[str]) -> dict[str, Any]:
        """The run's input and the results of the steps named."""
        steps: dict[str, Any] = {}
        for step_id in step_ids:
            row = await _one(cur, STEP_RESULT, (run_id, step_id))
            if row is not None and row[0] is not None:
                steps[step_id] = json.loads(self._unseal(row[0]))
        input_blob = (await _one(cur, RUN_STATE, (run_id,)))[2]
        return {"input": json.loads(self._unseal(input_blob)), "steps": steps}

    def _announce(self, advance: Advance) -> None:
        """Tell the scheduler and the waiters, after the commit."""
        if self._step_started is not None:
            for start in advance.started:
                self._step_started(start)
        if self._run_finished is not None:
            for run_id in advance.finished_runs:
                self._run_finished(run_id)
        if self._scheduled_run_ended is not None:
            for end in advance.scheduled_ends:
                self._scheduled_run_ended(end)

    def _labels(self, metadata: bytes | None) -> tuple[tuple[str, str], ...] | None:
        opened = self._open(metadata)
        return None if opened is None else METADATA.validate_json(opened)

    async def _run_ended(
        self,
        cur: Cursor,
        run_id: str,
        state: RunState,
        error: str | None,
        now: int,
        advance: Advance,
    ) -> None:
        """The run just ended in ``state``: tell the waiters after the commit, and create
        its onSuccess / onFailure callback task with the run's envelope, in this
        transaction (so the callback is neither lost nor made for an end that did not
        count)."""
        advance.finished_runs.append(run_id)
        owner_id, name, created_at, metadata, callbacks, schedule_id = await _one(
            cur, RUN_ENDED, (run_id,)
        )
        if schedule_id is not None:
            failed = await _one(cur, STEP_FAILED, (run_id,))
            run_of = (run_id, owner_id, schedule_id)
            end = scheduled_end(run_of, state, error, self._labels(metadata), failed, now)
            if end is not None:
                advance.scheduled_ends.append(end)
        callback = callback_for(
            None if callbacks is None else json.loads(self._unseal(callbacks)), state.value
        )
        if callback is None:
            return
        opened = self._open(metadata)
        labels = None if opened is None else dict(METADATA.validate_json(opened))
        run = {"id": run_id, "name": name, "state": state.value, "error": error}
        run.update(createdAt=created_at, finishedAt=now, metadata=labels)
        steps = [
            step_summary(row, None if row[5] is None else json.loads(self._unseal(row[5])))
            for row in await _all(cur, STEP_SUMMARY, (run_id,))
        ]
        assert self._step_builder is not None, "the store was given no step builder"
        try:
            request = callback_request(callback, envelope(run, steps))
            built = self._step_builder(request, now, await self._allowed_hosts(cur, owner_id))
        except ValueError as exc:  # checked when the run was created; logged if it changed
            logger.error("workflow run %s: callback not made: %s", run_id, exc)
            return
        new = callback_task(built, run_id, state.value)
        task_id = new_task_id(now)
        metadata_blob = self._seal(METADATA.dump_json(new.spec.metadata or ()))
        params = (
            *(task_id, owner_id, now, now, now, now, metadata_blob),
            *(self._seal_spec(new.spec), host_of(new.spec.request.url)),
        )
        await cur.execute(TASK_INSERT, params)
        advance.started.append(StepStart(task_id, now))
