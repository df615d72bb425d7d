"""The persistence contract, implemented by SqliteStore (one process owns a file) and
PostgresStore (several nodes share a database; see docs/architecture.md).

Every method that changes a task is one transaction named after the transition. Methods
that take ``owner_id`` never touch another owner's rows: another owner's task and a missing
one raise the same TaskNotFound.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..alerting import AlertDelivery, AlertRule, Incident
from ..errors import TasksServerError
from ..models import (
    Attempt,
    AttemptRecord,
    DueTask,
    FlowSetting,
    FlowStatus,
    HostLimit,
    NewSchedule,
    NewTask,
    Owner,
    OwnerSecurity,
    Result,
    Schedule,
    ScheduleFire,
    ScheduleState,
    Task,
    TaskSpec,
    TaskState,
)
from ..sealing import Sealer
from ..workflows.model import (
    NewRun,
    NewWorkflowSchedule,
    RunState,
    WorkflowDefinition,
    WorkflowRun,
)
from ..workflows.steps import (
    ClaimBudget,
    RunFinished,
    ScheduledRunEnded,
    StepBuilder,
    StepStarted,
)
from .listing import TaskOverview, TaskPage, TaskQuery

LIST_ORDERS = ("createdAt", "estimateEndAt", "estimateExecutionAt")


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which of an owner's tasks in ERROR a dead-letter operation applies to; every field
    is optional. ``label`` is a metadata key, or a key and the value it must have."""

    failed_from_ms: int | None = None  # failed at or after
    failed_until_ms: int | None = None  # failed before
    status_code: int | None = None
    schedule_id: str | None = None
    label: tuple[str, str | None] | None = None

    def matches_label(self, metadata: tuple[tuple[str, str], ...] | None) -> bool:
        """True without a label filter, or when ``metadata`` has the label."""
        if self.label is None:
            return True
        key, value = self.label
        return any(k == key and (value is None or v == value) for k, v in metadata or ())


class Store(Protocol):
    async def open(self) -> None:
        """Open connections and migrate the schema to the latest version.

        Raises ConfigError naming CIPHER_KEY when the store's sealer does not open the
        database's key check value (a wrong key stops start-up, before any sealed row is
        read). A database without a check value gets one."""

    async def reseal(self, sealer: Sealer) -> int:
        """Re-seal every sealed value (specs, responses, metadata, attempt details; values
        an older version kept in the clear too) with ``sealer`` in one transaction, and
        replace the key check value; later reads and writes use ``sealer``. Returns the
        number of values written."""

    def write_problem(self) -> str | None:
        """Why writes fail at the moment, or None when they work as far as is known.

        Set when a write fails with a passing fault (a full disk, a lock held longer than
        the busy timeout, an I/O error: those writes raise StorageUnavailable) and cleared
        by the next write that succeeds; also set while a write has waited over a second
        for the database. Never blocks.
        """

    async def close(self) -> None:
        """Finish queued writes and close every connection."""

    # owners

    async def create_owner(
        self,
        name: str,
        key_digest: bytes,
        now_ms: int,
        limit: int,
        request_budget: int | None = None,
    ) -> Owner:
        """Insert a new, enabled owner. Raises Conflict when the name is taken."""

    async def get_owner(self, owner_id: str) -> Owner:
        """Raises OwnerNotFound."""

    async def owner_key_digest(self, owner_id: str) -> bytes | None:
        """The stored key digest, or None when no such owner exists or it is disabled."""

    async def list_owners(self) -> list[Owner]:
        """Every owner, oldest first (for administrators)."""

    async def update_owner(
        self,
        owner_id: str,
        *,
        disabled: bool,
        tasks_in_queue_limit: int,
        request_budget: int | None,
    ) -> Owner:
        """Set what an administrator controls (all three values, as given) and return the
        owner as stored. A lower limit leaves tasks already queued alone. Raises
        OwnerNotFound."""

    async def set_owner_key(self, owner_id: str, key_digest: bytes) -> None:
        """Replace the owner's key digest (the old key stops working at once). Raises
        OwnerNotFound."""

    async def owner_security(self, owner_id: str) -> OwnerSecurity:
        """The owner's signing secrets and validated domains. The first call creates them
        with a fresh random 32-byte secret (sealed at rest); later calls return the same.
        Raises OwnerNotFound."""

    async def save_owner_security(self, owner_id: str, security: OwnerSecurity) -> None:
        """Replace the owner's signing secrets and validated domains. Raises OwnerNotFound."""

    async def delete_owner(self, owner_id: str) -> None:
        """Delete an owner with no RUNNING or PAUSED task, and all its finished tasks.

        Raises OwnerNotFound, or PreconditionFailed while tasks are still counted.
        """

    # tasks, as their owner sees them

    async def create_task(self, owner_id: str, new: NewTask, now_ms: int) -> Task:
        """Insert a RUNNING task due at ``new.due_at_ms``; returns once committed.

        The per-owner limit is checked in the same transaction (QueueLimitReached). When
        ``new.dedup_until_ms`` is set and the owner has a task registered with the same
        ``config.deduplication_id`` whose window has not passed, nothing is written and
        that task is returned with ``deduplicated=True`` (a unique index makes this hold
        under concurrent registrations). A task with ``config.flow_control`` sets that
        key's limits for its owner (the last registration wins).
        """

    async def create_tasks(
        self, owner_id: str, news: Sequence[NewTask], now_ms: int
    ) -> list[Task | TasksServerError]:
        """Register many tasks in one transaction, each as ``create_task`` would.

        The answer has one entry per item, in order: the task, or the domain error that
        refused that item (e.g. QueueLimitReached); a refused item writes nothing and does
        not stop the others. Raises OwnerNotFound for an unknown owner.
        """

    async def get_task(self, owner_id: str, task_id: str) -> Task:
        """Raises TaskNotFound."""

    async def get_spec(self, owner_id: str, task_id: str) -> TaskSpec:
        """The request and options as registered (or last edited). Raises TaskNotFound."""

    async def list_tasks(
        self,
        owner_id: str,
        state: TaskState | None,
        order: str,
        descending: bool,
        limit: int,
        offset: int,
    ) -> list[Task]:
        """A page of the owner's tasks; ``order`` is one of LIST_ORDERS (wire names)."""

    async def list_attempts(self, owner_id: str, task_id: str) -> list[AttemptRecord]:
        """The attempt history, first attempt first. Raises TaskNotFound."""

    async def pause_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        """RUNNING → PAUSED; no new attempt starts after this returns.

        An attempt in flight is not aborted; its result is recorded in the history only.
        Raises TaskNotFound, PreconditionFailed when not RUNNING.
        """

    async def resume_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        """PAUSED → RUNNING with the remaining-time rule (timing.resume_due_ms)."""

    async def revoke_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        """RUNNING or PAUSED → REVOKED; no new attempt starts after this returns."""

    async def delete_task(self, owner_id: str, task_id: str) -> None:
        """Remove a task in any state with its history. Raises TaskNotFound."""

    async def delete_finished_before(self, before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` tasks that ended (SUCCESS, ERROR, REVOKED) before
        ``before_ms`` (their end time), with their history, in one transaction; returns
        how many (RETENTION_FINISHED_DAYS)."""

    async def execute_task(self, owner_id: str, task_id: str, now_ms: int) -> Task:
        """Make a RUNNING task due now (also during a retry wait). PreconditionFailed if
        not RUNNING; a task whose attempt is in flight is left as it is."""

    async def edit_task(self, owner_id: str, task_id: str, new: NewTask, now_ms: int) -> Task:
        """Replace the spec of a task that has not started any attempt.

        Raises TaskNotFound, PreconditionFailed when final or already attempted.
        """

    # the dead-letter queue: the owner's tasks in ERROR

    async def list_dead_letters(
        self,
        owner_id: str,
        where: DeadLetterFilter,
        limit: int,
        after: tuple[int, str] | None = None,
    ) -> list[Task]:
        """Up to ``limit`` of the owner's tasks in ERROR that match ``where``, newest
        failure first (by ``estimate_end_at_ms``, then id, both descending), with
        ``schedule_id`` and ``cycle`` filled in. ``after`` is the (failed at, id) of the
        last task of the previous page; the next page starts strictly after it."""

    async def replay_task(
        self, owner_id: str, task_id: str, spec: TaskSpec | None, due_at_ms: int, now_ms: int
    ) -> Task:
        """ERROR → RUNNING due at ``due_at_ms``: a new attempt cycle (cycle + 1, retries
        from zero, attempt numbers go on; status and response cleared). ``spec``, when
        given, replaces the stored request, options and metadata. The owner's task limit
        applies as to a new task. Raises TaskNotFound, QueueLimitReached, or
        PreconditionFailed when the task is not in ERROR."""

    async def replay_dead_letters(
        self, owner_id: str, task_ids: Sequence[str], first_due_ms: int, spacing_ms: int
    ) -> list[tuple[str, int]]:
        """Replay, in one transaction and in the given order, those of ``task_ids`` that
        are the owner's and still in ERROR, as replay_task does with the stored spec: the
        n-th replayed is due at ``first_due_ms + n * spacing_ms``. Stops at the owner's
        task limit. Returns (task id, due ms) of the replayed tasks."""

    async def delete_dead_letters(self, owner_id: str, task_ids: Sequence[str]) -> int:
        """Delete those of ``task_ids`` that are the owner's and in ERROR, with their
        history, in one transaction; returns how many."""

    # reading many tasks at once (the dashboard)

    async def search_tasks(self, owner_id: str, query: TaskQuery) -> TaskPage:
        """A page of the owner's tasks matching ``query``, by creation time then id.

        State, host, schedule and time range are indexed, so a page costs the same at any
        depth and size. URL and label filters open each candidate's sealed request: at
        most ``query.scan_limit`` candidates are read per page, and a page cut short by
        that says so (``scan_exhausted``) and still continues from where it stopped.
        """

    async def task_overview(self, owner_id: str | None, now_ms: int) -> TaskOverview:
        """Counts by state, finished tasks per hour over the 24 hours before ``now_ms``,
        and the five hosts with most RUNNING tasks; of one owner, or of all when None."""

    # alerts: rules (another owner's rule and a missing one raise NotFound), incidents
    # and the record of deliveries

    async def create_alert_rule(self, rule: AlertRule) -> AlertRule:
        """Insert a rule. Raises Conflict when the owner has a rule of that name."""

    async def update_alert_rule(self, rule: AlertRule) -> AlertRule:
        """Replace the owner's rule of that id. Raises NotFound, or Conflict for a name
        another of the owner's rules has."""

    async def get_alert_rule(self, owner_id: str, rule_id: str) -> AlertRule:
        """Raises NotFound."""

    async def list_alert_rules(self, owner_id: str) -> list[AlertRule]:
        """The owner's rules, by name."""

    async def delete_alert_rule(self, owner_id: str, rule_id: str) -> None:
        """Remove a rule with its incidents and deliveries. Raises NotFound."""

    async def get_incident(self, rule_id: str, subject: str) -> Incident | None:
        """The incident of a rule and subject as last saved, or None."""

    async def list_incidents(self, owner_id: str | None) -> list[tuple[AlertRule, Incident]]:
        """Every incident as last saved (open or not) with its rule, of one owner's rules
        or of every owner's when None; by rule name, then subject."""

    async def save_incident(self, incident: Incident) -> None:
        """Insert or replace the incident of its rule and subject; nothing when the rule
        is gone."""

    async def change_incident(
        self, rule_id: str, subject: str, change: Callable[[Incident | None], Incident | None]
    ) -> None:
        """Read the incident of a rule and subject and save what ``change`` makes of it
        (None: leave it as it is), in one transaction. Processes changing the same
        incident at once take turns, each seeing what the other saved, so an incident is
        opened (and announced) once. ``change`` is pure and may be called again when the
        transaction is retried. Nothing when the rule is gone."""

    async def add_alert_delivery(self, delivery: AlertDelivery) -> None:
        """Record a delivery (nothing when its rule is gone)."""

    async def list_alert_deliveries(
        self, owner_id: str, rule_id: str | None, limit: int
    ) -> list[AlertDelivery]:
        """The owner's deliveries (of one rule, when given), newest first."""

    async def count_alert_deliveries(self, owner_id: str, since_ms: int) -> int:
        """How many of the owner's deliveries since ``since_ms`` were sent or attempted
        (suppressed ones do not count)."""

    # the engine

    async def due_before(self, until_ms: int, limit: int) -> list[DueTask]:
        """Claimable tasks due before ``until_ms``: earliest first, then the higher
        priority, with the owner's flow-control key when the task has one."""

    async def claim_due(
        self, task_ids: Sequence[str], now_ms: int, lookahead_ms: int = 0
    ) -> list[Attempt]:
        """Mark the given tasks in flight and start an attempt for each, in one transaction.

        Only tasks still RUNNING, not in flight and due by ``now_ms + lookahead_ms`` are
        claimed; the others are silently skipped. An attempt's start time is its due time
        when it was claimed ahead of it; the first claim of a task records its first
        attempt time (``Attempt.first_started_at_ms``, for retry durations). Once this
        returns the claim is durable (at-least-once).
        """

    async def record_outcomes(self, results: Sequence[Result]) -> list[str]:
        """Write finished attempts and the tasks' new states in one transaction.

        A result whose task was paused, revoked, deleted or re-claimed meanwhile only
        completes its attempt row. Returns the ids whose task state was updated.
        """

    async def get_flow_control(self, owner_id: str, key: str) -> FlowSetting | None:
        """A flow-control key's limits as last set (by a registration naming the key, or
        an edit), and whether it is paused; None when the owner never named the key."""

    async def list_flow_controls(self, owner_id: str) -> list[FlowStatus]:
        """The owner's flow-control keys by name, each with the number of its tasks that
        are claimable (waiting or due later) and the oldest due time among them."""

    async def save_flow_control(self, owner_id: str, setting: FlowSetting, now_ms: int) -> None:
        """Set a key's limits and paused flag (creating the key if needed)."""

    async def list_host_limits(self) -> list[HostLimit]:
        """Every destination host's administrator limits, by host name."""

    async def save_host_limit(self, limit: HostLimit) -> None:
        """Set a host's limits, replacing any earlier ones (creating the row if needed)."""

    async def delete_host_limit(self, host: str) -> bool:
        """Remove a host's limits (it returns to the server-wide defaults); False when
        there were none."""

    async def requeue_interrupted(self, now_ms: int) -> int:
        """At start-up: attempts left in flight by a crash end as interrupted and their
        tasks become due at their planned time (at once when that has passed)."""

    # several nodes on one database (trivial where one process owns the database)

    @property
    def lease_ms(self) -> int | None:
        """How long a claim holds unless renewed, or None when claims never expire (one
        process owns the database, and its start-up requeues what a crash left)."""

    async def renew_leases(self, now_ms: int, task_ids: Collection[str]) -> None:
        """Extend this process's claims of ``task_ids`` (the calls it holds or has in
        flight) to ``now_ms + lease_ms``, in one statement on a connection of its own, so
        a renewal never waits behind claims, outcomes or the API. Claims not named are left
        to run out. Raises when the database cannot be reached: the claims then end at the
        last renewal plus lease_ms, and the caller must not start their calls after."""

    async def requeue_expired(self, now_ms: int) -> list[tuple[str, int]]:
        """Claims whose lease ran out before ``now_ms`` (their process died, lost the
        database, or stopped renewing them) end as interrupted, and their tasks become
        claimable at their planned time; returns those (task id, due ms). A late outcome
        of such an attempt changes nothing (record_outcomes is fenced by attempt number
        and lease owner)."""

    async def listen(
        self, on_due: Callable[[str, int], None], on_schedule: Callable[[int | None], None]
    ) -> None:
        """Run until cancelled, calling ``on_due(task id, due ms)`` when another process
        makes a task claimable in the near future and ``on_schedule(next ms)`` when it
        creates or changes a schedule. Returns at once where no other process writes."""

    async def lead_schedules(self) -> bool:
        """Whether this process may plan schedule slots now: at most one process at a
        time answers True, and another takes over within seconds when it dies. Called
        before each planning pass; fire_schedule stays version-guarded regardless."""

    # recurring schedules (another owner's schedule and a missing one raise NotFound)

    async def create_schedule(
        self,
        owner_id: str,
        new: NewSchedule,
        now_ms: int,
        state: ScheduleState,
        cursor_ms: int,
        next_at_ms: int | None,
    ) -> Schedule:
        """Insert a schedule with its first progress (see schedules.policy.start).

        Raises Conflict when the owner already has a schedule of that name.
        """

    async def create_workflow_schedule(
        self,
        owner_id: str,
        new: NewWorkflowSchedule,
        now_ms: int,
        state: ScheduleState,
        cursor_ms: int,
        next_at_ms: int | None,
    ) -> Schedule:
        """Insert a schedule whose slots start runs of ``new.workflow`` (target
        WORKFLOW), with its first progress. Raises Conflict as create_schedule does."""

    async def get_schedule(self, owner_id: str, key: str) -> Schedule:
        """The schedule whose id or name is ``key``. Raises NotFound."""

    async def get_schedule_spec(self, owner_id: str, schedule_id: str) -> TaskSpec:
        """The task template as registered (or last updated). Raises NotFound, also for
        a schedule that starts workflow runs."""

    async def get_schedule_workflow(self, owner_id: str, schedule_id: str) -> WorkflowDefinition:
        """The workflow a WORKFLOW schedule starts. Raises NotFound, also for a schedule
        that creates tasks."""

    async def list_schedules(self, owner_id: str, limit: int, offset: int) -> list[Schedule]:
        """A page of the owner's schedules, by name."""

    async def save_schedule(
        self,
        schedule: Schedule,
        task: TaskSpec | None,
        expected_version: int,
        now_ms: int,
        workflow: WorkflowDefinition | None = None,
    ) -> Schedule | None:
        """Write a schedule's definition and progress (and its template when ``task`` is
        given, or its workflow when ``workflow`` is) if it is still at
        ``expected_version``; returns it as stored, or None when
        it changed meanwhile (read it again and retry). Raises NotFound, or Conflict when
        the new name is taken."""

    async def delete_schedule(self, owner_id: str, schedule_id: str) -> None:
        """Remove a schedule; the tasks it created stay. Raises NotFound."""

    async def list_schedule_tasks(
        self, owner_id: str, schedule_id: str, limit: int, offset: int
    ) -> list[Task]:
        """A page of the tasks the schedule created, newest first."""

    async def list_schedule_runs(
        self, owner_id: str, schedule_id: str, limit: int, offset: int
    ) -> list[WorkflowRun]:
        """A page of the workflow runs the schedule started (without their steps),
        newest first."""

    async def due_schedules(self, now_ms: int, lookahead_ms: int, limit: int) -> list[Schedule]:
        """ACTIVE schedules to look at by ``now_ms``, earliest first: next_at has passed,
        or (``allow`` schedules only) comes within ``lookahead_ms``.

        A ``queue`` schedule whose last task is still RUNNING or PAUSED is left out: it is
        not due until that task ends.
        """

    async def next_schedule_at(self, lookahead_ms: int) -> int | None:
        """When due_schedules (same lookahead) returns something next, or None. Never
        earlier than that; later only for an ``allow`` schedule queued right behind
        another schedule, which then comes in the same pass."""

    async def fire_schedule(self, fire: ScheduleFire, now_ms: int) -> list[DueTask] | None:
        """In one transaction: create a RUNNING task per slot of ``fire.due_at_ms`` (from
        the schedule's template, due at the slot) and move the schedule's progress on
        (cursor, runs, last run, next look, state).

        Nothing is written, and None returned, unless the schedule is still ACTIVE and at
        ``fire.version``: a slot is never fired twice. A run the owner's task limit refuses
        is logged and skipped (it still counts as a run). The tasks take the template's
        priority and flow-control key (whose limits are the template's unless the key
        already has some). Returns the created tasks as the engine arms them.

        For a WORKFLOW schedule the same transaction starts a run per slot instead, as
        create_run does (root steps due at the slot, the run marked with the schedule),
        returns the runs (run id, slot) and tells the step watcher about their first
        steps' tasks after the commit.
        """

    # workflow runs (a step is a task; the store advances runs when their tasks end)

    def watch_workflows(
        self,
        builder: StepBuilder,
        step_started: StepStarted,
        run_finished: RunFinished,
        claim_budget: ClaimBudget | None = None,
        scheduled_run_ended: ScheduledRunEnded | None = None,
    ) -> None:
        """How a rendered step becomes a task (``builder``, raising ValueError for a step
        that cannot be registered), and who to tell once a transaction that created a step's
        task or ended a run is committed (the scheduler, the waiters, and for a run a
        schedule started that ended in SUCCESS or ERROR, ``scheduled_run_ended``: the
        alert rules).

        ``claim_budget`` (read before an outcome transaction) bounds how many of the step
        tasks that transaction releases may be created already claimed: due now, no
        flow-control key, their first attempt durably running, announced with that
        attempt for the scheduler to start without a claim of its own. A crash leaves them
        claimed like any claim, and ``requeue_interrupted`` makes them claimable again. A
        store may create none that way (PostgreSQL, whose claims are leases, does not)."""

    async def create_run(self, owner_id: str, run: NewRun, now_ms: int) -> WorkflowRun:
        """Store a run, its steps and their dependency edges in one transaction, and
        create the tasks of its root steps (due at ``run.due_at_ms`` or later). Steps whose
        condition is false are skipped. Returns the run as that transaction left it (read
        inside it: no step has moved yet). Raises OwnerNotFound."""

    async def get_run(self, owner_id: str, run_id: str) -> WorkflowRun:
        """The run with every step (state, task, attempts, output, error), in declaration
        order. Raises WorkflowNotFound (also for another owner's run)."""

    async def list_runs(
        self,
        owner_id: str,
        state: RunState | None,
        name: str | None,
        limit: int,
        before: tuple[int, str] | None = None,
    ) -> list[WorkflowRun]:
        """The owner's runs without their steps, newest first (created at, then id,
        descending), optionally of one state and name; ``before`` is the (created at, id)
        of the last run of the previous page."""

    async def cancel_run(self, owner_id: str, run_id: str, now_ms: int) -> list[str]:
        """PENDING/RUNNING → CANCELLED: waiting steps are cancelled, running steps' tasks
        revoked (their ids are returned, to be forgotten by the scheduler). Raises
        WorkflowNotFound, PreconditionFailed when the run is final."""

    async def retry_run(self, owner_id: str, run_id: str, now_ms: int) -> WorkflowRun:
        """ERROR/CANCELLED → RUNNING: failed and cancelled steps run again (those with
        every dependency met at once, with new tasks), successful steps keep their
        results and are not called again. Raises WorkflowNotFound, PreconditionFailed."""

    async def delete_run(self, owner_id: str, run_id: str) -> None:
        """Delete a final run with its steps (their tasks stay, with their history).
        Raises WorkflowNotFound, PreconditionFailed when the run is not final."""

    async def expire_runs(self, now_ms: int, limit: int = 100) -> list[str]:
        """Runs past their deadline end in ERROR as cancel_run does; returns the revoked
        tasks' ids."""


__all__ = ["LIST_ORDERS", "DeadLetterFilter", "Store"]
