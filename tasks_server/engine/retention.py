"""Retention of finished tasks: a loop that deletes tasks which ended more than
RETENTION_FINISHED_DAYS ago, in bounded batches, then naps."""

from __future__ import annotations

import asyncio
import logging

from ..clock import Clock, sleep_or_wake
from ..store import Store

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
_BATCH = 1000  # tasks per transaction: the writer stays free for everything else
_NAP_S = 3600.0  # between passes once nothing more is due for deletion


class RetentionJob:
    """Deletes finished tasks older than ``days`` (their end time), with their history."""

    def __init__(self, store: Store, clock: Clock, days: int) -> None:
        self._store = store
        self._clock = clock
        self._days = days
        self._stop = asyncio.Event()

    async def run_once(self) -> int:
        """One pass: delete in batches until none is left; returns how many."""
        deleted = 0
        while not self._stop.is_set():
            cut_off = self._clock.now_ms() - self._days * DAY_MS
            batch = await self._store.delete_finished_before(cut_off, _BATCH)
            deleted += batch
            if batch < _BATCH:
                break
        if deleted:
            logger.info(
                "retention: deleted %d tasks finished over %d days ago", deleted, self._days
            )
        return deleted

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.run_once()
            await sleep_or_wake(self._clock, _NAP_S, self._stop)

    async def stop(self) -> None:
        self._stop.set()
