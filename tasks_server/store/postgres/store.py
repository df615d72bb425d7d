"""PostgresStore: the Store contract on a PostgreSQL database that several nodes share.

Each operation is one transaction on a pooled connection (PostgreSQL groups concurrent
commits itself). Beside the pool, a node keeps two connections of its own: one LISTENs for
other nodes' wake-ups, the other holds the schedule leader's advisory lock. The operations
live in one module per group (owners, tasks, claims, leases, schedules), each beside its SQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncConnection

from .alerts import PgAlertOps
from .base import DUE_CHANNEL, SCHEDULE_CHANNEL, backup_at, connection_options
from .claims import PgClaimOps
from .dead_letters import PgDeadLetterOps
from .flow import PgFlowOps
from .hosts import PgHostLimitOps
from .leases import PgLeaseOps
from .owners import PgOwnerOps
from .schedules import PgScheduleOps
from .sealed import PgSealOps
from .search import PgSearchOps
from .tasks import PgTaskOps
from .workflows import PgWorkflowOps

logger = logging.getLogger(__name__)

# pg_try_advisory_lock key of the schedule leader ("tssc" as an integer)
LEADER_LOCK = 0x74737363
TRY_LEAD: LiteralString = "SELECT pg_try_advisory_lock(%s)"
STILL_THERE: LiteralString = "SELECT 1"
LISTEN_DUE: LiteralString = "LISTEN tasks_due"
LISTEN_SCHEDULES: LiteralString = "LISTEN tasks_schedules"
# The leader's session must end soon after its node is cut off, or the lock (and with it
# the schedules) would stay with a node that cannot act: PostgreSQL probes the idle TCP
# connection and drops it after about 5 s without an answer.
_LEADER_SESSION = "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3"
_CHECK_TIMEOUT_S = 2.0
_RECONNECT_S = 1.0


class PostgresStore(
    PgOwnerOps,
    PgTaskOps,
    PgWorkflowOps,
    PgClaimOps,
    PgLeaseOps,
    PgFlowOps,
    PgScheduleOps,
    PgDeadLetterOps,
    PgSearchOps,
    PgAlertOps,
    PgSealOps,
    PgHostLimitOps,
):
    """Store on PostgreSQL. Secrets (specs, responses, metadata) are sealed with ``sealer``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._leader: AsyncConnection[tuple[Any, ...]] | None = None
        self._leading = False
        # this node's scheduler, told of tasks a claim refused for their key's limits
        self._on_due: Callable[[str, int], None] | None = None

    # -- wake-ups from other nodes ----------------------------------------------------------

    async def listen(
        self, on_due: Callable[[str, int], None], on_schedule: Callable[[int | None], None]
    ) -> None:
        self._on_due = on_due
        while True:
            try:
                await self._listen_once(on_due, on_schedule)
            except psycopg.OperationalError as exc:
                logger.warning("wake-up listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(_RECONNECT_S)

    async def _listen_once(
        self, on_due: Callable[[str, int], None], on_schedule: Callable[[int | None], None]
    ) -> None:
        conn = await AsyncConnection.connect(
            self.url, **connection_options(self.node_id, self._lease_ms)
        )
        async with conn:
            await conn.execute(LISTEN_DUE)
            await conn.execute(LISTEN_SCHEDULES)
            async for note in conn.notifies():
                if note.channel == DUE_CHANNEL:
                    self._deliver_due(note.payload, on_due)
                elif note.channel == SCHEDULE_CHANNEL:
                    on_schedule(int(note.payload))

    def _rearm(self, task_id: str, due_ms: int) -> None:
        if self._on_due is not None:
            self._on_due(task_id, due_ms)

    def _deliver_due(self, payload: str, on_due: Callable[[str, int], None]) -> None:
        sender, _, items = payload.partition("|")
        if sender == self.node_id:
            return  # this node's scheduler heard of its own changes directly
        for item in items.split(","):
            task_id, _, due = item.partition(":")
            at = backup_at(int(due), self._backup_after_ms)
            self._backups[task_id] = at
            on_due(task_id, at)

    # -- schedule leadership ------------------------------------------------------------------

    async def lead_schedules(self) -> bool:
        try:
            return await asyncio.wait_for(self._lead(), _CHECK_TIMEOUT_S)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if self._leading:
                logger.warning("schedule leadership lost: %s", exc)
            await self._drop_leader_connection()
            return False

    async def _lead(self) -> bool:
        if self._leader is None:
            options = connection_options(self.node_id, self._lease_ms)
            options["options"] += f" {_LEADER_SESSION}"
            self._leader = await AsyncConnection.connect(self.url, **options)
        if self._leading:
            await self._leader.execute(STILL_THERE)
            return True
        row = await (await self._leader.execute(TRY_LEAD, (LEADER_LOCK,))).fetchone()
        self._leading = bool(row and row[0])
        if self._leading:
            logger.info("this node (%s) now plans the schedules", self.node_id)
        return self._leading

    async def _drop_leader_connection(self) -> None:
        self._leading = False
        leader, self._leader = self._leader, None
        if leader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(leader.close(), _CHECK_TIMEOUT_S)

    async def _close_extra(self) -> None:
        await self._drop_leader_connection()
