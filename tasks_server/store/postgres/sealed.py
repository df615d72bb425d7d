"""The cipher key check and re-sealing under a new key (PostgreSQL).

Every sealed column is listed in ``SEALED``; a migration that adds one must add it here,
or key rotation would leave it unreadable."""

from __future__ import annotations

from typing import Any, LiteralString

from psycopg import AsyncCursor

from ...errors import ConfigError
from ...sealing import Sealer
from .base import PgBase

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


def _wrong_key() -> ConfigError:
    return ConfigError(
        "CIPHER_KEY",
        "***",
        "does not open the values sealed in this database: it is not the key this "
        "database was made with",
    )


class PgSealOps(PgBase):
    async def _verify_key(self) -> None:
        sealer = self._sealer

        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> None:
            await cur.execute(CHECK_READ)
            row = await cur.fetchone()
            try:
                if row is not None:
                    if sealer.open(bytes(row[0])) != CHECK_TEXT:
                        raise _wrong_key()
                    return
                await cur.execute(SAMPLE_READ)
                sample = await cur.fetchone()
                if sample is not None:
                    sealer.open(bytes(sample[0]))
            except ConfigError:
                raise
            except ValueError as exc:
                raise _wrong_key() from exc
            await cur.execute(CHECK_WRITE, (sealer.seal(CHECK_TEXT),))

        await self._tx(op)

    async def reseal(self, sealer: Sealer) -> int:
        old = self._sealer

        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> int:
            written = 0
            for select, update, keys in SEALED:
                await cur.execute(select)
                for row in await cur.fetchall():
                    values = row[keys:]
                    fresh = [None if v is None else sealer.seal(old.open(bytes(v))) for v in values]
                    await cur.execute(update, (*fresh, *row[:keys]))
                    written += sum(v is not None for v in values)
            await cur.execute(CHECK_WRITE, (sealer.seal(CHECK_TEXT),))
            return written

        written = await self._tx(op)
        self._sealer = sealer
        return written
