"""The dashboard overview's figures, read from the store and kept fresh in the background.

Counting a million tasks by state takes the database a good part of a second, too slow
for a page that refreshes itself every few seconds. So the figures of each viewer's scope
(an owner, or every owner for the admin) are computed off the request path: a page takes
the last figures when they are at most ``max_age_s`` old (else it computes them itself),
and a background loop recomputes every scope looked at in the last ``watch_s`` once its
figures are ``refresh_s`` old. Nobody looking means no work. When a computation takes
long (a loaded database), the loop waits at least three times its duration between two,
so it never keeps the database's reader busy more than a third of the time; the age a
page accepts grows to match. The figures come from the Store's own methods, so they mean
the same on every store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..alerting import AlertRule, Incident
from ..clock import Clock, sleep_or_wake
from ..store import Store
from ..store.listing import TaskOverview

logger = logging.getLogger(__name__)

BUSIEST = 5  # flow-control keys shown
_IDLE_NAP_S = 3600.0  # nothing watched: park until a page asks
_SPACING = 3  # at least this many durations of a computation from one start to the next


@dataclass(frozen=True, slots=True)
class OverviewFigures:
    """What the overview shows of the store, of one scope."""

    tasks: TaskOverview
    # (key, claimable tasks waiting behind it), most first; "owner/key" for every owner
    flow_keys: tuple[tuple[str, int], ...]
    # open incidents with their rule, longest open first
    incidents: tuple[tuple[AlertRule, Incident], ...]
    rules: int | None  # the owner's alert rules (None: every owner's, not counted)


async def overview_figures(store: Store, owner_id: str | None, now_ms: int) -> OverviewFigures:
    """Read the overview's figures of one owner (every owner when None)."""
    tasks = await store.task_overview(owner_id, now_ms)
    incidents = [pair for pair in await store.list_incidents(owner_id) if pair[1].is_open]
    incidents.sort(key=lambda pair: (pair[1].opened_at_ms or 0, pair[0].name))
    rules: int | None = None
    keys: list[tuple[str, int]] = []
    if owner_id is not None:
        rules = len(await store.list_alert_rules(owner_id))
        keys = [(f.setting.flow.key, f.waiting) for f in await store.list_flow_controls(owner_id)]
    else:
        for owner in await store.list_owners():
            for flow in await store.list_flow_controls(owner.id):
                keys.append((f"{owner.name}/{flow.setting.flow.key}", flow.waiting))
    keys.sort(key=lambda pair: (-pair[1], pair[0]))
    busiest = tuple(pair for pair in keys if pair[1] > 0)[:BUSIEST]
    return OverviewFigures(tasks, busiest, tuple(incidents), rules)


Compute = Callable[[str | None, int], Awaitable[OverviewFigures]]


@dataclass(slots=True)
class _Entry:
    figures: OverviewFigures
    computed_at: float  # monotonic seconds when the computation started
    viewed_at: float
    took_s: float  # how long the computation took


class OverviewCache:
    """The last overview figures per scope, never older than ``max_age_s`` when read."""

    def __init__(
        self,
        compute: Compute,
        clock: Clock,
        refresh_s: float = 2.0,
        max_age_s: float = 5.0,
        watch_s: float = 600.0,
        max_scopes: int = 256,
    ) -> None:
        self._compute = compute
        self._clock = clock
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self._watch_s = watch_s
        self._max_scopes = max_scopes
        self._entries: dict[str | None, _Entry] = {}
        self._locks: dict[str | None, asyncio.Lock] = {}
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._failing = False

    def interval_s(self, entry: _Entry) -> float:
        """Time between two computations of a watched scope's figures."""
        return max(self.refresh_s, _SPACING * entry.took_s)

    def oldest_s(self, entry: _Entry) -> float:
        """The age of figures a page takes: ``max_age_s``, or when computing them is
        slow, one interval, one computation and one nap of the loop."""
        return max(self.max_age_s, self.interval_s(entry) + entry.took_s + self.refresh_s)

    async def get(self, owner_id: str | None) -> OverviewFigures:
        """The scope's figures, computed at most ``oldest_s`` ago (``max_age_s`` unless
        computing them is slow). Raises what the store raises when they must be computed
        now and cannot be."""
        now = self._clock.monotonic()
        entry = self._entries.get(owner_id)
        if entry is not None:
            entry.viewed_at = now
            if now - entry.computed_at <= self.oldest_s(entry):
                return entry.figures
        figures = await self._refresh(owner_id, self.max_age_s)
        self._wake.set()  # a scope to keep fresh from now on
        return figures

    async def _refresh(self, owner_id: str | None, fresh_enough_s: float) -> OverviewFigures:
        """Compute the scope's figures, unless another caller did it within
        ``fresh_enough_s`` while this one waited for the scope's lock."""
        lock = self._locks.setdefault(owner_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(owner_id)
            started = self._clock.monotonic()
            if entry is not None and started - entry.computed_at < fresh_enough_s:
                return entry.figures
            figures = await self._compute(owner_id, self._clock.now_ms())
            took = self._clock.monotonic() - started
            viewed = entry.viewed_at if entry is not None else started
            self._entries[owner_id] = _Entry(figures, started, max(viewed, started), took)
            self._forget_extra()
            return figures

    def _forget_extra(self) -> None:
        while len(self._entries) > self._max_scopes:
            oldest = min(self._entries, key=lambda scope: self._entries[scope].viewed_at)
            del self._entries[oldest]
            self._locks.pop(oldest, None)

    async def refresh_watched(self) -> None:
        """One pass of the loop: forget scopes nobody looked at for ``watch_s``, and
        recompute the others' figures that are ``refresh_s`` old."""
        now = self._clock.monotonic()
        for scope, entry in list(self._entries.items()):
            if now - entry.viewed_at > self._watch_s:
                del self._entries[scope]
                self._locks.pop(scope, None)
            elif now - entry.computed_at >= self.interval_s(entry):
                await self._refresh(scope, self.interval_s(entry))

    async def run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                await self.refresh_watched()
                self._failing = False
            except Exception as exc:  # a page computes its own figures meanwhile
                if not self._failing:
                    logger.warning("overview figures not refreshed: %s", exc, exc_info=exc)
                self._failing = True
            nap = self.refresh_s / 2 if self._entries else _IDLE_NAP_S
            await sleep_or_wake(self._clock, nap, self._wake if not self._entries else self._stop)

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
