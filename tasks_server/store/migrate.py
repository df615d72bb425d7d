"""Apply the numbered migrations in ``migrations/`` in order, tracked by user_version."""

from __future__ import annotations

import logging
import re
import sqlite3
from importlib import resources

logger = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{4})_\w+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL text) of every migration, ascending."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def latest_version() -> int:
    return migrations()[-1][0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version; each step commits on its own.

    Returns the number of migrations applied. A database newer than this code is refused.
    """
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > latest_version():
        raise RuntimeError(f"database schema {current} is newer than this server")
    applied = 0
    for version, name, sql in migrations():
        if version <= current:
            continue
        # executescript commits first; the BEGIN makes the step all-or-nothing
        conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
        logger.info("applied migration %s", name)
        applied += 1
    return applied
