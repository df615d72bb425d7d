"""SQLite specifics of the Store contract's passing faults: a lock another process holds
past the busy timeout, and a full file (``max_page_count``)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tasks_server.errors import StorageUnavailable
from tasks_server.sealing import Sealer, key_digest
from tasks_server.store.sqlite import SqliteStore

T0 = 1_767_225_600_000


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A SQLite store with a short busy timeout (not the shared ``store`` fixture: these
    tests need SQLite's own knobs)."""
    opened = SqliteStore(tmp_path / "faults.db", Sealer("test-key"), busy_timeout_ms=50)
    await opened.open()
    yield opened
    await opened.close()


async def test_a_held_lock_refuses_writes_for_now_and_they_work_once_it_is_released(
    sqlite_store: SqliteStore,
) -> None:
    other = sqlite3.connect(sqlite_store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageUnavailable, match="locked"):
            await sqlite_store.create_owner("blocked", key_digest("k" * 64), T0, 10)
        problem = sqlite_store.write_problem()
        assert problem is not None and "SQLITE_BUSY" in problem
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await sqlite_store.list_owners() == []  # the refused write left nothing behind
    await sqlite_store.create_owner("after", key_digest("k" * 64), T0, 10)
    assert sqlite_store.write_problem() is None


async def test_a_full_file_refuses_writes_whole_and_recovers_when_space_returns(
    sqlite_store: SqliteStore,
) -> None:
    await sqlite_store.set_page_limit(await sqlite_store.page_count())
    names = [f"owner-{n:04d}-{'x' * 200}" for n in range(400)]
    with pytest.raises(StorageUnavailable, match="full"):
        for name in names:
            await sqlite_store.create_owner(name, key_digest(name), T0, 10)
    written = {owner.name for owner in await sqlite_store.list_owners()}
    assert written == set(names[: len(written)])  # a prefix: nothing half-written
    await sqlite_store.set_page_limit(1 << 30)
    await sqlite_store.create_owner("after", key_digest("k" * 64), T0, 10)
    assert sqlite_store.write_problem() is None
