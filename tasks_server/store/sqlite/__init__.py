"""The SQLite store: ``SqliteStore`` and the connection helpers the CLI and backups use."""

from __future__ import annotations

from .connection import connect
from .store import SqliteStore

__all__ = ["SqliteStore", "connect"]
