"""The cipher key check and re-sealing under a new key (PostgreSQL).

Every sealed column is listed in ``SEALED``; a migration that adds one must add it here,
or key rotation would leave it unreadable."""

from __future__ import annotations

import json
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncCursor

from ...errors import ConfigError, PreconditionFailed
from ...sealing import Sealer
from ..details import seal_detail
from .base import APPLICATION_NAME, SERVERS_ON_IT, PgBase
from .migrate import migrate

CHECK_TEXT = b"tasks-server key check v1"
CHECK_READ: LiteralString = "SELECT value FROM seal_check WHERE id = 1"
CHECK_WRITE: LiteralString = (
    "INSERT INTO seal_check (id, value) VALUES (1, %s) "
    "ON CONFLICT (id) DO UPDATE SET value = excluded.value"
)
SAMPLE_READ: LiteralString = "SELECT spec FROM task UNION ALL SELECT spec FROM schedule LIMIT 1"
# (select: key columns then sealed columns; update: sealed columns then keys; key count)
SEALED: tuple[tuple[LiteralString, LiteralString, int], ...] = (
    (
        "SELECT id, spec, response, metadata FROM task",
        "UPDATE task SET spec = %s, response = %s, metadata = %s WHERE id = %s",
        1,
    ),
    (
        "SELECT task_id, number, response, detail FROM attempt",
        "UPDATE attempt SET response = %s, detail = %s WHERE task_id = %s AND number = %s",
        2,
    ),
    (
        "SELECT id, spec, metadata FROM schedule",
        "UPDATE schedule SET spec = %s, metadata = %s WHERE id = %s",
        1,
    ),
    (
        "SELECT id, input, metadata, callbacks FROM workflow_run",
        "UPDATE workflow_run SET input = %s, metadata = %s, callbacks = %s WHERE id = %s",
        1,
    ),
    (
        "SELECT run_id, step_id, template, result FROM workflow_step",
        "UPDATE workflow_step SET template = %s, result = %s WHERE run_id = %s AND step_id = %s",
        2,
    ),
    (
        "SELECT id, definition FROM alert_rule",
        "UPDATE alert_rule SET definition = %s WHERE id = %s",
        1,
    ),
    (
        "SELECT rule_id, subject, state FROM alert_incident",
        "UPDATE alert_incident SET state = %s WHERE rule_id = %s AND subject = %s",
        2,
    ),
    (
        "SELECT owner_id, signing_secret, previous_secret FROM owner_security",
        "UPDATE owner_security SET signing_secret = %s, previous_secret = %s WHERE owner_id = %s",
        1,
    ),
)


CHECK_EXISTS: LiteralString = "SELECT to_regclass('seal_check') IS NOT NULL"


async def check_key(url: str, sealer: Sealer) -> None:
    """Before serving: raise ConfigError naming CIPHER_KEY when the database at ``url``
    has a key check value (or, from before the check value, a sealed task) that ``sealer``
    does not open. Reads only; a database out of reach is left to the server's start."""
    try:
        async with await psycopg.AsyncConnection.connect(url, connect_timeout=10) as conn:
            row = await (await conn.execute(CHECK_EXISTS)).fetchone()
            if not (row and row[0]):
                return  # a new database: the first start writes the check value
            check = await (await conn.execute(CHECK_READ)).fetchone()
            sample = None
            if check is None:
                sample = await (await conn.execute(SAMPLE_READ)).fetchone()
    except psycopg.OperationalError:
        return
    _verify(sealer, check, sample)


def _verify(sealer: Sealer, check: Any, sample: Any) -> None:
    """Raise ConfigError unless ``sealer`` opens the check value, or the sample of a
    database from before the check value (when there is one)."""
    try:
        if check is not None:
            if sealer.open(bytes(check[0])) != CHECK_TEXT:
                raise _wrong_key()
        elif sample is not None:
            sealer.open(bytes(sample[0]))
    except ValueError as exc:
        raise _wrong_key() from exc


# attempts written before their error and headers were sealed (the fixed text of an
# interrupted attempt is sealed along with them)
LEGACY_DETAIL: LiteralString = (
    "SELECT task_id, number, error, headers FROM attempt "
    "WHERE detail IS NULL AND (error IS NOT NULL OR headers IS NOT NULL)"
)
LEGACY_SEAL: LiteralString = (
    "UPDATE attempt SET detail = %s, error = NULL, headers = NULL "
    "WHERE task_id = %s AND number = %s"
)


def _wrong_key() -> ConfigError:
    return ConfigError(
        "CIPHER_KEY",
        "***",
        "does not open the values sealed in this database: it is not the key this "
        "database was made with",
    )


async def reseal_rows(cur: AsyncCursor[Any], old: Sealer, new: Sealer) -> int:
    """Re-seal every sealed value (and seal what an older version kept in the clear) with
    ``new``, and replace the key check value, in the caller's transaction; returns the
    number of values written. Raises ValueError when ``old`` does not open a value."""
    written = 0
    for select, update, keys in SEALED:
        await cur.execute(select)
        for row in await cur.fetchall():
            values = row[keys:]
            fresh = [None if v is None else new.seal(old.open(bytes(v))) for v in values]
            await cur.execute(update, (*fresh, *row[:keys]))
            written += sum(v is not None for v in values)
    await cur.execute(LEGACY_DETAIL)
    for task_id, number, error, headers in await cur.fetchall():
        detail = seal_detail(new, error, json.loads(headers or "[]"))
        await cur.execute(LEGACY_SEAL, (detail, task_id, number))
        written += 1
    await cur.execute(CHECK_WRITE, (new.seal(CHECK_TEXT),))
    return written


# A node starting during a rotation reads the check value: it waits for the rotation to
# commit, then finds the new check value and stops if it still has the old key.
LOCK_CHECK: LiteralString = "LOCK TABLE seal_check IN ACCESS EXCLUSIVE MODE"


async def rotate_key(url: str, old: Sealer, new: Sealer) -> int:
    """Re-seal the database at ``url`` from ``old`` to ``new`` in one transaction (after
    applying any pending migration); returns the number of values written.

    Raises PreconditionFailed, changing nothing, while any node is connected to the
    database (a running node would go on sealing with the old key), and ConfigError
    naming CIPHER_KEY when ``old`` is not the database's key."""
    async with await psycopg.AsyncConnection.connect(
        url, application_name=f"{APPLICATION_NAME}-rotate-key"
    ) as conn:
        await migrate(conn)
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(LOCK_CHECK)
            await cur.execute(SERVERS_ON_IT, (f"{APPLICATION_NAME} %",))
            row = await cur.fetchone()
            if row and row[0]:
                raise PreconditionFailed(
                    f"the database is in use by {row[0]} tasks-server connection(s): stop "
                    "every node first (a running node would go on sealing with the old key)"
                )
            await cur.execute(CHECK_READ)
            check = await cur.fetchone()
            await cur.execute(SAMPLE_READ)
            _verify(old, check, await cur.fetchone())
            try:
                return await reseal_rows(cur, old, new)
            except ValueError as exc:  # a value sealed with yet another key
                raise _wrong_key() from exc


class PgSealOps(PgBase):
    async def _verify_key(self) -> None:
        sealer = self._sealer

        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> None:
            await cur.execute(CHECK_READ)
            check = await cur.fetchone()
            if check is not None:
                _verify(sealer, check, None)
                return
            await cur.execute(SAMPLE_READ)
            _verify(sealer, None, await cur.fetchone())
            await cur.execute(CHECK_WRITE, (sealer.seal(CHECK_TEXT),))

        await self._tx(op)

    async def reseal(self, sealer: Sealer) -> int:
        old = self._sealer

        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> int:
            return await reseal_rows(cur, old, sealer)

        written = await self._tx(op)
        self._sealer = sealer
        return written
