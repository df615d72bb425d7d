"""SqliteStore: the Store contract on one WAL-mode SQLite file.

Writes go through one writer thread that runs whole batches of operations in a single
transaction (group commit): many registrations or outcomes cost one fsync. Reads use an
aiosqlite connection of their own, which WAL lets run beside the writer. The operations
live in one module per group (owners, tasks, claims, schedules), each beside its SQL."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from .claims import ClaimOps
from .owners import OwnerOps
from .schedules import ScheduleOps
from .tasks import TaskOps

logger = logging.getLogger(__name__)


class SqliteStore(OwnerOps, TaskOps, ClaimOps, ScheduleOps):
    """Store on SQLite. Secrets (specs, responses, metadata) are sealed with ``sealer``."""

    async def backup_to(self, path: Path) -> None:
        def copy() -> None:
            source = sqlite3.connect(self.path)
            target = sqlite3.connect(path)
            try:
                # one step, one read transaction: a stepwise copy restarts on every
                # write by another connection and may never finish on a busy database
                source.backup(target)
            finally:
                target.close()
                source.close()

        await asyncio.get_running_loop().run_in_executor(None, copy)
