"""The SQLite store's sealed columns: the list key rotation walks matches the schema, and
attempt details written in the clear by older versions stay readable and get sealed by
rotation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tasks_server.models import HttpRequest, TaskConfig, TaskSpec, TaskState
from tasks_server.sealing import Sealer
from tasks_server.store.migrate import migrate
from tasks_server.store.sqlite import SqliteStore
from tasks_server.store.sqlite.base import SPEC
from tasks_server.store.sqlite.sealed import NOT_SEALED, SEALED
from tests.store.test_contract import T0, make_owner, new_task


def test_every_blob_column_is_sealed_or_known_not_to_be(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "schema.db")
    migrate(conn)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    blobs = {
        (table, column[1])
        for table in tables
        for column in conn.execute(f"PRAGMA table_info({table})")
        if column[2].upper() == "BLOB"
    }
    sealed = {(s.table, column) for s in SEALED for column in s.columns}
    assert blobs == sealed | NOT_SEALED


async def test_clear_attempt_details_of_older_versions_are_read_then_sealed(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "tasks.db", Sealer("first-key-0123456789"))
    await store.open()
    owner = await make_owner(store)
    task = await store.create_task(owner.id, new_task(due=T0), T0)
    await store.claim_due([task.id], T0)
    await store.close()
    conn = sqlite3.connect(tmp_path / "tasks.db")
    with conn:  # what an older version wrote: error and headers in the clear
        conn.execute(
            "UPDATE attempt SET error = 'old-planted-error', headers = ? WHERE task_id = ?",
            ('[["X-Old", "old-planted-header"]]', task.id),
        )
    conn.close()

    store = SqliteStore(tmp_path / "tasks.db", Sealer("first-key-0123456789"))
    await store.open()
    [record] = await store.list_attempts(owner.id, task.id)
    assert (record.error, record.headers) == (
        "old-planted-error",
        (("X-Old", "old-planted-header"),),
    )
    await store.reseal(Sealer("second-key-0123456789"))
    [again] = await store.list_attempts(owner.id, task.id)
    assert (again.error, again.headers) == (record.error, record.headers)
    assert (await store.get_task(owner.id, task.id)).state is TaskState.RUNNING
    await store.close()
    raw = (tmp_path / "tasks.db").read_bytes()
    wal = tmp_path / "tasks.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"old-planted" not in raw


def test_a_spec_is_written_as_its_full_json_whatever_the_configuration_memory(
    tmp_path: Path,
) -> None:
    """The spec's JSON reuses a remembered configuration part; it is byte for byte the
    adapter's, and a new configuration (or one with more fields) is not taken for it."""
    store = SqliteStore(tmp_path / "tasks.db", Sealer("a-key-0123456789"))
    shared = TaskConfig(execution_delay_ms=5000, retry=3)
    request = HttpRequest("https://example.com/hook", "POST", data_json='{"n":1}')
    specs = [
        TaskSpec(request, shared),
        TaskSpec(HttpRequest("https://example.com/other", "GET"), shared),
        TaskSpec(request, TaskConfig()),
        TaskSpec(request, TaskConfig(priority=7, timeout_ms=1234)),
        TaskSpec(request, shared, metadata=(("a", "b"),)),
        TaskSpec(request, shared, on_success=HttpRequest("https://example.com/done", "POST")),
    ]
    for spec in [*specs, *specs]:  # the second round finds the remembered parts
        written = store._spec_json(spec)
        assert written == SPEC.dump_json(spec, exclude_defaults=True)
        assert SPEC.validate_json(written) == spec
