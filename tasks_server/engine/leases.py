"""LeaseKeeper: keeps this node's claims alive and reclaims those of dead nodes.

Where several nodes share a database, a claim is a lease that ends unless renewed. While
calls are held or in flight the keeper renews their leases every quarter of the lease time,
all in one statement on a database connection of its own (never behind claims, outcomes or
the API in the pool), so a busy node keeps its leases through three missed renewals. It
renews only the claims the node still works on, and it frees leases that ran out (their
node died, lost the database, or dropped the claim) so their tasks are claimed again.

It also answers whether a claim still holds: a node cut off from the
database must not start a call whose lease has ended, since another node may have taken
the task. Where one process owns the database (SQLite), claims never expire and the
keeper does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..clock import Clock
from ..store import Store

logger = logging.getLogger(__name__)

MAX_REAP_INTERVAL_MS = 500  # a dead node's tasks are reclaimed within lease + this


@dataclass(slots=True)
class LeaseStats:
    renewals: int = 0
    failed_renewals: int = 0
    reclaimed: int = 0  # tasks whose lease had run out, made claimable again


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        on_reclaimed: Callable[[str, int], None],
        claimed: Callable[[], Collection[str]] = tuple,
    ):
        self._store = store
        self._clock = clock
        self._on_reclaimed = on_reclaimed
        self._claimed = claimed  # the task ids whose calls this node holds or has in flight
        self.lease_ms = store.lease_ms
        self._renewed_at_ms = 0  # `now` of the last renewal that committed
        self._renewed_ids: frozenset[str] = frozenset()  # the claims it renewed
        self._renewing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.stats = LeaseStats()

    @property
    def expires(self) -> bool:
        return self.lease_ms is not None

    def holds(self, task_id: str, claimed_at_ms: int, now_ms: int) -> bool:
        """Whether the claim of ``task_id`` made at ``claimed_at_ms`` is still this node's
        at ``now_ms``.

        A lease ends lease_ms after its claim, or after the last renewal that committed
        when that renewal named it (renewals never shorten a lease, see renew_leases)."""
        if self.lease_ms is None:
            return True
        renewed = self._renewed_at_ms if task_id in self._renewed_ids else 0
        return now_ms < max(claimed_at_ms, renewed) + self.lease_ms

    async def run(self) -> None:
        """Renew and reclaim until ``stop``; database errors are logged and retried.

        Two loops side by side: reclaiming goes through the shared pool and may wait
        there under load, and that must never delay a renewal."""
        if self.lease_ms is None:
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self._renew_loop(), name="lease-renewals")
            group.create_task(self._reclaim_loop(), name="lease-reclaims")

    async def _renew_loop(self) -> None:
        assert self.lease_ms is not None
        renew_every_ms = self.lease_ms // 4
        while not self._stopping.is_set():
            started = self._clock.now_ms()
            await self._renew(started, timeout_s=renew_every_ms / 1000)
            spent = self._clock.now_ms() - started
            await self._nap(max(renew_every_ms - spent, 0) / 1000)

    async def _reclaim_loop(self) -> None:
        assert self.lease_ms is not None
        interval_ms = min(self.lease_ms // 4, MAX_REAP_INTERVAL_MS)
        while not self._stopping.is_set():
            await self._reclaim(self._clock.now_ms())
            await self._nap(interval_ms / 1000)

    async def _renew(self, now_ms: int, timeout_s: float) -> None:
        """Renew in a task of its own and wait for it at most ``timeout_s``: a renewal
        stuck on a cut connection is left to end by itself (it is not cancelled, as
        cancelling a query needs the same unreachable server) and no second one starts.
        A renewal that commits after the wait still counts (see _renewed)."""
        if self._renewing is not None and not self._renewing.done():
            self.stats.failed_renewals += 1
            logger.warning("renewing this node's leases is taking longer than %.1f s", timeout_s)
            return
        task_ids = self._claimed()
        if not task_ids:
            return  # a claim made from now on holds by its own claim time
        renewing = asyncio.ensure_future(self._store.renew_leases(now_ms, task_ids))
        renewing.add_done_callback(lambda done: self._renewed(done, now_ms, task_ids))
        self._renewing = renewing
        await asyncio.wait((renewing,), timeout=timeout_s)

    def _renewed(
        self, renewing: asyncio.Future[None], sent_at_ms: int, task_ids: Collection[str]
    ) -> None:
        if renewing.cancelled():
            return
        exc = renewing.exception()
        if exc is not None:  # a lost database must not stop the node; see holds()
            self.stats.failed_renewals += 1
            logger.warning("could not renew this node's leases: %r", exc)
            return
        # the leases now run to at least sent_at + lease (renewals never shorten one)
        self._renewed_at_ms = sent_at_ms
        self._renewed_ids = frozenset(task_ids)
        self.stats.renewals += 1

    async def _reclaim(self, now_ms: int) -> None:
        try:
            freed = await self._store.requeue_expired(now_ms)
        except Exception as exc:
            logger.warning("could not reclaim expired leases: %r", exc)
            return
        self.stats.reclaimed += len(freed)
        for task_id, due_ms in freed:
            self._on_reclaimed(task_id, due_ms)

    async def _nap(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((sleeper, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()

    def stop(self) -> None:
        self._stopping.set()
        if self._renewing is not None:
            self._renewing.cancel()
