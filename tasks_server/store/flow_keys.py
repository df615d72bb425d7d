"""Flow-control keys as the API sees them (their limits, and what waits behind them): the
statements and row mapping of the Store methods get_flow_control and list_flow_controls,
shared by every implementation in its own placeholder style.

How a key's limits are enforced differs per store (one process on SQLite, the key's row
lock and shared bucket on PostgreSQL: store/postgres/flow.py) and stays there."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, LiteralString

from ..models import FlowControl, FlowPeriod, FlowSetting, FlowStatus
from .listing import Fetch

_LIST: LiteralString = (
    "SELECT f.key, f.rate, f.period_ms, f.parallelism, f.paused, "
    "(SELECT count(*) FROM task t WHERE t.owner_id = f.owner_id AND t.flow_key = f.key "
    "AND t.next_at IS NOT NULL), "
    "(SELECT min(t.next_at) FROM task t WHERE t.owner_id = f.owner_id AND t.flow_key = f.key "
    "AND t.next_at IS NOT NULL) "
    "FROM flow_control f WHERE f.owner_id = ? ORDER BY f.key"
)
_GET: LiteralString = (
    "SELECT key, rate, period_ms, parallelism, paused FROM flow_control "
    "WHERE owner_id = ? AND key = ?"
)
_PERIODS = {period.ms: period for period in FlowPeriod}


def flow_setting(row: Sequence[Any]) -> FlowSetting:
    """A key's row as (key, rate, period ms, parallelism, paused) → its setting."""
    key, rate, period_ms, parallelism, paused = row[:5]
    return FlowSetting(FlowControl(key, rate, _PERIODS[period_ms], parallelism), bool(paused))


def save_params(owner_id: str, setting: FlowSetting, now_ms: int) -> tuple[Any, ...]:
    """The parameters of a store's upsert of a key's row: owner, key, rate, period ms,
    parallelism, paused, updated at."""
    flow = setting.flow
    return (
        *(owner_id, flow.key, flow.rate, flow.period.ms, flow.parallelism),
        *(setting.paused, now_ms),
    )


class FlowKeySql:
    """get_flow_control and list_flow_controls over one store: the statements in its
    placeholder style, run through the read function it gives."""

    def __init__(self, placeholder: LiteralString) -> None:
        # the statements are this module's constants
        self._get = _GET.replace("?", placeholder)
        self._list = _LIST.replace("?", placeholder)

    async def get(self, owner_id: str, key: str, fetch: Fetch) -> FlowSetting | None:
        rows = await fetch(self._get, (owner_id, key))
        return flow_setting(rows[0]) if rows else None

    async def list(self, owner_id: str, fetch: Fetch) -> list[FlowStatus]:
        """Every key of the owner, by key, with its claimable tasks and the oldest due."""
        return [
            FlowStatus(flow_setting(row), int(row[5]), row[6])
            for row in await fetch(self._list, (owner_id,))
        ]
