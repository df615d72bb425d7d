from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tasks_server.store.migrate import latest_version, migrate, migrations
from tasks_server.store.sqlite import connect


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [version for version, _, _ in migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_empty_database_reaches_latest(tmp_path: Path) -> None:
    conn = connect(tmp_path / "m.db", "FULL")
    try:
        assert migrate(conn) == latest_version()
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"owner", "task", "attempt"} <= tables
        assert migrate(conn) == 0
    finally:
        conn.close()


@pytest.mark.parametrize("start", range(1, latest_version() + 1))
def test_each_version_with_rows_migrates_forward(tmp_path: Path, start: int) -> None:
    conn = connect(tmp_path / "m.db", "FULL")
    try:
        for version, _, sql in migrations():
            if version > start:
                break
            conn.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
        conn.execute(
            "INSERT INTO owner (id, name, key_digest, created_at, tasks_in_queue_limit) "
            "VALUES ('O', 'owner-one', x'00', 1, 1000)"
        )
        conn.execute(
            "INSERT INTO task (id, owner_id, state, created_at, estimate_execution_at, due_at, "
            "spec) VALUES ('T', 'O', 'RUNNING', 1, 2, 2, x'00')"
        )
        migrate(conn)
        assert conn.execute("SELECT tasks_in_queue FROM owner").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM task").fetchone() == (1,)
    finally:
        conn.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db")
    conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        migrate(conn)
    conn.close()
