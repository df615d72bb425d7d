"""Moving from SQLite to PostgreSQL: copy a stopped server's database into an empty
PostgreSQL one (owners with their signing secrets and allowed hosts, flow-control keys,
the administrator's host limits, schedules, tasks with their attempt history, workflow
runs with their steps, alert rules with incidents and deliveries, and the key check),
then check the counts.

Values are copied as stored: sealed specs, responses and metadata stay sealed, so the
nodes need the same CIPHER_KEY as the old server. Columns are matched by name; a column
the PostgreSQL schema lacks stops the copy rather than being dropped. Attempts that were
in flight when the old server stopped end as interrupted and their tasks are due again
(as a restart on SQLite would do)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any, LiteralString

from psycopg import AsyncConnection, AsyncCursor, sql

from ..errors import PreconditionFailed
from .migrate import latest_version as sqlite_latest_version
from .postgres import APPLICATION_NAME, migrate
from .postgres.base import SERVERS_ON_IT
from .sqlite import DatabaseLock, connect

logger = logging.getLogger(__name__)

# parents first: schedules before the tasks and runs that point at them, runs before
# their steps, rules before incidents. Every table of the schema is here
# (tests/cli/test_migrate_data.py checks), so nothing is left behind silently.
TABLES = (
    "seal_check",
    "owner",
    "owner_security",
    "flow_control",
    "host_limit",
    "schedule",
    "task",
    "attempt",
    "workflow_run",
    "workflow_step",
    "workflow_edge",
    "alert_rule",
    "alert_incident",
    "alert_delivery",
)
# written by a node that opened the target before (owner- and task-free): the source's
# check replaces it, since the source's key sealed what is copied
REPLACED = {"seal_check"}
# kept in counter columns on SQLite, counted from the tasks and workflow steps on PostgreSQL
DERIVED = {"owner": {"tasks_in_queue", "steps_waiting"}}

COLUMNS: LiteralString = (
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = %s"
)
ROWS_IN: LiteralString = "SELECT (SELECT count(*) FROM owner) + (SELECT count(*) FROM task)"
REQUEUE: LiteralString = (
    "UPDATE task SET in_flight = false, next_at = due_at WHERE in_flight AND state = 'RUNNING'"
)
INTERRUPT: LiteralString = (
    "UPDATE attempt SET finished_at = %s, error = 'interrupted: the server stopped' "
    "WHERE finished_at IS NULL"
)


async def copy_sqlite_to_postgres(source: Path, url: str, now_ms: int) -> dict[str, int]:
    """Copy everything in ``source`` into the database at ``url`` in one transaction and
    return the number of rows per table (equal on both sides, or nothing is committed).

    Raises PreconditionFailed, changing nothing, when a server is using either database,
    when ``source`` is not at the latest schema, or when the target is not empty."""
    lock, lite = _open_source(source)
    try:
        async with await AsyncConnection.connect(
            url, application_name="tasks-server-migrate-data"
        ) as conn:
            await _check_target(conn)
            await migrate(conn)
            async with conn.transaction(), conn.cursor() as cur:
                return await _copy_all(lite, cur, now_ms)
    finally:
        lite.close()
        lock.release()


def _open_source(source: Path) -> tuple[DatabaseLock, sqlite3.Connection]:
    """The source database, locked as restore locks it: no server can start on it."""
    if not source.is_file():
        raise PreconditionFailed(f"no SQLite database at {source}")
    lock = DatabaseLock(source)
    if not lock.try_exclusive():
        raise PreconditionFailed(f"{source} is in use by a running tasks-server; stop it first")
    lite = connect(source, "FULL")
    version = lite.execute("PRAGMA user_version").fetchone()[0]
    if version != sqlite_latest_version():
        lite.close()
        lock.release()
        raise PreconditionFailed(
            f"{source} is at schema {version}, this version copies {sqlite_latest_version()}: "
            f"run `tasks-server migrate --db {source}` first"
        )
    return lock, lite


async def _check_target(conn: AsyncConnection[Any]) -> None:
    row = await (await conn.execute(SERVERS_ON_IT, (f"{APPLICATION_NAME} %",))).fetchone()
    if row and row[0]:
        raise PreconditionFailed(
            f"the PostgreSQL database is in use by {row[0]} tasks-server connection(s); "
            "stop every node first"
        )
    await conn.commit()
    if await _table_exists(conn, "task"):
        rows = await (await conn.execute(ROWS_IN)).fetchone()
        if rows and rows[0]:
            raise PreconditionFailed("the PostgreSQL database already holds owners or tasks")
    await conn.commit()


async def _table_exists(conn: AsyncConnection[Any], table: str) -> bool:
    row = await (await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))).fetchone()
    return bool(row and row[0])


async def _copy_all(lite: sqlite3.Connection, cur: AsyncCursor[Any], now_ms: int) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        if table in REPLACED:
            await cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
        counts[table] = await _copy_table(lite, cur, table)
    await cur.execute(INTERRUPT, (now_ms,))
    await cur.execute(REQUEUE)
    for table, expected in counts.items():
        await cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        row = await cur.fetchone()
        copied = row[0] if row else 0
        if copied != expected:  # raising rolls the whole copy back
            raise PreconditionFailed(f"{table}: {expected} rows read, {copied} written")
    return counts


async def _copy_table(lite: sqlite3.Connection, cur: AsyncCursor[Any], table: str) -> int:
    source_columns = [row[1] for row in lite.execute(f"PRAGMA table_info({table})")]
    await cur.execute(COLUMNS, (table,))
    target_types = {name: kind for name, kind in await cur.fetchall()}
    unknown = set(source_columns) - set(target_types) - DERIVED.get(table, set())
    if unknown:
        raise PreconditionFailed(f"{table}: no place on PostgreSQL for {sorted(unknown)}")
    columns = [c for c in source_columns if c in target_types]
    booleans = {i for i, c in enumerate(columns) if target_types[c] == "boolean"}
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    select = f"SELECT {', '.join(columns)} FROM {table}"  # names from the schema itself
    count = 0
    async with cur.copy(statement) as copy:
        for row in lite.execute(select):
            values = [bool(v) if i in booleans else v for i, v in enumerate(row)]
            await copy.write_row(values)
            count += 1
    logger.info("copied %d rows of %s", count, table)
    return count
