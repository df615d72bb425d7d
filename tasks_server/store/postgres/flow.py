"""Flow-control limits that hold across nodes: what a claim may take of a key.

Each node's scheduler already holds a key's tasks back by its own count (engine/limits.py),
but several nodes would each allow the full rate and parallelism. So on PostgreSQL a
claim of tasks whose key has limits takes the key's row lock first (nodes claiming the
same key queue there, in key order, so they never deadlock), counts the key's calls in
flight on the tasks themselves (a call stops counting when its outcome is committed or
its lease is reclaimed), spends the key's shared token bucket, and claims only what both
allow. A task refused is armed again for when the key may allow it.

The API's view of the keys (their limits, what waits behind them) is shared with SQLite
(store/flow_keys.py); saving a key here also resets its bucket when its rate changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, LiteralString

from psycopg import AsyncCursor

from ...models import FlowSetting, FlowStatus
from ..flow_keys import FlowKeySql, save_params
from .base import PgBase

# a refused task of a key at its parallelism cap (or paused) is tried again this soon: the
# slot is freed by an outcome on whichever node made the call
RETRY_FULL_MS = 100
RETRY_PAUSED_MS = 1000

# Claimable tasks among the candidates whose key has a limit, with the key's row locked
# (returned as it is once the lock is granted).
FLOW_LOCK: LiteralString = (
    "SELECT t.id, f.owner_id, f.key, f.rate, f.period_ms, f.parallelism, f.paused, "
    "f.credit, f.credit_at FROM task t JOIN flow_control f "
    "ON f.owner_id = t.owner_id AND f.key = t.flow_key "
    "WHERE t.id = ANY(%s) AND t.flow_key IS NOT NULL AND NOT t.in_flight "
    "AND (f.rate IS NOT NULL OR f.parallelism IS NOT NULL OR f.paused) "
    "ORDER BY f.owner_id, f.key FOR UPDATE OF f"
)
# a statement of its own, after the locks: it sees every claim committed before them
FLOW_IN_FLIGHT: LiteralString = (
    "SELECT t.owner_id, t.flow_key, count(*) FROM task t "
    "JOIN unnest(%s::text[], %s::text[]) AS k(owner_id, key) "
    "ON t.owner_id = k.owner_id AND t.flow_key = k.key "
    "WHERE t.in_flight GROUP BY t.owner_id, t.flow_key"
)
FLOW_SPEND: LiteralString = (
    "UPDATE flow_control f SET credit = r.credit, credit_at = r.at "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) "
    "AS r(owner_id, key, credit, at) WHERE f.owner_id = r.owner_id AND f.key = r.key"
)


@dataclass(slots=True)
class KeyAllowance:
    """One locked key: how many starts it allows now, and its bucket after them."""

    at_ms: int  # the bucket's time after this claim
    rate: int | None
    period_ms: int
    credit: int  # in 1/period_ms tokens, refilled to now
    allowed: int
    retry_ms: int  # when a task refused now may be tried again
    taken: int = 0

    def take(self) -> bool:
        if self.taken >= self.allowed:
            return False
        self.taken += 1
        return True

    def credit_after(self, started: int) -> int:
        return self.credit - started * self.period_ms


def allowance(
    rate: int | None,
    period_ms: int,
    parallelism: int | None,
    paused: bool,
    credit: int | None,
    credit_at: int | None,
    in_flight: int,
    now_ms: int,
) -> KeyAllowance:
    """The key's bucket refilled to ``now_ms`` (a burst of ``rate`` at most, full when new)
    and the starts its limits allow now; the same arithmetic as engine/limits.Bucket."""
    capacity = (rate or 0) * period_ms
    if credit_at is not None:
        # nodes pass the time they read before waiting for the key's lock: the bucket's
        # clock never goes back, or the same time would be earned twice
        now_ms = max(now_ms, credit_at)
    if rate is None:
        credit = 0
    elif credit is None or credit_at is None:
        credit = capacity
    else:
        credit = min(capacity, credit + (now_ms - credit_at) * rate)
    if paused:
        return KeyAllowance(now_ms, rate, period_ms, credit, 0, now_ms + RETRY_PAUSED_MS)
    allowed = 1 << 30
    retry = now_ms + RETRY_FULL_MS
    if parallelism is not None:
        allowed = max(parallelism - in_flight, 0)
    if rate is not None:
        tokens = credit // period_ms
        if tokens < allowed:
            allowed = tokens
            # the next token, unless a full parallelism is what holds the key back
            if parallelism is None or in_flight + tokens < parallelism:
                retry = now_ms + -(-(period_ms - credit % period_ms) // rate)
    return KeyAllowance(now_ms, rate, period_ms, credit, allowed, retry)


FLOW_SAVE: LiteralString = (
    "INSERT INTO flow_control (owner_id, key, rate, period_ms, parallelism, paused, "
    "updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (owner_id, key) DO UPDATE SET "
    # a new rate starts with its own full burst
    "credit_at = CASE WHEN flow_control.rate IS NOT DISTINCT FROM excluded.rate "
    "AND flow_control.period_ms = excluded.period_ms THEN flow_control.credit_at END, "
    "rate = excluded.rate, period_ms = excluded.period_ms, "
    "parallelism = excluded.parallelism, paused = excluded.paused, "
    "updated_at = excluded.updated_at"
)
_FLOW_KEYS = FlowKeySql("%s")


class PgFlowOps(PgBase):
    """Flow-control keys as the API sees them: their limits and what waits behind them."""

    async def get_flow_control(self, owner_id: str, key: str) -> FlowSetting | None:
        return await _FLOW_KEYS.get(owner_id, key, self._read)

    async def list_flow_controls(self, owner_id: str) -> list[FlowStatus]:
        return await _FLOW_KEYS.list(owner_id, self._read)

    async def save_flow_control(self, owner_id: str, setting: FlowSetting, now_ms: int) -> None:
        params = save_params(owner_id, setting, now_ms)

        async def op(cur: AsyncCursor[tuple[Any, ...]]) -> None:
            await cur.execute(FLOW_SAVE, params)

        await self._tx(op)
