"""The SQLite writer's group commit: concurrent plain registrations of several owners go
in one multi-row INSERT, each answered on its own (queue limits counted across the group);
a group that fails leaves nothing behind and the rest of its batch commits."""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from tasks_server.errors import QueueLimitReached
from tasks_server.models import (
    AwsSigv4,
    Cookie,
    Credentials,
    FormField,
    HttpRequest,
    NewTask,
    TaskConfig,
    TaskSpec,
)
from tasks_server.sealing import Sealer, key_digest
from tasks_server.store.sqlite import SqliteStore
from tasks_server.store.sqlite.base import request_json
from tasks_server.store.sqlite.registrations import insert_owner_rows, insert_rows
from tasks_server.store.sqlite.writer import Outcome, Together, Writer

T0 = 1_767_225_600_000


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "writer.db", Sealer("test-key"))
    await opened.open()
    yield opened
    await opened.close()


def plain_task(n: int) -> NewTask:
    request = HttpRequest(url=f"https://example.com/{n}", method="POST")
    return NewTask(TaskSpec(request, TaskConfig()), T0 + 60_000)


async def test_concurrent_registrations_share_commits_and_each_owner_limit_holds(
    sqlite_store: SqliteStore,
) -> None:
    small = await sqlite_store.create_owner("small-owner", key_digest("a" * 64), T0, 5)
    large = await sqlite_store.create_owner("large-owner", key_digest("b" * 64), T0, 0)
    commits = sqlite_store.commits
    calls = [
        sqlite_store.create_task(owner.id, plain_task(n), T0)
        for n in range(40)
        for owner in (small, large)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 35 and all(isinstance(r, QueueLimitReached) for r in refused)
    created = [r for r in results if not isinstance(r, BaseException)]
    assert len({task.id for task in created}) == 45
    assert sqlite_store.commits - commits == 1  # queued together: one transaction
    owners = {owner.id: owner for owner in await sqlite_store.list_owners()}
    assert (owners[small.id].tasks_in_queue, owners[large.id].tasks_in_queue) == (5, 40)
    for task in created:
        stored = await sqlite_store.get_task(task.owner_id, task.id)
        assert stored.due_at_ms == T0 + 60_000


def test_insert_rows_takes_any_count(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "rows.db", isolation_level=None)
    conn.execute(
        "CREATE TABLE task (id, owner_id, state, created_at, estimate_execution_at, "
        "due_at, next_at, metadata, spec, priority, dedup_key, dedup_until, flow_key, "
        "host)"
    )
    for count in (0, 1, 3, 511, 1000, 1300):
        conn.execute("DELETE FROM task")
        insert_rows(
            conn,
            [(str(n), "o", 0, 0, 0, 0, None, b"", 0, None, None, None, "h") for n in range(count)],
        )
        assert conn.execute("SELECT count(DISTINCT id) FROM task").fetchone()[0] == count


async def test_a_failing_group_leaves_nothing_and_its_batch_commits(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "group.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE item (name TEXT PRIMARY KEY)")
    writer = Writer(conn)

    def insert_all(conn: sqlite3.Connection, names: list[Any]) -> list[Outcome]:
        conn.executemany("INSERT INTO item VALUES (?)", [(name,) for name in names])
        if "bad" in names:
            raise RuntimeError("a bug")
        return [(True, name) for name in names]

    def insert_one(name: str) -> Any:
        return lambda conn: conn.execute("INSERT INTO item VALUES (?)", (name,)).rowcount

    writer.start()
    try:
        # queued before the writer runs, so they make one batch: op, group, op, group
        results = await asyncio.gather(
            writer.submit(insert_one("first")),
            writer.submit(Together(insert_all, "a")),
            writer.submit(Together(insert_all, "bad")),
            writer.submit(insert_one("middle")),
            writer.submit(Together(insert_all, "b")),
            writer.submit(Together(insert_all, "c")),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert results[0] == 1 and results[3] == 1 and results[4:] == ["b", "c"]
    assert all(isinstance(r, RuntimeError) for r in results[1:3])
    conn = sqlite3.connect(tmp_path / "group.db")
    names = {row[0] for row in conn.execute("SELECT name FROM item")}
    assert names == {"first", "middle", "b", "c"}
    assert writer.commits == 1  # the one batch (close() commits nothing)


def test_owner_rows_write_the_same_rows_as_insert_rows(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "rows.db", isolation_level=None)
    columns = (
        "id, owner_id, state, created_at, estimate_execution_at, due_at, next_at, "
        "metadata, spec, priority, dedup_key, dedup_until, flow_key, host"
    )
    for table in ("task", "expected"):
        conn.execute(f"CREATE TABLE {table} ({columns})")
    for count in (1, 3, 511, 1000, 1300):
        rows = [
            (
                f"{n:04}",
                "o",
                7,
                100 + n,
                100 + n,
                100 + n,
                None if n % 2 else b"m",
                b"s",
                n % 5,
                None,
                None,
                None,
                f"h{n % 3}",
            )
            for n in range(count)
        ]
        insert_rows(conn, rows)
        conn.execute(f"INSERT INTO expected SELECT {columns} FROM task")
        conn.execute("DELETE FROM task")
        insert_owner_rows(conn, "o", 7, rows)
        ordered = f"SELECT {columns} FROM {{}} ORDER BY rowid"
        assert conn.execute(ordered.format("task")).fetchall() == (
            conn.execute(ordered.format("expected")).fetchall()
        )
        assert conn.execute("SELECT count(*) FROM task").fetchone()[0] == count
        conn.execute("DELETE FROM task")
        conn.execute("DELETE FROM expected")


REQUESTS = [
    HttpRequest("https://example.com/hook", "GET"),
    HttpRequest('https://example.com/ü?q="x"', "POST", data_text="line\nnext \u2028 é \x01"),
    HttpRequest("https://example.com/", "PUT", data_json='{"n":1,"s":"\\u00e9"}'),
    HttpRequest("https://example.com/", "POST", data_text="x", transport="curl"),
    HttpRequest("https://example.com/", "GET", query=(("a", "1"),)),
    HttpRequest("https://example.com/", "GET", headers=(("X-A", "1"),)),
    HttpRequest("https://example.com/", "POST", form=(FormField("f", "v"),)),
    HttpRequest("https://example.com/", "GET", cookies=(Cookie("c", "v"),)),
    HttpRequest("https://example.com/", "GET", cookie_file="# Netscape"),
    HttpRequest("https://example.com/", "GET", auth_basic=Credentials("u", "p")),
    HttpRequest("https://example.com/", "GET", auth_digest=Credentials("u", "p")),
    HttpRequest("https://example.com/", "GET", auth_ntlm=Credentials("u", "p")),
    HttpRequest(
        "https://example.com/", "GET", auth_aws_sigv4=AwsSigv4("aws", "amz", "r", "s", "k", "z")
    ),
]


def test_a_request_is_stored_as_pydantic_writes_it() -> None:
    adapter = TypeAdapter(HttpRequest)
    for request in REQUESTS:
        assert request_json(request) == adapter.dump_json(request, exclude_defaults=True)
        assert adapter.validate_json(request_json(request)) == request


async def test_a_batch_that_fails_outside_the_database_fails_its_callers_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    conn = sqlite3.connect(tmp_path / "defect.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE item (name TEXT PRIMARY KEY)")
    writer = Writer(conn)

    def ends_the_transaction_and_breaks(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")  # the batch cannot go on: a defect, not a database fault
        raise RuntimeError("a bug")

    writer.start()
    try:
        with pytest.raises(RuntimeError, match="a bug"):
            await writer.submit(ends_the_transaction_and_breaks)
        inserted = await writer.submit(
            lambda conn: conn.execute("INSERT INTO item VALUES ('after')").rowcount
        )
    finally:
        await writer.close()
    assert inserted == 1
    conn = sqlite3.connect(tmp_path / "defect.db")
    assert [row[0] for row in conn.execute("SELECT name FROM item")] == ["after"]


async def test_a_writer_sharing_the_file_holds_its_turn_through_each_batch(tmp_path: Path) -> None:
    """With API_PROCESSES > 1 each process's writer takes the turn lock around a batch:
    another holder of the lock cannot take it while a batch runs, and can once it ends."""
    conn = sqlite3.connect(tmp_path / "turns.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE item (name TEXT PRIMARY KEY)")
    turns = tmp_path / "turns.db.write.lock"
    writer = Writer(conn, turns=turns)

    def blocked_elsewhere(conn: sqlite3.Connection) -> bool:
        with (tmp_path / "turns.db.write.lock").open("ab") as elsewhere:
            try:
                fcntl.flock(elsewhere, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    writer.start()
    try:
        assert await writer.submit(blocked_elsewhere) is True
    finally:
        await writer.close()
    with turns.open("ab") as after:
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free between batches
