"""Leases on PostgreSQL: the renewal of this node's claims, and the reclaiming of claims
whose lease ran out (their node died, lost the database, or dropped the claim), so that
their tasks are claimed again (engine/leases.py drives both)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any, LiteralString

from psycopg import AsyncCursor

from .base import PgBase

logger = logging.getLogger(__name__)
Cursor = AsyncCursor[tuple[Any, ...]]

# greatest(): a renewal never shortens the lease of a claim made after it was sent. Only
# the claims the node still works on are renewed: one it dropped (its lease was thought
# lost) or never heard of (a claim whose commit it did not see) runs out and is reclaimed.
# A renewal never waits for a row lock: a row locked now is being finished by this node's
# outcome write (or reclaimed, its lease over), and a wait there would hold back the
# renewal of every other lease.
LEASE_RENEW: LiteralString = (
    "UPDATE task SET lease_until = greatest(lease_until, %s) WHERE id IN ("
    "SELECT id FROM task WHERE id = ANY(%s) AND lease_owner = %s AND in_flight "
    "FOR UPDATE SKIP LOCKED)"
)
# leases that ran out: their attempts end as interrupted and the tasks are claimable again
# at their planned time (at once when that has passed)
LEASE_EXPIRED: LiteralString = (
    "WITH expired AS ("
    # any node's, this one's included: a claim its node no longer renews is not worked on
    " SELECT id FROM task WHERE in_flight AND lease_until < %(now)s"
    " ORDER BY lease_until LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
    "), freed AS ("
    " UPDATE task t SET in_flight = false, lease_owner = NULL, lease_until = NULL,"
    " next_at = t.due_at FROM expired WHERE t.id = expired.id"
    " RETURNING t.id, t.attempts, t.due_at"
    "), closed AS ("
    " UPDATE attempt a SET finished_at = %(now)s,"
    " error = 'interrupted: the node running it stopped renewing its lease'"
    " FROM freed WHERE a.task_id = freed.id AND a.number = freed.attempts"
    " AND a.finished_at IS NULL"
    ") SELECT id, due_at FROM freed"
)
LEASE_ANY_EXPIRED: LiteralString = "SELECT 1 FROM task WHERE in_flight AND lease_until < %s LIMIT 1"
_EXPIRED_BATCH = 1000


class PgLeaseOps(PgBase):
    async def renew_leases(self, now_ms: int, task_ids: Collection[str]) -> None:
        if not task_ids:
            return
        params = (now_ms + self._lease_ms, list(task_ids), self.node_id)
        await self._renew_on_own_connection(LEASE_RENEW, params)

    async def requeue_expired(self, now_ms: int) -> list[tuple[str, int]]:
        # every node looks twice a second or more: one round trip when no lease ran out,
        # a transaction (to free them and tell the other nodes at its commit) when some did
        if not await self._read(LEASE_ANY_EXPIRED, (now_ms,)):
            return []
        freed: list[tuple[str, int]] = []
        params = {"now": now_ms, "limit": _EXPIRED_BATCH}
        while True:

            async def op(cur: Cursor) -> list[tuple[str, int]]:
                await cur.execute(LEASE_EXPIRED, params)
                rows = [(row[0], row[1]) for row in await cur.fetchall()]
                await self._notify_due(cur, rows, now_ms)
                return rows

            batch = await self._tx(op)
            freed += batch
            if len(batch) < _EXPIRED_BATCH:
                break
        if freed:
            logger.warning("reclaimed %d tasks whose lease ran out", len(freed))
        return freed

    async def requeue_interrupted(self, now_ms: int) -> int:
        # Other nodes may be serving: only claims whose lease ran out are this start's to
        # requeue. A crashed node's claims follow once their lease ends.
        return len(await self.requeue_expired(now_ms))
