"""Bounded history: response headers cut to a byte cap, and the attempts a task keeps."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tasks_server.engine.history import DROPPED_HEADER, cap_headers
from tasks_server.engine.retention import DAY_MS, RetentionJob
from tasks_server.models import Outcome, Result, TaskState
from tasks_server.sealing import Sealer
from tasks_server.store.sqlite import SqliteStore
from tests.store.test_contract import T0, make_owner, new_task
from tests.support.clock import FakeClock


def test_headers_over_the_cap_are_dropped_and_counted() -> None:
    headers = tuple((f"X-H{i}", "v" * 100) for i in range(50))  # ~5 KB
    capped = cap_headers(Outcome(status=200, headers=headers), 1000)
    assert capped.headers[:-1] == headers[: len(capped.headers) - 1]
    assert sum(len(n) + len(v) for n, v in capped.headers[:-1]) <= 1000
    assert capped.headers[-1] == (DROPPED_HEADER, str(50 - (len(capped.headers) - 1)))
    small = Outcome(status=200, headers=(("A", "b"),))
    assert cap_headers(small, 1000) is small
    assert cap_headers(Outcome(status=200, headers=headers), 0).headers == headers


async def test_a_task_keeps_its_first_and_last_attempts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "tasks.db", Sealer("history-key-0123456789"), keep_attempts=3)
    await store.open()
    try:
        owner = await make_owner(store)
        task = await store.create_task(owner.id, new_task(due=T0, retry=40), T0)
        for number in range(1, 41):
            now = T0 + number * 10
            [attempt] = await store.claim_due([task.id], now)
            assert attempt.number == number
            outcome = Outcome(status=503, headers=(("X-N", str(number)),), error="boom")
            retry = Result(task.id, number, now + 1, TaskState.RUNNING, 503, None, outcome, now + 5)
            await store.record_outcomes([retry])
        kept = await store.list_attempts(owner.id, task.id)
        assert [a.number for a in kept] == [1, 38, 39, 40]
        assert kept[-1].headers == (("X-N", "40"),)
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "tasks.db")
    try:
        query = "SELECT attempts_pruned FROM task WHERE id = ?"
        assert conn.execute(query, (task.id,)).fetchone() == (36,)
    finally:
        conn.close()


async def test_retention_deletes_old_finished_tasks_in_batches(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "tasks.db", Sealer("retention-key-0123456789"))
    await store.open()
    try:
        owner = await make_owner(store)
        task = await store.create_task(owner.id, new_task(due=T0), T0)
        await store.claim_due([task.id], T0)
        outcome = Outcome(status=200)
        await store.record_outcomes(
            [Result(task.id, 1, T0 + 10, TaskState.SUCCESS, 200, None, outcome)]
        )
        clock = FakeClock(T0 + 2 * DAY_MS)
        assert await RetentionJob(store, clock, days=3).run_once() == 0
        clock.advance(1.5 * DAY_MS / 1000)
        assert await RetentionJob(store, clock, days=3).run_once() == 1
        assert await store.list_tasks(owner.id, None, "createdAt", False, 10, 0) == []
    finally:
        await store.close()
