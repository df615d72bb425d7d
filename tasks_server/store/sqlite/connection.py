"""Opening SQLite connections with the store's pragmas, and whole-file copies of a
database (snapshots) and their checks: the only code besides the store's operations
that opens the database file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import LiteralString

from ...errors import BackupError
from ..migrate import latest_version

DEFAULT_BUSY_TIMEOUT_MS = 30_000  # SQLITE_BUSY_TIMEOUT_MS


def connect(
    path: Path, synchronous: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """The one place where connections are opened and their pragmas set."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    configure(conn, synchronous, busy_timeout_ms)
    return conn


def configure(
    conn: sqlite3.Connection, synchronous: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {_SYNC[synchronous]}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA temp_store = MEMORY")


_SYNC: dict[str, LiteralString] = {"FULL": "FULL", "NORMAL": "NORMAL", "EXTRA": "EXTRA"}


def take_snapshot(source: Path, dest: Path) -> None:
    """Copy the database at ``source`` into the new file ``dest`` as of one instant, while
    other connections keep writing.

    The whole copy is one backup step, hence one read transaction: it holds every
    transaction committed before it began and, in WAL mode, writers carry on beside it. (A
    copy in several steps restarts whenever another connection writes, so on a busy
    database it might never finish.) The copy is switched to rollback-journal mode, so it
    is one self-contained file. Raises BackupError when ``source`` is not there.
    """
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    # mode=rw: never create an empty database where a real one was expected
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def check_database(path: Path) -> None:
    """Raise BackupError unless ``path`` opens, passes ``PRAGMA integrity_check`` and has a
    tasks-server schema this version can run (1 ≤ user_version ≤ the latest migration)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a readable SQLite database: {exc}") from exc
    finally:
        conn.close()
    if problems != ["ok"]:
        raise BackupError(f"{path} fails the integrity check: {'; '.join(problems[:3])}")
    if not 1 <= version <= latest_version():
        raise BackupError(f"{path} is not a tasks-server database this version can open")
