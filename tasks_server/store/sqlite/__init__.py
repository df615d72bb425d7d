"""The SQLite store: ``SqliteStore``, and the file-level helpers that the CLI and backups
use on the same database file (opening a connection with the store's pragmas, snapshots
and their checks, the lock that keeps a restore away from a serving database). Code
outside this package touches the database file only through these names."""

from __future__ import annotations

from .connection import check_database, connect, take_snapshot
from .lock import DatabaseLock, exclusive_lock
from .store import SqliteStore

__all__ = [
    "DatabaseLock",
    "SqliteStore",
    "check_database",
    "connect",
    "exclusive_lock",
    "take_snapshot",
]
