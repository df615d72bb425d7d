"""Advancing workflow runs inside the transaction that records a step's outcome:
the step is finished, its dependants' counts of unmet dependencies drop through
``workflow_edge`` (no scan of the run), and the steps left with none are rendered and
inserted as tasks (the ``StepBuilder`` the composition root gives the store validates
them). The SQL the run operations share lives here too."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, LiteralString

from ...models import Attempt, NewTask, Result, TaskState
from ...workflows.model import (
    NewRun,
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
from .base import METADATA, StoreBase
from .claims import ATTEMPT_INSERT
from .registrations import FLOW_UPSERT
from .tasks import TASK_INSERT

logger = logging.getLogger(__name__)


RUN_STATE: LiteralString = "SELECT owner_id, state, input FROM workflow_run WHERE id = ?"

RUN_SET_STATE: LiteralString = (
    "UPDATE workflow_run SET state = ?, finished_at = ?, error = ? WHERE id = ?"
)


# a step succeeded or was skipped: one fewer to go, and a PENDING run is RUNNING now
RUN_DONE_ONE: LiteralString = (
    "UPDATE workflow_run SET remaining = remaining - 1, "
    "state = CASE state WHEN 'PENDING' THEN 'RUNNING' ELSE state END "
    "WHERE id = ? RETURNING remaining, state"
)

# the step a task ran, with its run's owner, state and input
STEP_BY_TASK: LiteralString = (
    "SELECT s.run_id, s.step_id, s.template, r.owner_id, r.state, r.input "
    "FROM workflow_step s JOIN workflow_run r ON r.id = s.run_id "
    "WHERE s.task_id = ? AND s.state = 'RUNNING'"
)

STEP_TEMPLATE: LiteralString = (
    "SELECT step_id, template, dep_skipped FROM workflow_step WHERE run_id = ? AND step_id = ?"
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

# the dependants of a step one dependency closer to ready; those left with none come with
# what starting them needs
STEP_RELEASE: LiteralString = (
    "UPDATE workflow_step SET unmet = unmet - 1, dep_skipped = max(dep_skipped, ?) "
    "WHERE run_id = ? AND step_id IN "
    "(SELECT dependant FROM workflow_edge WHERE run_id = ? AND step_id = ?) "
    "RETURNING step_id, unmet, state, template, dep_skipped"
)

# a step's task: like a registration, with its priority and flow-control key
STEP_TASK_INSERT: LiteralString = (
    "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
    "next_at, metadata, spec, priority, flow_key, host, in_flight, attempts, first_attempt_at) "
    "VALUES (?, ?, 'RUNNING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# the owner's validated domains (JSON, clear): a step's destination must be one of them
OWNER_ALLOWED_HOSTS: LiteralString = "SELECT allowed_hosts FROM owner_security WHERE owner_id = ?"

RUN_ENDED: LiteralString = (
    "SELECT owner_id, name, created_at, metadata, callbacks, schedule_id FROM workflow_run "
    "WHERE id = ?"
)
# the step whose failure ended a run (none after a timeout): its task and status
STEP_FAILED: LiteralString = (
    "SELECT s.task_id, coalesce(t.status_code, 0) FROM workflow_step s "
    "LEFT JOIN task t ON t.id = s.task_id WHERE s.run_id = ? AND s.state = 'ERROR' "
    "ORDER BY s.finished_at DESC LIMIT 1"
)
STEP_SUMMARY: LiteralString = (
    "SELECT s.step_id, s.state, s.task_id, coalesce(t.attempts, 0), "
    "coalesce(t.status_code, 0), s.result, s.error FROM workflow_step s "
    "LEFT JOIN task t ON t.id = s.task_id WHERE s.run_id = ? ORDER BY s.position"
)


# a ready step: its id, sealed template, and whether a dependency was skipped
Ready = tuple[str, bytes, int]


@dataclass(slots=True)
class Advance:
    """What one transaction did to runs: step tasks to arm, runs that ended, and how many
    more step tasks it may create already claimed. It also keeps what the transaction
    read once for many steps: runs' inputs (opened) and owners' validated domains."""

    started: list[StepStart] = field(default_factory=list)
    finished_runs: list[str] = field(default_factory=list)
    claims: int = 0
    scheduled_ends: list[RunEnd] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    allowed_hosts: dict[str, tuple[str, ...] | None] = field(default_factory=dict)


# steps' tasks built when their run was created, kept for when they start
BUILT_KEPT = 10_000


class StepOps(StoreBase):
    _step_builder: StepBuilder | None = None
    # (run, step) → the step's task as built and checked when the run was created, and
    # the owner's validated domains then: starting the step takes it rather than
    # rendering and validating the request again (the writer thread's largest part of a
    # step). Only the writer thread uses it; what it forgets is built again.
    _built: OrderedDict[tuple[str, str], tuple[NewTask, tuple[str, ...] | None]] | None = None
    _step_started: StepStarted | None = None
    _run_finished: RunFinished | None = None
    _claim_budget: ClaimBudget | None = None
    _scheduled_run_ended: ScheduledRunEnded | None = None

    def watch_workflows(
        self,
        builder: StepBuilder,
        step_started: StepStarted,
        run_finished: RunFinished,
        claim_budget: ClaimBudget | None = None,
        scheduled_run_ended: ScheduledRunEnded | None = None,
    ) -> None:
        self._step_builder = builder
        self._built = OrderedDict()
        self._step_started = step_started
        self._run_finished = run_finished
        self._claim_budget = claim_budget
        self._scheduled_run_ended = scheduled_run_ended

    def _followup_claims(self) -> int:
        return 0 if self._claim_budget is None else max(self._claim_budget(), 0)

    # -- inside the outcome transaction ---------------------------------------------------

    def _outcome_followups(
        self, conn: sqlite3.Connection, results: Sequence[Result], claims: int
    ) -> Callable[[], None]:
        advance = self.advance_steps(conn, results, claims)
        return lambda: self._announce(advance)

    def advance_steps(
        self, conn: sqlite3.Connection, results: Sequence[Result], claims: int = 0
    ) -> Advance:
        """Finish the workflow steps whose task just ended (called inside the transaction
        that records the outcomes) and start what they release: up to ``claims`` of the
        released tasks that are due now (and wait for no flow-control key) are created
        already claimed, their first attempt durably running, so the scheduler starts
        them without a claim transaction of its own (a crash requeues them like any
        claim)."""
        advance = Advance(claims=claims)
        for result in results:
            if result.state not in (TaskState.SUCCESS, TaskState.ERROR):
                continue
            row = conn.execute(STEP_BY_TASK, (result.task_id,)).fetchone()
            if row is not None:
                run_id, step_id, template_blob, owner_id, run_state, input_blob = row
                if run_id not in advance.inputs:
                    advance.inputs[run_id] = json.loads(self._sealer.open(input_blob))
                step = (run_id, step_id, owner_id, run_state)
                self._finish_step(conn, step, template_blob, result, advance)
        return advance

    def _finish_step(
        self,
        conn: sqlite3.Connection,
        step: tuple[str, str, str, str],
        template_blob: bytes,
        result: Result,
        advance: Advance,
    ) -> None:
        """Finish the step (run, step, owner, run state) whose task ended with
        ``result``."""
        run_id, step_id, owner_id, run_state = step
        now = result.finished_at_ms
        response = step_response(result)
        if result.state is TaskState.ERROR:
            error = step_error(result)
            self._fail_step(conn, run_id, step_id, run_state, error, response, now, advance)
            return
        template = json.loads(self._sealer.open(template_blob))
        try:
            context = self._context(conn, run_id, referenced_steps(template, "output"), advance)
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
        advance: Advance,
    ) -> None:
        found = failed_result(response)
        blob = None if found is None else self._sealer.seal(found)
        conn.execute(STEP_FINISHED, (StepState.ERROR.value, blob, error, now, run_id, step_id))
        if not RunState(run_state).is_final:
            message = run_error(step_id, error)
            conn.execute(RUN_SET_STATE, (RunState.ERROR.value, now, message, run_id))
            self._run_ended(conn, run_id, RunState.ERROR, message, now, advance)

    def _start_ready(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        owner_id: str,
        step_ids: Sequence[str],
        now: int,
        due_floor_ms: int,
        advance: Advance,
    ) -> None:
        """Start steps with nothing unmet, and count the ones that are skipped."""
        ready = [conn.execute(STEP_TEMPLATE, (run_id, step_id)).fetchone() for step_id in step_ids]
        for step_id in self._start_steps(conn, run_id, owner_id, ready, now, due_floor_ms, advance):
            self._step_done(conn, run_id, owner_id, step_id, True, now, advance)

    def _step_done(
        self,
        conn: sqlite3.Connection,
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
            remaining, run_state = conn.execute(RUN_DONE_ONE, (run_id,)).fetchone()
            if RunState(run_state).is_final:
                return  # a failed or cancelled run starts nothing new
            if remaining == 0:
                conn.execute(RUN_SET_STATE, (RunState.SUCCESS.value, now, None, run_id))
                self._run_ended(conn, run_id, RunState.SUCCESS, None, now, advance)
                return
            released = conn.execute(
                STEP_RELEASE, (int(done_skipped), run_id, run_id, done_id)
            ).fetchall()
            ready = [
                (dep, template, skipped)
                for dep, unmet, state, template, skipped in released
                if unmet == 0 and state == "WAITING"
            ]
            skipped_now = self._start_steps(
                conn, run_id, owner_id, ready, now, now, advance, released=True
            )
            work.extend((dep, True) for dep in skipped_now)

    def _start_steps(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        owner_id: str,
        ready: Sequence[Ready],
        now: int,
        due_floor_ms: int,
        advance: Advance,
        released: bool = False,
    ) -> list[str]:
        """Turn ready steps into tasks; returns the ones skipped (their dependants are
        released by the caller). A step whose request cannot be built fails the run.
        ``released``: the steps' dependencies just succeeded (else they are a run's
        first steps, or steps retried)."""
        skipped = []
        for step_id, template_blob, dep_skipped in ready:
            template = json.loads(self._sealer.open(template_blob))
            try:
                start = self._start_step(
                    conn,
                    run_id,
                    owner_id,
                    step_id,
                    template,
                    bool(dep_skipped),
                    now,
                    due_floor_ms,
                    advance,
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
                advance.started.append(
                    dataclasses.replace(start, released=True) if released else start
                )
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
        advance: Advance,
    ) -> StepStart | None:
        if dep_skipped and not template["runIfSkipped"]:
            return None
        refs = referenced_steps(template, "request") | referenced_steps(template, "when")
        context = self._context(conn, run_id, refs, advance)
        if template["when"] is not None and not holds(template["when"], context):
            return None
        assert self._step_builder is not None, "the store was given no step builder"
        if owner_id not in advance.allowed_hosts:
            advance.allowed_hosts[owner_id] = self._allowed_hosts(conn, owner_id)
        allowed = advance.allowed_hosts[owner_id]
        kept = None if self._built is None else self._built.pop((run_id, step_id), None)
        if kept is not None and kept[1] == allowed:  # else its owner's domains changed
            built = kept[0]
        else:
            built = self._step_builder(render(template["request"], context), now, allowed)
        new = labelled(built, run_id, step_id)
        due = max(new.due_at_ms, due_floor_ms)
        metadata = self._seal(METADATA.dump_json(new.spec.metadata or ()))
        task_id = new_task_id(now)
        config = new.spec.config
        flow = config.flow_control
        claim = advance.claims > 0 and flow is None and due <= now
        params = (
            *(task_id, owner_id, now, due, due, None if claim else due, metadata),
            *(self._seal_spec(new.spec), config.priority, None if flow is None else flow.key),
            *(host_of(new.spec.request.url), int(claim), int(claim), now if claim else None),
        )
        conn.execute(STEP_TASK_INSERT, params)
        if flow is not None:  # the step's limits for its key, as a registration sets them
            conn.execute(
                FLOW_UPSERT, (owner_id, flow.key, flow.rate, flow.period.ms, flow.parallelism, now)
            )
        conn.execute(STEP_STARTED, (task_id, now, run_id, step_id))
        start = step_start(task_id, due, owner_id, new)
        if not claim:
            return start
        advance.claims -= 1
        conn.execute(ATTEMPT_INSERT, (task_id, 1, now, 1))
        attempt = Attempt(task_id, 1, new.spec, 0, due, now, owner_id, None, now)
        return dataclasses.replace(start, attempt=attempt)

    def _keep_built(self, run_id: str, run: NewRun) -> None:
        """Keep the steps' tasks built when the run was created, for when they start."""
        if self._built is None:
            return  # no step builder: nothing starts
        for step_id, new in run.built.items():
            self._built[(run_id, step_id)] = (new, run.built_for)
        while len(self._built) > BUILT_KEPT:
            self._built.popitem(last=False)

    @staticmethod
    def _allowed_hosts(conn: sqlite3.Connection, owner_id: str) -> tuple[str, ...] | None:
        row = conn.execute(OWNER_ALLOWED_HOSTS, (owner_id,)).fetchone()
        return None if row is None or row[0] is None else tuple(json.loads(row[0]))

    def _context(
        self, conn: sqlite3.Connection, run_id: str, step_ids: set[str], advance: Advance
    ) -> dict[str, Any]:
        """The run's input (read once per transaction) and the results of the steps
        named."""
        steps: dict[str, Any] = {}
        for step_id in step_ids:
            row = conn.execute(STEP_RESULT, (run_id, step_id)).fetchone()
            if row is not None and row[0] is not None:
                steps[step_id] = json.loads(self._sealer.open(row[0]))
        if run_id not in advance.inputs:
            input_blob = conn.execute(RUN_STATE, (run_id,)).fetchone()[2]
            advance.inputs[run_id] = json.loads(self._sealer.open(input_blob))
        return {"input": advance.inputs[run_id], "steps": steps}

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

    def _run_ended(
        self,
        conn: sqlite3.Connection,
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
        owner_id, name, created_at, metadata, callbacks, schedule_id = conn.execute(
            RUN_ENDED, (run_id,)
        ).fetchone()
        if schedule_id is not None:
            failed = conn.execute(STEP_FAILED, (run_id,)).fetchone()
            run_of = (run_id, owner_id, schedule_id)
            end = scheduled_end(run_of, state, error, self._labels(metadata), failed, now)
            if end is not None:
                advance.scheduled_ends.append(end)
        callback = callback_for(
            None if callbacks is None else json.loads(self._sealer.open(callbacks)), state.value
        )
        if callback is None:
            return
        opened = self._open(metadata)
        labels = None if opened is None else dict(METADATA.validate_json(opened))
        run = {"id": run_id, "name": name, "state": state.value, "error": error}
        run.update(createdAt=created_at, finishedAt=now, metadata=labels)
        steps = [
            step_summary(row, None if row[5] is None else json.loads(self._sealer.open(row[5])))
            for row in conn.execute(STEP_SUMMARY, (run_id,)).fetchall()
        ]
        assert self._step_builder is not None, "the store was given no step builder"
        try:
            request = callback_request(callback, envelope(run, steps))
            built = self._step_builder(request, now, self._allowed_hosts(conn, owner_id))
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
        conn.execute(TASK_INSERT, params)
        advance.started.append(StepStart(task_id, now))
