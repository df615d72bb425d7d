"""Apply the numbered PostgreSQL migrations in ``migrations/`` in order, tracked in the
``schema_version`` table. Several nodes may start at once: an advisory lock lets one of
them migrate while the others wait, then find nothing left to do."""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import LiteralString

from psycopg import AsyncConnection

logger = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{4})_\w+\.sql$")

# pg_advisory_xact_lock key for migrations ("tsmg" as an integer)
MIGRATION_LOCK = 0x74736D67

VERSION_TABLE: LiteralString = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at "
    "TIMESTAMPTZ NOT NULL DEFAULT now())"
)
VERSION_READ: LiteralString = "SELECT coalesce(max(version), 0) FROM schema_version"
VERSION_WRITE: LiteralString = "INSERT INTO schema_version (version) VALUES (%s)"
LOCK: LiteralString = "SELECT pg_advisory_xact_lock(%s)"


def migrations() -> list[tuple[int, str, LiteralString]]:
    """(version, file name, SQL text) of every migration, ascending."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            # the files ship with the package: static text, like the SQL constants
            sql: LiteralString = entry.read_text()  # type: ignore[assignment,unused-ignore]
            found.append((int(match.group(1)), entry.name, sql))
    return sorted(found)


def latest_version() -> int:
    return migrations()[-1][0]


async def current_version(conn: AsyncConnection) -> int:
    """The schema version of the database (0 when it has none yet)."""
    row = await (await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")).fetchone()
    if not row or not row[0]:
        return 0
    version = await (await conn.execute(VERSION_READ)).fetchone()
    return int(version[0]) if version else 0


async def migrate(conn: AsyncConnection) -> int:
    """Bring the schema to the latest version in one transaction (DDL is transactional in
    PostgreSQL, so a failed step leaves nothing behind). Returns the number of migrations
    applied. A database newer than this code is refused."""
    async with conn.transaction():
        await conn.execute(LOCK, (MIGRATION_LOCK,))
        await conn.execute(VERSION_TABLE)
        current = await current_version(conn)
        if current > latest_version():
            raise RuntimeError(f"database schema {current} is newer than this server")
        applied = 0
        for version, name, sql in migrations():
            if version <= current:
                continue
            await conn.execute(sql)
            await conn.execute(VERSION_WRITE, (version,))
            logger.info("applied migration %s", name)
            applied += 1
    return applied


async def migrate_url(url: str) -> int:
    """Migrate the database at ``url`` (the ``migrate`` command)."""
    async with await AsyncConnection.connect(url, application_name="tasks-server-migrate") as conn:
        return await migrate(conn)
