"""SqliteStore: the Store contract on one WAL-mode SQLite file.

Writes go through one writer thread that runs whole batches of operations in a single
transaction (group commit): many registrations or outcomes cost one fsync. Reads use an
aiosqlite connection of their own, which WAL lets run beside the writer. The operations
live in one module per group (owners, tasks, claims, schedules), each beside its SQL."""

from __future__ import annotations

from collections.abc import Callable

from .alerts import AlertOps
from .claims import ClaimOps
from .dead_letters import DeadLetterOps
from .hosts import HostLimitOps
from .owners import OwnerOps
from .schedules import ScheduleOps
from .search import SearchOps
from .tasks import TaskOps
from .workflows import WorkflowOps


class SqliteStore(
    OwnerOps,
    TaskOps,
    WorkflowOps,
    ClaimOps,
    ScheduleOps,
    DeadLetterOps,
    SearchOps,
    AlertOps,
    HostLimitOps,
):
    """Store on SQLite. Secrets (specs, responses, metadata) are sealed with ``sealer``."""

    # -- one process owns the file: no leases, no other nodes, always the leader ----------

    @property
    def lease_ms(self) -> int | None:
        return None

    async def renew_leases(self, now_ms: int) -> None:
        return None

    async def requeue_expired(self, now_ms: int) -> list[tuple[str, int]]:
        return []

    async def listen(
        self, on_due: Callable[[str, int], None], on_schedule: Callable[[int | None], None]
    ) -> None:
        return None

    async def lead_schedules(self) -> bool:
        return True
