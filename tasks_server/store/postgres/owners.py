"""Owner operations and their SQL (PostgreSQL)."""

from __future__ import annotations

from typing import Any, LiteralString

from psycopg import AsyncCursor, errors

from ...errors import Conflict, OwnerNotFound, PreconditionFailed
from ...models import Owner, OwnerSecurity
from ..ids import new_owner_id
from ..security import new_signing_secret, security_from_row, security_params
from .base import PgBase

OWNER_INSERT: LiteralString = (
    "INSERT INTO owner (id, name, key_digest, created_at, tasks_in_queue_limit, "
    "request_budget) VALUES (%s, %s, %s, %s, %s, %s)"
)
# the queue is counted on the task_owner_pending index (see the migration's comment)
PENDING: LiteralString = (
    "(SELECT count(*) FROM task t WHERE t.owner_id = o.id AND t.state IN ('RUNNING', 'PAUSED'))"
)
OWNER_COLUMNS: LiteralString = (
    f"o.id, o.name, o.created_at, {PENDING}, o.tasks_in_queue_limit, o.disabled, o.request_budget"
)
OWNER_BY_ID: LiteralString = f"SELECT {OWNER_COLUMNS} FROM owner o WHERE o.id = %s"
OWNER_ALL: LiteralString = f"SELECT {OWNER_COLUMNS} FROM owner o ORDER BY o.created_at, o.id"
OWNER_DIGEST: LiteralString = "SELECT key_digest FROM owner WHERE id = %s AND NOT disabled"
OWNER_UPDATE: LiteralString = (
    "UPDATE owner SET disabled = %s, tasks_in_queue_limit = %s, request_budget = %s WHERE id = %s"
)
OWNER_SET_KEY: LiteralString = "UPDATE owner SET key_digest = %s WHERE id = %s"
OWNER_LIMIT: LiteralString = "SELECT tasks_in_queue_limit FROM owner WHERE id = %s"
# NO KEY UPDATE: queues creations for the owner, yet not the task inserts' foreign-key checks
OWNER_LOCK_LIMIT: LiteralString = (
    "SELECT tasks_in_queue_limit FROM owner WHERE id = %s FOR NO KEY UPDATE"
)
OWNER_LOCK: LiteralString = "SELECT tasks_in_queue_limit FROM owner WHERE id = %s FOR UPDATE"
OWNER_PENDING: LiteralString = (
    "SELECT count(*) FROM task WHERE owner_id = %s AND state IN ('RUNNING', 'PAUSED')"
)
# the owner's queue: its RUNNING and PAUSED tasks and the steps its unfinished workflow
# runs have not started yet (each will be a task), on the indexes of migration 0013
OWNER_QUEUED: LiteralString = (
    "SELECT (SELECT count(*) FROM task WHERE owner_id = %(owner)s "
    "AND state IN ('RUNNING', 'PAUSED')) + (SELECT count(*) FROM workflow_run r "
    "JOIN workflow_step s ON s.run_id = r.id AND s.state = 'WAITING' "
    "WHERE r.owner_id = %(owner)s AND r.state IN ('PENDING', 'RUNNING'))"
)
OWNER_DELETE: LiteralString = "DELETE FROM owner WHERE id = %s"


async def lock_capacity(cur: AsyncCursor[tuple[Any, ...]], owner_id: str) -> int | None:
    """The owner's free slots, None when unlimited. A limited owner's row stays locked
    until the transaction ends (its creations queue up there, so two nodes cannot both take
    the last free slot). Raises OwnerNotFound."""
    await cur.execute(OWNER_LIMIT, (owner_id,))
    row = await cur.fetchone()
    if row is None:
        raise OwnerNotFound()
    if not row[0]:
        return None
    await cur.execute(OWNER_LOCK_LIMIT, (owner_id,))
    row = await cur.fetchone()
    if row is None:
        raise OwnerNotFound()
    limit: int = row[0]
    await cur.execute(OWNER_QUEUED, {"owner": owner_id})
    used = await cur.fetchone()
    return limit - (used[0] if used else 0)


SECURITY_BY_OWNER: LiteralString = (
    "SELECT signing_secret, previous_secret, previous_until, signing_enabled, allowed_hosts "
    "FROM owner_security WHERE owner_id = %s"
)
SECURITY_CREATE: LiteralString = (
    "INSERT INTO owner_security (owner_id, signing_secret) "
    "SELECT id, %s FROM owner WHERE id = %s ON CONFLICT (owner_id) DO NOTHING"
)
SECURITY_SAVE: LiteralString = (
    "INSERT INTO owner_security (owner_id, signing_secret, previous_secret, previous_until, "
    "signing_enabled, allowed_hosts) SELECT id, %s, %s, %s, %s, %s FROM owner WHERE id = %s "
    "ON CONFLICT (owner_id) DO UPDATE SET signing_secret = excluded.signing_secret, "
    "previous_secret = excluded.previous_secret, previous_until = excluded.previous_until, "
    "signing_enabled = excluded.signing_enabled, allowed_hosts = excluded.allowed_hosts"
)


class PgOwnerOps(PgBase):
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

        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> Owner:
            await cur.execute(OWNER_INSERT, params)
            return owner

        try:
            return await self._tx(op)
        except errors.UniqueViolation as exc:
            raise Conflict("Owner has already registered") from exc

    async def get_owner(self, owner_id: str) -> Owner:
        rows = await self._read(OWNER_BY_ID, (owner_id,))
        if not rows:
            raise OwnerNotFound()
        return Owner(*rows[0])

    async def owner_key_digest(self, owner_id: str) -> bytes | None:
        rows = await self._read(OWNER_DIGEST, (owner_id,))
        return bytes(rows[0][0]) if rows else None

    async def list_owners(self) -> list[Owner]:
        return [Owner(*row) for row in await self._read(OWNER_ALL, ())]

    async def update_owner(
        self,
        owner_id: str,
        *,
        disabled: bool,
        tasks_in_queue_limit: int,
        request_budget: int | None,
    ) -> Owner:
        params = (disabled, tasks_in_queue_limit, request_budget, owner_id)

        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> None:
            await cur.execute(OWNER_UPDATE, params)
            if cur.rowcount != 1:
                raise OwnerNotFound()

        await self._tx(op)
        return await self.get_owner(owner_id)

    async def set_owner_key(self, owner_id: str, key_digest: bytes) -> None:
        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> None:
            await cur.execute(OWNER_SET_KEY, (key_digest, owner_id))
            if cur.rowcount != 1:
                raise OwnerNotFound()

        await self._tx(op)

    async def owner_security(self, owner_id: str) -> OwnerSecurity:
        rows = await self._read(SECURITY_BY_OWNER, (owner_id,))
        if not rows:
            sealed = self._sealer.seal(new_signing_secret())

            async def op(cur: AsyncCursor[tuple[Any, ...]]) -> None:
                await cur.execute(SECURITY_CREATE, (sealed, owner_id))

            await self._tx(op)
            rows = await self._read(SECURITY_BY_OWNER, (owner_id,))
            if not rows:
                raise OwnerNotFound()
        return security_from_row(self._sealer, rows[0])

    async def save_owner_security(self, owner_id: str, security: OwnerSecurity) -> None:
        params = security_params(self._sealer, security)

        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> None:
            await cur.execute(SECURITY_SAVE, (*params, owner_id))
            if cur.rowcount == 0:
                raise OwnerNotFound()

        await self._tx(op)

    async def delete_owner(self, owner_id: str) -> None:
        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> None:
            await cur.execute(OWNER_LOCK, (owner_id,))
            if await cur.fetchone() is None:
                raise OwnerNotFound()
            await cur.execute(OWNER_PENDING, (owner_id,))
            pending = await cur.fetchone()
            if pending and pending[0]:
                raise PreconditionFailed(
                    "The owner still has tasks in queue (RUNNING or PAUSED); "
                    "revoke or delete them first"
                )
            await cur.execute(OWNER_DELETE, (owner_id,))

        await self._tx(op)
