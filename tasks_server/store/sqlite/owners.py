"""Owner operations and their SQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, LiteralString

from ...errors import (
    Conflict,
    OwnerNotFound,
    PreconditionFailed,
)
from ...models import (
    Owner,
    OwnerSecurity,
)
from ..ids import new_owner_id
from ..security import new_signing_secret, security_from_row, security_params
from .base import StoreBase

OWNER_INSERT: LiteralString = (
    "INSERT INTO owner (id, name, key_digest, created_at, tasks_in_queue_limit, "
    "request_budget) VALUES (?, ?, ?, ?, ?, ?)"
)
OWNER_COLUMNS: LiteralString = (
    "id, name, created_at, tasks_in_queue, tasks_in_queue_limit, disabled, request_budget"
)
OWNER_BY_ID: LiteralString = f"SELECT {OWNER_COLUMNS} FROM owner WHERE id = ?"
OWNER_ALL: LiteralString = f"SELECT {OWNER_COLUMNS} FROM owner ORDER BY created_at, id"
OWNER_DIGEST: LiteralString = "SELECT key_digest FROM owner WHERE id = ? AND disabled = 0"
OWNER_UPDATE: LiteralString = (
    "UPDATE owner SET disabled = ?, tasks_in_queue_limit = ?, request_budget = ? "
    f"WHERE id = ? RETURNING {OWNER_COLUMNS}"
)
OWNER_SET_KEY: LiteralString = "UPDATE owner SET key_digest = ? WHERE id = ?"
OWNER_DELETE: LiteralString = "DELETE FROM owner WHERE id = ? AND tasks_in_queue = 0"
OWNER_EXISTS: LiteralString = "SELECT 1 FROM owner WHERE id = ?"
# the owner's queue: its RUNNING and PAUSED tasks and the steps its unfinished workflow
# runs have not started yet (each will be a task), against its limit
OWNER_CAPACITY: LiteralString = (
    "SELECT tasks_in_queue + steps_waiting, tasks_in_queue_limit FROM owner WHERE id = ?"
)


def _owner(row: Sequence[Any]) -> Owner:
    return Owner(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6])


SECURITY_BY_OWNER: LiteralString = (
    "SELECT signing_secret, previous_secret, previous_until, signing_enabled, allowed_hosts "
    "FROM owner_security WHERE owner_id = ?"
)
SECURITY_CREATE: LiteralString = (
    "INSERT INTO owner_security (owner_id, signing_secret) "
    "SELECT id, ? FROM owner WHERE id = ? ON CONFLICT (owner_id) DO NOTHING"
)
SECURITY_SAVE: LiteralString = (
    "INSERT INTO owner_security (owner_id, signing_secret, previous_secret, previous_until, "
    "signing_enabled, allowed_hosts) SELECT id, ?, ?, ?, ?, ? FROM owner WHERE id = ? "
    "ON CONFLICT (owner_id) DO UPDATE SET signing_secret = excluded.signing_secret, "
    "previous_secret = excluded.previous_secret, previous_until = excluded.previous_until, "
    "signing_enabled = excluded.signing_enabled, allowed_hosts = excluded.allowed_hosts"
)


class OwnerOps(StoreBase):
    """The owner operations of SqliteStore."""

    async def create_owner(
        self,
        name: str,
        key_digest: bytes,
        now_ms: int,
        limit: int,
        request_budget: int | None = None,
    ) -> Owner:
        owner = Owner(new_owner_id(now_ms), name, now_ms, 0, limit, False, request_budget)
        params = (owner.id, name, key_digest, now_ms, limit, request_budget)

        def op(conn: sqlite3.Connection) -> Owner:
            try:
                conn.execute(OWNER_INSERT, params)
            except sqlite3.IntegrityError as exc:
                raise Conflict("Owner has already registered") from exc
            return owner

        return await self._write(op)

    async def get_owner(self, owner_id: str) -> Owner:
        rows = await self._read(OWNER_BY_ID, (owner_id,))
        if not rows:
            raise OwnerNotFound()
        return _owner(rows[0])

    async def owner_key_digest(self, owner_id: str) -> bytes | None:
        rows = await self._read(OWNER_DIGEST, (owner_id,))
        return bytes(rows[0][0]) if rows else None

    async def list_owners(self) -> list[Owner]:
        return [_owner(row) for row in await self._read(OWNER_ALL, ())]

    async def update_owner(
        self,
        owner_id: str,
        *,
        disabled: bool,
        tasks_in_queue_limit: int,
        request_budget: int | None,
    ) -> Owner:
        params = (int(disabled), tasks_in_queue_limit, request_budget, owner_id)

        def op(conn: sqlite3.Connection) -> Owner:
            row = conn.execute(OWNER_UPDATE, params).fetchone()
            if row is None:
                raise OwnerNotFound()
            return _owner(row)

        return await self._write(op)

    async def set_owner_key(self, owner_id: str, key_digest: bytes) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(OWNER_SET_KEY, (key_digest, owner_id)).rowcount != 1:
                raise OwnerNotFound()

        await self._write(op)

    async def owner_security(self, owner_id: str) -> OwnerSecurity:
        rows = await self._read(SECURITY_BY_OWNER, (owner_id,))
        if not rows:
            sealed = self._sealer.seal(new_signing_secret())

            def op(conn: sqlite3.Connection) -> None:
                conn.execute(SECURITY_CREATE, (sealed, owner_id))

            await self._write(op)
            rows = await self._read(SECURITY_BY_OWNER, (owner_id,))
            if not rows:
                raise OwnerNotFound()
        return security_from_row(self._sealer, rows[0])

    async def save_owner_security(self, owner_id: str, security: OwnerSecurity) -> None:
        params = security_params(self._sealer, security)

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(SECURITY_SAVE, (*params, owner_id)).rowcount == 0:
                raise OwnerNotFound()

        await self._write(op)

    async def delete_owner(self, owner_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(OWNER_DELETE, (owner_id,)).rowcount == 1:
                return
            if conn.execute(OWNER_EXISTS, (owner_id,)).fetchone() is None:
                raise OwnerNotFound()
            raise PreconditionFailed(
                "The owner still has tasks in queue (RUNNING or PAUSED); "
                "revoke or delete them first"
            )

        await self._write(op)
