"""What only a shared PostgreSQL database has: several stores (nodes) on one database.

Claims never overlap, an outcome is fenced by the lease owner, wake-ups reach the other
nodes, one node leads the schedules and another takes over when its session ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from tasks_server.errors import StorageUnavailable
from tasks_server.models import FlowControl, FlowSetting, Outcome, Result, TaskState
from tasks_server.sealing import Sealer
from tasks_server.store.postgres import PostgresStore
from tasks_server.store.postgres.migrate import migrate, migrations
from tests.store.test_contract import T0, make_owner, new_task, success
from tests.support.postgres import stored_values
from tests.support.waiting import wait_until

LEASE_MS = 5_000
NodeFactory = Callable[[], Awaitable[PostgresStore]]


@pytest.fixture
async def node(database_url: str) -> AsyncIterator[NodeFactory]:
    """Open stores on one database, as several nodes would; all are closed at the end."""
    opened: list[PostgresStore] = []

    async def open_node() -> PostgresStore:
        store = PostgresStore(database_url, Sealer("test-key"), lease_ms=LEASE_MS, pool_size=4)
        await store.open()
        opened.append(store)
        return store

    yield open_node
    for store in opened:
        await store.close()


async def test_nodes_starting_together_migrate_once(database_url: str) -> None:
    stores = [PostgresStore(database_url, Sealer("k")) for _ in range(3)]
    await asyncio.gather(*(store.open() for store in stores))
    for store in stores:
        await store.close()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        sql = "SELECT version FROM schema_version ORDER BY version"
        rows = await (await conn.execute(sql)).fetchall()
        # every migration applied exactly once, though three nodes started at once
        assert rows == [(version,) for version, _, _ in migrations()]
        assert await migrate(conn) == 0


async def test_concurrent_claims_take_disjoint_tasks(node: NodeFactory) -> None:
    nodes = [await node() for _ in range(3)]
    owner = await make_owner(nodes[0], limit=0)
    ids = [(await nodes[0].create_task(owner.id, new_task(due=T0), T0)).id for _ in range(300)]
    claims = await asyncio.gather(*(n.claim_due(ids, T0) for n in nodes for _ in range(2)))
    claimed = [attempt.task_id for batch in claims for attempt in batch]
    assert sorted(claimed) == sorted(ids)  # each task exactly once, none lost


async def test_an_outcome_counts_only_under_the_current_lease(node: NodeFactory) -> None:
    first, second = await node(), await node()
    owner = await make_owner(first)
    task = await first.create_task(owner.id, new_task(due=T0), T0)
    [attempt] = await first.claim_due([task.id], T0)
    assert await second.record_outcomes([success(task.id, 1, T0 + 1)]) == []  # not its lease
    assert await second.requeue_expired(T0 + LEASE_MS + 1) == [(task.id, T0)]
    [again] = await second.claim_due([task.id], T0 + LEASE_MS + 1)
    assert again.number == attempt.number + 1
    late = success(task.id, attempt.number, T0 + LEASE_MS + 2)
    assert await first.record_outcomes([late]) == []  # the first node lost its lease
    assert await first.record_outcomes([success(task.id, again.number, T0)]) == []
    assert await second.record_outcomes([success(task.id, again.number, T0 + 9)]) == [task.id]
    history = await second.list_attempts(owner.id, task.id)
    assert [(r.number, r.status_code) for r in history] == [(1, 0), (2, 200)]


async def test_renewals_do_not_wait_for_a_busy_pool(node: NodeFactory) -> None:
    store = await node()
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([task.id], T0)
    pool = store._pool
    assert pool is not None
    async with pool.connection(), pool.connection(), pool.connection(), pool.connection():
        assert pool.get_stats()["pool_available"] == 0  # claims and outcomes would wait
        await asyncio.wait_for(store.renew_leases(T0 + 1000, [task.id]), timeout=10)
    async with await psycopg.AsyncConnection.connect(store.url) as conn:
        cur = await conn.execute("SELECT lease_until FROM task WHERE id = %s", (task.id,))
        assert await cur.fetchone() == (T0 + 1000 + LEASE_MS,)


async def test_new_tasks_wake_the_other_nodes_for_a_backup_claim(node: NodeFactory) -> None:
    """The other nodes hear of a task a node registered and arm it for a claim after its
    due time, the claim lookahead (250 ms) plus a margin (250 ms) rounded up to a 250 ms
    grid: the registering node, which armed it at its due time, claims it first."""
    writer, listener = await node(), await node()
    heard: list[tuple[str, int]] = []
    own: list[tuple[str, int]] = []
    tasks = [
        asyncio.create_task(listener.listen(lambda i, d: heard.append((i, d)), lambda _: None)),
        asyncio.create_task(writer.listen(lambda i, d: own.append((i, d)), lambda _: None)),
    ]
    try:
        owner = await make_owner(writer)
        created: list[tuple[str, int]] = []

        async def listening() -> bool:
            # LISTEN starts asynchronously: register until the listener hears one
            task = await writer.create_task(owner.id, new_task(due=T0 + 5), T0)
            created.append((task.id, T0 + 750))
            await asyncio.sleep(0.05)
            return bool(heard)

        await wait_until(listening, timeout=10)
        far = await writer.create_task(owner.id, new_task(due=T0 + 10**8), T0)
        near = await writer.create_task(owner.id, new_task(due=T0 + 7), T0)
        later = await writer.create_task(owner.id, new_task(due=T0 + 1001), T0)
        await wait_until(lambda: (later.id, T0 + 1750) in heard, timeout=5)
        assert (near.id, T0 + 750) in heard
        assert far.id not in {task_id for task_id, _ in heard}  # left to refills
        assert set(heard) <= {*created, (near.id, T0 + 750), (later.id, T0 + 1750)}
        assert own == []  # a node hears its own changes directly, not through the database
        # a refill arms them at the same times there, and at their due time on the writer
        refilled = {d.task_id: d.due_at_ms for d in await listener.due_before(T0 + 60_000, 99)}
        assert (refilled[near.id], refilled[later.id]) == (T0 + 750, T0 + 1750)
        refilled = {d.task_id: d.due_at_ms for d in await writer.due_before(T0 + 60_000, 99)}
        assert (refilled[near.id], refilled[later.id]) == (T0 + 7, T0 + 1001)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_refill_gives_each_task_no_node_told_of_a_first_node(node: NodeFactory) -> None:
    """Tasks no node told the others of (due beyond the wake-up horizon when registered)
    are armed at their due time by one node, the same whichever node refills, and for a
    backup claim by the others."""
    first, second = await node(), await node()
    owner = await make_owner(first)
    due = T0 + 10**8 + 7
    ids = [(await first.create_task(owner.id, new_task(due=due), T0)).id for _ in range(40)]
    armed = [
        {d.task_id: d.due_at_ms for d in await store.due_before(due + 60_000, 99)}
        for store in (first, second)
    ]
    for task_id in ids:
        assert sorted((armed[0][task_id], armed[1][task_id])) == [due, T0 + 10**8 + 750]
    assert 0 < sum(armed[0][task_id] == due for task_id in ids) < len(ids)  # shared out
    await second.close()  # gone (once its sessions have ended): its tasks are the first's

    async def all_first() -> bool:
        armed_alone = {d.task_id: d.due_at_ms for d in await first.due_before(due + 60_000, 99)}
        return all(armed_alone[task_id] == due for task_id in ids)

    await wait_until(all_first, timeout=10)


async def test_one_leader_and_a_takeover_when_its_session_ends(node: NodeFactory) -> None:
    first, second, third = await node(), await node(), await node()
    assert await first.lead_schedules()
    assert not await second.lead_schedules() and not await third.lead_schedules()
    assert await first.lead_schedules()
    await first.close()  # its session ends, and with it the advisory lock
    await wait_until(second.lead_schedules, timeout=5)
    assert not await third.lead_schedules()


async def test_clear_attempt_details_of_older_versions_are_read_then_sealed(
    node: NodeFactory,
) -> None:
    store = await node()
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([task.id], T0)
    async with await psycopg.AsyncConnection.connect(store.url) as conn:
        await conn.execute(  # what an older version wrote: error and headers in the clear
            "UPDATE attempt SET error = 'old-planted-error', headers = %s WHERE task_id = %s",
            ('[["X-Old", "old-planted-header"]]', task.id),
        )
    [record] = await store.list_attempts(owner.id, task.id)
    assert (record.error, record.headers) == (
        "old-planted-error",
        (("X-Old", "old-planted-header"),),
    )
    await store.reseal(Sealer("second-key-0123456789"))
    [again] = await store.list_attempts(owner.id, task.id)
    assert (again.error, again.headers) == (record.error, record.headers)
    assert b"old-planted" not in await stored_values(store.url)


async def test_pruned_attempts_are_counted_on_the_task(database_url: str) -> None:
    store = PostgresStore(database_url, Sealer("test-key"), lease_ms=LEASE_MS, keep_attempts=2)
    await store.open()
    try:
        owner = await make_owner(store)
        task = await store.create_task(owner.id, new_task(due=T0, retry=10), T0)
        for number in range(1, 7):
            await store.claim_due([task.id], T0 + number)
            failed = Outcome(status=503)
            retry = Result(task.id, number, T0 + number, TaskState.RUNNING, 503, None, failed, T0)
            await store.record_outcomes([retry])
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cur = await conn.execute("SELECT attempts_pruned FROM task WHERE id = %s", (task.id,))
            assert await cur.fetchone() == (3,)  # 2, 3 and 4; 1, 5 and 6 are kept
    finally:
        await store.close()


async def test_a_keys_shared_bucket_starts_full_when_its_rate_changes(node: NodeFactory) -> None:
    """The key's bucket lives in its row: a new rate (by a registration naming the key,
    or saved through the API) starts with its own full burst, as a node's own bucket does
    (engine/limits.py); other changes leave what was spent spent."""
    store = await node()
    owner = await make_owner(store, limit=0)

    async def register(count: int, flow: FlowControl) -> list[str]:
        tasks = [await store.create_task(owner.id, new_task(T0, flow_control=flow), T0)]
        tasks += [
            await store.create_task(owner.id, new_task(T0, flow_control=flow), T0)
            for _ in range(count - 1)
        ]
        return [task.id for task in tasks]

    two = FlowControl("shared", rate=2)
    waiting = await register(4, two)
    assert len(await store.claim_due(waiting, T0)) == 2  # a burst of 2, then empty
    fewer_calls = FlowControl("shared", rate=2, parallelism=50)
    waiting += await register(1, fewer_calls)  # the same rate: nothing earned
    assert await store.claim_due(waiting, T0) == []

    three = FlowControl("shared", rate=3)
    waiting += await register(1, three)  # a new rate: a full burst of 3
    assert len(await store.claim_due(waiting, T0)) == 3
    waiting += await register(3, three)
    assert await store.claim_due(waiting, T0) == []

    faster = FlowSetting(FlowControl("shared", rate=5))
    await store.save_flow_control(owner.id, faster, T0)  # the API's PATCH, the same way
    assert len(await store.claim_due(waiting, T0)) == 4  # all that was left


async def test_a_transaction_whose_session_ends_before_commit_runs_again_once(
    node: NodeFactory,
) -> None:
    """The server ends a session left idle in a transaction (a stalled node): nothing of
    that transaction was committed, so it runs again, once, on a new connection."""
    store = await node()
    owner = await make_owner(store)
    runs = 0

    async def op(cur: Any) -> None:
        nonlocal runs
        runs += 1
        await cur.execute("UPDATE owner SET name = name || '+' WHERE id = %s", (owner.id,))
        if runs <= ends:
            await cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    ends = 1
    await store._tx(op)
    assert runs == 2 and (await store.get_owner(owner.id)).name == "owner-one+"

    runs, ends = 0, 2  # lost again: the caller hears of it, and nothing was written
    with pytest.raises(StorageUnavailable):
        await store._tx(op)
    assert runs == 2 and (await store.get_owner(owner.id)).name == "owner-one+"
