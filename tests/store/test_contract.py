"""The Store contract, run against every implementation (SQLite for now)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tasks_server.errors import (
    Conflict,
    OwnerNotFound,
    PreconditionFailed,
    QueueLimitReached,
    TaskNotFound,
)
from tasks_server.models import (
    Credentials,
    HttpRequest,
    NewTask,
    Outcome,
    Owner,
    Result,
    TaskConfig,
    TaskSpec,
    TaskState,
)
from tasks_server.sealing import Sealer, key_digest
from tasks_server.store import Store
from tasks_server.store.sqlite import SqliteStore
from tasks_server.store.sqlite.owners import new_owner_id
from tasks_server.store.sqlite.tasks import new_task_id

T0 = 1_767_225_600_000
SECRET_URL = "http://127.0.0.1:9/very-secret-path"


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    implementation = SqliteStore(tmp_path / "contract.db", Sealer("test-key"))
    await implementation.open()
    yield implementation
    await implementation.close()


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
    assert all(len(i) == 24 and i.isalnum() and i.upper() == i for i in task_ids)
    owner_id = new_owner_id(T0)
    assert len(owner_id) == 26 and owner_id < new_owner_id(T0 + 1)


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


async def test_create_and_read_task(store: Store) -> None:
    owner = await make_owner(store)
    created = await store.create_task(owner.id, new_task(), T0)
    fetched = await store.get_task(owner.id, created.id)
    assert fetched.state is TaskState.RUNNING
    assert fetched.estimate_execution_at_ms == T0 + 1000 and fetched.created_at_ms == T0
    assert fetched.metadata == (("k", "v"),) and fetched.response is None
    assert (await store.get_spec(owner.id, created.id)) == new_task().spec
    assert (await store.get_owner(owner.id)).tasks_in_queue == 1


async def test_secrets_are_encrypted_at_rest(store: Store, tmp_path: Path) -> None:
    owner = await make_owner(store)
    await store.create_task(owner.id, new_task(), T0)
    raw = (tmp_path / "contract.db").read_bytes() + (tmp_path / "contract.db-wal").read_bytes()
    assert b"very-secret-path" not in raw and b"hunter2-password" not in raw


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
    assert await store.due_before(T0 + 10**9, 10) == [(task.id, T0 + 66_000)]
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
    assert await store.due_before(T0 + 10_000, 10) == [(task.id, T0 + 1005)]
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
    assert await store.due_before(T0 + 11, 10) == [(task.id, T0 + 10)]
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
    assert await store.due_before(T0 + 10**9, 10) == [(running.id, T0), (future.id, T0 + 90_000)]
    [interrupted] = await store.list_attempts(owner.id, running.id)
    assert interrupted.error is not None and "interrupted" in interrupted.error
    [again] = await store.claim_due([running.id], T0 + 30_000)
    assert again.number == 2


async def test_wrong_cipher_key_cannot_read_specs(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    first = SqliteStore(path, Sealer("one"))
    await first.open()
    owner = await make_owner(first)
    task = await first.create_task(owner.id, new_task(), T0)
    await first.close()
    second = SqliteStore(path, Sealer("two"))
    await second.open()
    try:
        with pytest.raises(ValueError, match="CIPHER_KEY"):
            await second.get_spec(owner.id, task.id)
    finally:
        await second.close()


async def test_backup_is_a_consistent_copy(store: Store, tmp_path: Path) -> None:
    owner = await make_owner(store)
    await store.create_task(owner.id, new_task(), T0)
    target = tmp_path / "copy.db"
    await store.backup_to(target)
    conn = sqlite3.connect(target)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM task").fetchone() == (1,)
    finally:
        conn.close()


async def test_write_problem_is_none_while_writes_succeed(store: Store) -> None:
    await make_owner(store)
    assert store.write_problem() is None
