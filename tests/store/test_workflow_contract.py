"""The Store contract for workflow runs, on every implementation (the parametrised
``store`` fixture, tests/support/stores.py): runs advance in the transaction that records
a step's outcome, and the store tells who must know after the commit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tasks_server.errors import (
    NotFound,
    OwnerNotFound,
    PreconditionFailed,
    QueueLimitReached,
    WorkflowNotFound,
)
from tasks_server.models import (
    DueTask,
    FlowControl,
    HttpRequest,
    NewTask,
    Outcome,
    OverlapPolicy,
    Owner,
    Result,
    Schedule,
    ScheduleFire,
    ScheduleState,
    ScheduleTarget,
    ScheduleTiming,
    TaskConfig,
    TaskSpec,
    TaskState,
)
from tasks_server.sealing import key_digest
from tasks_server.store import Store
from tasks_server.workflows.model import (
    NewRun,
    NewWorkflowSchedule,
    RunEnd,
    RunState,
    StepStart,
    StepState,
    StepTemplate,
    WorkflowDefinition,
)

T0 = 1_767_225_600_000


class Watcher:
    """The builder and listeners a server gives the store, recording what they saw."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.starts: list[StepStart] = []  # as the scheduler is told: with key and priority
        self.finished: list[str] = []
        self.bodies: dict[str, Any] = {}  # task url → rendered body

    def build(
        self, request: dict[str, Any], now_ms: int, allowed: tuple[str, ...] | None
    ) -> NewTask:
        http = request["httpRequest"]
        if "bad" in http["url"]:
            raise ValueError("httpRequest.url: Invalid url")
        data = http.get("data")
        self.bodies[http["url"]] = data
        body = None if data is None else json.dumps(data)
        config = request.get("config", {})
        flow = config.get("flowControl")
        task_config = TaskConfig(
            priority=config.get("priority", 0),
            flow_control=None if flow is None else FlowControl(flow["key"], flow["rate"]),
        )
        spec = TaskSpec(HttpRequest(http["url"], "POST", data_json=body), task_config)
        return NewTask(spec, now_ms + config.get("executionDelay", 0))

    def step_started(self, start: StepStart) -> None:
        self.started.append((start.task_id, start.due_at_ms))
        self.starts.append(start)


@pytest.fixture
def watcher(store: Store) -> Watcher:
    found = Watcher()
    store.watch_workflows(found.build, found.step_started, found.finished.append)
    return found


async def make_owner(store: Store, name: str = "owner-one", limit: int = 1000) -> Owner:
    return await store.create_owner(name, key_digest(name * 8), T0, limit)


def step(step_id: str, *deps: str, data: Any = None, **extra: Any) -> StepTemplate:
    http: dict[str, Any] = {"url": f"https://example.com/{step_id}", "method": "POST"}
    if data is not None:
        http["data"] = data
    return StepTemplate(step_id, deps, {"httpRequest": http}, **extra)


def run_of(*steps: StepTemplate, due: int = T0, timeout_ms: int | None = None) -> NewRun:
    return NewRun("order", {"id": "A-1"}, steps, due, timeout_ms, (("team", "ops"),))


async def finish(
    store: Store, task_id: str, at: int, status: int = 200, body: bytes = b"{}"
) -> None:
    """Claim the step's task and record its outcome, as the scheduler does."""
    [attempt] = await store.claim_due([task_id], at)
    state = TaskState.SUCCESS if status < 400 else TaskState.ERROR
    outcome = Outcome(status=status, body=body, headers=(("X-Rate", "0.2"),))
    assert await store.record_outcomes(
        [Result(task_id, attempt.number, at, state, status, body, outcome)]
    ) == [task_id]


async def test_a_run_starts_its_roots_and_advances_in_the_outcome_transaction(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    run = await store.create_run(
        owner.id,
        run_of(
            step(
                "tax",
                data={"order": "{{ input.id }}"},
                output={"total": "{{ response.body.total }}"},
            ),
            step(
                "store",
                "tax",
                data={
                    "total": "{{ steps.tax.output.total }}",
                    "rate": "{{ steps.tax.response.headers.x-rate }}",
                },
            ),
            step("sync", "store"),
        ),
        T0,
    )
    assert run.state is RunState.RUNNING and run.metadata == (("team", "ops"),)
    assert [s.state for s in run.steps] == [StepState.RUNNING, StepState.WAITING, StepState.WAITING]
    tax_task = run.steps[0].task_id
    assert tax_task is not None and watcher.started == [(tax_task, T0)]
    assert watcher.bodies["https://example.com/tax"] == {"order": "A-1"}
    task = await store.get_task(owner.id, tax_task)
    assert task.metadata == (("workflowRun", run.id), ("workflowStep", "tax"))

    await finish(store, tax_task, T0 + 10, body=b'{"total": 48.5}')
    after = await store.get_run(owner.id, run.id)
    assert [s.state for s in after.steps] == [
        StepState.SUCCESS,
        StepState.RUNNING,
        StepState.WAITING,
    ]
    assert after.steps[0].output == {"total": 48.5} and after.steps[0].attempts == 1
    assert watcher.bodies["https://example.com/store"] == {"total": 48.5, "rate": "0.2"}
    assert watcher.started[-1] == (after.steps[1].task_id, T0 + 10)

    await finish(store, after.steps[1].task_id or "", T0 + 20)
    sync_task = (await store.get_run(owner.id, run.id)).steps[2].task_id
    assert watcher.finished == []
    await finish(store, sync_task or "", T0 + 30)
    done = await store.get_run(owner.id, run.id)
    assert done.state is RunState.SUCCESS and done.finished_at_ms == T0 + 30
    assert watcher.finished == [run.id]


async def test_fan_in_waits_for_every_dependency(store: Store, watcher: Watcher) -> None:
    owner = await make_owner(store)
    run = await store.create_run(owner.id, run_of(step("a"), step("b"), step("c", "a", "b")), T0)
    a, b = run.steps[0].task_id or "", run.steps[1].task_id or ""
    await finish(store, a, T0 + 1)
    assert (await store.get_run(owner.id, run.id)).steps[2].state is StepState.WAITING
    await finish(store, b, T0 + 2)
    assert (await store.get_run(owner.id, run.id)).steps[2].state is StepState.RUNNING


async def test_a_failed_step_fails_the_run_and_retry_keeps_the_successes(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    run = await store.create_run(owner.id, run_of(step("a"), step("b", "a"), step("c", "b")), T0)
    await finish(store, run.steps[0].task_id or "", T0 + 1)
    failing = (await store.get_run(owner.id, run.id)).steps[1].task_id or ""
    await finish(store, failing, T0 + 2, status=500, body=b"down")
    failed = await store.get_run(owner.id, run.id)
    assert (
        failed.state is RunState.ERROR and failed.error == "step 'b' failed: the call answered 500"
    )
    assert [s.state for s in failed.steps] == [
        StepState.SUCCESS,
        StepState.ERROR,
        StepState.WAITING,
    ]
    assert watcher.finished == [run.id]
    with pytest.raises(PreconditionFailed):
        await store.cancel_run(owner.id, run.id, T0)  # a final run cannot be cancelled
    started_before = len(watcher.started)
    retried = await store.retry_run(owner.id, run.id, T0 + 3)
    assert retried.state is RunState.RUNNING and retried.error is None
    assert [s.state for s in retried.steps] == [
        StepState.SUCCESS,
        StepState.RUNNING,
        StepState.WAITING,
    ]
    assert retried.steps[1].task_id != failing
    assert len(watcher.started) == started_before + 1  # only b: a is not called again
    with pytest.raises(PreconditionFailed):
        await store.retry_run(owner.id, run.id, T0 + 4)


async def test_cancel_revokes_running_steps_and_delete_needs_a_final_run(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    run = await store.create_run(owner.id, run_of(step("a"), step("b", "a")), T0)
    with pytest.raises(PreconditionFailed):
        await store.delete_run(owner.id, run.id)
    revoked = await store.cancel_run(owner.id, run.id, T0 + 5)
    assert revoked == [run.steps[0].task_id]
    assert (await store.get_task(owner.id, revoked[0])).state is TaskState.REVOKED
    cancelled = await store.get_run(owner.id, run.id)
    assert cancelled.state is RunState.CANCELLED
    assert [s.state for s in cancelled.steps] == [StepState.CANCELLED, StepState.CANCELLED]
    await store.delete_run(owner.id, run.id)
    with pytest.raises(WorkflowNotFound):
        await store.get_run(owner.id, run.id)


async def test_conditions_skip_and_the_skip_passes_on_unless_a_step_opts_in(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    never = {"value": "{{ input.id }}", "equals": "B-2"}
    run = await store.create_run(
        owner.id,
        run_of(step("a", when=never), step("b", "a"), step("c", "a", run_if_skipped=True)),
        T0,
    )
    assert [s.state for s in run.steps] == [StepState.SKIPPED, StepState.SKIPPED, StepState.RUNNING]
    await finish(store, run.steps[2].task_id or "", T0 + 1)
    assert (await store.get_run(owner.id, run.id)).state is RunState.SUCCESS


async def test_a_step_that_cannot_be_built_fails_the_run_with_the_reason(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    bad = StepTemplate(
        "b", ("a",), {"httpRequest": {"url": "https://bad.example/", "method": "GET"}}
    )
    missing = step("c", "a", data={"x": "{{ steps.a.response.body.nope }}"})
    run = await store.create_run(owner.id, run_of(step("a"), bad, missing), T0)
    await finish(store, run.steps[0].task_id or "", T0 + 1)
    failed = await store.get_run(owner.id, run.id)
    assert failed.state is RunState.ERROR
    assert (
        failed.steps[1].error == "httpRequest.url: Invalid url" and failed.steps[1].task_id is None
    )


async def test_runs_past_their_deadline_expire(store: Store, watcher: Watcher) -> None:
    owner = await make_owner(store)
    run = await store.create_run(owner.id, run_of(step("a"), timeout_ms=5_000), T0)
    assert run.deadline_ms == T0 + 5_000
    assert await store.expire_runs(T0 + 4_999) == []
    assert await store.expire_runs(T0 + 5_000) == [run.steps[0].task_id]
    expired = await store.get_run(owner.id, run.id)
    assert expired.state is RunState.ERROR and expired.error == "the run timed out"
    assert watcher.finished == [run.id]


async def test_runs_are_listed_newest_first_per_owner_and_hidden_from_others(
    store: Store, watcher: Watcher
) -> None:
    owner, other = await make_owner(store), await make_owner(store, "owner-two")
    ids = [(await store.create_run(owner.id, run_of(step("a")), T0 + n)).id for n in range(3)]
    page = await store.list_runs(owner.id, None, None, 2)
    assert [r.id for r in page] == ids[:0:-1] and page[0].steps == ()
    rest = await store.list_runs(owner.id, None, None, 2, (page[-1].created_at_ms, page[-1].id))
    assert [r.id for r in rest] == ids[:1]
    assert await store.list_runs(owner.id, RunState.SUCCESS, None, 10) == []
    assert len(await store.list_runs(owner.id, RunState.RUNNING, "order", 10)) == 3
    assert await store.list_runs(other.id, None, None, 10) == []
    for call in (
        store.get_run(other.id, ids[0]),
        store.cancel_run(other.id, ids[0], T0),
        store.retry_run(other.id, ids[0], T0),
        store.delete_run(other.id, ids[0]),
    ):
        with pytest.raises(WorkflowNotFound):
            await call
    with pytest.raises(OwnerNotFound):
        await store.create_run("no-such-owner", run_of(step("a")), T0)


async def test_a_delayed_run_is_pending_until_its_first_step_finishes(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    run = await store.create_run(owner.id, run_of(step("a"), step("b", "a"), due=T0 + 60_000), T0)
    assert run.state is RunState.PENDING and watcher.started == [
        (run.steps[0].task_id, T0 + 60_000)
    ]
    await finish(store, run.steps[0].task_id or "", T0 + 60_001)
    assert (await store.get_run(owner.id, run.id)).state is RunState.RUNNING


async def test_a_run_that_ends_creates_its_callback_task_in_the_same_transaction(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    on_failure = {"url": "https://example.com/failed"}
    on_success = {"url": "https://example.com/ok"}
    run = await store.create_run(
        owner.id,
        NewRun("order", {}, (step("a"),), T0, None, None, on_success, on_failure),
        T0,
    )
    cancelled = await store.create_run(
        owner.id,
        NewRun("other", {}, (step("a"),), T0, None, None, on_success, on_failure),
        T0,
    )
    await finish(store, run.steps[0].task_id or "", T0 + 7, status=500, body=b"down")
    callback_task, due = watcher.started[-1]
    assert due == T0 + 7
    body = watcher.bodies["https://example.com/failed"]
    assert body["run"]["id"] == run.id and body["run"]["state"] == "ERROR"
    assert body["steps"][0]["state"] == "ERROR" and body["steps"][0]["statusCode"] == 500
    task = await store.get_task(owner.id, callback_task)
    assert task.metadata == (("workflowRun", run.id), ("workflowCallback", "onFailure"))
    await store.cancel_run(owner.id, cancelled.id, T0 + 8)
    assert watcher.started[-1][0] == callback_task  # a cancel is the owner's act: no callback
    assert "https://example.com/ok" not in watcher.bodies


async def test_a_step_task_carries_its_priority_and_flow_control_key(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    limited = {"priority": 7, "flowControl": {"key": "warehouse", "rate": 2}}
    first = step("tax")
    second = StepTemplate(
        "sync",
        ("tax",),
        {"httpRequest": {"url": "https://example.com/sync"}, "config": limited},
    )
    run = await store.create_run(owner.id, run_of(first, second), T0)
    await finish(store, run.steps[0].task_id or "", T0 + 10)
    sync_task = (await store.get_run(owner.id, run.id)).steps[1].task_id
    assert sync_task is not None
    # released by its dependency (not a run's first step): never paced behind new runs
    assert watcher.starts[-1] == StepStart(
        sync_task, T0 + 10, 7, (owner.id, "warehouse"), FlowControl("warehouse", 2), released=True
    )
    # the key and priority are stored with the task, as for a registration, and the
    # step's limits are the key's limits
    assert await store.due_before(T0 + 10**9, 10) == [
        DueTask(sync_task, T0 + 10, 7, (owner.id, "warehouse"))
    ]
    setting = await store.get_flow_control(owner.id, "warehouse")
    assert setting is not None and setting.flow == FlowControl("warehouse", 2)


# -- schedules that start workflow runs ------------------------------------------------------

SLOT = T0 + 60_000


def definition(*steps: StepTemplate, timeout_ms: int | None = None) -> WorkflowDefinition:
    return WorkflowDefinition(
        "nightly-etl", {"day": 1}, steps, timeout_ms, (("team", "data"),), {"url": "https://e.x"}
    )


async def add_workflow_schedule(
    store: Store, owner_id: str, overlap: OverlapPolicy = OverlapPolicy.ALLOW
) -> Schedule:
    timing = ScheduleTiming("* * * * *", "UTC", overlap=overlap)
    etl = definition(
        step("export", data={"day": "{{ input.day }}"}),
        step("transform", "export"),
        step("load", "transform"),
    )
    return await store.create_workflow_schedule(
        owner_id, NewWorkflowSchedule("etl", timing, etl), T0, ScheduleState.ACTIVE, T0, SLOT
    )


def plan(schedule: Schedule, *slots: int) -> ScheduleFire:
    return ScheduleFire(
        schedule.id, schedule.version, slots, slots[-1], slots[-1] + 60_000, ScheduleState.ACTIVE
    )


async def test_a_workflow_schedule_keeps_its_definition_and_not_a_task_template(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    schedule = await add_workflow_schedule(store, owner.id)
    assert schedule.target is ScheduleTarget.WORKFLOW and schedule.next_at_ms == SLOT
    stored = await store.get_schedule_workflow(owner.id, schedule.id)
    assert stored == definition(*stored.steps) and [s.id for s in stored.steps] == [
        "export",
        "transform",
        "load",
    ]
    assert stored.steps[1].depends_on == ("export",)
    with pytest.raises(NotFound):
        await store.get_schedule_spec(owner.id, schedule.id)
    changed = definition(step("only"))
    saved = await store.save_schedule(schedule, None, schedule.version, T0 + 1, workflow=changed)
    assert saved is not None and saved.target is ScheduleTarget.WORKFLOW
    assert await store.get_schedule_workflow(owner.id, schedule.id) == changed


async def test_a_workflow_schedule_starts_one_run_per_slot_exactly_once(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    schedule = await add_workflow_schedule(store, owner.id)
    step_one = plan(schedule, SLOT, SLOT + 60_000)
    created = await store.fire_schedule(step_one, SLOT - 500)  # planned a little ahead
    assert created is not None and [c.due_at_ms for c in created] == [SLOT, SLOT + 60_000]
    assert await store.fire_schedule(step_one, SLOT) is None  # the same plan twice: refused
    after = await store.get_schedule(owner.id, schedule.id)
    assert (after.cursor_ms, after.runs, after.next_at_ms) == (SLOT + 60_000, 2, SLOT + 120_000)
    assert after.last_task_id == created[-1].task_id and after.last_run_at_ms == SLOT + 60_000
    runs = await store.list_schedule_runs(owner.id, schedule.id, 10, 0)
    assert {run.id for run in runs} == {c.task_id for c in created}
    assert await store.list_schedule_runs(owner.id, schedule.id, 1, 1) == runs[1:]
    for run_id, due, *_ in created:
        run = await store.get_run(owner.id, run_id)
        assert run.schedule_id == schedule.id and run.due_at_ms == due
        assert run.state is RunState.PENDING and run.metadata == (("team", "data"),)
        assert [s.state for s in run.steps] == [
            StepState.RUNNING,
            StepState.WAITING,
            StepState.WAITING,
        ]
        # the first step's task is due at the slot and was announced after the commit
        export = run.steps[0].task_id
        assert export is not None and (export, due) in watcher.started
    # another owner sees none of it
    other = await make_owner(store, "owner-two")
    assert await store.list_schedule_runs(other.id, schedule.id, 10, 0) == []


async def test_a_scheduled_run_that_would_pass_the_queue_limit_is_refused(
    store: Store, watcher: Watcher
) -> None:
    """As a task schedule's slot is when the owner's queue is full: the slot passes with
    no run, and the schedule moves on."""
    owner = await make_owner(store, limit=4)
    schedule = await add_workflow_schedule(store, owner.id)  # three steps a run
    created = await store.fire_schedule(plan(schedule, SLOT, SLOT + 60_000), SLOT)
    assert created is not None and [c.due_at_ms for c in created] == [SLOT]
    after = await store.get_schedule(owner.id, schedule.id)
    assert (after.cursor_ms, after.runs, after.last_task_id) == (
        SLOT + 60_000,
        2,
        created[0].task_id,
    )
    assert len(await store.list_schedule_runs(owner.id, schedule.id, 10, 0)) == 1


async def test_a_scheduled_run_that_ends_is_told_with_its_failed_step(store: Store) -> None:
    """Alert rules hear of a schedule's run that ends in ERROR (with the task and status of
    the step that failed) or SUCCESS, after the commit; not of a run started by hand."""
    found = Watcher()
    ends: list[RunEnd] = []
    store.watch_workflows(found.build, found.step_started, found.finished.append, None, ends.append)
    owner = await make_owner(store)
    schedule = await add_workflow_schedule(store, owner.id)
    created = await store.fire_schedule(plan(schedule, SLOT, SLOT + 60_000), SLOT)
    assert created is not None
    first, second = [await store.get_run(owner.id, c.task_id) for c in created]
    await finish(store, first.steps[0].task_id or "", SLOT + 10, status=502)
    assert ends == [
        RunEnd(
            *(first.id, owner.id, schedule.id, RunState.ERROR),
            "step 'export' failed: the call answered 502",
            (("team", "data"),),
            *(first.steps[0].task_id, 502, SLOT + 10),
        )
    ]
    for index in range(3):
        running = await store.get_run(owner.id, second.id)
        await finish(store, running.steps[index].task_id or "", SLOT + 60_010 + index)
    assert ends[1:] == [
        RunEnd(
            *(second.id, owner.id, schedule.id, RunState.SUCCESS, None),
            (("team", "data"),),
            *(None, 0, SLOT + 60_012),
        )
    ]
    by_hand = await store.create_run(owner.id, run_of(step("a")), T0)
    await finish(store, by_hand.steps[0].task_id or "", T0 + 10, status=500)
    assert len(ends) == 2 and by_hand.id in found.finished


async def test_overlap_policies_read_a_workflow_schedules_last_run(
    store: Store, watcher: Watcher
) -> None:
    owner = await make_owner(store)
    schedule = await add_workflow_schedule(store, owner.id, OverlapPolicy.QUEUE)
    created = await store.fire_schedule(plan(schedule, SLOT), SLOT)
    assert created is not None
    [(run_id, *_)] = created
    # the run is pending: a `queue` schedule is not due until it ends
    assert await store.due_schedules(SLOT + 120_000, 500, 10) == []
    read = await store.get_schedule(owner.id, schedule.id)
    assert read.last_task_pending and read.last_task_state is TaskState.RUNNING
    await store.cancel_run(owner.id, run_id, SLOT + 5_000)
    [due] = await store.due_schedules(SLOT + 120_000, 500, 10)
    assert due.id == schedule.id and due.last_task_state is TaskState.REVOKED
    assert due.last_task_ended_at_ms == SLOT + 5_000 and not due.last_task_pending


async def test_released_steps_may_be_created_already_claimed_and_a_crash_requeues_them(
    store: Store,
) -> None:
    """With a claim budget the store may create a released step's task already claimed
    (SQLite does; PostgreSQL, whose claims are leases, leaves it claimable): either way
    its first attempt is recorded like any claim's, and a crash before the call makes the
    task claimable again, nothing lost."""
    found = Watcher()
    store.watch_workflows(found.build, found.step_started, found.finished.append, lambda: 8)
    owner = await make_owner(store)
    run = await store.create_run(owner.id, run_of(step("a"), step("b", "a")), T0)
    assert found.starts[0].attempt is None  # a new run's roots are claimed by the scheduler
    await finish(store, run.steps[0].task_id or "", T0 + 10)
    start = found.starts[-1]
    if start.attempt is None:
        [attempt] = await store.claim_due([start.task_id], T0 + 20)
    else:
        attempt = start.attempt
        assert (attempt.task_id, attempt.number, attempt.owner_id) == (start.task_id, 1, owner.id)
        assert attempt.spec.request.url == "https://example.com/b"
        assert await store.claim_due([start.task_id], T0 + 20) == []  # already claimed
        assert await store.due_before(T0 + 10**9, 10) == []
    # a crash now: at the next start (after the lease, where claims are leases) the
    # claim is requeued and its attempt closed as interrupted
    assert await store.requeue_interrupted(T0 + 30 + (store.lease_ms or 0)) == 1
    assert await store.due_before(T0 + 10**9, 10) == [DueTask(start.task_id, T0 + 10)]
    [interrupted] = await store.list_attempts(owner.id, start.task_id)
    assert interrupted.number == attempt.number and interrupted.error is not None
    await finish(store, start.task_id, T0 + 40 + (store.lease_ms or 0))
    done = await store.get_run(owner.id, run.id)
    assert done.state is RunState.SUCCESS and done.steps[1].attempts == 2


def a_task() -> NewTask:
    return NewTask(TaskSpec(HttpRequest("https://example.com/t", "POST"), TaskConfig()), T0)


async def test_steps_count_against_the_owners_queue_limit(store: Store, watcher: Watcher) -> None:
    """A run's steps count as tasks from the moment it is created: a run, a retry or a
    registration that would take the owner past its limit is refused and writes nothing;
    steps of a run that ended count no more."""
    owner = await make_owner(store, limit=5)
    chain = run_of(step("a"), step("b", "a"), step("c", "b"))
    first = await store.create_run(owner.id, chain, T0)  # a task and two steps waiting
    with pytest.raises(QueueLimitReached):
        await store.create_run(owner.id, chain, T0)
    await store.create_task(owner.id, a_task(), T0)
    await store.create_task(owner.id, a_task(), T0)
    with pytest.raises(QueueLimitReached):
        await store.create_task(owner.id, a_task(), T0)
    with pytest.raises(QueueLimitReached):
        await store.create_run(owner.id, run_of(step("one")), T0)
    assert [run.id for run in await store.list_runs(owner.id, None, None, 10)] == [first.id]
    assert (await store.get_owner(owner.id)).tasks_in_queue == 3
    # a's task ends and leaves the queue; b's starts: it moves from waiting to the queue
    await finish(store, first.steps[0].task_id or "", T0 + 10)
    await store.create_run(owner.id, run_of(step("one")), T0 + 10)
    with pytest.raises(QueueLimitReached):
        await store.create_run(owner.id, run_of(step("one")), T0 + 10)
    # the run fails: its step still waiting will not start and no longer counts
    running = await store.get_run(owner.id, first.id)
    await finish(store, running.steps[1].task_id or "", T0 + 20, status=500)
    failed = await store.get_run(owner.id, first.id)
    assert failed.state is RunState.ERROR and failed.steps[2].state is StepState.WAITING
    small = await store.create_run(owner.id, run_of(step("one"), step("two", "one")), T0 + 30)
    # retrying the failed run brings back two steps: no room for them now
    with pytest.raises(QueueLimitReached):
        await store.retry_run(owner.id, first.id, T0 + 40)
    assert (await store.get_run(owner.id, first.id)).state is RunState.ERROR
    await store.cancel_run(owner.id, small.id, T0 + 50)
    retried = await store.retry_run(owner.id, first.id, T0 + 60)
    assert retried.state is RunState.RUNNING
    with pytest.raises(QueueLimitReached):
        await store.create_task(owner.id, a_task(), T0 + 60)
