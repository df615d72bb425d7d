"""The Store contract: every method of the Store protocol, run against every
implementation (the parametrised ``store`` fixture, tests/support/stores.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tasks_server.alerting import (
    AlertDelivery,
    AlertEvent,
    AlertRule,
    DeliveryStatus,
    Expectation,
    Incident,
    Scope,
)
from tasks_server.errors import (
    ConfigError,
    Conflict,
    NotFound,
    OwnerNotFound,
    PreconditionFailed,
    QueueLimitReached,
    TaskNotFound,
)
from tasks_server.models import (
    Credentials,
    DueTask,
    FlowControl,
    FlowPeriod,
    FlowSetting,
    FlowStatus,
    FollowUp,
    HostLimit,
    HttpRequest,
    NewSchedule,
    NewTask,
    Outcome,
    OverlapPolicy,
    Owner,
    Result,
    Schedule,
    ScheduleFire,
    ScheduleState,
    ScheduleTiming,
    Task,
    TaskConfig,
    TaskSpec,
    TaskState,
)
from tasks_server.sealing import Sealer, key_digest
from tasks_server.store import DeadLetterFilter, Store
from tasks_server.store.ids import new_owner_id, new_task_id, new_task_ids
from tasks_server.store.listing import TaskQuery
from tasks_server.store.postgres import PostgresStore
from tasks_server.store.sqlite import SqliteStore
from tests.support.postgres import stored_values
from tests.support.stores import StoreMaker

T0 = 1_767_225_600_000
SECRET_URL = "http://127.0.0.1:9/very-secret-path"


def new_task(due: int = T0 + 1000, **config: object) -> NewTask:
    request = HttpRequest(
        url=SECRET_URL, method="POST", auth_basic=Credentials("user", "hunter2-password")
    )
    spec = TaskSpec(request, TaskConfig(**config), (("k", "v"),))  # type: ignore[arg-type]
    return NewTask(spec, due)


async def make_owner(store: Store, name: str = "owner-one", limit: int = 1000) -> Owner:
    return await store.create_owner(name, key_digest("k" * 64), T0, limit)


def success(task_id: str, number: int, at: int) -> Result:
    outcome = Outcome(status=200, body=b"done", headers=(("X-A", "1"),), total_ms=3.5)
    return Result(task_id, number, at, TaskState.SUCCESS, 200, b"done", outcome)


def test_ids_have_the_wire_format() -> None:
    task_ids = {new_task_id(T0) for _ in range(1000)}
    assert len(task_ids) == 1000
    task_ids |= set(new_task_ids(T0, 3000))  # more than one refill of the random text
    assert len(task_ids) == 4000
    assert all(len(i) == 24 and i.isalnum() and i.upper() == i for i in task_ids)
    owner_id = new_owner_id(T0)
    assert len(owner_id) == 26 and owner_id < new_owner_id(T0 + 1)


async def test_an_administrator_disables_limits_and_rekeys_an_owner(store: Store) -> None:
    owner = await make_owner(store)
    assert (owner.disabled, owner.request_budget) == (False, None)
    changed = await store.update_owner(
        owner.id, disabled=True, tasks_in_queue_limit=5, request_budget=60
    )
    assert (changed.disabled, changed.tasks_in_queue_limit, changed.request_budget) == (
        True,
        5,
        60,
    )
    assert await store.get_owner(owner.id) == changed
    assert await store.owner_key_digest(owner.id) is None  # a disabled owner's key fails
    await store.update_owner(owner.id, disabled=False, tasks_in_queue_limit=5, request_budget=None)
    assert await store.owner_key_digest(owner.id) == key_digest("k" * 64)
    await store.set_owner_key(owner.id, key_digest("n" * 64))
    assert await store.owner_key_digest(owner.id) == key_digest("n" * 64)
    with pytest.raises(OwnerNotFound):
        await store.set_owner_key("0" * 26, key_digest("n" * 64))
    with pytest.raises(OwnerNotFound):
        await store.update_owner(
            "0" * 26, disabled=True, tasks_in_queue_limit=1, request_budget=None
        )
    created = await store.create_owner("budgeted", key_digest("b" * 64), T0, 3, 42)
    assert (await store.get_owner(created.id)).request_budget == 42


async def test_owner_lifecycle(store: Store) -> None:
    owner = await make_owner(store)
    assert await store.get_owner(owner.id) == owner
    assert await store.owner_key_digest(owner.id) == key_digest("k" * 64)
    with pytest.raises(Conflict):
        await make_owner(store)
    assert [o.id for o in await store.list_owners()] == [owner.id]
    await store.delete_owner(owner.id)
    with pytest.raises(OwnerNotFound):
        await store.get_owner(owner.id)
    assert await store.owner_key_digest(owner.id) is None


async def test_owner_security_is_created_once_and_saved_whole(store: Store) -> None:
    owner = await make_owner(store)
    first = await store.owner_security(owner.id)
    assert len(first.signing_secret) == 32 and first.signing_enabled
    assert first.previous_secret is None and first.allowed_hosts is None
    assert await store.owner_security(owner.id) == first  # the same secret on every read
    other = await make_owner(store, "owner-two")
    assert (await store.owner_security(other.id)).signing_secret != first.signing_secret
    changed = dataclasses.replace(
        first,
        signing_secret=b"n" * 32,
        previous_secret=first.signing_secret,
        previous_until_ms=T0 + 5000,
        signing_enabled=False,
        allowed_hosts=("example.com", "*.example.org"),
    )
    await store.save_owner_security(owner.id, changed)
    assert await store.owner_security(owner.id) == changed
    assert changed.signing_secrets(T0) == ()  # switched off
    on = dataclasses.replace(changed, signing_enabled=True)
    assert on.signing_secrets(T0) == (b"n" * 32, first.signing_secret)
    assert on.signing_secrets(T0 + 5000) == (b"n" * 32,)  # the overlap has ended
    with pytest.raises(OwnerNotFound):
        await store.owner_security("0" * 26)
    with pytest.raises(OwnerNotFound):
        await store.save_owner_security("0" * 26, changed)


async def test_signing_secrets_are_sealed_at_rest(store: Store, tmp_path: Path) -> None:
    owner = await make_owner(store)
    secret = (await store.owner_security(owner.id)).signing_secret
    raw = await stored_bytes(store, tmp_path)
    assert secret not in raw


async def test_create_and_read_task(store: Store) -> None:
    owner = await make_owner(store)
    created = await store.create_task(owner.id, new_task(), T0)
    fetched = await store.get_task(owner.id, created.id)
    assert fetched.state is TaskState.RUNNING
    assert fetched.estimate_execution_at_ms == T0 + 1000 and fetched.created_at_ms == T0
    assert fetched.metadata == (("k", "v"),) and fetched.response is None
    assert (await store.get_spec(owner.id, created.id)) == new_task().spec
    assert (await store.get_owner(owner.id)).tasks_in_queue == 1


def stored_files(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in directory.rglob("*") if path.is_file())


async def stored_bytes(store: Store, directory: Path) -> bytes:
    """Everything the test's database holds: every file it wrote (an implementation keeps
    its files in tmp_path) or, on PostgreSQL, whose files belong to the server, every value
    of every row."""
    if isinstance(store, PostgresStore):
        return await stored_values(store.url)
    return stored_files(directory)


async def test_secrets_are_encrypted_at_rest(store: Store, tmp_path: Path) -> None:
    owner = await make_owner(store)
    await store.create_task(owner.id, new_task(), T0)
    raw = await stored_bytes(store, tmp_path)
    assert b"owner-one" in raw  # the files do hold the data: names are not secret
    assert b"very-secret-path" not in raw and b"hunter2-password" not in raw


async def test_attempt_errors_and_response_headers_are_sealed_at_rest(
    store: Store, tmp_path: Path
) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0, retry=1), T0)
    await store.claim_due([task.id], T0)
    failed = Outcome(
        status=503,
        headers=(("Set-Cookie", "planted-session-cookie"),),
        error="planted-error-text",
    )
    retry = Result(task.id, 1, T0 + 5, TaskState.RUNNING, 503, None, failed, T0 + 10)
    assert await store.record_outcomes([retry]) == [task.id]
    [record] = await store.list_attempts(owner.id, task.id)
    assert record.error == "planted-error-text"
    assert record.headers == (("Set-Cookie", "planted-session-cookie"),)
    raw = await stored_bytes(store, tmp_path)
    assert b"planted-session-cookie" not in raw and b"planted-error-text" not in raw


async def test_a_task_keeps_its_first_and_last_attempts(make_store: StoreMaker) -> None:
    store = make_store(Sealer("test-key"), keep_attempts=3)
    await store.open()
    try:
        owner = await make_owner(store)
        task = await store.create_task(owner.id, new_task(due=T0, retry=40), T0)
        for number in range(1, 13):
            now = T0 + number * 10
            [attempt] = await store.claim_due([task.id], now)
            assert attempt.number == number
            outcome = Outcome(status=503, headers=(("X-N", str(number)),), error="boom")
            retry = Result(task.id, number, now + 1, TaskState.RUNNING, 503, None, outcome, now + 5)
            assert await store.record_outcomes([retry]) == [task.id]
        kept = await store.list_attempts(owner.id, task.id)
        assert [a.number for a in kept] == [1, 10, 11, 12]
        assert kept[-1].headers == (("X-N", "12"),) and kept[0].error == "boom"
        assert (await store.get_task(owner.id, task.id)).attempts == 12
    finally:
        await store.close()


async def test_another_owner_sees_nothing(store: Store) -> None:
    owner = await make_owner(store)
    intruder = await make_owner(store, "intruder")
    task = await store.create_task(owner.id, new_task(), T0)
    for call in (
        store.get_task(intruder.id, task.id),
        store.get_spec(intruder.id, task.id),
        store.list_attempts(intruder.id, task.id),
        store.pause_task(intruder.id, task.id, T0),
        store.revoke_task(intruder.id, task.id, T0),
        store.execute_task(intruder.id, task.id, T0),
        store.delete_task(intruder.id, task.id),
        store.edit_task(intruder.id, task.id, new_task(), T0),
    ):
        with pytest.raises(TaskNotFound):
            await call
    assert await store.list_tasks(intruder.id, None, "createdAt", False, 10, 0) == []
    assert (await store.get_task(owner.id, task.id)).state is TaskState.RUNNING


async def test_queue_limit_is_checked_in_the_insert(store: Store) -> None:
    owner = await make_owner(store, limit=2)
    first = await store.create_task(owner.id, new_task(), T0)
    await store.create_task(owner.id, new_task(), T0)
    with pytest.raises(QueueLimitReached):
        await store.create_task(owner.id, new_task(), T0)
    await store.revoke_task(owner.id, first.id, T0)
    await store.create_task(owner.id, new_task(), T0)


async def test_unlimited_queue(store: Store) -> None:
    owner = await make_owner(store, limit=0)
    for _ in range(5):
        await store.create_task(owner.id, new_task(), T0)
    assert (await store.get_owner(owner.id)).tasks_in_queue == 5


async def test_list_orders_sorts_filters_and_pages(store: Store) -> None:
    owner = await make_owner(store)
    ids = [
        (await store.create_task(owner.id, new_task(due=T0 + 100 * (5 - i)), T0 + i)).id
        for i in range(5)
    ]
    await store.pause_task(owner.id, ids[0], T0 + 10)
    by_created = await store.list_tasks(owner.id, None, "createdAt", False, 10, 0)
    assert [t.id for t in by_created] == ids
    by_due_desc = await store.list_tasks(owner.id, None, "estimateExecutionAt", True, 10, 0)
    assert [t.id for t in by_due_desc] == ids
    by_due_asc = await store.list_tasks(owner.id, None, "estimateExecutionAt", False, 2, 1)
    assert [t.id for t in by_due_asc] == [ids[3], ids[2]]
    paused = await store.list_tasks(owner.id, TaskState.PAUSED, "createdAt", False, 10, 0)
    assert [t.id for t in paused] == [ids[0]]


async def test_pause_resume_keeps_remaining_time(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0 + 10_000), T0)
    paused = await store.pause_task(owner.id, task.id, T0 + 4_000)
    assert paused.state is TaskState.PAUSED and paused.estimate_end_at_ms == T0 + 4_000
    assert await store.due_before(T0 + 10**9, 10) == []
    with pytest.raises(PreconditionFailed):
        await store.pause_task(owner.id, task.id, T0 + 5_000)
    resumed = await store.resume_task(owner.id, task.id, T0 + 60_000)
    assert resumed.state is TaskState.RUNNING and resumed.estimate_end_at_ms == 0
    assert resumed.estimate_execution_at_ms == T0 + 66_000
    assert await store.due_before(T0 + 10**9, 10) == [DueTask(task.id, T0 + 66_000)]
    with pytest.raises(PreconditionFailed):
        await store.resume_task(owner.id, task.id, T0 + 61_000)


async def test_revoke_from_paused_frees_the_slot(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(), T0)
    await store.pause_task(owner.id, task.id, T0)
    revoked = await store.revoke_task(owner.id, task.id, T0 + 5)
    assert revoked.state is TaskState.REVOKED and revoked.estimate_end_at_ms == T0 + 5
    assert (await store.get_owner(owner.id)).tasks_in_queue == 0
    with pytest.raises(PreconditionFailed):
        await store.revoke_task(owner.id, task.id, T0 + 6)
    await store.delete_owner(owner.id)


async def test_delete_owner_needs_an_empty_queue(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(), T0)
    with pytest.raises(PreconditionFailed):
        await store.delete_owner(owner.id)
    await store.delete_task(owner.id, task.id)
    with pytest.raises(TaskNotFound):
        await store.get_task(owner.id, task.id)
    assert (await store.get_owner(owner.id)).tasks_in_queue == 0
    await store.delete_owner(owner.id)


async def test_claim_and_record_success(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0 + 1000), T0)
    assert await store.claim_due([task.id], T0 + 999) == []
    [attempt] = await store.claim_due([task.id], T0 + 1000)
    assert (attempt.number, attempt.retry_count, attempt.due_at_ms) == (1, 0, T0 + 1000)
    assert attempt.spec == new_task().spec
    assert await store.claim_due([task.id], T0 + 2000) == []  # in flight: not twice
    assert await store.record_outcomes([success(task.id, 1, T0 + 1010)]) == [task.id]
    done = await store.get_task(owner.id, task.id)
    assert (done.state, done.status_code, done.response) == (TaskState.SUCCESS, 200, b"done")
    assert done.estimate_end_at_ms == T0 + 1010
    [record] = await store.list_attempts(owner.id, task.id)
    assert (record.number, record.status_code, record.response) == (1, 200, b"done")
    assert record.headers == (("X-A", "1"),) and record.total_ms == 3.5
    assert (await store.get_owner(owner.id)).tasks_in_queue == 0


async def test_retry_rearms_the_task(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([task.id], T0)
    retry = Result(
        task.id,
        1,
        T0 + 5,
        TaskState.RUNNING,
        503,
        b"busy",
        Outcome(status=503, body=b"busy"),
        next_due_at_ms=T0 + 1005,
    )
    await store.record_outcomes([retry])
    waiting = await store.get_task(owner.id, task.id)
    assert (waiting.state, waiting.status_code, waiting.retry_count) == (TaskState.RUNNING, 503, 1)
    assert (
        waiting.estimate_execution_at_ms == T0
    )  # retries do not move it (docs/compatibility.md#time-fields)
    assert await store.due_before(T0 + 10_000, 10) == [DueTask(task.id, T0 + 1005)]
    [second] = await store.claim_due([task.id], T0 + 1005)
    assert (second.number, second.retry_count, second.due_at_ms) == (2, 1, T0 + 1005)


async def test_outcome_after_pause_only_completes_history(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([task.id], T0)
    await store.pause_task(owner.id, task.id, T0 + 1)
    assert await store.record_outcomes([success(task.id, 1, T0 + 2)]) == []
    paused = await store.get_task(owner.id, task.id)
    assert paused.state is TaskState.PAUSED and paused.status_code == 0
    [record] = await store.list_attempts(owner.id, task.id)
    assert record.finished_at_ms == T0 + 2


async def test_outcome_after_delete_is_harmless(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([task.id], T0)
    await store.delete_task(owner.id, task.id)
    assert await store.record_outcomes([success(task.id, 1, T0 + 2)]) == []


async def test_execute_makes_due_now_even_while_waiting_to_retry(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0 + 50_000), T0)
    executed = await store.execute_task(owner.id, task.id, T0 + 10)
    assert executed.estimate_execution_at_ms == T0 + 10
    assert await store.due_before(T0 + 11, 10) == [DueTask(task.id, T0 + 10)]
    await store.pause_task(owner.id, task.id, T0 + 20)
    with pytest.raises(PreconditionFailed):
        await store.execute_task(owner.id, task.id, T0 + 30)


async def test_edit_only_before_the_first_attempt(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0 + 1000), T0)
    edited = await store.edit_task(owner.id, task.id, new_task(due=T0 + 7000, retry=3), T0 + 5)
    assert edited.estimate_execution_at_ms == T0 + 7000
    assert (await store.get_spec(owner.id, task.id)).config.retry == 3
    await store.claim_due([task.id], T0 + 7000)
    with pytest.raises(PreconditionFailed):
        await store.edit_task(owner.id, task.id, new_task(), T0 + 7001)


async def test_requeue_interrupted_keeps_planned_times(store: Store) -> None:
    owner = await make_owner(store)
    running = await store.create_task(owner.id, new_task(due=T0), T0)
    future = await store.create_task(owner.id, new_task(due=T0 + 90_000), T0)
    await store.claim_due([running.id], T0)
    assert await store.requeue_interrupted(T0 + 30_000) == 1
    assert await store.due_before(T0 + 10**9, 10) == [
        DueTask(running.id, T0),
        DueTask(future.id, T0 + 90_000),
    ]
    [interrupted] = await store.list_attempts(owner.id, running.id)
    assert interrupted.error is not None and "interrupted" in interrupted.error
    [again] = await store.claim_due([running.id], T0 + 30_000)
    assert again.number == 2


async def test_due_order_is_time_then_priority_with_flow_key(store: Store) -> None:
    owner = await make_owner(store)
    low = await store.create_task(owner.id, new_task(T0 + 10, priority=-3), T0)
    high = await store.create_task(
        owner.id, new_task(T0 + 10, priority=9, flow_control=FlowControl("k1", rate=5)), T0
    )
    early = await store.create_task(owner.id, new_task(T0 + 5, priority=-100), T0)
    assert await store.due_before(T0 + 11, 10) == [
        DueTask(early.id, T0 + 5, -100),
        DueTask(high.id, T0 + 10, 9, (owner.id, "k1")),
        DueTask(low.id, T0 + 10, -3),
    ]


async def test_first_attempt_time_is_kept_across_retries(store: Store) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(T0 + 10), T0)
    [first] = await store.claim_due([task.id], T0 + 20)
    assert first.first_started_at_ms == T0 + 20 and first.owner_id == owner.id
    retry = Result(task.id, 1, T0 + 30, TaskState.RUNNING, 503, None, Outcome(503), T0 + 500)
    assert await store.record_outcomes([retry]) == [task.id]
    [second] = await store.claim_due([task.id], T0 + 600)
    assert second.first_started_at_ms == T0 + 20 and second.started_at_ms == T0 + 600


def deduplicated(due: int = T0 + 1000, key: str = "order-42", until: int = T0 + 60_000) -> NewTask:
    new = new_task(due, deduplication_id=key)
    return NewTask(new.spec, due, dedup_until_ms=until)


async def test_deduplication_returns_the_existing_task(store: Store) -> None:
    owner = await make_owner(store)
    other = await make_owner(store, "owner-two")
    first = await store.create_task(owner.id, deduplicated(), T0)
    assert not first.deduplicated
    again = await store.create_task(owner.id, deduplicated(due=T0 + 5000), T0 + 10)
    assert again.deduplicated and again.id == first.id
    assert again.estimate_execution_at_ms == T0 + 1000  # the existing task, unchanged
    assert (await store.get_owner(owner.id)).tasks_in_queue == 1
    # keys are per owner
    foreign = await store.create_task(other.id, deduplicated(), T0)
    assert not foreign.deduplicated and foreign.id != first.id
    # once the window has passed the key is free again
    later = await store.create_task(owner.id, deduplicated(until=T0 + 200_000), T0 + 60_000)
    assert not later.deduplicated and later.id != first.id
    # the window holds even after the first task finished
    [attempt] = await store.claim_due([later.id], T0 + 61_000)
    await store.record_outcomes([success(later.id, attempt.number, T0 + 61_001)])
    final = await store.create_task(owner.id, deduplicated(), T0 + 62_000)
    assert final.deduplicated and final.id == later.id and final.state is TaskState.SUCCESS


async def test_the_last_registration_sets_a_flow_keys_limits(store: Store) -> None:
    owner = await make_owner(store)
    other = await make_owner(store, "owner-two")
    assert await store.get_flow_control(owner.id, "k1") is None
    first = FlowControl("k1", rate=10, parallelism=3)
    await store.create_task(owner.id, new_task(flow_control=first), T0)
    assert await store.get_flow_control(owner.id, "k1") == FlowSetting(first)
    later = FlowControl("k1", rate=5, period=FlowPeriod.MINUTE)
    await store.create_tasks(owner.id, [new_task(flow_control=later)], T0 + 1)
    assert await store.get_flow_control(owner.id, "k1") == FlowSetting(later)
    assert await store.get_flow_control(other.id, "k1") is None  # keys are per owner


async def test_flow_keys_are_listed_with_what_waits_and_can_be_saved(store: Store) -> None:
    owner = await make_owner(store)
    flow = FlowControl("b-key", rate=3)
    first = await store.create_task(owner.id, new_task(T0 + 50, flow_control=flow), T0)
    await store.create_task(owner.id, new_task(T0 + 20, flow_control=flow), T0)
    await store.create_task(owner.id, new_task(T0 + 9, flow_control=FlowControl("a-key")), T0)
    await store.claim_due([first.id], T0 + 50)  # in flight: not waiting
    assert await store.list_flow_controls(owner.id) == [
        FlowStatus(FlowSetting(FlowControl("a-key")), 1, T0 + 9),
        FlowStatus(FlowSetting(flow), 1, T0 + 20),
    ]
    changed = FlowSetting(FlowControl("b-key", None, FlowPeriod.HOUR, 4), paused=True)
    await store.save_flow_control(owner.id, changed, T0 + 60)
    assert await store.get_flow_control(owner.id, "b-key") == changed
    assert await store.list_flow_controls((await make_owner(store, "owner-two")).id) == []


async def test_host_limits_are_saved_replaced_listed_and_deleted(store: Store) -> None:
    assert await store.list_host_limits() == []
    api = HostLimit("api.example.com:443", max_concurrency=8, max_rate=2.5, updated_at_ms=T0)
    every_port = HostLimit("slow.example.com", max_concurrency=None, max_rate=0.5, updated_at_ms=T0)
    await store.save_host_limit(api)
    await store.save_host_limit(every_port)
    assert await store.list_host_limits() == [api, every_port]  # by host name
    replaced = HostLimit("api.example.com:443", max_concurrency=None, updated_at_ms=T0 + 1)
    await store.save_host_limit(replaced)
    assert await store.list_host_limits() == [replaced, every_port]
    assert await store.delete_host_limit("api.example.com:443") is True
    assert await store.delete_host_limit("api.example.com:443") is False
    assert await store.list_host_limits() == [every_port]


async def test_concurrent_registrations_with_one_key_create_one_task(store: Store) -> None:
    owner = await make_owner(store)
    tasks = await asyncio.gather(
        *(store.create_task(owner.id, deduplicated(), T0) for _ in range(50))
    )
    assert len({task.id for task in tasks}) == 1
    assert sum(not task.deduplicated for task in tasks) == 1
    assert (await store.get_owner(owner.id)).tasks_in_queue == 1


async def test_batch_registers_in_order_with_per_item_errors(store: Store) -> None:
    owner = await make_owner(store, limit=3)
    news = [new_task(T0 + i) for i in range(2)] + [deduplicated(), deduplicated()]
    news += [new_task(T0 + 9)]
    results = await store.create_tasks(owner.id, news, T0)
    assert len(results) == 5
    first, second, keyed, same, refused = results
    assert isinstance(first, Task) and isinstance(second, Task) and isinstance(keyed, Task)
    assert first.due_at_ms == T0 and second.due_at_ms == T0 + 1
    assert isinstance(same, Task) and same.deduplicated and same.id == keyed.id
    assert isinstance(refused, QueueLimitReached)
    assert (await store.get_owner(owner.id)).tasks_in_queue == 3
    with pytest.raises(OwnerNotFound):
        await store.create_tasks("0" * 26, news, T0)


async def test_a_batch_mixing_plain_and_keyed_items_stores_each_in_its_place(
    store: Store,
) -> None:
    """Plain items around deduplicated and flow-controlled ones, and the owner's limit
    reached inside a run of plain ones: each answer is its own, each stored task its own."""
    owner = await make_owner(store, limit=9)
    flow = FlowControl("mixed", rate=4)
    news = [new_task(T0 + i) for i in range(3)]
    news += [new_task(T0 + 10, flow_control=flow), deduplicated(T0 + 11)]
    news += [new_task(T0 + 20 + i) for i in range(2)]
    news += [deduplicated(T0 + 12)]  # the same key: the stored task answers
    news += [new_task(T0 + 30 + i) for i in range(4)]  # two fit, two do not
    results = await store.create_tasks(owner.id, news, T0)
    created = [r for r in results if isinstance(r, Task) and not r.deduplicated]
    assert len(created) == 9
    assert [isinstance(r, QueueLimitReached) for r in results] == [False] * 10 + [True] * 2
    keyed, same = results[4], results[7]
    assert isinstance(keyed, Task) and isinstance(same, Task)
    assert same.deduplicated and same.id == keyed.id
    for new, result in zip(news, results, strict=True):
        if isinstance(result, Task) and not result.deduplicated:
            stored = await store.get_task(owner.id, result.id)
            assert stored.due_at_ms == new.due_at_ms == result.due_at_ms
            spec = await store.get_spec(owner.id, result.id)
            assert spec.config.flow_control == new.spec.config.flow_control
    assert (await store.get_owner(owner.id)).tasks_in_queue == 9
    assert await store.get_flow_control(owner.id, "mixed") == FlowSetting(flow)


async def test_a_wrong_cipher_key_stops_open(make_store: StoreMaker) -> None:
    first = make_store(Sealer("one"))
    await first.open()
    owner = await make_owner(first)
    await first.create_task(owner.id, new_task(), T0)
    await first.close()
    second = make_store(Sealer("two"))
    with pytest.raises(ConfigError, match="CIPHER_KEY"):
        await second.open()
    await second.close()
    again = make_store(Sealer("one"))  # the right key still opens it
    await again.open()
    await again.close()


async def test_an_empty_database_remembers_its_first_key(make_store: StoreMaker) -> None:
    first = make_store(Sealer("one"))
    await first.open()
    await first.close()
    second = make_store(Sealer("two"))
    with pytest.raises(ConfigError, match="CIPHER_KEY"):
        await second.open()
    await second.close()


async def test_reseal_moves_every_value_to_the_new_key(make_store: StoreMaker) -> None:
    store = make_store(Sealer("old-key"))
    await store.open()
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    [attempt] = await store.claim_due([task.id], T0)
    failed = Result(
        task.id,
        1,
        T0 + 5,
        TaskState.ERROR,
        500,
        b"target body",
        Outcome(status=500, body=b"target body", headers=(("X-Secret", "v"),), error="boom"),
    )
    await store.record_outcomes([failed])
    schedule = await add_schedule(store, owner.id)
    written = await store.reseal(Sealer("new-key"))
    assert written >= 6  # task spec, metadata, response; attempt response, detail; schedule
    # the store keeps working under the new key
    assert (await store.get_spec(owner.id, task.id)) == new_task().spec
    await store.close()

    with pytest.raises(ConfigError, match="CIPHER_KEY"):
        await make_store(Sealer("old-key")).open()
    reopened = make_store(Sealer("new-key"))
    await reopened.open()
    try:
        assert (await reopened.get_spec(owner.id, task.id)) == new_task().spec
        [record] = await reopened.list_attempts(owner.id, task.id)
        assert (record.error, record.headers, record.response) == (
            "boom",
            (("X-Secret", "v"),),
            b"target body",
        )
        assert (await reopened.get_task(owner.id, task.id)).metadata == (("k", "v"),)
        assert (await reopened.get_schedule_spec(owner.id, schedule.id)) == TEMPLATE
    finally:
        await reopened.close()
    assert attempt.number == 1


# -- recurring schedules --------------------------------------------------------------------

TEMPLATE = TaskSpec(
    HttpRequest(url="http://127.0.0.1:9/report", method="POST", data_text="tick"),
    TaskConfig(execution_delay_ms=0, retry=2),
    metadata=(("kind", "report"),),
)


async def add_schedule(
    store: Store,
    owner_id: str,
    name: str = "nightly",
    next_at: int | None = T0 + 60_000,
    overlap: OverlapPolicy = OverlapPolicy.ALLOW,
    state: ScheduleState = ScheduleState.ACTIVE,
) -> Schedule:
    timing = ScheduleTiming("* * * * *", "Europe/Berlin", max_runs=5, overlap=overlap)
    return await store.create_schedule(
        owner_id, NewSchedule(name, timing, TEMPLATE), T0, state, T0, next_at
    )


def fire(schedule: Schedule, *slots: int, next_at: int | None = None) -> ScheduleFire:
    cursor = slots[-1] if slots else schedule.cursor_ms
    return ScheduleFire(schedule.id, schedule.version, slots, cursor, next_at, ScheduleState.ACTIVE)


async def test_schedule_lifecycle(store: Store) -> None:
    owner = await make_owner(store)
    created = await add_schedule(store, owner.id)
    assert (created.owner_id, created.name, created.state) == (
        owner.id,
        "nightly",
        ScheduleState.ACTIVE,
    )
    assert created.timing.timezone == "Europe/Berlin" and created.timing.max_runs == 5
    assert (created.cursor_ms, created.next_at_ms, created.runs) == (T0, T0 + 60_000, 0)
    assert created.created_at_ms == created.updated_at_ms == T0
    assert await store.get_schedule(owner.id, created.id) == created
    assert await store.get_schedule(owner.id, "nightly") == created  # by name too
    assert await store.get_schedule_spec(owner.id, created.id) == TEMPLATE
    with pytest.raises(Conflict):
        await add_schedule(store, owner.id)
    with pytest.raises(OwnerNotFound):
        await add_schedule(store, "0" * 26)

    await add_schedule(store, owner.id, "alpha")
    await add_schedule(store, owner.id, "zulu")
    names = [s.name for s in await store.list_schedules(owner.id, 10, 0)]
    assert names == ["alpha", "nightly", "zulu"]  # by name
    assert [s.name for s in await store.list_schedules(owner.id, 1, 1)] == ["nightly"]

    await store.delete_schedule(owner.id, created.id)
    for call in (
        store.get_schedule(owner.id, created.id),
        store.get_schedule_spec(owner.id, created.id),
        store.delete_schedule(owner.id, created.id),
    ):
        with pytest.raises(NotFound):
            await call
    assert [s.name for s in await store.list_schedules(owner.id, 10, 0)] == ["alpha", "zulu"]


async def test_another_owner_sees_no_schedule(store: Store) -> None:
    owner = await make_owner(store)
    intruder = await make_owner(store, "intruder")
    schedule = await add_schedule(store, owner.id)
    await store.fire_schedule(fire(schedule, T0 + 60_000), T0)
    for call in (
        store.get_schedule(intruder.id, schedule.id),
        store.get_schedule(intruder.id, "nightly"),
        store.get_schedule_spec(intruder.id, schedule.id),
        store.delete_schedule(intruder.id, schedule.id),
        store.save_schedule(
            dataclasses.replace(schedule, owner_id=intruder.id), None, schedule.version, T0
        ),
    ):
        with pytest.raises(NotFound):
            await call
    assert await store.list_schedules(intruder.id, 10, 0) == []
    assert await store.list_schedule_tasks(intruder.id, schedule.id, 10, 0) == []
    assert await add_schedule(store, intruder.id)  # names are unique per owner only


async def test_saving_a_schedule_is_fenced_on_its_version(store: Store) -> None:
    owner = await make_owner(store)
    schedule = await add_schedule(store, owner.id)
    await add_schedule(store, owner.id, "taken")
    paused = dataclasses.replace(
        schedule,
        name="renamed",
        timing=dataclasses.replace(schedule.timing, expression="@every 10s"),
        state=ScheduleState.PAUSED,
        next_at_ms=None,
    )
    saved = await store.save_schedule(paused, None, schedule.version, T0 + 5)
    assert saved is not None and saved.version > schedule.version
    assert (saved.name, saved.timing.expression, saved.state, saved.next_at_ms) == (
        "renamed",
        "@every 10s",
        ScheduleState.PAUSED,
        None,
    )
    assert saved.updated_at_ms == T0 + 5 and saved.created_at_ms == T0
    assert await store.get_schedule(owner.id, "renamed") == saved
    assert await store.get_schedule_spec(owner.id, schedule.id) == TEMPLATE  # kept

    # a write made from an older read changes nothing
    assert await store.save_schedule(schedule, None, schedule.version, T0 + 6) is None
    assert await store.get_schedule(owner.id, schedule.id) == saved

    template = dataclasses.replace(TEMPLATE, metadata=(("kind", "weekly"),))
    active = dataclasses.replace(saved, state=ScheduleState.ACTIVE, next_at_ms=T0 + 10_000)
    again = await store.save_schedule(active, template, saved.version, T0 + 7)
    assert again is not None and again.state is ScheduleState.ACTIVE
    assert await store.get_schedule_spec(owner.id, schedule.id) == template

    with pytest.raises(Conflict):
        await store.save_schedule(dataclasses.replace(again, name="taken"), None, again.version, T0)
    gone = await add_schedule(store, owner.id, "gone")
    await store.delete_schedule(owner.id, gone.id)
    with pytest.raises(NotFound):
        await store.save_schedule(gone, None, gone.version, T0)


async def test_firing_creates_tasks_and_moves_the_progress_once(store: Store) -> None:
    owner = await make_owner(store)
    schedule = await add_schedule(store, owner.id)
    slots = (T0 + 60_000, T0 + 120_000)
    step = fire(schedule, *slots, next_at=T0 + 180_000)
    created = await store.fire_schedule(step, T0 + 1)
    assert created is not None and [c.due_at_ms for c in created] == list(slots)
    assert await store.fire_schedule(step, T0 + 2) is None  # the same plan twice: refused

    tasks = await store.list_schedule_tasks(owner.id, schedule.id, 10, 0)
    assert [t.id for t in tasks] == [created[1][0], created[0][0]]  # newest first
    assert [t.estimate_execution_at_ms for t in tasks] == [slots[1], slots[0]]
    assert {t.state for t in tasks} == {TaskState.RUNNING}
    assert tasks[0].metadata == (("kind", "report"),) and tasks[0].created_at_ms == T0 + 1
    assert await store.get_spec(owner.id, tasks[0].id) == TEMPLATE
    assert [t.id for t in await store.list_schedule_tasks(owner.id, schedule.id, 1, 1)] == [
        created[0][0]
    ]
    assert (await store.get_owner(owner.id)).tasks_in_queue == 2
    assert sorted(await store.due_before(T0 + 200_000, 10)) == sorted(DueTask(*c) for c in created)

    after = await store.get_schedule(owner.id, schedule.id)
    assert (after.cursor_ms, after.runs, after.last_run_at_ms) == (slots[1], 2, slots[1])
    assert (after.last_task_id, after.next_at_ms) == (created[1][0], T0 + 180_000)
    assert after.version > schedule.version
    assert after.last_task_state is TaskState.RUNNING and after.last_task_pending

    # a plan is refused once the schedule is no longer ACTIVE, even at its version
    paused = dataclasses.replace(after, state=ScheduleState.PAUSED, next_at_ms=None)
    saved = await store.save_schedule(paused, None, after.version, T0 + 3)
    assert saved is not None
    assert await store.fire_schedule(fire(saved, T0 + 180_000), T0 + 4) is None

    await store.delete_schedule(owner.id, schedule.id)  # its tasks stay
    assert (await store.get_task(owner.id, created[0][0])).state is TaskState.RUNNING


async def test_scheduled_tasks_take_the_templates_priority_and_flow_key(store: Store) -> None:
    owner = await make_owner(store)
    flow = FlowControl("reports", rate=2, parallelism=1)
    config = dataclasses.replace(TEMPLATE.config, priority=7, flow_control=flow)
    template = dataclasses.replace(TEMPLATE, config=config)
    timing = ScheduleTiming("* * * * *", "UTC")
    schedule = await store.create_schedule(
        owner.id, NewSchedule("keyed", timing, template), T0, ScheduleState.ACTIVE, T0, T0 + 1
    )
    created = await store.fire_schedule(fire(schedule, T0 + 60_000), T0 + 1)
    assert created is not None
    [due] = created
    assert (due.due_at_ms, due.priority, due.flow) == (T0 + 60_000, 7, (owner.id, "reports"))
    assert await store.due_before(T0 + 120_000, 10) == [due]  # the engine's index agrees
    assert await store.get_flow_control(owner.id, "reports") == FlowSetting(flow)
    # a key that already has limits keeps them (a registration or an edit set them last)
    changed = FlowSetting(FlowControl("reports", rate=9), paused=True)
    await store.save_flow_control(owner.id, changed, T0 + 2)
    again = await store.get_schedule(owner.id, schedule.id)
    assert await store.fire_schedule(fire(again, T0 + 120_000), T0 + 3) is not None
    assert await store.get_flow_control(owner.id, "reports") == changed


async def test_a_run_over_the_owner_limit_is_skipped_but_counted(store: Store) -> None:
    owner = await make_owner(store, limit=1)
    schedule = await add_schedule(store, owner.id)
    step = fire(schedule, T0 + 60_000, T0 + 120_000, next_at=T0 + 180_000)
    created = await store.fire_schedule(step, T0)
    assert created is not None and [c.due_at_ms for c in created] == [T0 + 60_000]
    after = await store.get_schedule(owner.id, schedule.id)
    assert (after.runs, after.cursor_ms, after.last_task_id) == (2, T0 + 120_000, created[0][0])


async def test_due_schedules_honour_lookahead_and_overlap(store: Store) -> None:
    owner = await make_owner(store)
    allow = await add_schedule(store, owner.id, "allow", next_at=T0 + 1_000)
    skip = await add_schedule(
        store, owner.id, "skip", next_at=T0 + 1_200, overlap=OverlapPolicy.SKIP
    )
    await add_schedule(store, owner.id, "paused", next_at=None, state=ScheduleState.PAUSED)

    def names(found: list[Schedule]) -> list[str]:
        return [s.name for s in found]

    assert await store.due_schedules(T0, 500, 10) == []
    assert await store.next_schedule_at(500) == T0 + 500  # allow: a lookahead early
    assert names(await store.due_schedules(T0 + 500, 500, 10)) == ["allow"]
    assert names(await store.due_schedules(T0 + 1_000, 500, 10)) == ["allow"]  # skip: not early
    assert names(await store.due_schedules(T0 + 1_200, 500, 10)) == ["allow", "skip"]
    assert names(await store.due_schedules(T0 + 1_200, 500, 1)) == ["allow"]  # earliest first
    assert await store.next_schedule_at(0) == T0 + 1_000

    # a `queue` schedule is not due while its last task is RUNNING or PAUSED
    for schedule in (allow, skip):
        await store.delete_schedule(owner.id, schedule.id)
    queue = await add_schedule(
        store, owner.id, "queue", next_at=T0 + 1_000, overlap=OverlapPolicy.QUEUE
    )
    created = await store.fire_schedule(fire(queue, T0 + 1_000, next_at=T0 + 2_000), T0 + 1_000)
    assert created is not None
    assert await store.due_schedules(T0 + 5_000, 500, 10) == []
    assert await store.next_schedule_at(500) is None
    await store.revoke_task(owner.id, created[0][0], T0 + 2_500)
    assert await store.next_schedule_at(500) == T0 + 2_000  # no lookahead for `queue`
    [due] = await store.due_schedules(T0 + 5_000, 500, 10)
    assert due.name == "queue" and due.last_task_state is TaskState.REVOKED
    assert due.last_task_ended_at_ms == T0 + 2_500


async def test_write_problem_is_none_while_writes_succeed(store: Store) -> None:
    await make_owner(store)
    assert store.write_problem() is None


# -- several nodes on one database (trivial where one process owns it) ---------------------


@contextlib.asynccontextmanager
async def another_process(make_store: StoreMaker) -> AsyncIterator[Store]:
    """A second store on the same database, as another node (or process) has."""
    other = make_store(Sealer("test-key"))
    await other.open()
    try:
        yield other
    finally:
        await other.close()


async def test_a_lease_ends_unless_renewed_and_fences_late_outcomes(
    store: Store, make_store: StoreMaker
) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([task.id], T0)
    lease = store.lease_ms
    async with another_process(make_store) as other:
        if lease is None:  # one process owns the database: claims never expire
            await store.renew_leases(T0 + 10**9, [task.id])
            assert await other.requeue_expired(T0 + 10**9) == []
            assert await store.record_outcomes([success(task.id, 1, T0 + 5)]) == [task.id]
            return
        await store.renew_leases(T0 + lease - 1, [task.id])
        assert await other.requeue_expired(T0 + lease + 1) == []  # renewed in time
        assert await store.requeue_expired(T0 + 2 * lease - 1) == []  # its own too
        assert await other.requeue_expired(T0 + 2 * lease) == [(task.id, T0)]
    assert await store.record_outcomes([success(task.id, 1, T0 + 2 * lease + 1)]) == []
    [record] = await store.list_attempts(owner.id, task.id)
    assert record.error is not None and "interrupted" in record.error
    assert record.status_code == 0 and record.finished_at_ms == T0 + 2 * lease
    [again] = await store.claim_due([task.id], T0 + 2 * lease)
    assert again.number == 2
    assert (await store.get_task(owner.id, task.id)).state is TaskState.RUNNING


async def test_a_claim_no_longer_renewed_runs_out_even_for_its_own_process(
    store: Store, make_store: StoreMaker
) -> None:
    owner = await make_owner(store)
    kept, dropped = [await store.create_task(owner.id, new_task(due=T0), T0) for _ in range(2)]
    await store.claim_due([kept.id, dropped.id], T0)
    lease = store.lease_ms
    if lease is None:  # claims never expire; a crash's are requeued at start-up
        await store.renew_leases(T0 + 10**9, [kept.id])
        assert await store.requeue_expired(T0 + 10**9) == []
        return
    await store.renew_leases(T0 + lease - 1, [kept.id])  # the other claim was dropped
    assert await store.requeue_expired(T0 + lease + 1) == [(dropped.id, T0)]
    async with another_process(make_store) as other:
        assert await other.requeue_expired(T0 + lease + 1) == []
        assert await other.requeue_expired(T0 + 2 * lease) == [(kept.id, T0)]


async def test_a_renewal_never_shortens_a_lease(store: Store, make_store: StoreMaker) -> None:
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([task.id], T0 + 100)
    await store.renew_leases(T0, [task.id])  # sent before the claim, committed after it
    lease = store.lease_ms
    async with another_process(make_store) as other:
        if lease is None:
            assert await other.requeue_expired(T0 + 10**9) == []
            return
        assert await other.requeue_expired(T0 + lease + 50) == []
        assert await other.requeue_expired(T0 + lease + 101) == [(task.id, T0)]


async def test_a_single_process_leads_the_schedules(store: Store) -> None:
    assert await store.lead_schedules()
    assert await store.lead_schedules()  # and keeps leading


async def test_listening_where_no_one_else_writes_returns_or_waits(store: Store) -> None:
    heard: list[tuple[str, int]] = []
    listener = asyncio.create_task(store.listen(lambda i, d: heard.append((i, d)), print))
    owner = await make_owner(store)
    await store.create_task(owner.id, new_task(due=T0), T0)
    await asyncio.sleep(0)
    if isinstance(store, SqliteStore):
        assert listener.done() and listener.result() is None  # one process: nothing to hear
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert heard == []  # a store never tells its own process what it did itself


# -- the dead-letter queue ----------------------------------------------------------------


async def dead_letter(
    store: Store,
    owner: Owner,
    at: int,
    status: int = 500,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> str:
    spec = TaskSpec(HttpRequest(url=SECRET_URL, method="POST"), TaskConfig(), metadata)
    task = await store.create_task(owner.id, NewTask(spec, T0), T0)
    [attempt] = await store.claim_due([task.id], T0)
    assert attempt.owner_id == owner.id and attempt.schedule_id is None
    outcome = Outcome(status=status, body=b"no")
    failed = Result(task.id, attempt.number, at, TaskState.ERROR, status, b"no", outcome)
    assert await store.record_outcomes([failed]) == [task.id]
    return task.id


async def test_dead_letters_are_listed_newest_first_with_filters(store: Store) -> None:
    owner = await make_owner(store)
    other = await make_owner(store, "other-owner")
    first = await dead_letter(store, owner, T0 + 10, metadata=(("team", "a"),))
    second = await dead_letter(store, owner, T0 + 20, 503, (("team", "b"),))
    third = await dead_letter(store, owner, T0 + 30)
    await dead_letter(store, other, T0 + 40)
    await store.create_task(owner.id, new_task(), T0)  # RUNNING: not a dead letter
    every = DeadLetterFilter()
    listed = await store.list_dead_letters(owner.id, every, 10)
    assert [t.id for t in listed] == [third, second, first]
    assert listed[0].cycle == 1 and listed[0].state is TaskState.ERROR
    page = await store.list_dead_letters(owner.id, every, 2)
    rest = await store.list_dead_letters(
        owner.id, every, 2, (page[-1].estimate_end_at_ms, page[-1].id)
    )
    assert [t.id for t in page + rest] == [third, second, first]
    assert [
        t.id for t in await store.list_dead_letters(owner.id, DeadLetterFilter(status_code=503), 10)
    ] == [second]
    assert [
        t.id
        for t in await store.list_dead_letters(owner.id, DeadLetterFilter(label=("team", "a")), 10)
    ] == [first]
    assert [
        t.id
        for t in await store.list_dead_letters(owner.id, DeadLetterFilter(label=("team", None)), 10)
    ] == [second, first]
    window = DeadLetterFilter(failed_from_ms=T0 + 20, failed_until_ms=T0 + 30)
    assert [t.id for t in await store.list_dead_letters(owner.id, window, 10)] == [second]


async def test_replay_starts_a_new_cycle(store: Store) -> None:
    owner = await make_owner(store, limit=1)
    task_id = await dead_letter(store, owner, T0 + 10)
    intruder = await make_owner(store, "intruder")
    with pytest.raises(TaskNotFound):
        await store.replay_task(intruder.id, task_id, None, T0 + 50, T0 + 50)
    edited = TaskSpec(
        HttpRequest(url="http://127.0.0.1:9/fixed", method="PUT"), TaskConfig(), (("x", "y"),)
    )
    replayed = await store.replay_task(owner.id, task_id, edited, T0 + 50, T0 + 50)
    assert replayed.state is TaskState.RUNNING and replayed.status_code == 0
    assert replayed.due_at_ms == T0 + 50 and replayed.metadata == (("x", "y"),)
    assert await store.get_spec(owner.id, task_id) == edited
    assert (await store.get_owner(owner.id)).tasks_in_queue == 1
    with pytest.raises(PreconditionFailed):
        await store.replay_task(owner.id, task_id, None, T0 + 60, T0 + 60)
    [attempt] = await store.claim_due([task_id], T0 + 50)
    assert attempt.number == 2 and attempt.retry_count == 0
    await store.record_outcomes([success(task_id, 2, T0 + 60)])
    history = await store.list_attempts(owner.id, task_id)
    assert [(a.number, a.cycle) for a in history] == [(1, 1), (2, 2)]
    assert await store.list_dead_letters(owner.id, DeadLetterFilter(), 10) == []


async def test_replay_many_spaces_them_and_stops_at_the_limit(store: Store) -> None:
    owner = await make_owner(store, limit=2)
    ids = [await dead_letter(store, owner, T0 + n) for n in range(3)]
    replayed = await store.replay_dead_letters(owner.id, ids, T0 + 100, 20)
    assert replayed == [(ids[0], T0 + 100), (ids[1], T0 + 120)]
    assert (await store.get_owner(owner.id)).tasks_in_queue == 2
    assert [t.id for t in await store.list_dead_letters(owner.id, DeadLetterFilter(), 10)] == [
        ids[2]
    ]
    assert await store.replay_dead_letters(owner.id, ids[:2], T0, 0) == []  # not in ERROR now


async def test_delete_dead_letters_only_touches_the_owners_errors(store: Store) -> None:
    owner = await make_owner(store)
    intruder = await make_owner(store, "intruder")
    dead = await dead_letter(store, owner, T0 + 1)
    running = await store.create_task(owner.id, new_task(), T0)
    assert await store.delete_dead_letters(intruder.id, [dead]) == 0
    assert await store.delete_dead_letters(owner.id, [dead, running.id]) == 1
    with pytest.raises(TaskNotFound):
        await store.get_task(owner.id, dead)
    assert (await store.get_task(owner.id, running.id)).state is TaskState.RUNNING


# -- callbacks: tasks created with an outcome ---------------------------------------------


async def test_a_follow_up_is_created_with_the_outcome_that_counts(store: Store) -> None:
    owner = await make_owner(store, limit=1)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    [attempt] = await store.claim_due([task.id], T0)
    callback = TaskSpec(HttpRequest(url=SECRET_URL, method="POST", data_json="{}"), TaskConfig())
    follow_up = FollowUp(new_task_id(T0), callback, T0 + 5)
    outcome = Outcome(status=500, body=b"no")
    failed = Result(task.id, attempt.number, T0 + 5, TaskState.ERROR, 500, b"no", outcome)
    late = dataclasses.replace(
        failed, attempt_number=7, follow_up=FollowUp(new_task_id(T0), callback, T0)
    )
    # a result the fence refuses creates nothing
    assert await store.record_outcomes([late]) == []
    assert await store.record_outcomes([dataclasses.replace(failed, follow_up=follow_up)]) == [
        task.id
    ]
    created = await store.get_task(owner.id, follow_up.task_id)
    assert created.state is TaskState.RUNNING and created.due_at_ms == T0 + 5
    assert await store.get_spec(owner.id, follow_up.task_id) == callback
    assert (await store.get_owner(owner.id)).tasks_in_queue == 1  # it took the freed slot
    assert [t.id for t in await store.list_tasks(owner.id, None, "createdAt", False, 10, 0)] == [
        task.id,
        follow_up.task_id,
    ]
    due = [(d.task_id, d.due_at_ms) for d in await store.due_before(T0 + 10, 10)]
    assert (follow_up.task_id, T0 + 5) in due


# -- reading many tasks at once (the dashboard) ------------------------------------------


def task_to(url: str, due: int = T0 + 1000, labels: tuple[tuple[str, str], ...] = ()) -> NewTask:
    spec = TaskSpec(HttpRequest(url=url, method="GET"), TaskConfig(), labels or None)
    return NewTask(spec, due)


async def test_search_pages_by_keyset_newest_first(store: Store) -> None:
    owner = await make_owner(store)
    other = await make_owner(store, "owner-two")
    ids = [(await store.create_task(owner.id, new_task(), T0 + i)).id for i in range(7)]
    await store.create_task(other.id, new_task(), T0)
    first = await store.search_tasks(owner.id, TaskQuery(limit=3))
    assert [row.task.id for row in first.rows] == ids[6:3:-1]
    assert first.rows[0].url == SECRET_URL and first.rows[0].method == "POST"
    assert first.rows[0].host == "127.0.0.1" and first.next_after == (T0 + 4, ids[4])
    second = await store.search_tasks(owner.id, TaskQuery(limit=3, after=first.next_after))
    third = await store.search_tasks(owner.id, TaskQuery(limit=3, after=second.next_after))
    assert [row.task.id for row in second.rows + third.rows] == ids[3::-1]
    assert third.next_after is None
    oldest = await store.search_tasks(owner.id, TaskQuery(limit=2, newest_first=False))
    assert [row.task.id for row in oldest.rows] == ids[:2]


async def test_search_filters_state_host_time_url_and_label(store: Store) -> None:
    owner = await make_owner(store)
    a = await store.create_task(owner.id, task_to("https://A.example.com/x/alpha"), T0)
    b = await store.create_task(
        owner.id, task_to("https://b.example.com/beta", labels=(("team", "red"),)), T0 + 10
    )
    c = await store.create_task(owner.id, task_to("https://b.example.com/gamma"), T0 + 20)
    await store.pause_task(owner.id, c.id, T0 + 30)

    async def ids(**filters: object) -> list[str]:
        page = await store.search_tasks(owner.id, TaskQuery(**filters))  # type: ignore[arg-type]
        return [row.task.id for row in page.rows]

    assert await ids(state=TaskState.PAUSED) == [c.id]
    assert await ids(host="a.example.com") == [a.id]
    assert await ids(host="b.example.com") == [c.id, b.id]
    assert await ids(created_from_ms=T0 + 10, created_to_ms=T0 + 20) == [b.id]
    assert await ids(url_contains="ALPHA") == [a.id]
    assert await ids(label=("team", "red")) == [b.id]
    assert await ids(label=("team", "blue")) == []
    assert await ids(state=TaskState.SUCCESS) == []


async def test_search_by_sealed_values_stops_at_the_scan_limit(store: Store) -> None:
    owner = await make_owner(store)
    match = await store.create_task(owner.id, task_to("https://x.test/needle"), T0)
    for i in range(5):
        await store.create_task(owner.id, task_to("https://x.test/hay"), T0 + 1 + i)
    page = await store.search_tasks(owner.id, TaskQuery(url_contains="needle", scan_limit=3))
    assert page.rows == () and page.scan_exhausted and page.next_after is not None
    rest = await store.search_tasks(
        owner.id, TaskQuery(url_contains="needle", scan_limit=3, after=page.next_after)
    )
    assert [row.task.id for row in rest.rows] == [match.id] and rest.next_after is None


async def test_search_lists_a_schedules_tasks_with_their_host(store: Store) -> None:
    owner = await make_owner(store)
    schedule = await add_schedule(store, owner.id)
    created = await store.fire_schedule(fire(schedule, T0 + 60_000), T0 + 60_000)
    assert created is not None
    await store.create_task(owner.id, new_task(), T0)
    page = await store.search_tasks(owner.id, TaskQuery(schedule_id=schedule.id))
    assert [(row.task.id, row.schedule_id) for row in page.rows] == [(created[0][0], schedule.id)]
    assert page.rows[0].host == "127.0.0.1"


async def test_overview_counts_states_hours_and_hosts(store: Store) -> None:
    owner = await make_owner(store)
    other = await make_owner(store, "owner-two")
    now = T0 + 10 * 3_600_000
    for url in ("https://busy.test/1", "https://busy.test/2", "https://calm.test/"):
        await store.create_task(owner.id, task_to(url), now)
    done = await store.create_task(owner.id, task_to("https://calm.test/"), now)
    claimed = await store.claim_due([done.id], now + 1000)
    assert len(claimed) == 1
    await store.record_outcomes([success(done.id, 1, now + 1500)])
    await store.create_task(other.id, task_to("https://busy.test/3"), now)
    view = await store.task_overview(owner.id, now + 2000)
    assert view.counts[TaskState.RUNNING] == 3 and view.counts[TaskState.SUCCESS] == 1
    assert view.counts[TaskState.ERROR] == 0
    assert len(view.hourly) == 24 and view.hourly[-1] == (now, 1, 0)
    assert sum(ok + bad for _, ok, bad in view.hourly) == 1
    assert view.busiest_hosts == (("busy.test", 2), ("calm.test", 1))
    everyone = await store.task_overview(None, now + 2000)
    assert everyone.counts[TaskState.RUNNING] == 4
    assert everyone.busiest_hosts[0] == ("busy.test", 3)


# -- alerts -------------------------------------------------------------------------------


def alert_rule(owner: Owner, name: str = "failures", rule_id: str | None = None) -> AlertRule:
    return AlertRule(
        id=rule_id or new_task_id(T0),
        owner_id=owner.id,
        name=name,
        on=AlertEvent.TASK_FAILED,
        scope=Scope(label=("team", "billing")),
        consecutive=2,
        expect=Expectation((200,), "ok", None),
        email_to=None,
        webhook=HttpRequest(url=SECRET_URL, method="POST", headers=(("X-Key", "hunter2"),)),
        created_at_ms=T0,
        updated_at_ms=T0,
    )


async def test_alert_rules_lifecycle(store: Store) -> None:
    owner = await make_owner(store)
    intruder = await make_owner(store, "intruder")
    rule = await store.create_alert_rule(alert_rule(owner))
    assert await store.get_alert_rule(owner.id, rule.id) == rule
    with pytest.raises(Conflict):
        await store.create_alert_rule(alert_rule(owner))
    second = await store.create_alert_rule(alert_rule(owner, "another"))
    assert [r.id for r in await store.list_alert_rules(owner.id)] == [second.id, rule.id]
    with pytest.raises(Conflict):
        await store.update_alert_rule(dataclasses.replace(second, name="failures"))
    changed = dataclasses.replace(rule, consecutive=5, updated_at_ms=T0 + 1)
    assert await store.update_alert_rule(changed) == changed
    assert await store.get_alert_rule(owner.id, rule.id) == changed
    for call in (
        store.get_alert_rule(intruder.id, rule.id),
        store.delete_alert_rule(intruder.id, rule.id),
        store.update_alert_rule(dataclasses.replace(rule, owner_id=intruder.id)),
    ):
        with pytest.raises(NotFound):
            await call
    assert await store.list_alert_rules(intruder.id) == []
    await store.delete_alert_rule(owner.id, rule.id)
    with pytest.raises(NotFound):
        await store.get_alert_rule(owner.id, rule.id)


async def test_incidents_and_deliveries(store: Store) -> None:
    owner = await make_owner(store)
    rule = await store.create_alert_rule(alert_rule(owner))
    assert await store.get_incident(rule.id, "") is None
    incident = Incident(rule.id, "", is_open=True, streak=2, last_error="boom")
    await store.save_incident(incident)
    await store.save_incident(dataclasses.replace(incident, streak=3))
    assert await store.get_incident(rule.id, "") == dataclasses.replace(incident, streak=3)
    assert await store.get_incident(rule.id, "other") is None
    for n, status in enumerate((DeliveryStatus.SENT, DeliveryStatus.SUPPRESSED)):
        await store.add_alert_delivery(
            AlertDelivery(f"D{n}", owner.id, rule.id, "alert", "email", status, "s", T0 + n)
        )
    found = await store.list_alert_deliveries(owner.id, rule.id, 10)
    assert [d.id for d in found] == ["D1", "D0"] and found[0].status is DeliveryStatus.SUPPRESSED
    assert await store.count_alert_deliveries(owner.id, T0) == 1  # suppressed ones do not count
    assert await store.count_alert_deliveries(owner.id, T0 + 1) == 0
    await store.delete_alert_rule(owner.id, rule.id)
    assert await store.list_alert_deliveries(owner.id, None, 10) == []
    assert await store.get_incident(rule.id, "") is None
    await store.save_incident(incident)  # the rule is gone: nothing is kept
    assert await store.get_incident(rule.id, "") is None


async def test_incident_changes_take_turns_across_processes(
    store: Store, make_store: StoreMaker
) -> None:
    owner = await make_owner(store)
    rule = await store.create_alert_rule(alert_rule(owner))

    def bump(current: Incident | None) -> Incident:
        incident = current or Incident(rule.id, "")
        return dataclasses.replace(incident, streak=incident.streak + 1)

    async with another_process(make_store) as other:
        changes = [s.change_incident(rule.id, "", bump) for s in (store, other) for _ in range(5)]
        await asyncio.gather(*changes)
    incident = await store.get_incident(rule.id, "")
    assert incident is not None and incident.streak == 10  # no change lost
    await store.change_incident(rule.id, "", lambda current: None)  # None: left as it is
    assert await store.get_incident(rule.id, "") == incident
    await store.delete_alert_rule(owner.id, rule.id)
    await store.change_incident(rule.id, "", bump)  # the rule is gone: nothing is kept
    assert await store.get_incident(rule.id, "") is None


async def test_incidents_are_listed_with_their_rules_per_owner_or_for_all(store: Store) -> None:
    owner = await make_owner(store)
    other = await make_owner(store, "owner-two")
    late = await store.create_alert_rule(alert_rule(owner, "zz-late"))
    early = await store.create_alert_rule(alert_rule(owner, "aa-early"))
    theirs = await store.create_alert_rule(alert_rule(other))
    assert await store.list_incidents(owner.id) == []
    opened = Incident(late.id, "", is_open=True, streak=3, opened_at_ms=T0, last_error="boom")
    closed = Incident(early.id, "SCHEDULE", streak=1)
    for incident in (opened, closed, Incident(theirs.id, "", is_open=True)):
        await store.save_incident(incident)
    mine = await store.list_incidents(owner.id)
    assert [(rule.name, incident) for rule, incident in mine] == [
        ("aa-early", closed),
        ("zz-late", opened),
    ]
    assert [rule.owner_id for rule, _ in await store.list_incidents(other.id)] == [other.id]
    assert len(await store.list_incidents(None)) == 3
    await store.delete_alert_rule(owner.id, late.id)
    assert [incident for _, incident in await store.list_incidents(owner.id)] == [closed]


async def test_finished_tasks_older_than_the_cut_off_are_deleted(store: Store) -> None:
    owner = await make_owner(store)
    old = await store.create_task(owner.id, new_task(due=T0), T0)
    recent = await store.create_task(owner.id, new_task(due=T0), T0)
    running = await store.create_task(owner.id, new_task(due=T0 + 10**9), T0)
    await store.claim_due([old.id, recent.id], T0)
    await store.record_outcomes([success(old.id, 1, T0 + 100), success(recent.id, 1, T0 + 5000)])
    assert await store.delete_finished_before(T0 + 1000, 10) == 1
    with pytest.raises(TaskNotFound):
        await store.get_task(owner.id, old.id)
    assert (await store.get_task(owner.id, recent.id)).state is TaskState.SUCCESS
    assert (await store.get_task(owner.id, running.id)).state is TaskState.RUNNING
    assert await store.delete_finished_before(T0 + 10_000, 10) == 1
    assert await store.delete_finished_before(T0 + 10**10, 10) == 0  # RUNNING stays
